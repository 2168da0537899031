"""Deploy notifications: `[sites.<name>.notify]` — a webhook told when a deploy, rollback or
restore of the site starts, succeeds and fails.

The webhook's URL is a secret: it sits in the site's secrets file under `url_secret` (default
DEPLOY_WEBHOOK_URL), is used on the control machine only (never written to a host's env file)
and is masked wherever it could show. The body is JSON (`format = "json"`: action, status,
site, release, previous, revision, changed, hosts, by, seconds, error, detail, time), or a
Slack-compatible `{"text": ...}` (`format = "slack"`).

A notification never fails or holds up a run beyond `timeout` (default 5 s): the start's
request goes out while the run goes on; the end's waits at most `timeout`. A webhook that is
down, refuses, answers with an error or never answers is reported on one line and the run's
result stays what the hosts made it. The table's keys: KEYS below (docs/configuration.md).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from concurrent.futures import Future
from dataclasses import dataclass

from .engine import events, values
from .engine.component import Component, register
from .engine.events import RunEvent, Say
from .engine.inventory import Inventory, Site
from .engine.keys import ENV_NAME, Key, Keys, choice, integer
from .engine.schema import InventoryError
from .engine.secrets import Secret, redact

USER_AGENT = "djk-notify"


@dataclass(frozen=True)
class Notify:
    url_secret: str = "DEPLOY_WEBHOOK_URL"
    format: str = "json"
    timeout: int = 5


def body(event: RunEvent, form: str) -> bytes:
    """What the webhook receives."""
    data = {
        "kit": "djk",
        "action": event.action,
        "status": event.status,
        "site": event.site.name,
        "release": event.release,
        "previous": event.previous,
        "revision": event.revision,
        "changed": event.changed,
        "hosts": list(event.hosts),
        "by": event.by,
        "seconds": event.seconds,
        "error": event.error,
        "detail": event.detail,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if form == "slack":
        data = {"text": summary(event)}
    return json.dumps(data, sort_keys=True).encode()


def summary(event: RunEvent) -> str:
    """One line for people (Slack's text)."""
    what = f"{event.action} of {event.site.name}"
    if event.detail:
        what += f" from {event.detail}"
    hosts = ", ".join(event.hosts) or "no host"
    text = f"{what} on {hosts} by {event.by} {event.status}"
    if event.release:
        text += f": {event.release}"
        if event.previous and event.previous != event.release:
            text += f" (was {event.previous})"
    if event.status != events.STARTED:
        text += f" in {event.seconds:.0f} s"
    if event.error:
        text += f" — {event.error}"
    return text


def send(url: Secret, data: bytes, timeout: float) -> str:
    """POST the body; "" when the webhook took it (2xx), else what went wrong (the URL masked:
    it is a secret)."""
    import urllib.error  # http.client, ssl and email: only when a webhook is called
    import urllib.request

    request = urllib.request.Request(
        url.reveal(),
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(65536)
            return ""
    except urllib.error.HTTPError as exc:
        return f"answered HTTP {exc.code}"
    except (TimeoutError, OSError) as exc:  # URLError is an OSError; so are socket timeouts
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"no answer within {timeout:g} s"
        return redact(f"unreachable: {reason}", [url])


def in_background(work, timeout: float) -> Future:
    """Run `work()` in a daemon thread (a webhook that never answers must not keep fab alive);
    the Future is done when it ends, or `timeout` + 1 s later at most."""
    future: Future = Future()

    def run() -> None:
        try:
            work()
        finally:
            if not future.done():
                future.set_result(None)

    threading.Thread(target=run, daemon=True).start()

    def give_up_waiting() -> None:
        if not future.done():
            future.set_result(None)

    give_up = threading.Timer(timeout + 1, give_up_waiting)
    give_up.daemon = True
    give_up.start()
    return future


def _check_url(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("is not an http:// or https:// URL")


KEYS = Keys(
    Notify,
    (
        Key(
            "url_secret",
            ENV_NAME,
            "DEPLOY_WEBHOOK_URL",
            "the secret that holds the webhook's URL (never sent to a host)",
        ),
        Key("format", choice("json", "slack"), "json", "the message's shape"),
        Key("timeout", integer(1, 60, "seconds"), 5, "how long a post may take"),
    ),
    help="A webhook told when a deploy, rollback or restore starts and ends (from this machine).",
)


class NotifyComponent(Component):
    name = "notify"
    after = ("hooks",)  # notifications after the hooks (a refusing hook stops the webhook)
    table = "notify"

    keys = KEYS

    def check(self, inventory: Inventory) -> None:
        for site in inventory.sites.values():
            notify = site.part(Notify)
            if notify is None:
                continue
            key = f"sites.{site.name}.notify.url_secret"
            name = notify.url_secret  # a variable name: shown as it is, unless very long
            if len(name) > values.SHOW_LIMIT:
                name = values.show(name)
            if site.needs_secret(notify.url_secret):
                raise InventoryError(
                    inventory.path,
                    key,
                    f"put {name} (the webhook's URL) in the "
                    f"secrets file (sites.{site.name}.env_file)",
                )
            url = site.secrets.get(notify.url_secret)
            if url is not None:
                try:
                    _check_url(url.reveal())
                except ValueError as exc:  # the URL itself is not shown: a secret
                    raise InventoryError(
                        inventory.path, key, f"{name} in the secrets file {exc}"
                    ) from None

    def control_secrets(self, site: Site) -> tuple[str, ...]:
        notify = site.part(Notify)
        return (notify.url_secret,) if notify is not None else ()

    def on_event(self, event: RunEvent, say: Say) -> Future | None:
        notify = event.site.part(Notify)
        url = event.site.secrets.get(notify.url_secret) if notify is not None else None
        if notify is None or url is None:
            return None
        what = f"notify {event.site.name}: webhook ({event.action} {event.status})"
        data = body(event, notify.format)

        def work() -> None:
            problem = send(url, data, notify.timeout)
            if problem:
                say(
                    "failed",
                    f"{what} {problem}; the {event.action} goes on regardless"
                    if event.status == events.STARTED
                    else f"{what} {problem}",
                )
            else:
                say("ok", f"{what} delivered")

        return in_background(work, notify.timeout)


register(NotifyComponent())
