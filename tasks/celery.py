"""Celery for each site: `[sites.<name>.celery]`, worker and beat units on the live release,
warm restarts after a switch, and the check that the broker answers before a switch. The
brokers themselves are host services: Redis (redis.py, `broker = "local"`) and RabbitMQ
(rabbitmq.py)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from .engine import agent, procs, topology
from .engine.cli import run_plans, targets_task, user_error
from .engine.component import Component, HostRun, Phase, register
from .engine.facts import Fact, Unit
from .engine.inventory import Host, Inventory, Site, all_roles
from .engine.keys import BOOL, CLI_OPTION, DOTTED, QUEUE, Key, Keys, Reading, Rule, choice, integer
from .engine.layout import SitePaths
from .engine.render import render
from .engine.schema import InventoryError
from .engine.status import Running, StatusCheck
from .engine.steps import (
    Action,
    Context,
    File,
    Plan,
    Run,
    Service,
    Step,
    UnitStatus,
)
from .release import Job, Target, live_release


@dataclass(frozen=True)
class Celery:
    """Celery for a site: a worker (and optionally beat) on a Redis the kit runs on the host
    (`broker = "local"`) or on the broker URL in the site's secrets (`"external"`)."""

    app: str
    concurrency: int = 2
    queues: tuple[str, ...] = ("celery",)
    options: tuple[str, ...] = ()
    beat: bool = False
    broker: str = "local"
    redis_db: int = 0
    stop_timeout: int = 300


def cycle(site: Site) -> str:
    """Pending-handler name for "restart this site's Celery units" (done after the switch)."""
    return f"cycle-celery:{site.name}"


def units(site: Site, host: Host | None = None) -> list[tuple[str, str, str]]:
    """(role, unit or program, celery subcommand) for the worker and beat of a site."""
    c = site.part(Celery)
    if c is None:
        return []
    paths = SitePaths.of(site, host)
    worker = (
        f"worker --loglevel INFO --concurrency {c.concurrency} --queues {','.join(c.queues)} "
        f"--hostname {site.name}@%H {' '.join(c.options)}"
    ).strip()
    found = [("worker", paths.process("worker"), worker)]
    if c.beat:
        beat = f"beat --loglevel INFO --schedule {paths.shared}/celerybeat-schedule"
        found.append(("beat", paths.process("beat"), beat))
    return found


def _workers(site: Site, host: Host) -> list[str]:
    return [unit for role, unit, _ in units(site, host) if role == "worker"]


# Only the worker has tasks to finish (its warm shutdown, up to [sites.X.celery] stop_timeout);
# beat and Flower stop in a moment, and one that hangs must not hold a reboot that long.
OTHER_STOP_TIMEOUT = 30


def stop_timeout(conf: Celery, role: str) -> int:
    """Seconds the process manager waits for the process to stop before killing it."""
    return conf.stop_timeout if role == "worker" else min(conf.stop_timeout, OTHER_STOP_TIMEOUT)


def unit_files(
    inventory: Inventory,
    site: Site,
    host: Host,
    found: list[tuple[str, str, str]],
    notify: str,
) -> list[Step]:
    """Units (or supervisor programs) running `celery --app APP <command>` as the site user in
    the release `current`."""
    paths = SitePaths.of(site, host)
    manager = paths.procs
    conf = site.need(Celery)
    return [
        File(
            manager.config_path(unit),
            render(
                manager.template("celery"),
                inventory.templates,
                site=site,
                celery=conf,
                paths=paths,
                role=role,
                command=command,
                program=unit,
                stop_timeout=stop_timeout(conf, role),
                after=procs.backing_units(),
            ),
            notify=(*manager.changed(unit), notify),
            name=f"{'program' if procs.is_program(unit) else 'unit'} {unit}",
        )
        for role, unit, command in found
    ]


class Restart(Step):
    """After the switch: every Celery unit runs the wanted release, restarted warmly only when
    its release, unit or env changed; started where it is not running."""

    def __init__(
        self,
        site: Site,
        target: Target,
        found: list[str],
        cycle_name: str,
        label: str = "celery",
        set_current: bool = False,
    ) -> None:
        # On a worker host without the app, no slot switch moves `current`: this step does.
        self.site, self.target, self.set_current = site, target, set_current
        self.paths = SitePaths.of(site)
        self.units, self.cycle = found, cycle_name
        self.id = f"{label}:{site.name}"
        self.name = f"{label} {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [
            WorkingDirs(tuple(self.units)),
            *(Unit(u) for u in self.units),
            *self.target.facts(),
        ]

    def plan(self, ctx: Context) -> Plan:
        try:
            release = self.target.resolve(ctx.facts)
        except LookupError as exc:
            return Plan(error=str(exc))
        want = self.paths.release(release)
        cwd = ctx.facts[WorkingDirs(tuple(self.units))]
        pending = self.cycle in ctx.pending
        changes: list[str] = []
        what = []
        for unit in self.units:
            state = ctx.facts[Unit(unit)]
            if state is None or state.enabled != "enabled":
                changes += procs.enable(unit)
            if state is None or not state.running:
                changes += procs.start(unit)
                what.append(f"start {unit}")
            elif cwd.get(unit) != want or pending:
                # SIGTERM: Celery's warm shutdown; the manager waits for running tasks to end.
                changes += procs.restart(unit)
                what.append(f"restart {unit}")
        if not changes:
            return Plan(reason=f"{', '.join(self.units)} run {want.rsplit('/', 1)[-1]}")
        script = ["set -e"]
        if any(not procs.is_program(u) for u in self.units):
            script.append("systemctl daemon-reload")
        if self.set_current:
            script.append(agent.run("point-current", {"base": self.paths.base, "release": release}))
        script += changes
        consumes = (self.cycle, "daemon-reload")
        return Plan(
            [
                Action(
                    "; ".join(what) or "enable",
                    "\n".join(script),
                    progress="restarting celery (running tasks finish first)",
                    consumes=consumes,
                )
            ]
        )


@dataclass(frozen=True)
class WorkingDirs(Fact[dict]):
    """Each unit's main process's working directory: the release it runs."""

    units: tuple[str, ...]

    def command(self) -> str:
        return "; ".join(
            f"pid=$({procs.main_pid_command(u)}); "
            f"printf '%s|%s\\n' {shlex.quote(u)} \"$(readlink /proc/$pid/cwd 2>/dev/null)\""
            for u in self.units
        )

    def parse(self, rc: int, out: str) -> dict[str, str]:
        found = {}
        for line in out.splitlines():
            unit, _, cwd = line.partition("|")
            found[unit] = cwd.strip()
        return found


class Pause(Step):
    """Before any switch of a deploy that moves the site here to a new release: the old
    release's workers stop taking tasks (Celery's warm shutdown begins; running tasks finish),
    so no task the new release sends reaches old code. Tasks wait in the broker until the
    switch phase starts the workers on the new release; a failed run starts them again on the
    live one (the component's `recover`)."""

    def __init__(self, site: Site, target: Target, workers: list[str]) -> None:
        self.site, self.target, self.workers = site, target, workers
        self.paths = SitePaths.of(site)
        self.id = f"celery-pause:{site.name}"
        self.name = f"celery workers {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [*(Unit(u) for u in self.workers), *self.target.facts()]

    def plan(self, ctx: Context) -> Plan:
        try:
            want = self.target.resolve(ctx.facts)
        except LookupError:
            return Plan(reason="no target release (the switch says why)")
        if want == live_release(ctx.facts, self.paths):
            return Plan(reason=f"{want} is live: they keep taking tasks")
        running = [u for u in self.workers if (st := ctx.facts[Unit(u)]) and st.running]
        if not running:
            return Plan(reason="not running")
        script = []
        for unit in running:
            if procs.is_program(unit):  # supervisor: its stop waits for the warm shutdown
                script.append(f"{procs.SUPERVISORCTL} stop {shlex.quote(unit)} >/dev/null")
            else:  # the stop goes on while the deploy does; the switch phase's start waits
                script.append(f"systemctl stop --no-block {shlex.quote(unit)}")
        return Plan(
            [
                Action(
                    "stop taking tasks until the new release's workers start (running tasks "
                    "finish)",
                    "\n".join(["set -e", *script]),
                )
            ]
        )


def restart_step(run: HostRun, job: Job, site: Site) -> Step:
    found = [unit for _, unit, _ in units(site, run.host)]
    set_current = "app" not in topology.roles(run.host)
    return Restart(site, job.target(site), found, cycle(site), set_current=set_current)


def _external_needs_url(r: Reading) -> None:
    if r.got["broker"] == "external" and r.the_site().needs_secret("CELERY_BROKER_URL"):
        r.fail("broker", 'is "external": put CELERY_BROKER_URL in the env_file secrets')


KEYS = Keys(
    Celery,
    (
        Key("app", DOTTED, help="the module of the Celery app (celery -A)"),
        Key("concurrency", integer(1, 256), 2, "worker processes"),
        Key("queues", QUEUE, ("celery",), "the queues the worker consumes", many=True),
        Key(
            "options",
            CLI_OPTION,
            (),
            "more options of `celery worker`",
            many=True,
            empty=True,
        ),
        Key("beat", BOOL, False, "also run celery beat, beside the worker (schedule in shared/)"),
        Key(
            "broker",
            choice("local", "rabbitmq", "external"),
            "local",
            "Redis on the broker host, RabbitMQ there, or CELERY_BROKER_URL from the secrets",
        ),
        Key("redis_db", integer(0, 15), 0, "the Redis database number (local broker)"),
        Key(
            "stop_timeout",
            integer(10, 3600, "seconds"),
            300,
            "how long a worker gets to finish its tasks when it stops",
        ),
        Rule(
            ("broker", "CELERY_BROKER_URL"),
            _external_needs_url,
            "an external broker's URL is a secret",
        ),
    ),
)


class CeleryComponent(Component):
    """`[sites.<name>.celery]`: worker, beat, and the broker."""

    name = "celery"
    after = ("app",)  # workers after the app
    table = "celery"
    roles = ("worker", "broker")

    def status(self, inventory: Inventory, site: Site, host: Host) -> list[StatusCheck]:
        found = tuple(u for _, u, _ in units(site, host)) if "worker" in host.role_set else ()
        return [Running(found)] if found else []

    keys = KEYS

    def check(self, inventory: Inventory) -> None:
        path = inventory.path
        for site in inventory.sites.values():
            conf = site.part(Celery)
            if conf is None:
                continue
            key = f"sites.{site.name}.hosts"
            having = {r: topology.hosts_with(inventory, site, r) for r in all_roles()}
            if not having["worker"]:
                raise InventoryError(path, key, "[celery] needs a host with the worker role")
            if conf.broker != "local":  # RabbitMQ: rabbitmq.py
                continue
            if not having["broker"]:
                raise InventoryError(
                    path, key, 'celery broker = "local" needs a host with the broker role'
                )
            users = {h.name for h in having["app"] + having["worker"]}
            if users - {having["broker"][0].name} and site.needs_secret("BROKER_PASSWORD"):
                raise InventoryError(
                    path,
                    f"sites.{site.name}.env_file",
                    "the broker serves other hosts: put BROKER_PASSWORD=... in the secrets "
                    "(Redis refuses remote clients without a password)",
                )
            password = site.secrets.get("BROKER_PASSWORD")
            if password is not None and not _BROKER_PASSWORD.fullmatch(password.reveal()):
                raise InventoryError(
                    path,
                    f"sites.{site.name}.env_file",
                    "BROKER_PASSWORD must be 8 to 128 printable ASCII characters without "
                    "spaces, quotes or backslashes (Redis's requirepass reads one word)",
                )
        for host in inventory.hosts:
            owner: dict[int, str] = {}
            for site in inventory.sites.values():
                conf = site.part(Celery)
                if host not in site.hosts or conf is None or conf.broker != "local":
                    continue
                other = owner.setdefault(conf.redis_db, site.name)
                if other != site.name:
                    raise InventoryError(
                        path,
                        f"sites.{site.name}.celery.redis_db",
                        f"redis db {conf.redis_db} is already used by site {other!r} "
                        f"on host {host!r} (each site needs its own)",
                    )

    def env_notify(self, site: Site, host: Host) -> tuple[str, ...]:
        if site.part(Celery) is None or "worker" not in topology.roles(host):
            return ()
        return (cycle(site),)

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        roles = topology.roles(run.host)
        sites = [s for s in run.sites if s.part(Celery) is not None]
        if phase == Phase.STAGE:
            steps: list[Step] = []
            if "worker" in roles:
                for site in sites:
                    found = units(site, run.host)
                    steps += unit_files(run.inventory, site, run.host, found, cycle(site))
            return steps
        if phase == Phase.SWITCH and "worker" in roles and run.job is not None:
            return [restart_step(run, run.job, site) for site in sites]
        if phase == Phase.MIGRATE and "worker" in roles and run.job is not None:
            # After the migrations (the old workers keep working meanwhile), before any switch.
            return [
                Pause(site, run.job.target(site), _workers(site, run.host))
                for site in sites
                if site.name in run.builds
            ]
        return []

    def recover(self, run: HostRun) -> list[Step]:
        if run.job is None or "worker" not in topology.roles(run.host):
            return []
        sites = [s for s in run.sites if s.part(Celery) is not None and s.name in run.builds]
        return [Service(unit) for site in sites for unit in _workers(site, run.host)]


# Redis reads requirepass as one word of redis.conf and Celery takes it inside a URL: printable
# ASCII without spaces, quotes or backslashes is what both carry without escaping rules.
_BROKER_PASSWORD = re.compile(r"[!#-&(-\[\]-~]{8,128}")


register(CeleryComponent())


def _celery_sites(inventory: Inventory, host: Host) -> list[Site]:
    sites = [s for s in inventory.sites_on(host) if s.part(Celery) is not None]
    if not sites:
        raise user_error(f"no site on {host.name!r} has [sites.<name>.celery] in hosts.toml")
    return sites


@targets_task(help={"json_": "print the report as JSON"})
def status(c, json_=False):
    """Show each site's Celery units (worker, beat); exits 1 where one is down."""
    run_plans(
        c,
        lambda inv, host: [
            UnitStatus(unit)
            for site in _celery_sites(inv, host)
            for _, unit, _ in units(site, host)
        ],
        json_=json_,
    )


@targets_task(
    help={
        "site": "only this site",
        "json_": "print the report as JSON",
        "quiet": "print only changes, failures and the recap",
    }
)
def restart(c, site=None, json_=False, quiet=False):
    """Restart the Celery units warmly (running tasks finish first); --site limits to one."""

    def build(inv, host):
        sites = [s for s in _celery_sites(inv, host) if site is None or s.name == site]
        return [
            Run(
                f"celery-restart:{s.name}",
                f"celery restart {s.name}",
                "warm restart",
                "\n".join(["set -e", *(c for _, u, _ in units(s, host) for c in procs.restart(u))]),
            )
            for s in sites
        ]

    run_plans(c, build, json_=json_, quiet=quiet)
