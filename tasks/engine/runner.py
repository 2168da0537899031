"""Converge hosts: one SSH connection and one fact round trip per host, then steps, then handlers.

Hosts run in parallel threads; each host's steps run in order and stop at the first failure.
Handlers run once at the end; the ones notified by a failed run stay recorded on the host and
run next time.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fabric import Config

from . import facts as F
from .facts import PENDING_FILE, Fact
from .inventory import Host
from .remote import Remote, RemoteError
from .report import HostReport, Reporter, StepResult
from .steps import Action, Context, Step, handler_order, handler_script


@dataclass(frozen=True)
class Mode:
    check: bool = False
    diff: bool = False


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


def converge_host(
    host: Host,
    steps: list[Step],
    mode: Mode,
    reporter: Reporter,
    config: Config | None = None,
    after: Callable[[Remote, HostReport], None] | None = None,
) -> HostReport:
    report = HostReport(host=host.name)
    started = time.monotonic()
    remote = Remote(host, config)
    try:
        remote.open()
        ctx = Context(gather(remote, steps, mode.diff), check=mode.check, diff=mode.diff)
        ctx.pending = list(ctx.facts["pending-handlers"])
        ok = _run_steps(remote, steps, ctx, reporter, report)
        if ok:
            _run_handlers(remote, ctx, reporter, report)
        if ok and after is not None and not report.failed:
            after(remote, report)
    except RemoteError as exc:
        report.error = str(exc)
        reporter.line(host.name, "failed", str(exc))
    finally:
        report.commands, report.bytes_sent = remote.commands, remote.bytes_sent
        report.seconds = time.monotonic() - started
        remote.close()
    return report


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
            result = StepResult(step.name, "failed", plan.error)
            report.steps.append(result)
            reporter.step(host, result)
            continue
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
        if not ctx.check:
            for action in plan.actions:
                error = _apply(remote, action, reporter)
                if error:
                    return _fail(reporter, report, host, step.name, error, steps, index, diff)
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
    for later in steps[index + 1 :]:
        skipped = StepResult(later.name, "skipped", "an earlier step failed")
        report.steps.append(skipped)
        reporter.step(host, skipped)
    return False


def _run_handlers(remote: Remote, ctx: Context, reporter: Reporter, report: HostReport) -> None:
    host = remote.host.name
    for name in sorted(set(ctx.pending), key=handler_order):
        kind, _, unit = name.partition(":")
        clear = (
            f"if [ -f {PENDING_FILE} ]; then grep -vxF -- {shlex.quote(name)} {PENDING_FILE} "
            f"> {PENDING_FILE}.tmp || true; mv -f {PENDING_FILE}.tmp {PENDING_FILE}; fi"
        )
        label = f"handler {name}"
        if kind == "restart" and unit in ctx.started_units:
            if not ctx.check:
                remote.run(clear)
            result = StepResult(label, "ok", "unit was started by this run")
        elif ctx.check:
            result = StepResult(label, "changed", "would run")
        else:
            t0 = time.monotonic()
            # The subshell keeps a handler's own `exit` from skipping the bookkeeping.
            done = remote.run(f"(\n{handler_script(name)}\n) || exit $?\n{clear}")
            status = "changed" if done.ok else "failed"
            detail = "" if done.ok else f"exit {done.rc}: {done.stderr.strip()[-1500:]}"
            result = StepResult(label, status, detail, seconds=time.monotonic() - t0)
        report.steps.append(result)
        reporter.step(host, result)
        if result.status == "failed":
            return


def converge(
    plans: list[tuple[Host, list[Step]]],
    mode: Mode,
    reporter: Reporter,
    config: Config | None = None,
    after: Callable[[Remote, HostReport], None] | None = None,
) -> list[HostReport]:
    """Converge every host in parallel; reports come back in the order the hosts were given."""
    reporter.width = max([8, *(len(h.name) for h, _ in plans)])
    if not plans:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(plans))) as pool:
        futures = [
            pool.submit(converge_host, host, steps, mode, reporter, config, after)
            for host, steps in plans
        ]
        return [f.result() for f in futures]
