"""Converge hosts: one SSH connection and one fact round trip per host, then phases, then handlers.

A run is a list of phases (e.g. stage, migrate, switch). Every host runs a phase in parallel
with the others; the next phase starts when all hosts finished the previous one, and a failure
on any host stops the run before the next phase, so no host switches while another failed to
stage. Handlers run once at the end; the ones notified by a failed run stay recorded on the host
and run next time. The deploy lock is held from the start to the end of the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fabric import Config

from . import facts as F
from .facts import Fact
from .inventory import Host
from .lock import command_line
from .releases import deployer
from .remote import Remote, RemoteError
from .report import HostReport, Reporter, StepResult
from .steps import Action, Context, Step, clear_pending, handler_order, handler_script


@dataclass(frozen=True)
class Mode:
    check: bool = False
    diff: bool = False
    lock_wait: float | None = None  # None: take no deploy lock (read-only commands, check mode)
    batch: str | None = None  # rolling switch: a host count or a percentage ("2", "25%")


@dataclass
class HostPlan:
    host: Host
    phases: list[list[Step]]
    lock_sites: list[str] = field(default_factory=list)
    # The phase that switches hosts to the new release: run in batches, and if a host fails
    # it, the hosts already switched by this run go back (revert builds their steps).
    switch_phase: int | None = None
    revert: Callable[[Context], list[Step]] | None = None


def batches(count: int, spec: str | None) -> list[list[int]]:
    """Host indexes in rolling batches: `spec` is a count ("2") or a percentage ("25%")."""
    if not spec:
        return [list(range(count))] if count else []
    text = spec.strip()
    try:
        if text.endswith("%"):
            size = math.ceil(count * float(text[:-1]) / 100)
        else:
            size = int(text)
    except ValueError:
        raise ValueError(f"--batch {spec!r} is not a host count or a percentage") from None
    if size < 1:
        raise ValueError(f"--batch {spec!r} gives batches of no host")
    return [list(range(i, min(i + size, count))) for i in range(0, count, size)]


@dataclass
class _Session:
    plan: HostPlan
    reporter: Reporter
    remote: Remote
    report: HostReport
    ctx: Context | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.plan.host.name

    @property
    def failed(self) -> bool:
        return self.report.failed


def collect_facts(steps: list[Step], diff: bool) -> tuple[list[Fact], str]:
    """Every fact the steps need, deduplicated, plus one systemctl call for all their units."""
    found: dict[str, Fact] = {}
    unit_names: list[str] = []
    for step in steps:
        for fact in step.facts(diff):
            found.setdefault(fact.key, fact)
        unit_names += [u for u in step.unit_names if u not in unit_names]
    found["pending-handlers"] = F.pending_handlers()
    units_key = ""
    if unit_names:
        unit_fact = F.units(unit_names)
        found[unit_fact.key] = unit_fact
        units_key = unit_fact.key
    return list(found.values()), units_key


def gather(remote: Remote, steps: list[Step], diff: bool) -> dict:
    fact_list, units_key = collect_facts(steps, diff)
    result = remote.run(F.build_script(fact_list))
    if not result.ok:
        raise RemoteError(f"reading the host's state failed: {result.stderr.strip()[-500:]}")
    values = F.parse_all(fact_list, result.stdout)
    values["units"] = values.get(units_key, {}) if units_key else {}
    return values


def _open(session: _Session, mode: Mode) -> None:
    remote = session.remote
    try:
        remote.open()
        if mode.lock_wait is not None and session.plan.lock_sites and not mode.check:
            remote.hold_lock(session.plan.lock_sites, mode.lock_wait, command_line(), deployer())
        steps = [step for phase in session.plan.phases for step in phase]
        session.ctx = Context(gather(remote, steps, mode.diff), check=mode.check, diff=mode.diff)
        session.ctx.pending = list(session.ctx.facts["pending-handlers"])
    except RemoteError as exc:
        session.report.error = str(exc)
        session.reporter.line(session.name, "failed", str(exc))


def _run_phase(session: _Session, steps: list[Step]) -> None:
    try:
        _run_steps(session.remote, steps, session.ctx, session.reporter, session.report)
    except RemoteError as exc:
        session.report.error = str(exc)
        session.reporter.line(session.name, "failed", str(exc))


def _run_steps(
    remote: Remote, steps: list[Step], ctx: Context, reporter: Reporter, report: HostReport
) -> bool:
    host = remote.host.name
    for index, step in enumerate(steps):
        t0 = time.monotonic()
        try:
            plan = step.plan(ctx)
        except Exception as exc:  # a step's own error is reported, not raised as a traceback
            return _fail(reporter, report, host, step.name, f"planning failed: {exc}", steps, index)
        if plan.error:
            if plan.actions:  # a finding with a remedy: apply it, but the run fails
                for action in plan.actions:
                    if not ctx.check:
                        _apply(remote, action, reporter)
            return _fail(reporter, report, host, step.name, plan.error, steps, index)
        if not plan.actions:
            result = StepResult(step.name, "skipped" if plan.skipped else "ok", plan.reason)
            report.steps.append(result)
            reporter.step(host, result)
            continue
        ctx.changed.add(step.id)
        for action in plan.actions:
            ctx.pending += [n for n in action.notify if n not in ctx.pending]
        diff = "".join(a.diff for a in plan.actions)
        detail = "; ".join(a.summary for a in plan.actions)
        for action in plan.actions:
            if not ctx.check:
                error = _apply(remote, action, reporter)
                if error:
                    return _fail(reporter, report, host, step.name, error, steps, index, diff)
            for name in action.consumes:
                if name in ctx.pending:
                    ctx.pending.remove(name)
        result = StepResult(step.name, "changed", detail, diff, time.monotonic() - t0)
        report.steps.append(result)
        reporter.step(host, result)
    return True


def _apply(remote: Remote, action: Action, reporter: Reporter) -> str:
    """Run one action; return an error message, or '' on success."""
    try:
        payload = action.payload()
    except Exception as exc:
        return f"{action.summary}: {exc}"
    if action.progress:
        with reporter.progress(remote.host.name, action.progress) as progress:
            result = remote.run(action.full_script(), stdin=payload, on_line=progress.on_line)
    else:
        result = remote.run(action.full_script(), stdin=payload)
    if result.ok:
        return ""
    tail = (result.stderr.strip() or result.stdout.strip())[-1500:]
    return f"{action.summary}: exit {result.rc}: {tail}"


def _fail(reporter, report, host, name, error, steps, index, diff="") -> bool:
    result = StepResult(name, "failed", error, diff)
    report.steps.append(result)
    reporter.step(host, result)
    _skip(reporter, report, host, steps[index + 1 :], "an earlier step failed")
    return False


def _skip(reporter, report, host, steps, why) -> None:
    for later in steps:
        skipped = StepResult(later.name, "skipped", why)
        report.steps.append(skipped)
        reporter.step(host, skipped)


def _run_handlers(session: _Session) -> None:
    remote, ctx, reporter, report = session.remote, session.ctx, session.reporter, session.report
    host = remote.host.name
    try:
        for name in sorted(set(ctx.pending), key=handler_order):
            kind, _, unit = name.partition(":")
            clear = clear_pending((name,))
            label = f"handler {name}"
            script = handler_script(name)
            if script is None:
                # Done by a step of a full deploy (a slot switch, a Celery restart); it stays
                # pending until one runs.
                result = StepResult(label, "skipped", "left pending for the next deploy")
            elif kind == "restart" and unit in ctx.started_units:
                if not ctx.check:
                    remote.run(clear)
                result = StepResult(label, "ok", "unit was started by this run")
            elif ctx.check:
                result = StepResult(label, "changed", "would run")
            else:
                t0 = time.monotonic()
                # The subshell keeps a handler's own `exit` from skipping the bookkeeping.
                done = remote.run(f"(\n{script}\n) || exit $?\n{clear}")
                status = "changed" if done.ok else "failed"
                detail = "" if done.ok else f"exit {done.rc}: {done.stderr.strip()[-1500:]}"
                result = StepResult(label, status, detail, seconds=time.monotonic() - t0)
            report.steps.append(result)
            reporter.step(host, result)
            if result.status == "failed":
                return
    except RemoteError as exc:
        report.error = str(exc)
        reporter.line(host, "failed", str(exc))


def _parallel(sessions: list[_Session], work: Callable[[_Session], None]) -> None:
    if not sessions:
        return
    if len(sessions) == 1:
        work(sessions[0])
        return
    with ThreadPoolExecutor(max_workers=min(16, len(sessions))) as pool:
        list(pool.map(work, sessions))


def converge(
    plans: list[HostPlan], mode: Mode, reporter: Reporter, config: Config | None = None
) -> list[HostReport]:
    """Converge every host; reports come back in the order the hosts were given."""
    if not plans:
        return []
    reporter.width = max([8, *(len(p.host.name) for p in plans)])
    sessions = [
        _Session(plan, reporter, Remote(plan.host, config), HostReport(host=plan.host.name))
        for plan in plans
    ]
    try:
        _parallel(sessions, lambda s: _open(s, mode))
        phases = max(len(p.phases) for p in plans)
        for index in range(phases + 1):
            broken = [s.name for s in sessions if s.failed]
            if broken:
                why = f"stopped: {', '.join(broken)} failed"
                for s in sessions:
                    rest = [step for phase in s.plan.phases[index:] for step in phase]
                    _skip(reporter, s.report, s.name, rest, why)
                break
            if index == phases:
                _parallel(sessions, _run_handlers)
                break
            if index == plans[0].switch_phase:
                _run_switch(sessions, index, mode, reporter)
            else:
                _parallel(sessions, lambda s, i=index: _run_phase(s, _phase(s.plan, i)))
    finally:
        _parallel(sessions, _close)
    return [s.report for s in sessions]


def _run_switch(sessions: list[_Session], index: int, mode: Mode, reporter: Reporter) -> None:
    """Switch batch after batch; at the first failed batch stop, and send the hosts this run
    already switched back, so every host serves the same release."""
    done: list[_Session] = []
    groups = batches(len(sessions), mode.batch)
    for number, group in enumerate(groups, start=1):
        batch = [sessions[i] for i in group]
        if len(groups) > 1:
            for s in batch:
                reporter.line(s.name, "...", f"switch batch {number}/{len(groups)}")
        _parallel(batch, lambda s: _run_phase(s, _phase(s.plan, index)))
        failed = [s for s in batch if s.failed]
        done += [s for s in batch if not s.failed]
        if failed:
            names = ", ".join(s.name for s in failed)
            rest = [s for g in groups[number:] for s in (sessions[i] for i in g)]
            for s in rest:
                _skip(reporter, s.report, s.name, _phase(s.plan, index), f"stopped: {names} failed")
            if not mode.check:
                _parallel(done, _revert)
            return


def _revert(session: _Session) -> None:
    """Back to the release that was live before this run (facts read afresh: they changed)."""
    if session.plan.revert is None or session.ctx is None:
        return
    steps = session.plan.revert(session.ctx)
    if not steps:
        return
    try:
        ctx = Context(gather(session.remote, steps, False), data=session.ctx.data)
        ctx.pending = list(ctx.facts["pending-handlers"])
        _run_steps(session.remote, steps, ctx, session.reporter, session.report)
    except RemoteError as exc:
        session.report.error = str(exc)
        session.reporter.line(session.name, "failed", f"reverting: {exc}")


def _phase(plan: HostPlan, index: int) -> list[Step]:
    return plan.phases[index] if index < len(plan.phases) else []


def _close(session: _Session) -> None:
    remote = session.remote
    if session.ctx is not None:
        session.report.extra.update(session.ctx.data.get("report", {}))
    session.report.commands, session.report.bytes_sent = remote.commands, remote.bytes_sent
    session.report.seconds = time.monotonic() - session.started
    try:
        remote.close()
    except Exception:  # the connection may already be gone; nothing left to release
        pass
