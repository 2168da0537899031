"""A release job's share of a host's plan besides its steps: the way back of a failed rolling
switch and what the audit line says of each site."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..engine.component import HostRun, Phase, components
from ..engine.facts import Facts
from ..engine.inventory import Site
from ..engine.layout import SitePaths
from ..engine.report import HostReport
from ..engine.steps import Step
from .outcome import ReleaseMove
from .target import Job, live_release


def phase_steps(phase: Phase, run: HostRun) -> list[Step]:
    return [step for component in components() for step in component.steps(phase, run)]


@dataclass(frozen=True)
class SwitchBack:
    """The revert of a rolling switch (executor.Revert): each site whose release this run
    moved goes back to the one it had when the run started, marked rolled-back."""

    run: HostRun

    def steps(self, facts: Facts) -> list[Step]:
        run, job = self.run, self.run.job
        if job is None:
            return []
        before: dict[str, str] = {}
        for site in run.sites:
            try:
                live = live_release(facts, SitePaths.of(site))
                wanted = job.target(site).resolve(facts)
            except LookupError:  # no target (KeyError too: a host without the site's switch)
                continue
            if live is not None and live != wanted:
                before[site.name] = live
        if not before:
            return []
        back = replace(
            run,
            sites=tuple(s for s in run.sites if s.name in before),
            job=Job.back_to(before, job.builds),
        )
        return phase_steps(Phase.SWITCH, back)


@dataclass(frozen=True)
class ReleaseAudit:
    """A deploy's or rollback's audit line (executor.Audited): each site's live release before
    the run and the one it serves after (the same when the run failed)."""

    sites: tuple[Site, ...]

    def entry(self, facts: Facts | None, report: HostReport) -> dict:
        moved = {m.site: m.after for m in report.outcomes_of(ReleaseMove)}
        found = {}
        for site in self.sites:
            try:
                before = live_release(facts, SitePaths.of(site)) if facts else None
            except KeyError:  # no release here (a host that only holds databases)
                before = None
            after = before if report.failed else moved.get(site.name, before)
            found[site.name] = {"before": before, "after": after}
        return found
