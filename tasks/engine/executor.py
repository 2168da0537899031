"""The generic executor: phases over hosts, rolling batches, reverts, handlers.

A run is a list of phases per host. Every host runs a phase in parallel with the others; the next
phase starts when all hosts finished the previous one, and a failure on any host stops the run
before the next phase. One SSH connection per host for the whole run; the facts of every phase
are read in one round trip at the start, and read again (one round trip) before a phase only when
this host changed something since they were read. Each phase is planned first (a pure function of
those facts, see steps.plan_phase) and then applied. A phase marked `rolling` runs in batches; if a
host fails it, the hosts that already ran it get the steps of their plan's `revert`, built from the
facts read at the start; once any host failed, every host gets its plan's `recover` steps (what
the run stopped, started again). Holds (e.g. a deploy lock) are taken right after connecting and
kept until the connection closes. Handlers run once at the end; those notified by a failed run
stay recorded on the host and run next time.

The executor knows phases, steps, holds, handlers and outcomes (collected per host, handed to
later phases on every host); what a release or a lock is, it does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from fabric import Config

from . import audit
from . import facts as F
from .facts import Fact, Facts, On, PendingHandlers
from .handlers import handler, handler_order
from .hostinfo import HostInfo, Profile
from .inventory import Host
from .outcome import Outcome
from .remote import Remote, RemoteError, Result
from .report import HostReport, Reporter, StepResult
from .steps import Action, Context, Step, clear_pending, plan_phase


@dataclass(frozen=True)
class Mode:
    check: bool = False
    diff: bool = False
    batch: str | None = None  # rolling phases: a host count or a percentage ("2", "25%")


class Hold(Protocol):
    """Something a run holds on a host from connecting to closing (a deploy lock). Given
    `then`, a script (the run's first reading of the host's state), it may run it once held and
    return its result, sparing the run that command; None: the executor runs it itself."""

    def acquire(self, remote: Remote, then: str | None = None) -> Result | None: ...


class Revert(Protocol):
    """The steps that undo a host's rolling phase, from the facts read at the start."""

    def steps(self, facts: Facts) -> list[Step]: ...


class Audited(Protocol):
    """What the run's audit line says of the sites on a host (release before and after), from
    the facts read at the start and the host's report."""

    def entry(self, facts: Facts | None, report: HostReport) -> dict: ...


@dataclass
class PhaseSteps:
    name: str
    steps: list[Step]
    rolling: bool = False  # in batches; a failed batch sends the hosts that ran it back


@dataclass
class HostPlan:
    host: Host
    phases: list[PhaseSteps]
    holds: list[Hold] = field(default_factory=list)
    revert: Revert | None = None
    audit: Audited | None = None  # None: the run is not audited (a reading)
    # Run on the host when the run failed (after any revert), on facts read then.
    recover: list[Step] = field(default_factory=list)


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
    mode: Mode
    facts: Facts | None = None
    initial: Facts | None = None  # as read at the start, for the revert
    pending: list[str] = field(default_factory=list)
    dirty: bool = False  # applied something since the facts were read
    replan: Callable[[Host, HostInfo], HostPlan] | None = None
    started: float = field(default_factory=time.monotonic)
    # Facts other hosts' steps read from this one (facts.On), read in its first round trip.
    asked: list[Fact] = field(default_factory=list)
    # Values of the On facts this host's steps read from others, once every host was read.
    shared: dict[On, Any] = field(default_factory=dict)
    # The outcomes of the run's earlier phases on every host, as the phase started.
    earlier: tuple[tuple[str, Outcome], ...] = ()

    @property
    def name(self) -> str:
        return self.plan.host.name

    @property
    def failed(self) -> bool:
        return self.report.failed

    def fail(self, error: str, prefix: str = "") -> None:
        self.report.error = error
        self.reporter.line(self.name, "failed", prefix + error)


def _open(session: _Session) -> None:
    remote = session.remote
    try:
        remote.open()
        wanted = _wanted_facts(session)
        first: Result | None = None
        if not session.mode.check:
            holds = session.plan.holds
            for index, hold in enumerate(holds):
                last = index == len(holds) - 1
                first = hold.acquire(remote, F.build_script(wanted) if last else None)
        facts = remote.gather(wanted, first)
        found = facts.get(Profile())
        session.report.host_info = found
        if found is not None and found != session.plan.host.info:
            # The plan was built from what the host was last time (or a guess, for a host never
            # seen): build it again from what it is now, before anything is changed. Its holds
            # are the same sites' locks, already held.
            if not _replan(session, found):
                return
            facts = _gather_all(session)
        session.facts = session.initial = facts
        session.pending = list(facts[PendingHandlers()])
    except RemoteError as exc:
        session.fail(str(exc))


def _wanted_facts(session: _Session) -> list[Fact]:
    steps = [step for phase in session.plan.phases for step in phase.steps]
    return _facts_of(steps, session.mode.diff) + session.asked + [PendingHandlers(), Profile()]


def _gather_all(session: _Session) -> Facts:
    return session.remote.gather(_wanted_facts(session))


def _replan(session: _Session, found: HostInfo) -> bool:
    if session.replan is None:
        return True
    try:
        session.plan = session.replan(session.plan.host, found)
    except Exception as exc:  # a user error of the new plan: this host goes no further
        session.fail(str(exc))
        return False
    return True


def _facts_of(steps: list[Step], diff: bool) -> list:
    """The facts the steps read on their own host (facts.On ones are read on another)."""
    return [fact for step in steps for fact in step.facts(diff) if not isinstance(fact, On)]


def _on_facts(plan: HostPlan) -> list[On]:
    steps = [step for phase in plan.phases for step in phase.steps]
    return [fact for step in steps for fact in step.facts(False) if isinstance(fact, On)]


def _share(sessions: list[_Session]) -> None:
    """Each host's steps get the On facts they read from other hosts of the run (the default of
    the fact where that host is not in the run or could not be read)."""
    by_name = {s.name: s for s in sessions}
    for session in sessions:
        if session.facts is None:
            continue
        for on in _on_facts(session.plan):
            other = by_name.get(on.host)
            found = other.facts if other is not None else None
            session.shared[on] = found[on.fact] if found is not None else on.fact.default
        session.facts = session.facts.with_values(session.shared)
        session.initial = session.facts


def _run_phase(session: _Session, index: int) -> None:
    phase = _phase(session.plan, index)
    if phase is None or not phase.steps:
        return
    try:
        if session.dirty and not session.mode.check:
            # Everything read before this host changed is stale: this phase's facts and every
            # later phase's are read again, in one round trip.
            rest = [step for later in session.plan.phases[index:] for step in later.steps]
            read = session.remote.gather(_facts_of(rest, session.mode.diff))
            session.facts = read.with_values(session.shared)
            session.dirty = False
        assert session.facts is not None  # _open read them, else the run stopped
        _run_steps(session, phase.steps, session.facts)
    except RemoteError as exc:
        session.fail(str(exc))


def _run_steps(session: _Session, steps: list[Step], facts: Facts) -> bool:
    reporter, report, host = session.reporter, session.report, session.name
    check = session.mode.check
    ctx = Context(facts, frozenset(session.pending), session.mode.diff, session.earlier)
    planned = plan_phase(steps, ctx)
    for index, (step, plan) in enumerate(planned):
        t0 = time.monotonic()
        report.outcomes.extend(plan.outcomes)
        if plan.error:
            for action in plan.actions:  # a finding with a remedy: apply it, the run fails
                if not check:
                    _apply(session, action, [])
            return _fail(session, step.name, plan.error, planned[index + 1 :])
        if not plan.actions:
            result = StepResult(step.name, "skipped" if plan.skipped else "ok", plan.reason)
            report.steps.append(result)
            reporter.step(host, result)
            continue
        diff = "".join(a.diff for a in plan.actions)
        notes: list[str] = []
        for action in plan.actions:
            session.pending += [n for n in action.notify if n not in session.pending]
            if not check:
                error = _apply(session, action, notes)
                if error:
                    return _fail(session, step.name, error, planned[index + 1 :], diff)
            session.pending = [n for n in session.pending if n not in action.consumes]
        detail = "; ".join([a.summary for a in plan.actions] + notes)
        result = StepResult(step.name, "changed", detail, diff, time.monotonic() - t0)
        report.steps.append(result)
        reporter.step(host, result)
    return True


def _apply(session: _Session, action: Action, notes: list[str]) -> str:
    """Run one action; return an error message, or '' on success (then what its output says
    goes to `notes` and the host's report)."""
    remote, reporter = session.remote, session.reporter
    session.dirty = True
    try:
        payload = action.payload()
    except Exception as exc:
        return f"{action.summary}: {exc}"
    if action.kind:
        kinds = session.report.bytes_by_kind
        kinds[action.kind] = kinds.get(action.kind, 0) + len(payload)
    if action.progress:
        with reporter.progress(remote.host.name, action.progress, action.echo) as progress:
            result = remote.run(action.full_script(), stdin=payload, on_line=progress.on_line)
    else:
        result = remote.run(action.full_script(), stdin=payload)
    if result.ok:
        if action.findings is not None:
            note, outcome = action.findings.read(result.stdout)
            if note:
                notes.append(note)
            if isinstance(outcome, tuple):
                session.report.outcomes.extend(outcome)
            elif outcome is not None:
                session.report.outcomes.append(outcome)
        return ""
    tail = (result.stderr.strip() or result.stdout.strip())[-1500:]
    return f"{action.summary}: exit {result.rc}: {tail}"


def _fail(session: _Session, name: str, error: str, rest: list, diff: str = "") -> bool:
    result = StepResult(name, "failed", error, diff)
    session.report.steps.append(result)
    session.reporter.step(session.name, result)
    _skip(session, [step for step, _ in rest], "an earlier step failed")
    return False


def _skip(session: _Session, steps: list[Step], why: str) -> None:
    for later in steps:
        skipped = StepResult(later.name, "skipped", why)
        session.report.steps.append(skipped)
        session.reporter.step(session.name, skipped)


def _run_handlers(session: _Session) -> None:
    remote, reporter, report = session.remote, session.reporter, session.report
    try:
        for name in sorted(set(session.pending), key=handler_order):
            label = f"handler {name}"
            found = handler(name)
            if found is None:
                # Done by a step of a full deploy (a slot switch, a Celery restart); it stays
                # pending until one runs.
                result = StepResult(label, "skipped", "left pending for the next deploy")
            elif session.mode.check:
                result = StepResult(label, "changed", "would run")
            else:
                t0 = time.monotonic()
                script, stdin = found
                # The subshell keeps a handler's own `exit` from skipping the bookkeeping.
                done = remote.run(
                    f"(\n{script}\n) || exit $?\n{clear_pending((name,))}", stdin=stdin
                )
                status = "changed" if done.ok else "failed"
                detail = "" if done.ok else f"exit {done.rc}: {done.stderr.strip()[-1500:]}"
                result = StepResult(label, status, detail, seconds=time.monotonic() - t0)
            report.steps.append(result)
            reporter.step(session.name, result)
            if result.status == "failed":
                return
    except RemoteError as exc:
        session.fail(str(exc))


def _parallel(sessions: list[_Session], work: Callable[[_Session], None]) -> None:
    if not sessions:
        return
    if len(sessions) == 1:
        work(sessions[0])
        return
    with ThreadPoolExecutor(max_workers=min(16, len(sessions))) as pool:
        list(pool.map(work, sessions))


def _phase(plan: HostPlan, index: int) -> PhaseSteps | None:
    return plan.phases[index] if index < len(plan.phases) else None


def converge(
    plans: list[HostPlan],
    mode: Mode,
    reporter: Reporter,
    config: Config | None = None,
    connect: Callable[[Host, Config | None], Remote] = Remote,
    replan: Callable[[Host, HostInfo], HostPlan] | None = None,
) -> list[HostReport]:
    """Converge every host; reports come back in the order the hosts were given. A host whose
    profile (hostinfo.Profile, read in the first round trip) differs from the one its plan was
    built from gets its plan built again with `replan`."""
    if not plans:
        return []
    reporter.width = max([8, *(len(p.host.name) for p in plans)])
    sessions = [
        _Session(
            plan,
            reporter,
            connect(plan.host, config),
            HostReport(plan.host.name),
            mode,
            replan=replan,
        )
        for plan in plans
    ]
    asked: dict[str, list[Fact]] = {}
    for plan in plans:
        for on in _on_facts(plan):
            if on.fact not in asked.setdefault(on.host, []):
                asked[on.host].append(on.fact)
    for session in sessions:
        session.asked = asked.get(session.name, [])
    try:
        _parallel(sessions, _open)
        _share(sessions)
        count = max(len(p.phases) for p in plans)
        for index in range(count + 1):
            broken = [s.name for s in sessions if s.failed]
            if broken:
                why = f"stopped: {', '.join(broken)} failed"
                for s in sessions:
                    _skip(s, [st for ph in s.plan.phases[index:] for st in ph.steps], why)
                if not mode.check:
                    _parallel([s for s in sessions if s.plan.recover], _recover)
                break
            if index == count:
                _parallel(sessions, _run_handlers)
                break
            earlier = tuple((s.name, o) for s in sessions for o in s.report.outcomes)
            for s in sessions:
                s.earlier = earlier
            first = _phase(plans[0], index)
            if first is not None and first.rolling:
                _run_rolling(sessions, index, mode, reporter)
            else:
                _parallel(sessions, partial(_run_phase, index=index))
    finally:
        _parallel(sessions, _close)
    return [s.report for s in sessions]


def _run_rolling(sessions: list[_Session], index: int, mode: Mode, reporter: Reporter) -> None:
    """Batch after batch; at the first failed batch stop, and send the hosts this run already
    took through the phase back, so every host ends in the same state."""
    done: list[_Session] = []
    groups = batches(len(sessions), mode.batch)
    for number, group in enumerate(groups, start=1):
        batch = [sessions[i] for i in group]
        if len(groups) > 1:
            for s in batch:
                phase = _phase(s.plan, index)
                label = f"{phase.name} batch" if phase else "batch"
                reporter.line(s.name, "...", f"{label} {number}/{len(groups)}")
        _parallel(batch, lambda s: _run_phase(s, index))
        failed = [s for s in batch if s.failed]
        done += [s for s in batch if not s.failed]
        if failed:
            names = ", ".join(s.name for s in failed)
            for s in (sessions[i] for g in groups[number:] for i in g):
                phase = _phase(s.plan, index)
                _skip(s, phase.steps if phase else [], f"stopped: {names} failed")
            if not mode.check:
                _parallel(done, _revert)
            return


def _revert(session: _Session) -> None:
    """The plan's revert, from the facts read at the start; its own facts are read afresh."""
    if session.plan.revert is None or session.initial is None:
        return
    steps = session.plan.revert.steps(session.initial)
    if not steps:
        return
    try:
        facts = session.remote.gather(_facts_of(steps, False)).with_values(session.shared)
        _run_steps(session, steps, facts)
    except RemoteError as exc:
        session.fail(str(exc), prefix="reverting: ")


def _recover(session: _Session) -> None:
    """A failed run's recovery on one host: its steps on facts read now."""
    steps = session.plan.recover
    try:
        facts = session.remote.gather(_facts_of(steps, False)).with_values(session.shared)
        _run_steps(session, steps, facts)
    except RemoteError as exc:
        session.reporter.line(session.name, "failed", f"recovering: {exc}")


def _close(session: _Session) -> None:
    remote = session.remote
    last = b""
    try:
        last = _audit(session)
    except Exception as exc:  # the audit line must not turn a run's result around
        session.reporter.line(session.name, "...", f"audit log not written: {exc}")
    session.report.commands, session.report.bytes_sent = remote.commands, remote.bytes_sent
    session.report.seconds = time.monotonic() - session.started
    try:
        remote.close(last)
    except Exception:  # the connection may already be gone; nothing left to release
        pass


def _audit(session: _Session) -> bytes:
    """The host's audit line: handed to the lock's keeper as it lets go (returned), or, for a
    run that holds nothing here, appended now with one command."""
    plan, report = session.plan, session.report
    if plan.audit is None or session.mode.check or session.facts is None:
        return b""
    result = "failed" if report.failed else "ok"
    entry = audit.record(
        session.name,
        audit.key_fingerprint(session.remote.conn),
        result,
        plan.audit.entry(session.initial, report),
        report.error or "",
    )
    report.outcomes.append(audit.AuditLine(entry))  # what the run's end tells (events.py)
    if session.remote.holding:
        return b"AUDIT " + audit.line(entry)
    session.remote.run(audit.APPEND, stdin=audit.line(entry))
    return b""
