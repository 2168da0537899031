import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")

django_application = get_asgi_application()


async def echo(scope, receive, send) -> None:
    """/ws/echo/: a WebSocket that answers each text message with "<release>: <text>", so a
    client can tell which release holds its connection."""
    release = os.environ.get("APP_RELEASE", "dev")
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": f"{release}: {event.get('text', '')}"})
        elif event["type"] == "websocket.disconnect":
            return


async def application(scope, receive, send) -> None:
    if scope["type"] == "websocket" and scope["path"] == "/ws/echo/":
        await echo(scope, receive, send)
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4404})
    else:
        await django_application(scope, receive, send)
