"""Celery for each site: worker and beat units on the live release, and the local Redis broker."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from urllib.parse import quote

from .engine.facts import Fact
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths
from .engine.render import render
from .engine.secrets import Secret
from .engine.steps import Action, Context, File, Plan, Run, Service, Step, UnitStatus
from .engine.tasks import run_steps, targets_task, user_error

REDIS_CONF = "/etc/redis/redis.conf"
REDIS_UNIT = "redis-server.service"
LOOPBACK = {"127.0.0.1", "::1", "-::1", "localhost"}


def cycle(site: Site) -> str:
    """Pending-handler name for "restart this site's Celery units" (done after the switch)."""
    return f"cycle-celery:{site.name}"


def broker_url(site: Site, address: str = "127.0.0.1") -> str | None:
    """The kit's Redis as the site's processes reach it (loopback unless on another host, then
    with the site's BROKER_PASSWORD)."""
    if site.celery is None or site.celery.broker != "local":
        return None
    password = site.secrets.get("BROKER_PASSWORD")
    auth = f":{quote(password.reveal(), safe='')}@" if password and address != "127.0.0.1" else ""
    return f"redis://{auth}{address}:6379/{site.celery.redis_db}"


def units(site: Site) -> list[tuple[str, str, str]]:
    """(role, unit, celery subcommand) for each Celery process the site runs."""
    if site.celery is None:
        return []
    c, paths = site.celery, SitePaths.of(site)
    worker = (
        f"worker --loglevel INFO --concurrency {c.concurrency} --queues {','.join(c.queues)} "
        f"--hostname {site.name}@%H {' '.join(c.options)}"
    ).strip()
    found = [("worker", f"djk-{site.name}-worker.service", worker)]
    if c.beat:
        beat = f"beat --loglevel INFO --schedule {paths.shared}/celerybeat-schedule"
        found.append(("beat", f"djk-{site.name}-beat.service", beat))
    if site.flower is not None:
        # Basic auth comes from FLOWER_BASIC_AUTH in the env file, never from this line.
        flower = f"flower --address=127.0.0.1 --port={site.flower.port} --url_prefix=flower"
        found.append(("flower", f"djk-{site.name}-flower.service", flower))
    return found


def unit_files(site: Site) -> list[Step]:
    paths = SitePaths.of(site)
    return [
        File(
            f"/etc/systemd/system/{unit}",
            render("systemd/celery.service.j2", site=site, paths=paths, role=role, command=command),
            notify=("daemon-reload", cycle(site)),
            name=f"unit {unit}",
        )
        for role, unit, command in units(site)
    ]


class RedisLoopback(Step):
    """The local broker listens on loopback only (Debian's default; kept that way), plus the
    host's own address when workers or apps on other hosts use it."""

    id = "redis-bind"
    name = "redis bind"

    def __init__(self, address: str | None = None, password: Secret | None = None) -> None:
        self.address, self.password = address, password

    def facts(self, diff: bool) -> list[Fact]:
        return [
            Fact(
                "redis-bind",
                f"grep -E '^[[:space:]]*bind[[:space:]]' {REDIS_CONF}",
                lambda rc, out: out.strip() if rc in (0, 1) else None,
            ),
            # Only a hash of the password line comes back: it is compared, never shown.
            Fact(
                "redis-auth",
                f"grep -E '^[[:space:]]*requirepass[[:space:]]' {REDIS_CONF} | sha256sum",
                lambda rc, out: out.split()[0] if out.strip() else "",
            ),
        ]

    def plan(self, ctx: Context) -> Plan:
        line = ctx.facts["redis-bind"]
        if line is None:
            return Plan(error=f"{REDIS_CONF} not found: install redis-server (fab provision)")
        addresses = line.split()[1:]
        wanted = "bind 127.0.0.1 -::1" + (f" {self.address}" if self.address else "")
        auth = f"requirepass {self.password.reveal()}\n" if self.password else ""
        auth_hash = hashlib.sha256(auth.encode()).hexdigest()
        if ctx.facts["redis-auth"] == auth_hash or (not auth and not ctx.facts["redis-auth"]):
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
    return [RedisLoopback(address, password if address else None), Service(REDIS_UNIT)]


class Restart(Step):
    """After the switch: every Celery unit runs the wanted release, restarted warmly only when
    its release, unit or env changed; started where it is not running."""

    def __init__(
        self, site: Site, target: Callable[[Context], str], set_current: bool = False
    ) -> None:
        # On a worker host without the app, no slot switch moves `current`: this step does.
        self.site, self.target, self.set_current = site, target, set_current
        self.paths = SitePaths.of(site)
        self.units = [unit for _, unit, _ in units(site)]
        self.unit_names = tuple(self.units)
        self.id = f"celery:{site.name}"
        self.name = f"celery {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        names = " ".join(shlex.quote(u) for u in self.units)
        command = (
            f'for u in {names}; do pid=$(systemctl show -p MainPID --value "$u"); '
            f'printf \'%s|%s\\n\' "$u" "$(readlink /proc/$pid/cwd 2>/dev/null)"; done'
        )
        return [Fact(f"cwd:{self.site.name}", command, _parse_cwd, default={})]

    def plan(self, ctx: Context) -> Plan:
        try:
            release = self.target(ctx)
        except LookupError as exc:
            return Plan(error=str(exc))
        want = self.paths.release(release)
        cwd = ctx.facts[f"cwd:{self.site.name}"]
        pending = cycle(self.site) in ctx.pending
        script = ["set -e", "systemctl daemon-reload"]
        what = []
        if self.set_current:
            script.append(point_current(self.paths, release))
        for unit in self.units:
            state = ctx.facts["units"].get(unit)
            if state is None or state.enabled != "enabled":
                script.append(f"systemctl enable --quiet {unit}")
            if state is None or not state.running:
                script.append(f"systemctl start {unit}")
                what.append(f"start {unit}")
            elif cwd.get(unit) != want or pending:
                # SIGTERM: Celery's warm shutdown; systemd waits for running tasks to finish.
                script.append(f"systemctl restart {unit}")
                what.append(f"restart {unit}")
        if len(script) == 2 + self.set_current:
            return Plan(reason=f"{', '.join(self.units)} run {want.rsplit('/', 1)[-1]}")
        consumes = (cycle(self.site), "daemon-reload")
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


def _parse_cwd(rc: int, out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        unit, _, cwd = line.partition("|")
        found[unit] = cwd.strip()
    return found


def _celery_sites(inventory: Inventory, host: Host) -> list[Site]:
    sites = [s for s in inventory.sites_on(host) if s.celery is not None]
    if not sites:
        raise user_error(f"no site on {host.name!r} has [sites.<name>.celery] in hosts.toml")
    return sites


@targets_task
def status(c, json_=False):
    """Show each site's Celery units (worker, beat, flower); exits 1 where one is down."""
    run_steps(
        c,
        lambda inv, host: [
            UnitStatus(unit) for site in _celery_sites(inv, host) for _, unit, _ in units(site)
        ],
        json_=json_,
    )


@targets_task
def restart(c, site=None, json_=False, quiet=False):
    """Restart the Celery units warmly (running tasks finish first); --site limits to one."""

    def build(inv, host):
        sites = [s for s in _celery_sites(inv, host) if site is None or s.name == site]
        return [
            Run(
                f"celery-restart:{s.name}",
                f"celery restart {s.name}",
                "warm restart",
                "systemctl restart " + " ".join(u for _, u, _ in units(s)),
            )
            for s in sites
        ]

    run_steps(c, build, json_=json_, quiet=quiet)
