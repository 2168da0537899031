"""The main jobs, composed from the registered components: deploy, rollback, releases.

`compose` asks every component for its steps on a host, phase by phase: stage (every host),
migrate (before any switch), switch (rolling, in batches) and verify. The executor runs the
phases; which release a site switches to is each component's pure function of the facts.
"""

from __future__ import annotations

import time

from . import database, release
from .app import sites_or_exit
from .engine import events, kept, topology
from .engine.cli import (
    load_inventory,
    run_plans,
    site_named,
    target_hosts,
    targets_task,
    user_error,
)
from .engine.component import HostRun, Phase, RunOptions, components
from .engine.executor import HostPlan, PhaseSteps
from .engine.facts import Fact, Stat
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths
from .engine.remote import Remote, RemoteError
from .engine.source import SourceError
from .engine.steps import Context, Plan, Step

# backup: where the database is, before the migrations (db.py).
DEPLOY_PHASES = (
    Phase.STAGE,
    Phase.BACKUP,
    Phase.MIGRATE,
    Phase.SWITCH,
    Phase.VERIFY,
    Phase.CONTRACT,
)
ROLLBACK_PHASES = (Phase.RESTORE, Phase.SWITCH, Phase.VERIFY)
ROLLING = Phase.SWITCH


def holds(run: HostRun) -> list:
    return [hold for component in components() for hold in component.holds(run)]


def compose(run: HostRun, phases: tuple[Phase, ...]) -> HostPlan:
    """A host's plan: every component's steps for each phase, the holds, the revert of the
    rolling phase (back to the release each site had when the run started) and the audit."""
    return HostPlan(
        run.host,
        [PhaseSteps(p, release.phase_steps(p, run), rolling=p == ROLLING) for p in phases],
        holds=holds(run),
        revert=release.SwitchBack(run) if ROLLING in phases else None,
        audit=release.ReleaseAudit(run.sites),
        recover=[step for component in components() for step in component.recover(run)],
    )


@targets_task(
    default=False,
    help={
        "check": "change nothing on the hosts; report what would change",
        "diff": "show a unified diff of every file that changes (secrets masked)",
        "json_": "print only a JSON report",
        "quiet": "print only changes, failures and the recap",
        "wait": "seconds to wait for another run's deploy lock (default: fail at once)",
        "batch": "switch hosts in rolling batches of N or P%",
        "ref": "ship the source at this git ref (default: HEAD, refused when tracked files "
        "have uncommitted changes)",
        "allow_dirty": "ship uncommitted changes of tracked files (the release id says -dirty)",
        "maintenance": "migrate as Django writes them behind the maintenance page (503 + "
        "Retry-After) from the backup to the switch: for a change no split makes safe",
    },
)
def deploy(
    c,
    check=False,
    diff=False,
    json_=False,
    quiet=False,
    wait=0,
    batch=None,
    ref=None,
    allow_dirty=False,
    maintenance=False,
):
    """Deploy every site of the target hosts (-H host, group, alias or address).

    Stages a new release (one id for all hosts), migrates once, then switches each host after
    a health check. --check changes nothing and reports what would change; --diff shows file
    diffs with secrets masked; --json prints the report as JSON; --quiet prints only changes,
    failures and the recap; --wait SECONDS waits for another deploy's lock instead of failing;
    --batch N or --batch P% switches the hosts in rolling batches and stops at the first failed
    batch (hosts already switched go back, so all serve one release). From a git repository
    the tracked files at --ref (default HEAD) are shipped; uncommitted changes are refused
    unless --allow-dirty. Migrations are split around the switch (docs/stack.md, "Schema
    changes"); --maintenance runs them all before it, behind the maintenance page.
    """
    inventory = load_inventory(c)
    now = time.time()
    targets = target_hosts(c, inventory)
    reached = database.reached_db_hosts(inventory, targets)
    # Before the builds: they carry the sites as the plans see them.
    inventory = with_kept_secrets(c, inventory, targets, create=not check)
    builds = new_builds(inventory, targets, now, ref, allow_dirty)
    names = [h.name for h in targets]
    announced = events.announcer("deploy", inventory, targets, json_, check)
    if announced is not None:
        announced.releases = {name: b.release_id for name, b in builds.items()}
        announced.revisions = {name: b.revision for name, b in builds.items()}
    events.announced_run(
        announced,
        lambda collect: run_plans(
            c,
            lambda inv, host: deploy_plan(
                inv,
                host,
                builds,
                wait,
                reached=host.name in {h.name for h in reached},
                targets=names,
                batch=batch,
                maintenance=maintenance,
            ),
            check=check,
            diff=diff,
            json_=json_,
            quiet=quiet,
            batch=batch,
            inventory=inventory,
            hosts=targets + reached,
            collect=collect,
        ),
    )


def with_kept_secrets(c, inventory: Inventory, targets: list[Host], create: bool) -> Inventory:
    """The secrets the target hosts' sites keep on a host (engine/kept.py), read (or made)
    there before anything is planned."""
    sites = {s.name: s for h in targets for s in inventory.sites_on(h)}
    wanted = [
        item
        for site in sites.values()
        for component in components()
        for item in component.kept_secrets(inventory, site)
    ]
    if not wanted:
        return inventory
    return kept.resolve(inventory, wanted, lambda host: _opened(host, c.config), create)


def _opened(host: Host, config) -> Remote:
    remote = Remote(host, config)
    try:
        remote.open()
    except RemoteError as exc:
        raise user_error(f"{exc} (the database host of a site deployed here)") from None
    return remote


def new_builds(
    inventory: Inventory,
    hosts: list[Host],
    now: float,
    ref: str | None = None,
    allow_dirty: bool = False,
) -> dict[str, release.Build]:
    """What this deploy ships of each site the target hosts run (another site's build or dirty
    tree is not this deploy's business); a user error, before any host is touched, when a
    site's source cannot be shipped."""
    memo: dict = {}  # sites with the same source and build share one snapshot
    builds = {}
    for host in hosts:
        for site in inventory.sites_on(host):
            if site.name in builds:
                continue
            try:
                builds[site.name] = release.new_build(
                    site, now, ref, allow_dirty, memo, inventory.path
                )
            except SourceError as exc:
                name = site.name
                raise user_error(f"site {name} (sites.{name}.source): {exc}") from None
    return builds


def deploy_plan(
    inventory: Inventory,
    host: Host,
    builds: dict[str, release.Build],
    wait: float | None = 0,
    reached: bool = False,
    targets: list[str] | tuple[str, ...] = (),
    batch: str | None = None,
    maintenance: bool = False,
) -> HostPlan:
    sites = tuple(sites_or_exit(inventory, host))
    # Each site's build as this host installs it (its Python, its wheels); a host that only
    # holds databases installs none: its builds are the site's first app host's (what the
    # migrations to back up before come from).
    installs = bool(topology.roles(host) & {"app", "web", "worker"})
    here = {
        s.name: release.for_host(builds[s.name], host if installs else _first_app(inventory, s))
        for s in sites
    }
    run = HostRun(
        inventory,
        host,
        sites,
        release.Job.deploy(here),
        RunOptions(
            lock_wait=wait,
            reached=reached,
            targets=tuple(targets),
            batch=batch,
            maintenance=maintenance,
        ),
    )
    return compose(run, DEPLOY_PHASES)


def _first_app(inventory: Inventory, site: Site) -> Host:
    found = topology.hosts_with(inventory, site, "app")
    return found[0] if found else inventory.hosts[site.hosts[0]]


def rollback_plan(
    inventory: Inventory,
    host: Host,
    site: str | None,
    to: str | None,
    wait: float | None = 0,
    db: str = "",
) -> HostPlan:
    """`db`: what to do when migrations were applied since the target ("" refuse, "restore",
    "keep"; db.py)."""
    sites = [s for s in sites_or_exit(inventory, host) if site is None or s.name == site]
    run = HostRun(
        inventory,
        host,
        tuple(sites),
        release.Job.rollback(to),
        RunOptions(lock_wait=wait, rollback_db=db),
    )
    # restore: with --restore-db, where the database is, before any switch. verify: on the web
    # host of a split site, the release answers through nginx and that host's `current` and
    # static files follow.
    plan = compose(run, ROLLBACK_PHASES)
    plan.revert = None  # a rollback is not rolled back again
    return plan


@targets_task(
    default=False,
    help={
        "to": "the release id to go back to (default: the newest good one before the live one)",
        "site": "only this site",
        "json_": "print only a JSON report",
        "quiet": "print only changes, failures and the recap",
        "wait": "seconds to wait for another run's deploy lock",
        "restore_db": "migrations applied since the target: restore the backup taken before "
        "them first",
        "keep_db": "migrations applied since the target: keep today's schema",
    },
)
def rollback(
    c, to=None, site=None, json_=False, quiet=False, wait=0, restore_db=False, keep_db=False
):
    """Switch the target hosts back to the previous good release (--to ID picks one).

    Health-checked like a deploy; the release rolled back from is marked rolled-back. Without
    -H the inventory's defaults.target is used. --site limits it to one site. A release older
    than migrations applied since is refused unless --restore-db (the backup taken before
    them is restored first) or --keep-db.
    """
    inventory = load_inventory(c)
    if site is not None:
        site_named(inventory, site)
    if restore_db and keep_db:
        raise user_error("--restore-db or --keep-db, not both")
    db = "restore" if restore_db else "keep" if keep_db else ""
    targets = target_hosts(c, inventory)
    # A db host that is not a target is reached too: its backups decide the guard, and with
    # --restore-db it restores.
    reached = database.reached_db_hosts(inventory, targets)
    announced = events.announcer("rollback", inventory, targets, json_, False, only=site)
    events.announced_run(
        announced,
        lambda collect: run_plans(
            c,
            lambda inv, host: rollback_plan(inv, host, site, to, wait, db),
            json_=json_,
            quiet=quiet,
            inventory=inventory,
            hosts=targets + reached,
            collect=collect,
        ),
    )


class ListReleases(Step):
    def __init__(self, site: Site) -> None:
        self.site, self.paths = site, SitePaths.of(site)
        self.id = f"releases:{site.name}"
        self.name = f"releases {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Stat(self.paths.current), release.store.Releases(self.paths.base)]

    def plan(self, ctx: Context) -> Plan:
        rows = [r.as_dict() for r in ctx.facts[release.store.Releases(self.paths.base)]]
        live = release.live_release(ctx.facts, self.paths)
        return Plan(
            reason=f"{len(rows)} release(s), live: {live or 'none'}",
            outcomes=(release.ReleaseTable(self.site.name, tuple(rows)),),
        )


@targets_task(help={"json_": "print the releases as JSON"})
def releases(c, json_=False):
    """List each site's releases per host: id, status, revision, who deployed, when."""
    reports = run_plans(
        c,
        lambda inv, host: [ListReleases(s) for s in sites_or_exit(inv, host)],
        json_=json_,
        quiet=True,
    )
    if json_:
        return
    for report in reports:
        for table in report.outcomes_of(release.ReleaseTable):
            site_name, rows = table.site, table.rows
            print(f"\n{report.host} / {site_name}")
            print(f"  {'release':<30} {'status':<12} {'revision':<10} {'deployed by':<24} at")
            for row in reversed(rows):
                print(
                    f"  {row['id']:<30} {row['status']:<12} {row['revision']:<10} "
                    f"{row['deployed_by']:<24} {row['deployed_at']}"
                )
