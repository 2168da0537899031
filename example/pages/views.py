import logging

from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import Visit
from .tasks import add, slow_add

logger = logging.getLogger(__name__)

TASK_TIMEOUT_SECONDS = 5.0


def index(request: HttpRequest) -> HttpResponse:
    Visit.objects.create(path=request.path[:255])
    context = {
        "version": settings.APP_VERSION,
        "release": settings.APP_RELEASE,
        "host": request.get_host(),
        "visit_count": Visit.objects.count(),
    }
    return render(request, "pages/index.html", context)


def health(request: HttpRequest) -> JsonResponse:
    payload: dict[str, object] = {
        "status": "ok",
        "version": settings.APP_VERSION,
        "release": settings.APP_RELEASE,
        "db": True,
    }
    try:
        Visit.objects.exists()
    except Exception:
        logger.exception("health check: database query failed")
        payload.update(status="error", db=False)
        return JsonResponse(payload, status=503)
    return JsonResponse(payload)


def version(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        f"{settings.APP_VERSION} {settings.APP_RELEASE}\n",
        content_type="text/plain; charset=utf-8",
    )


@csrf_exempt
@require_POST
def echo(request: HttpRequest) -> JsonResponse:
    """An API-style POST (what a client that does not retry sends): the size of what came."""
    return JsonResponse({"release": settings.APP_RELEASE, "received": len(request.body)})


def _number(request: HttpRequest, name: str, default: float | None = None) -> float:
    raw = request.GET.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"missing parameter {name!r}")
        return default
    value = float(raw)
    return int(value) if value.is_integer() else value


def _broker_error(exc: Exception) -> JsonResponse:
    logger.exception("celery broker/backend unavailable")
    return JsonResponse({"error": "celery unavailable", "detail": str(exc)}, status=503)


def task_add(request: HttpRequest) -> JsonResponse:
    try:
        x, y = _number(request, "x"), _number(request, "y")
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    try:
        result = add.delay(x, y)
    except Exception as exc:
        return _broker_error(exc)
    try:
        value = result.get(timeout=TASK_TIMEOUT_SECONDS)
    except CeleryTimeoutError:
        return JsonResponse(
            {"error": "timeout", "task_id": result.id, "timeout": TASK_TIMEOUT_SECONDS},
            status=504,
        )
    except Exception as exc:
        return _broker_error(exc)
    return JsonResponse({"result": value, "task_id": result.id})


def task_slow(request: HttpRequest) -> JsonResponse:
    try:
        x, y = _number(request, "x"), _number(request, "y")
        seconds = _number(request, "seconds", 10)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    try:
        result = slow_add.delay(x, y, seconds)
    except Exception as exc:
        return _broker_error(exc)
    return JsonResponse({"task_id": result.id}, status=202)


def task_result(request: HttpRequest, task_id: str) -> JsonResponse:
    result = AsyncResult(task_id, app=slow_add.app)
    try:
        state = result.state
        payload: dict[str, object] = {"task_id": task_id, "state": state, "ready": result.ready()}
        if state == "SUCCESS":
            payload["result"] = result.result
        elif state == "FAILURE":
            payload["error"] = repr(result.result)
    except Exception as exc:
        return _broker_error(exc)
    return JsonResponse(payload)
