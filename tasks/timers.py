"""Periodic jobs: `[sites.<name>.timers.<job>]` (its keys: JOB below, docs/configuration.md).

A job runs in the release `current` points to when it starts, as the site user, with the
site's env file and the release's venv first on PATH. On systemd hosts it is a oneshot service
`djk-<site>-timer_<job>.service` started by a timer unit of the same name (Persistent: a run
missed while the host was down happens at boot); on supervisor hosts a program of that name
in which the host agent waits for each time the schedule names (agent/timer.py). A schedule
is checked by the host's own `systemd-analyze calendar` before any file is written; a job taken
out of hosts.toml (or moved to another host by run_on) is stopped and its files deleted.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

from .engine import agent, procs, topology, values
from .engine.component import Component, HostRun, Phase, register
from .engine.facts import Fact, Facts, Lines, Unit
from .engine.inventory import Host, Inventory, Site
from .engine.keys import Each, Key, Keys, Kind, Reading, Rule, choice, integer
from .engine.layout import SitePaths
from .engine.render import render
from .engine.status import StatusCheck, StatusPart
from .engine.steps import Action, Context, File, Plan, Service, Step

_JOB = re.compile(r"[a-z][a-z0-9-]{0,31}")
# OnCalendar's alphabet: weekdays and month names, digits, * , . / ~ : - and spaces; systemd on
# the host has the last word on what it means.
_SCHEDULE = re.compile(r"[A-Za-z0-9*,./~: +-]{1,100}")
INFIX = "-timer_"  # djk-<site>-timer_<job>: no site name holds "_", so no other site's match


@dataclass(frozen=True)
class Job:
    name: str
    schedule: str
    argv: tuple[str, ...]  # relative to the release: ("manage.py", ...) or ("bin/x", ...)
    manage: bool
    run_on: str = "one"
    timeout: int | None = None


@dataclass(frozen=True)
class Timers:
    jobs: tuple[Job, ...]


def job_name(value: str) -> str:
    if not _JOB.fullmatch(value):
        raise ValueError(
            f"{values.show(value)} is not a job name (a-z, digits, -; starts with a letter; ≤ 32)"
        )
    return value


def schedule(value: str) -> str:
    if not _SCHEDULE.fullmatch(value) or not value.strip():
        raise ValueError(f"{values.show(value)} is not an OnCalendar schedule (man systemd.time)")
    return value.strip()


def _words(value: str) -> tuple[str, ...]:
    try:
        words = tuple(shlex.split(value))
    except ValueError as exc:
        raise ValueError(f"{values.show(value)}: {exc}") from None
    if not words:
        raise ValueError("is empty")
    for word in words:
        # A newline or NUL in a word would end ExecStart= (or supervisor's command=) early,
        # and the rest would become lines of their own; no program takes such an argument.
        if values.has_control(word):
            raise ValueError(f"{values.show(value)}: an argument holds a control character")
    return words


def base_name(site: Site, job: str) -> str:
    return f"djk-{site.name}{INFIX}{job}"


def systemd_quote(word: str) -> str:
    """One word of ExecStart=: double-quoted, with systemd's escapes (\\, ", % and $ taken
    literally)."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def exec_argv(site: Site, job: Job) -> list[str]:
    """The job's command line, absolute (in the release `current` points to)."""
    current = SitePaths.of(site).current
    if job.manage:
        return [f"{current}/.venv/bin/python", *job.argv]
    return [f"{current}/{job.argv[0]}", *job.argv[1:]]


def wanted_here(inventory: Inventory, site: Site, host: Host) -> list[Job]:
    timers = site.part(Timers)
    if timers is None:
        return []
    apps = [h.name for h in topology.hosts_with(inventory, site, "app")]
    if host.name not in apps:
        return []
    return [j for j in timers.jobs if j.run_on == "every" or apps[0] == host.name]


@dataclass(frozen=True)
class Calendar(Fact[str]):
    """The schedule as the host's systemd reads it: its next elapse, or why it cannot."""

    schedule: str
    default: ClassVar[Any] = ""

    def command(self) -> str:
        return (
            f"TZ=UTC systemd-analyze calendar --iterations=1 {shlex.quote(self.schedule)} "
            "2>&1 | sed -n 's/^ *Next elapse: //p; s/^Failed to parse/&/p' || true"
        )

    def parse(self, rc: int, out: str) -> str:
        return out.strip()


class ScheduleCheck(Step):
    """A job's schedule, as the host's systemd reads it, before its files are written."""

    def __init__(self, site: Site, job: Job) -> None:
        self.site, self.job = site, job
        self.id = f"timer-schedule:{site.name}:{job.name}"
        self.name = f"timer {site.name}.{job.name} schedule"

    def facts(self, diff: bool) -> list[Fact]:
        return [Calendar(self.job.schedule)]

    def plan(self, ctx: Context) -> Plan:
        found = ctx.facts[Calendar(self.job.schedule)]
        key = f"sites.{self.site.name}.timers.{self.job.name}.schedule"
        if not found or found.startswith("Failed"):
            return Plan(error=f"{key}: systemd on this host does not read {self.job.schedule!r}")
        return Plan(reason=f"next {found}")


def job_files(inventory: Inventory, site: Site, host: Host, job: Job) -> list[Step]:
    paths = SitePaths.of(site, host)
    base = base_name(site, job.name)
    if procs.of(host).kind == procs.SUPERVISOR:
        spec = {
            "job": job.name,
            "schedule": job.schedule,
            "argv": exec_argv(site, job),
            "current": paths.current,
            "env": paths.env,
            "timeout": job.timeout,
        }
        command = f"python3 {shlex.quote(agent.path())} timer {shlex.quote(_json(spec))}"
        conf = render(
            "supervisor/timer.conf.j2",
            inventory.templates,
            site=site,
            job=job,
            paths=paths,
            program=base,
            command=command,
        )
        return [
            agent.installed(),
            File(
                procs.Manager(procs.SUPERVISOR).config_path(base),
                conf,
                notify=(f"restart:{base}",),
                name=f"program {base}",
            ),
            Service(base),
        ]
    service, timer = f"{base}.service", f"{base}.timer"
    exec_start = " ".join(systemd_quote(w) for w in exec_argv(site, job))
    values_ = dict(site=site, job=job, paths=paths, unit_timer=timer, unit_service=service)
    return [
        File(
            f"{procs.SYSTEMD_DIR}/{service}",
            render(
                "systemd/timer-job.service.j2",
                inventory.templates,
                exec_start=exec_start,
                **values_,
            ),
            notify=("daemon-reload",),
            name=f"unit {service}",
        ),
        File(
            f"{procs.SYSTEMD_DIR}/{timer}",
            render("systemd/timer.timer.j2", inventory.templates, **values_),
            notify=("daemon-reload", f"restart:{timer}"),
            name=f"unit {timer}",
        ),
        Service(timer),
    ]


def _json(spec: dict) -> str:
    """The agent's argument as JSON that supervisor's command= keeps whole: supervisor takes a
    `;` or `#` after white space for the start of a comment (also inside quotes), so each is
    written as JSON's \\u003b or \\u0023, which the agent reads back as it was."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return text.replace(";", "\\u003b").replace("#", "\\u0023")


class Unwanted(Step):
    """Timers of the site the host has and should not (taken out of hosts.toml, moved to
    another host, or of the other process manager): stopped, their files deleted."""

    def __init__(self, site: Site, host: Host, wanted: list[str]) -> None:
        self.site, self.wanted = site, set(wanted)
        self.id = f"timers-unwanted:{site.name}"
        self.name = f"timers {site.name}"

    @property
    def _found(self) -> Lines:
        # The same reading as the site's other processes (supervisor.Leftovers): one fact.
        return Lines(procs.site_processes_command(self.site.name))

    def facts(self, diff: bool) -> list[Fact]:
        return [self._found]

    def plan(self, ctx: Context) -> Plan:
        mine = [n for n in ctx.facts[self._found] if INFIX in n]
        extra = [n for n in mine if n not in self.wanted]
        if not extra:
            return Plan(reason=f"{len(self.wanted)} wanted here, no other")
        # A timer first: it must not start its job while the job's unit goes.
        extra.sort(key=lambda n: (not n.endswith(".timer"), n))
        script = "\n".join(["set -e", *procs.stop_and_remove(extra)])
        return Plan([Action(f"stop and delete {', '.join(extra)}", script)])


@dataclass(frozen=True)
class TimerUnits(Fact[dict]):
    """Timer units: active state, next and last elapse, the last run's result."""

    names: tuple[str, ...]
    default: ClassVar[Any] = {}

    def command(self) -> str:
        units = " ".join(shlex.quote(n) for n in self.names)
        services = " ".join(shlex.quote(n.removesuffix(".timer") + ".service") for n in self.names)
        return (
            "systemctl show -p Id,ActiveState,NextElapseUSecRealtime,LastTriggerUSec,Result "
            f"{units} {services} 2>/dev/null || true"
        )

    def parse(self, rc: int, out: str) -> dict[str, dict]:
        found = {}
        for block in out.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if "Id" in props:
                found[props["Id"]] = props
        return found


@dataclass(frozen=True)
class TimersCheck:
    """`fab status`: each job's timer is active, its next and last run (engine/status.py)."""

    site: Site
    jobs: tuple[Job, ...]
    supervised: bool  # the jobs run as supervisor programs (no systemd timers)

    def _units(self) -> TimerUnits | None:
        if self.supervised or not self.jobs:
            return None
        return TimerUnits(tuple(f"{base_name(self.site, j.name)}.timer" for j in self.jobs))

    def facts(self) -> list[Fact]:
        units = self._units()
        found: list[Fact] = [units] if units is not None else []
        if self.supervised:
            found += [Unit(base_name(self.site, j.name)) for j in self.jobs]
        return found + [Calendar(j.schedule) for j in self.jobs]

    def read(self, facts: Facts, now: float) -> StatusPart:
        part = StatusPart("timers", {})
        units_fact = self._units()
        units = facts[units_fact] if units_fact is not None else {}
        for job in self.jobs:
            base = base_name(self.site, job.name)
            entry: dict[str, Any] = {
                "schedule": job.schedule,
                "next": facts[Calendar(job.schedule)] or None,
            }
            if self.supervised:
                state = facts[Unit(base)]
                entry["active"] = bool(state and state.running)
            else:
                unit = units.get(f"{base}.timer", {})
                service = units.get(f"{base}.service", {})
                entry["active"] = unit.get("ActiveState") == "active"
                entry["next"] = unit.get("NextElapseUSecRealtime") or entry["next"]
                entry["last"] = unit.get("LastTriggerUSec") or None
                entry["last_result"] = service.get("Result") or None
                if entry["last_result"] not in (None, "success"):
                    part.warnings.append(f"timer {job.name}: last run {entry['last_result']}")
            if not entry["active"]:
                part.down.append(f"timer {job.name} not active")
            part.value[job.name] = entry
            active = "active" if entry["active"] else "NOT ACTIVE"
            text = f"{entry['schedule']}: {active}, next {entry['next']}"
            if entry.get("last"):
                text += f", last {entry['last']} ({entry.get('last_result')})"
            part.lines.append((f"timer {job.name}", text))
        return part


JOB_NAME = Kind(
    "job name",
    str,
    "a-z, digits and -, starting with a letter, at most 32",
    job_name,
    samples=("clear", "nightly-2"),
    edges=("Clear", "1x", "a_b", "x" * 33),
)
SCHEDULE = Kind(
    "calendar spec",
    str,
    "systemd's OnCalendar syntax (man systemd.time), checked by the host's own "
    "systemd-analyze calendar",
    schedule,
    samples=("daily", "*-*-* 03:00:00", "Mon *-*-* 04:00"),
    edges=("", "every day!", "daily;x", "x" * 101),
)
WORDS = Kind(
    "shell words",
    str,
    "a command line split as sh splits words (quotes group, no expansion); each word "
    "reaches ExecStart= or supervisor's argv whole",
    _words,
    samples=("clearsessions --verbosity 1", "bin/nightly --all 'a b'"),
    edges=("", "'open", "a ;b", "x\nb", "'%n' '$HOME'"),
)


def _command_or_program(r: Reading) -> None:
    command, program = r.got["command"], r.got["program"]
    if (command is None) == (program is None):
        r.fail("command", "give a manage.py `command` or a `program`, one")
    if program is not None:
        try:
            values.relative_path(program[0])
        except ValueError as exc:
            r.fail("program", f"{exc} (a path in the release)")


JOB = Keys(
    Job,
    (
        Key("command", WORDS, None, "manage.py's arguments"),
        Key("program", WORDS, None, "instead: a program in the release (path, arguments)"),
        Rule(("command", "program"), _command_or_program, "give command or program, one"),
        Key("schedule", SCHEDULE, help="when it runs"),
        Key(
            "run_on",
            choice("one", "every"),
            "one",
            "on the site's first app host, or on every one",
        ),
        Key("timeout", integer(1, 7 * 86400, "seconds"), None, "how long a run may take"),
    ),
    derive={
        "argv": lambda r: (
            ("manage.py", *r.got["command"]) if r.got["command"] else r.got["program"]
        ),
        "manage": lambda r: r.got["command"] is not None,
    },
)
KEYS = Keys(
    Timers,
    (Each("jobs", JOB_NAME, JOB, "One job, run as the site user in the live release."),),
    help="Periodic jobs: systemd timers, or the agent's wait under supervisor.",
)


class TimersComponent(Component):
    name = "timers"
    after = ("flower",)  # the site's jobs once its processes are set
    table = "timers"
    roles = ("app",)

    keys = KEYS

    def status(self, inventory: Inventory, site: Site, host: Host) -> list[StatusCheck]:
        jobs = tuple(wanted_here(inventory, site, host))
        return [TimersCheck(site, jobs, procs.of(host).kind == procs.SUPERVISOR)]

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        # After the switch, in a deploy: a job's new command fires only against the release
        # that has it.
        if phase != Phase.VERIFY or not run.builds or not self.runs_on(run.host):
            return []
        found: list[Step] = []
        for site in run.sites:
            if site.name not in run.builds:
                continue
            jobs = wanted_here(run.inventory, site, run.host)
            names: list[str] = []
            for job in jobs:
                base = base_name(site, job.name)
                if procs.of(run.host).kind == procs.SUPERVISOR:
                    names.append(base)
                else:
                    names += [f"{base}.service", f"{base}.timer"]
                found += [ScheduleCheck(site, job), *job_files(run.inventory, site, run.host, job)]
            found.append(Unwanted(site, run.host, names))
        return found


register(TimersComponent())
