"""A run's life as components hear it: a deploy, rollback or restore starts, then succeeds or
fails — once per site it concerns, on the control machine. Local hooks and notifications are
components listening here (`Component.on_event`); the tasks announce, the engine knows no
listener.

A listener that refuses a start (`Refused`: a local before-deploy hook failed) stops the run
before any host is touched. Work a listener may do in the background while the run goes on
(a webhook's request) comes back as a Future; it is waited for before the run's end is
announced, so no message overtakes the other.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from invoke import Exit

from . import audit
from .values import escape

if TYPE_CHECKING:
    from .inventory import Host, Inventory, Site
    from .report import HostReport

STARTED, SUCCEEDED, FAILED = "started", "succeeded", "failed"


class Refused(Exception):
    """A listener stops the run at its start; the message says why."""


class Failed(Exception):
    """A listener's own work failed at the run's end (a local after-deploy hook): reported,
    and fab's exit code says so; the other listeners still hear the end."""


@dataclass(frozen=True)
class RunEvent:
    action: str  # deploy, rollback, restore
    status: str  # started, succeeded, failed
    site: Site
    inventory: Inventory
    hosts: tuple[str, ...]  # the site's hosts this run touches
    release: str = ""  # what the site goes to ("" when not known yet: a rollback's start)
    previous: str = ""  # what it served before ("" until the run has read it)
    revision: str = ""
    changed: bool = True  # False: the run found nothing to change for the site
    by: str = ""
    seconds: float = 0.0
    error: str = ""
    detail: str = ""  # e.g. a restore's backup id

    @property
    def env(self) -> dict[str, str]:
        """What hooks get in their environment."""
        return {
            "DJK_ACTION": self.action,
            "DJK_SITE": self.site.name,
            "DJK_RELEASE": self.release,
            "DJK_PREVIOUS": self.previous,
            "DJK_REVISION": self.revision,
            "DJK_HOSTS": ",".join(self.hosts),
            "DJK_USER": self.by,
            "DJK_STATUS": self.status,
        }


Say = Callable[[str, str], None]  # (status, text): one line of the run's output


def printer(json_mode: bool) -> Say:
    """Lines named `local` (the control machine), on stdout — on stderr when stdout is the
    run's JSON report."""
    out = sys.stderr if json_mode else sys.stdout

    def say(status: str, text: str) -> None:
        print(f"{'local':<8} | {status:<7} | {escape(text)}", file=out, flush=True)

    return say


@dataclass
class Announcer:
    """One run's events, site by site."""

    action: str
    inventory: Inventory
    sites: list[Site]
    hosts: dict[str, tuple[str, ...]]  # site -> its hosts in this run
    releases: dict[str, str] = field(default_factory=dict)  # known at the start (a deploy's)
    revisions: dict[str, str] = field(default_factory=dict)
    detail: str = ""
    say: Say = field(default_factory=lambda: printer(False))
    started_at: float = field(default_factory=time.monotonic)
    pending: list[Future] = field(default_factory=list)

    def event(self, site: Site, status: str, **values) -> RunEvent:
        return RunEvent(
            self.action,
            status,
            site,
            self.inventory,
            self.hosts.get(site.name, ()),
            release=self.releases.get(site.name, ""),
            revision=self.revisions.get(site.name, ""),
            by=audit.who(),
            detail=self.detail,
            **values,
        )

    def start(self) -> None:
        """Raises Refused when a listener stops the run."""
        from .component import components

        self.started_at = time.monotonic()
        for site in self.sites:
            event = self.event(site, STARTED)
            for component in components():
                found = component.on_event(event, self.say)
                if found is not None:
                    self.pending.append(found)

    def finish(self, reports: Iterable[HostReport], error: str = "") -> list[str]:
        """After the run: each site succeeded or failed, with what the hosts' reports say.
        What listeners failed to do (events.Failed)."""
        from .component import components

        problems: list[str] = []
        for future in self.pending:
            future.result()  # bounded by each listener's own timeout
        reports = list(reports)
        seconds = round(time.monotonic() - self.started_at, 1)
        for site in self.sites:
            mine = [r for r in reports if r.host in self.hosts.get(site.name, ())]
            failed = bool(error) or any(r.failed for r in mine) or not mine
            known = _releases(site.name, mine)
            if failed:  # the release it tried stays named; what it served before is known
                known = {"previous": known["previous"]} if known else {}
            event = replace(
                self.event(site, FAILED if failed else SUCCEEDED),
                seconds=seconds,
                error=(error or _errors(mine)) if failed else "",
                **known,
            )
            for component in components():
                try:
                    work = component.on_event(event, self.say)
                except Failed as exc:
                    problems.append(str(exc))
                    continue
                if work is not None:
                    work.result()
        return problems


# How much of a failure a notification carries: per host, and in all.
CAUSE_LIMIT, ERRORS_LIMIT = 300, 1000


def _errors(reports: list[HostReport]) -> str:
    """What failed, host by host, each led by its cause: the last line of what the failed step
    said (a remote command's output ends with its error; the health gate's with the sentence
    naming the app's exception, after the log lines it shows)."""
    found = []
    for r in reports:
        if r.error:
            found.append(f"{r.host}: {_cut(_last_line(r.error), CAUSE_LIMIT)}")
            continue
        failed = [s for s in r.steps if s.status == "failed"]
        if failed:
            cause = _cut(_last_line(failed[0].detail), CAUSE_LIMIT)
            found.append(f"{r.host}: {failed[0].step}: {cause}")
    return _cut("; ".join(found), ERRORS_LIMIT)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _releases(site: str, reports: list[HostReport]) -> dict:
    """Release before and after, from the audit entries the hosts' runs recorded."""
    for r in reports:
        lines = r.outcomes_of(audit.AuditLine)
        entry = lines[-1].site(site) if lines else None
        if isinstance(entry, dict) and "after" in entry:
            before, after = entry.get("before") or "", entry.get("after") or ""
            return {"previous": before, "release": after, "changed": before != after}
    return {}


def announcer(
    action: str,
    inventory: Inventory,
    targets: list[Host],
    json_: bool,
    check: bool,
    only: str | None = None,
    detail: str = "",
) -> Announcer | None:
    """The run's events for the sites of the targets (none in check mode: nothing happens)."""
    if check:
        return None
    sites = {s.name: s for h in targets for s in inventory.sites_on(h)}
    if only is not None:
        sites = {only: sites[only]} if only in sites else {}
    hosts = {
        name: tuple(h.name for h in targets if name in {s.name for s in inventory.sites_on(h)})
        for name in sites
    }
    return Announcer(
        action, inventory, list(sites.values()), hosts, detail=detail, say=printer(json_)
    )


def announced_run(announced: Announcer | None, run) -> list:
    """`run(collect)` between the announcements of its start and its end: a refused start
    touches nothing (exit 1); a listener failing at the end fails fab after the others heard."""
    if announced is None:
        return run(None)
    try:
        announced.start()
    except Refused as exc:
        raise Exit(f"error: {escape(str(exc))}", code=1) from None
    collect: list = []
    try:
        reports = run(collect)
    except Exit:
        announced.finish(collect, error="" if collect else "the run stopped before any host")
        raise
    except BaseException as exc:
        announced.finish(collect, error=f"the run stopped: {type(exc).__name__}")
        raise
    problems = announced.finish(collect)
    if problems:
        raise Exit(code=1)
    return reports
