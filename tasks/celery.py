"""Celery for each site: `[sites.<name>.celery]`, worker and beat units on the live release,
warm restarts after a switch, and the local Redis broker on the broker host."""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from .app import Target, live_release
from .engine import procs, topology, values
from .engine.cli import run_plans, targets_task, user_error
from .engine.component import Component, HostRun, Opening, register
from .engine.facts import Fact, Stat, Unit
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths
from .engine.render import render
from .engine.schema import InventoryError, Table
from .engine.secrets import Secret
from .engine.steps import (
    Action,
    ApplyNow,
    Context,
    File,
    Plan,
    Run,
    Service,
    Step,
    UnitStatus,
)

REDIS_CONF = "/etc/redis/redis.conf"
REDIS_UNIT = "redis-server.service"
REDIS_PORT = 6379
LOOPBACK = {"127.0.0.1", "::1", "-::1", "localhost"}


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


def broker_url(site: Site, address: str = "127.0.0.1") -> str | None:
    """The kit's Redis as the site's processes reach it (loopback unless on another host, then
    with the site's BROKER_PASSWORD)."""
    conf = site.part(Celery)
    if conf is None or conf.broker != "local":
        return None
    password = site.secrets.get("BROKER_PASSWORD")
    auth = f":{quote(password.reveal(), safe='')}@" if password and address != "127.0.0.1" else ""
    return f"redis://{auth}{values.url_host(address)}:{REDIS_PORT}/{conf.redis_db}"


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
    conf = site.part(Celery)
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
                after=procs.BACKING_UNITS,
            ),
            notify=(*manager.changed(unit), notify),
            name=f"{'program' if procs.is_program(unit) else 'unit'} {unit}",
        )
        for role, unit, command in found
    ]


class RedisLoopback(Step):
    """The local broker listens on loopback only (Debian's default; kept that way), plus the
    host's own address when workers or apps on other hosts use it."""

    id = "redis-bind"
    name = "redis bind"

    def __init__(self, address: str | None = None, password: Secret | None = None) -> None:
        self.address, self.password = address, password

    def facts(self, diff: bool) -> list[Fact]:
        return [RedisBind(), RedisAuth()]

    def plan(self, ctx: Context) -> Plan:
        line = ctx.facts[RedisBind()]
        if line is None:
            return Plan(error=f"{REDIS_CONF} not found: install redis-server (fab provision)")
        addresses = line.split()[1:]
        wanted = "bind 127.0.0.1 -::1" + (f" {self.address}" if self.address else "")
        auth = f"requirepass {self.password.reveal()}\n" if self.password else ""
        auth_hash = hashlib.sha256(auth.encode()).hexdigest()
        if ctx.facts[RedisAuth()] == auth_hash or (not auth and not ctx.facts[RedisAuth()]):
            if self.address is None and addresses and set(addresses) <= LOOPBACK:
                return Plan(reason=line)
            if self.address is not None and line == wanted:
                return Plan(reason=f"{line}, password set")
        script = (
            f"sed -i '/^[[:space:]]*\\(bind\\|requirepass\\)[[:space:]]/d' {REDIS_CONF}\n"
            f"cat >> {REDIS_CONF}"
        )
        return Plan(
            [
                Action(
                    f"{line or 'no bind line'} -> {wanted}" + (", password" if auth else ""),
                    script,
                    stdin=(wanted + "\n" + auth).encode(),
                    notify=(f"restart:{REDIS_UNIT}",),
                )
            ]
        )


def broker_steps(sites: list[Site], address: str | None = None) -> list[Step]:
    """On a broker host: Redis running, bound to loopback (and `address`, with the sites'
    BROKER_PASSWORD, when other hosts use it)."""
    if not any(broker_url(s) for s in sites):
        return []
    password = next(
        (s.secrets["BROKER_PASSWORD"] for s in sites if "BROKER_PASSWORD" in s.secrets), None
    )
    # A new bind or password is applied here, not after the run: the app and worker hosts'
    # broker check before the switch (BrokerCheck) must find Redis where they will reach it.
    return [
        RedisLoopback(address, password if address else None),
        Service(REDIS_UNIT),
        ApplyNow(REDIS_UNIT),
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
            release = self.target(ctx.facts)
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
            script.append(point_current(self.paths, release))
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


def point_current(paths: SitePaths, release: str) -> str:
    """`current` to a release, renamed over atomically; statuses follow."""
    q = shlex.quote
    return (
        f"old=$(readlink {q(paths.current)} 2>/dev/null | sed 's#^releases/##') || old=''\n"
        f"ln -sfn {q('releases/' + release)} {q(paths.current)}.djk-new\n"
        f"mv -Tf {q(paths.current)}.djk-new {q(paths.current)}\n"
        f"echo live > {q(paths.release(release))}/.djk-status\n"
        f'if [ -n "$old" ] && [ "$old" != {q(release)} ] && [ -d {q(paths.releases)}/"$old" ]; '
        f'then echo previous > {q(paths.releases)}/"$old"/.djk-status; fi'
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


@dataclass(frozen=True)
class RedisBind(Fact[str]):
    """Redis's bind line ("" when there is none; None when the config file is missing)."""

    def command(self) -> str:
        return f"grep -E '^[[:space:]]*bind[[:space:]]' {REDIS_CONF}"

    def parse(self, rc: int, out: str) -> str | None:
        return out.strip() if rc in (0, 1) else None


@dataclass(frozen=True)
class RedisAuth(Fact[str]):
    """Only a hash of Redis's password line comes back: it is compared, never shown."""

    def command(self) -> str:
        return f"grep -E '^[[:space:]]*requirepass[[:space:]]' {REDIS_CONF} | sha256sum"

    def parse(self, rc: int, out: str) -> str:
        return out.split()[0] if out.strip() else ""


def restart_step(run: HostRun, site: Site) -> Step:
    found = [unit for _, unit, _ in units(site, run.host)]
    set_current = "app" not in topology.roles(run.host)
    return Restart(site, run.target(site), found, cycle(site), set_current=set_current)


class CeleryComponent(Component):
    """`[sites.<name>.celery]`: worker, beat, and the broker."""

    name = "celery"
    table = "celery"
    config = Celery
    roles = ("worker", "broker")

    def parse(self, table: Table, site: Site) -> Celery:
        celery = Celery(
            app=table.get("app", str, values.dotted),
            concurrency=table.get("concurrency", int, values.count(1, 256), default=2),
            queues=table.get_list("queues", values.celery_queue, default=("celery",)),
            options=table.get_list("options", values.cli_option, default=(), empty=True),
            beat=table.get("beat", bool, default=False),
            broker=table.get(
                "broker", str, values.choice("local", "rabbitmq", "external"), default="local"
            ),
            redis_db=table.get("redis_db", int, values.count(0, 15), default=0),
            stop_timeout=table.get("stop_timeout", int, values.count(10, 3600), default=300),
        )
        if celery.broker == "external" and site.needs_secret("CELERY_BROKER_URL"):
            table.fail(
                f"{table.key}.broker",
                'is "external": put CELERY_BROKER_URL in the env_file secrets',
            )
        return celery

    def check(self, inventory: Inventory) -> None:
        path = inventory.path
        for site in inventory.sites.values():
            conf = site.part(Celery)
            if conf is None:
                continue
            key = f"sites.{site.name}.hosts"
            having = {r: topology.hosts_with(inventory, site, r) for r in topology.ROLES}
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

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        return ["redis-server"] if _runs_redis(inventory, host) else []

    def host_ports(self, inventory: Inventory, host: Host) -> list[tuple[int, str]]:
        return [(REDIS_PORT, "Redis")] if _runs_redis(inventory, host) else []

    def openings(self, inventory: Inventory, host: Host) -> list[Opening]:
        """Redis on the broker host, for the app and worker hosts of the sites using it."""
        users: list[Host] = []
        for site in _local_broker_sites(inventory):
            if topology.broker_host(inventory, site) == host:
                users += topology.hosts_with(inventory, site, "app")
                users += topology.hosts_with(inventory, site, "worker")
        sources = topology.peers(users, host)
        return [Opening(REDIS_PORT, "Redis", sources)] if sources else []

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        url = broker_url(site, topology.broker_address(inventory, site))
        if url is None:
            return {}
        # It may carry the broker's password: a secret in diffs and reports.
        return {"CELERY_BROKER_URL": Secret(url), "CELERY_RESULT_BACKEND": Secret(url)}

    def env_notify(self, site: Site, host: Host) -> tuple[str, ...]:
        if site.part(Celery) is None or "worker" not in topology.roles(host):
            return ()
        return (cycle(site),)

    def steps(self, phase: str, run: HostRun) -> list[Step]:
        roles = topology.roles(run.host)
        sites = [s for s in run.sites if s.part(Celery) is not None]
        brokered = [s for s in sites if topology.broker_host(run.inventory, s) == run.host]
        brokered = [s for s in brokered if broker_url(s)]
        if phase == "provision":
            return [Service(REDIS_UNIT)] if self.packages(run.inventory, run.host) else []
        if phase == "stage":
            steps: list[Step] = []
            if "worker" in roles:
                for site in sites:
                    found = units(site, run.host)
                    steps += unit_files(run.inventory, site, run.host, found, cycle(site))
            if brokered:
                remote = any(
                    topology.broker_address(run.inventory, s) != "127.0.0.1" for s in brokered
                )
                steps += broker_steps(brokered, run.host.peer_address if remote else None)
            return steps
        if phase == "switch" and "worker" in roles:
            return [restart_step(run, site) for site in sites]
        return []


def _local_broker_sites(inventory: Inventory) -> list[Site]:
    return [s for s in inventory.sites.values() if broker_url(s)]


def _runs_redis(inventory: Inventory, host: Host) -> bool:
    return any(topology.broker_host(inventory, s) == host for s in _local_broker_sites(inventory))


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


# -- the broker, checked before a switch -----------------------------------------------------------

BROKER_PORTS = {"local": (REDIS_PORT, "Redis"), "rabbitmq": (5672, "RabbitMQ")}


@dataclass(frozen=True)
class BrokerUp(Fact[bool]):
    """Whether a TCP connection to the broker opens from this host (within 2 s)."""

    address: str
    port: int
    default: ClassVar[Any] = False

    def command(self) -> str:
        target = f"/dev/tcp/{self.address}/{self.port}"
        return f"timeout 2 bash -c ': < {target}' 2>/dev/null && echo up || echo down"

    def parse(self, rc: int, out: str) -> bool:
        return out.strip() == "up"


class BrokerCheck(Step):
    """Before this host switches a site with Celery to a new release: the site's broker
    answers from here. A broker that is down fails the deploy before the switch, naming it;
    the old release keeps serving."""

    def __init__(self, inventory: Inventory, site: Site, run: HostRun) -> None:
        conf = site.part(Celery)
        self.site, self.run = site, run
        self.port, self.kind = BROKER_PORTS[conf.broker]
        self.address = topology.broker_address(inventory, site)
        self.broker = topology.broker_host(inventory, site)
        self.id = f"broker-check:{site.name}"
        self.name = f"broker of {site.name}"

    @property
    def _up(self) -> BrokerUp:
        return BrokerUp(self.address, self.port)

    def facts(self, diff: bool) -> list[Fact]:
        current = Stat(SitePaths.of(self.site).current)
        return [self._up, *self.run.target(self.site).facts(), current]

    def plan(self, ctx: Context) -> Plan:
        where = f"{self.kind} at {values.url_host(self.address)}:{self.port}"
        if self.broker is not None and self.address != "127.0.0.1":
            where += f" on {self.broker.name}"
        try:
            wanted = self.run.target(self.site)(ctx.facts)
        except LookupError:
            return Plan(reason="no release to switch to")
        if wanted == live_release(ctx.facts, SitePaths.of(self.site)):
            return Plan(reason=f"nothing to switch; {where}")
        if not ctx.facts[self._up]:
            return Plan(
                error=f"the broker of site {self.site.name} ({where}) does not answer from this "
                "host: nothing was switched, the live release keeps serving; start it, then "
                "deploy again"
            )
        return Plan(reason=f"{where} answers")


class BrokerCheckComponent(Component):
    """Runs before the app's switch (its own component, ordered before `app`)."""

    name = "broker-check"

    def steps(self, phase: str, run: HostRun) -> list[Step]:
        if phase != "switch" or run.target is None:
            return []
        roles = topology.roles(run.host)
        if not roles & {"app", "worker"}:
            return []
        return [
            BrokerCheck(run.inventory, site, run)
            for site in run.sites
            if (conf := site.part(Celery)) is not None and conf.broker in BROKER_PORTS
        ]


register(BrokerCheckComponent())
