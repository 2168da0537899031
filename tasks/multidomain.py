"""Several Django sites on one host: what runs where, composed into one plan per host."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from . import app, celery, nginx
from .engine import topology, values
from .engine.facts import Fact, path_state
from .engine.inventory import Host, Inventory, Site
from .engine.layout import ROOT, UPSTREAM_DIR
from .engine.runner import HostPlan
from .engine.steps import Action, Context, Plan, Step
from .engine.tasks import load_inventory, run_steps, target_hosts, targets_task, user_error


def switch_steps(
    inventory: Inventory,
    host: Host,
    site: Site,
    target: Callable[[Context], str],
    mark_old: str = "previous",
) -> list[Step]:
    """A host's part of switching a site to a release: its gunicorn slots if it runs the app,
    its Celery units if it runs workers."""
    roles = topology.roles(host)
    steps: list[Step] = []
    if "app" in roles:
        remote = topology.bind_address(inventory, site, host)
        steps.append(
            app.Switch(
                site,
                target=target,
                mark_old=mark_old,
                remote_bind=remote if topology.split(inventory, site) else None,
            )
        )
    if "worker" in roles and site.celery is not None:
        steps.append(celery.Restart(site, target, set_current="app" not in roles))
    return steps


def host_plan(inventory: Inventory, host: Host, builds: dict[str, app.Build]) -> HostPlan:
    """The whole stack for a host, for the roles it has: stage every site (and the broker and
    nginx), migrate (on one app host per site), switch each site and restart its Celery units,
    and where nginx proxies to app hosts elsewhere, check the release through nginx."""
    sites = app.sites_or_exit(inventory, host)
    roles = topology.roles(host)
    stage = [step for site in sites for step in app.stage_steps(builds[site.name], inventory, host)]
    brokered = [s for s in sites if topology.broker_host(inventory, s) == host]
    if brokered:
        remote = any(topology.broker_address(inventory, s) != "127.0.0.1" for s in brokered)
        stage += celery.broker_steps(brokered, host.address if remote else None)
    if "web" in roles:
        stage += nginx.host_steps(inventory, host)
        stage.append(Orphans([s.name for s in sites], host.name))
    migrate = [
        app.migrate_step(builds[s.name]) for s in sites if app.migrates_here(inventory, s, host)
    ]
    switch = [
        step
        for site in sites
        for step in switch_steps(inventory, host, site, lambda ctx, s=site: app.wanted(ctx, s))
    ]
    verify = [
        app.Verify(site) for site in sites if "web" in roles and topology.split(inventory, site)
    ]

    def revert(ctx: Context) -> list[Step]:
        steps: list[Step] = []
        for site in sites:
            before = ctx.data.get("live", {}).get(site.name)
            if before is None or before == app.wanted(ctx, site):
                continue

            def target(_ctx: Context, before: str = before) -> str:
                return before

            steps += switch_steps(inventory, host, site, target, "rolled-back")
        return steps

    return HostPlan(
        host,
        [stage, migrate, switch, verify],
        lock_sites=[s.name for s in sites],
        switch_phase=2,
        revert=revert,
    )


@targets_task
def sites(c):
    """List the sites, domains and ports each target host serves (reads only hosts.toml)."""
    inventory = load_inventory()
    for host in target_hosts(c, inventory):
        on_host = inventory.sites_on(host)
        print(f"{host.name} ({host.connect_to}): {len(on_host)} site(s)")
        for site in on_host:
            ports = "+".join(str(p) for p in site.ports)
            print(f"  {site.name:<16} 127.0.0.1:{ports:<12} {' '.join(site.domains)}")


SITE_CONF_GLOB = "/etc/nginx/sites-enabled/djk-site-*.conf"


def _deployed_sites(rc: int, out: str) -> list[str]:
    names = []
    for line in out.split():
        name = line.rsplit("/", 1)[-1].removeprefix("djk-site-").removesuffix(".conf")
        if name and name != "*":
            names.append(name)
    return sorted(names)


DEPLOYED = Fact("deployed-sites", f"ls -1 {SITE_CONF_GLOB}", _deployed_sites, default=[])


class Orphans(Step):
    """Read-only: sites deployed on the host that hosts.toml no longer gives it. Nothing is
    removed without `fab multidomain.remove --site NAME`."""

    id = "orphans"
    name = "sites not in hosts.toml"

    def __init__(self, wanted: list[str], host: str) -> None:
        self.wanted, self.host = set(wanted), host

    def facts(self, diff: bool) -> list[Fact]:
        return [DEPLOYED]

    def plan(self, ctx: Context) -> Plan:
        extra = [name for name in ctx.facts["deployed-sites"] if name not in self.wanted]
        if not extra:
            return Plan(reason="none")
        hint = " ".join(f"`fab -H {self.host} multidomain.remove --site {n}`" for n in extra)
        return Plan(reason=f"{', '.join(extra)} still deployed; to take away: {hint}")


class RemoveSite(Step):
    """Stop and delete a site's units, server block and upstream; with purge, its files and
    user too. nginx is reloaded after validating what remains."""

    def __init__(self, name: str, purge: bool) -> None:
        self.site, self.purge = name, purge
        self.id = f"remove:{name}"
        self.name = f"remove site {name}"

    def facts(self, diff: bool) -> list[Fact]:
        units = (
            f"systemctl list-unit-files --no-legend --plain 'djk-{self.site}-*.service' "
            "| cut -d' ' -f1"
        )
        return [
            Fact(f"site-units:{self.site}", units, lambda rc, out: out.split(), default=[]),
            path_state(f"/etc/nginx/sites-enabled/djk-site-{self.site}.conf"),
            path_state(f"{ROOT}/{self.site}"),
        ]

    def plan(self, ctx: Context) -> Plan:
        units = ctx.facts[f"site-units:{self.site}"]
        conf = f"/etc/nginx/sites-enabled/djk-site-{self.site}.conf"
        present = units or ctx.facts[f"stat:{conf}"] is not None
        files = ctx.facts[f"stat:{ROOT}/{self.site}"] is not None
        if not present and not (self.purge and files):
            return Plan(reason="not on this host")
        q = shlex.quote
        script = ["set -e"]
        for unit in units:
            script += [
                f"systemctl disable --now {q(unit)} || true",
                f"rm -f /etc/systemd/system/{q(unit)}",
            ]
        script += [
            "systemctl daemon-reload",
            f"rm -f {q(conf)} {q(f'{UPSTREAM_DIR}/{self.site}.upstream')}",
            NGINX_RELOAD_AFTER_REMOVE,
        ]
        if self.purge:
            script += [
                f"rm -rf -- {q(f'{ROOT}/{self.site}')}",
                f"userdel djk-{q(self.site)} 2>/dev/null || true",
            ]
        what = f"{len(units)} units, server block" + (", files and user" if self.purge else "")
        return Plan([Action(f"remove {what}", "\n".join(script))])


# The remaining configuration must be valid before nginx reloads without the site.
NGINX_RELOAD_AFTER_REMOVE = "nginx -t -q && systemctl reload nginx.service"


@targets_task
def remove(c, site, purge=False, json_=False):
    """Take a site that hosts.toml no longer gives a host away from it: units, server block.

    --purge also deletes /srv/djk/<site> (releases, database, uploads) and the site user.
    Refused for a site that hosts.toml still puts on the host.
    """
    _valid(site)

    def build(inv, host):
        if site in inv.sites and host.name in inv.sites[site].hosts:
            raise user_error(
                f"site {site!r} is still in {inv.path.name} for host {host.name!r} "
                f"(sites.{site}.hosts): take it out of hosts.toml first"
            )
        return [RemoveSite(site, purge)]

    run_steps(c, build, json_=json_)


def _valid(site: str) -> bool:
    try:
        values.site_name(site)
    except ValueError as exc:
        raise user_error(f"--site: {exc}") from None
    return True
