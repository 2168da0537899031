"""Handlers: what a run does once, after its steps, for what they notified (daemon-reload,
restart:UNIT, reload:UNIT). A handler notified by a failed run stays recorded on the host and
runs next time (steps.PENDING_FILE)."""

from __future__ import annotations

import shlex

from . import agent, procs


def handler(name: str) -> tuple[str, bytes] | None:
    """What a handler runs, and its stdin; None for the ones only a deploy step does
    (cycle:SITE, cycle-celery:SITE)."""
    if name == "daemon-reload":
        return "systemctl daemon-reload", b""
    kind, _, unit = name.partition(":")
    if kind == "restart":
        return "\n".join(["set -e", *procs.restart(unit)]), b""
    if kind == "reload" and unit == "nginx.service":
        # The host agent validates the whole configuration, reloads and waits until only
        # workers of the new one listen (agent/system.nginx_reload); it comes along on stdin
        # where this version is not on the host yet.
        return agent.carried("nginx-reload", "{}"), agent.carried_head()
    if kind == "reload":
        return f"systemctl reload-or-restart {shlex.quote(unit)}", b""
    return None


def handler_order(name: str) -> tuple[int, str]:
    kind = name.partition(":")[0]
    return ({"daemon-reload": 0, "restart": 1, "reload": 2}.get(kind, 3), name)
