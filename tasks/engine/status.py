"""`fab status` parts: what a component shows of a site on a host (Component.status).

A check declares the facts it reads (read with every other fact of the host in one round trip)
and turns them into a part: its share of the site's JSON row, its lines in the table, and what
is down (exit 1) or worth a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .facts import Fact, Facts, Unit


@dataclass
class StatusPart:
    key: str  # where it goes in the site's row; tables of one key merge (e.g. "processes")
    value: Any
    lines: list[tuple[str, str]] = field(default_factory=list)  # (label, text) in the table
    down: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class StatusCheck(Protocol):
    def facts(self) -> list[Fact]: ...

    def read(self, facts: Facts, now: float) -> StatusPart: ...


@dataclass(frozen=True)
class Running:
    """Long-lived processes of a site (units or programs): each must be running."""

    names: tuple[str, ...]

    def facts(self) -> list[Fact]:
        return [Unit(name) for name in self.names]

    def read(self, facts: Facts, now: float) -> StatusPart:
        part = StatusPart("processes", {})
        for name in self.names:
            state = facts[Unit(name)]
            running = bool(state and state.running)
            pid = state.main_pid if state else 0
            part.value[name] = {"running": running, "pid": pid}
            part.lines.append((name, f"pid {pid}, running" if running else "NOT RUNNING"))
            if not running:
                part.down.append(f"{name} not running")
        return part


def age(seconds: float) -> str:
    """A duration as people say it: 45s, 12m, 3h, 9d."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
