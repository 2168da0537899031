"""`fab status`: what each site is doing on each target host, read in one round trip per host.

Per host and site: the live release and its age, the health answer (through the live slot's
socket on an app host, through nginx on a web host without the app), the live web slot and
its PID, the Celery worker and beat, Flower, the timers (next and last run), the maintenance
page, the certificate's expiry for TLS sites and the last deploy or rollback from the audit
log. `--json` gives the same as data. Exit 1 when something is down: no live release, the live
slot or a worker, beat, Flower or timer not running, a health answer that is not 2xx/3xx, an
expired certificate.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from invoke import Exit

from . import release
from .app import sites_or_exit
from .engine import topology
from .engine.audit import AuditLog
from .engine.cli import run_plans, targets_task
from .engine.component import components
from .engine.facts import Fact, Stat, Unit
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SLOTS, SitePaths
from .engine.outcome import Outcome
from .engine.status import age
from .engine.steps import Context, Plan, Step
from .release import store


@dataclass(frozen=True)
class StatusRow(Outcome):
    """`fab status`: what one site runs on a host (its JSON under `extra.status`)."""

    row: dict[str, Any]
    lines: tuple[tuple[str, str], ...] = ()  # the components' lines of the table (not in JSON)

    def data(self) -> dict[str, Any]:
        return {"status": [self.row]}


@dataclass(frozen=True)
class Health(Fact[dict]):
    """The site's health path as the host answers it: HTTP status and seconds."""

    url: str
    host_header: str
    socket: str = ""  # through this unix socket (the live slot) instead of the network
    https: bool = False
    default: ClassVar[Any] = {}

    def command(self) -> str:
        q = shlex.quote
        args = [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "5",
            "-k",
            "-w",
            q("%{http_code} %{time_total}"),
            "-H",
            q(f"Host: {self.host_header}"),
        ]
        if self.https:
            args += ["-H", q("X-Forwarded-Proto: https")]
        if self.socket:
            args += ["--unix-socket", q(self.socket)]
        return " ".join([*args, q(self.url)]) + " || true"

    def parse(self, rc: int, out: str) -> dict:
        parts = out.split()
        try:
            return {"status": int(parts[0]), "seconds": float(parts[1])}
        except (IndexError, ValueError):
            return {"status": 0, "seconds": 0.0}


def _release_time(release: str) -> float | None:
    try:
        return datetime.strptime(release[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class SiteStatus(Step):
    """Read-only: the site's state on this host; an error when something is down. The release,
    the health answer and the web slot are the release's; every other line is a component's
    (Component.status: processes, timers, the maintenance page, the certificate, ...)."""

    def __init__(self, inventory: Inventory, host: Host, site: Site, now: float) -> None:
        self.inventory, self.host, self.site, self.now = inventory, host, site, now
        self.paths = SitePaths.of(site, host)
        roles = topology.roles(host)
        self.app = "app" in roles
        self.web = "web" in roles
        self.checks = [check for c in components() for check in c.status(inventory, site, host)]
        self.id = f"status:{site.name}"
        self.name = f"status {site.name}"

    # -- what is read --------------------------------------------------------------------------

    def _health(self) -> Health | None:
        gate = release.gate(self.site)
        if self.app:
            return Health(
                f"http://localhost{gate['path']}",
                gate["host"],
                socket=self.paths.live_socket,
                https=gate["https"],
            )
        if self.web:
            base = release.front(self.site)
            return Health(f"{base}{gate['path']}", gate["host"], https=gate["https"])
        return None

    def facts(self, diff: bool) -> list[Fact]:
        found: list[Fact] = [
            Stat(self.paths.current),
            store.Releases(self.paths.base),
            Stat(self.paths.live_socket),
            AuditLog(200),
        ]
        if self.app:
            found += [Unit(self.paths.web_unit(s)) for s in SLOTS]
        health = self._health()
        if health is not None:
            found.append(health)
        return found + [fact for check in self.checks for fact in check.facts()]

    # -- what it says --------------------------------------------------------------------------

    def plan(self, ctx: Context) -> Plan:
        facts, down, warn = ctx.facts, [], []
        row: dict[str, Any] = {"host": self.host.name, "site": self.site.name}
        live = release.live_release(facts, self.paths)
        row["release"] = live
        made = _release_time(live) if live else None
        row["release_age"] = round(self.now - made) if made else None
        if live is None and (self.app or self.web):
            down.append("no live release")
        if self.app:
            slot = release.current_slot(facts, self.paths)
            state = facts[Unit(self.paths.web_unit(slot))] if slot else None
            row["web"] = {
                "slot": slot,
                "pid": state.main_pid if state else 0,
                "running": bool(state and state.running),
            }
            if live is not None and not row["web"]["running"]:
                down.append(f"web slot {slot or '?'} not running")
        health = self._health()
        if health is not None:
            answer = facts[health]
            row["health"] = {"path": release.gate(self.site)["path"], **answer}
            if live is not None and not 200 <= answer.get("status", 0) < 400:
                down.append(f"health answered {answer.get('status') or 'nothing'}")
        row["processes"] = {}
        lines: list[tuple[str, str]] = []
        for check in self.checks:
            part = check.read(facts, self.now)
            if isinstance(part.value, dict) and isinstance(row.get(part.key), dict):
                row[part.key].update(part.value)
            else:
                row[part.key] = part.value
            lines += part.lines
            down += part.down
            warn += part.warnings
        row["last_deploy"] = self._last_deploy(facts)
        row["down"], row["warnings"] = down, warn
        report = (StatusRow(row, tuple(lines)),)
        if down:
            return Plan(error="; ".join(down), outcomes=report)
        return Plan(reason="up" + (f" ({'; '.join(warn)})" if warn else ""), outcomes=report)

    def _last_deploy(self, facts) -> dict | None:
        for entry in reversed(facts[AuditLog(200)]):
            mine = (entry.get("sites") or {}).get(self.site.name)
            if isinstance(mine, dict) and "after" in mine:
                return {
                    "time": entry.get("time"),
                    "by": entry.get("by"),
                    "result": entry.get("result"),
                    "release": mine.get("after"),
                    "command": entry.get("command"),
                }
        return None


def _lines(found: StatusRow) -> list[tuple[str, str]]:
    """The table of one host and site: (label, text)."""
    row = found.row
    rows = []
    live = row.get("release")
    made = f" (made {age(row['release_age'])} ago)" if row.get("release_age") is not None else ""
    rows.append(("release", f"{live}{made}" if live else "none"))
    if "health" in row:
        h = row["health"]
        rows.append(
            (
                "health",
                f"{h.get('status') or 'no answer'} in {h.get('seconds', 0):.2f} s ({h['path']})",
            )
        )
    if "web" in row:
        w = row["web"]
        state = "running" if w["running"] else "NOT RUNNING"
        rows.append(("web", f"slot {w['slot'] or '-'}, pid {w['pid']}, {state}"))
    rows += found.lines
    last = row.get("last_deploy")
    rows.append(
        (
            "last deploy",
            "none recorded"
            if not last
            else f"{last['time']} by {last['by']}: {last['result']} -> {last['release']}",
        )
    )
    for text in row.get("down", []):
        rows.append(("DOWN", text))
    for text in row.get("warnings", []):
        rows.append(("warning", text))
    return rows


@targets_task(help={"json_": "print the state as JSON (the run's report, status under extra)"})
def status(c, json_=False):
    """Show each site's state per host: release, health, processes, timers, TLS, last deploy."""
    now = time.time()
    reports: list = []
    failed = False
    try:
        run_plans(
            c,
            lambda inv, host: [SiteStatus(inv, host, s, now) for s in sites_or_exit(inv, host)],
            json_=json_,
            quiet=True,
            recap=json_,
            collect=reports,
        )
    except Exit as exc:
        if not reports:  # a user error before any host was read
            raise
        failed = bool(exc.code)
    if not json_:
        for report in reports:
            for found in report.outcomes_of(StatusRow):
                print(f"\n{found.row['host']} / {found.row['site']}")
                lines = _lines(found)
                width = max(len(label) for label, _ in lines)
                for label, text in lines:
                    print(f"  {label:<{width}}  {text}")
            if report.error:
                print(f"\n{report.host}: {report.error}")
    if failed:
        raise Exit(code=1)
