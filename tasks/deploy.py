"""The main jobs: deploy, rollback, and the list of releases."""

from __future__ import annotations

import time

from . import app, multidomain
from .engine import releases as R
from .engine.facts import Fact, path_state
from .engine.inventory import Site
from .engine.layout import SitePaths
from .engine.runner import HostPlan
from .engine.steps import Context, Plan, Step
from .engine.tasks import load_inventory, run_steps, targets_task, user_error


@targets_task(default=False)
def deploy(c, check=False, diff=False, json_=False, quiet=False, wait=0, batch=None):
    """Deploy every site of the target hosts (-H host, group, alias or address).

    Stages a new release (one id for all hosts), migrates once, then switches each host after
    a health check. --check changes nothing and reports what would change; --diff shows file
    diffs with secrets masked; --json prints the report as JSON; --quiet prints only changes,
    failures and the recap; --wait SECONDS waits for another deploy's lock instead of failing;
    --batch N or --batch P% switches the hosts in rolling batches and stops at the first failed
    batch (hosts already switched go back, so all serve one release).
    """
    inventory = load_inventory()
    now = time.time()
    builds = {name: app.new_build(site, now) for name, site in inventory.sites.items()}
    run_steps(
        c,
        lambda inv, host: multidomain.host_plan(inv, host, builds),
        check=check,
        diff=diff,
        json_=json_,
        quiet=quiet,
        lock_wait=float(wait),
        batch=batch,
    )


class _RollbackTarget:
    def __init__(self, site: Site, to: str | None) -> None:
        self.site, self.to, self.paths = site, to, SitePaths.of(site)

    def __call__(self, ctx: Context) -> str:
        releases = ctx.facts[f"releases:{self.site.name}"]
        target, why = R.rollback_target(releases, app.live_release(ctx, self.paths), self.to)
        if target is None:
            raise LookupError(f"{self.site.name}: {why}; nothing changed")
        return target.id


@targets_task(default=False)
def rollback(c, to=None, site=None, json_=False, quiet=False, wait=0):
    """Switch the target hosts back to the previous good release (--to ID picks one).

    Health-checked like a deploy; the release rolled back from is marked rolled-back. Without
    -H the inventory's defaults.target is used. --site limits it to one site.
    """
    inventory = load_inventory()
    if site is not None and site not in inventory.sites:
        raise user_error(f"unknown site {site!r} (sites.{site} in {inventory.path.name})")

    def plan(inv, host):
        sites = [s for s in app.sites_or_exit(inv, host) if site is None or s.name == site]
        steps: list[Step] = []
        for s in sites:
            target = _RollbackTarget(s, to)
            steps += multidomain.switch_steps(inv, host, s, target, "rolled-back")
        return HostPlan(host, [steps], lock_sites=[s.name for s in sites])

    run_steps(c, plan, json_=json_, quiet=quiet, lock_wait=float(wait))


class _ListReleases(Step):
    def __init__(self, site: Site) -> None:
        self.site, self.paths = site, SitePaths.of(site)
        self.id = f"releases:{site.name}"
        self.name = f"releases {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [
            path_state(self.paths.current),
            Fact(
                f"releases:{self.site.name}",
                R.list_command(self.paths.base),
                R.parse_releases,
                default=[],
            ),
        ]

    def plan(self, ctx: Context) -> Plan:
        rows = [r.as_dict() for r in ctx.facts[f"releases:{self.site.name}"]]
        table = ctx.data.setdefault("report", {}).setdefault("release_table", {})
        table[self.site.name] = rows
        live = app.live_release(ctx, self.paths)
        return Plan(reason=f"{len(rows)} release(s), live: {live or 'none'}")


@targets_task
def releases(c, json_=False):
    """List each site's releases per host: id, status, revision, who deployed, when."""
    reports = run_steps(
        c,
        lambda inv, host: [_ListReleases(s) for s in app.sites_or_exit(inv, host)],
        json_=json_,
        quiet=True,
    )
    if json_:
        return
    for report in reports:
        for site_name, rows in report.extra.get("release_table", {}).items():
            print(f"\n{report.host} / {site_name}")
            print(f"  {'release':<30} {'status':<12} {'revision':<10} {'deployed by':<24} at")
            for row in reversed(rows):
                print(
                    f"  {row['id']:<30} {row['status']:<12} {row['revision']:<10} "
                    f"{row['deployed_by']:<24} {row['deployed_at']}"
                )
