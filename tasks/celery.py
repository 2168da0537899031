"""Celery for each site: worker and beat units on the live release, and the local Redis broker."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from .engine.facts import Fact
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths
from .engine.render import render
from .engine.steps import Action, Context, File, Plan, Run, Service, Step, UnitStatus
from .engine.tasks import run_steps, targets_task, user_error

REDIS_CONF = "/etc/redis/redis.conf"
REDIS_UNIT = "redis-server.service"
LOOPBACK = {"127.0.0.1", "::1", "-::1", "localhost"}


def cycle(site: Site) -> str:
    """Pending-handler name for "restart this site's Celery units" (done after the switch)."""
    return f"cycle-celery:{site.name}"


def broker_url(site: Site) -> str | None:
    if site.celery is None or site.celery.broker != "local":
        return None
    return f"redis://127.0.0.1:6379/{site.celery.redis_db}"


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
    """The local broker listens on loopback only (Debian's default; kept that way)."""

    id = "redis-bind"
    name = "redis bound to loopback"

    def facts(self, diff: bool) -> list[Fact]:
        return [
            Fact(
                "redis-bind",
                f"grep -E '^[[:space:]]*bind[[:space:]]' {REDIS_CONF}",
                lambda rc, out: out.strip() if rc in (0, 1) else None,
            )
        ]

    def plan(self, ctx: Context) -> Plan:
        line = ctx.facts["redis-bind"]
        if line is None:
            return Plan(error=f"{REDIS_CONF} not found: install redis-server (fab provision)")
        addresses = line.split()[1:]
        if addresses and set(addresses) <= LOOPBACK:
            return Plan(reason=line)
        script = (
            f"sed -i '/^[[:space:]]*bind[[:space:]]/d' {REDIS_CONF}\n"
            f"echo 'bind 127.0.0.1 -::1' >> {REDIS_CONF}"
        )
        return Plan(
            [
                Action(
                    f"{line or 'no bind line'} -> bind 127.0.0.1 -::1",
                    script,
                    notify=(f"restart:{REDIS_UNIT}",),
                )
            ]
        )


def broker_steps(sites: list[Site]) -> list[Step]:
    if not any(broker_url(s) for s in sites):
        return []
    return [RedisLoopback(), Service(REDIS_UNIT)]


class Restart(Step):
    """After the switch: every Celery unit runs the wanted release, restarted warmly only when
    its release, unit or env changed; started where it is not running."""

    def __init__(self, site: Site, target: Callable[[Context], str]) -> None:
        self.site, self.target = site, target
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
            want = self.paths.release(self.target(ctx))
        except LookupError as exc:
            return Plan(error=str(exc))
        cwd = ctx.facts[f"cwd:{self.site.name}"]
        pending = cycle(self.site) in ctx.pending
        script = ["set -e", "systemctl daemon-reload"]
        what = []
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
        if len(script) == 2:
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
