"""Several Django sites on one host: what runs where, composed into one plan per host."""

from __future__ import annotations

from . import app, celery, nginx
from .engine.inventory import Host, Inventory
from .engine.runner import HostPlan
from .engine.tasks import load_inventory, target_hosts, targets_task


def host_plan(inventory: Inventory, host: Host, builds: dict[str, app.Build]) -> HostPlan:
    """The whole stack for a host, in three phases: stage every site, its broker and nginx,
    migrate (on one host per site), then switch each site and restart its Celery units."""
    sites = app.sites_or_exit(inventory, host)
    stage = [step for site in sites for step in app.stage_steps(builds[site.name])]
    stage += celery.broker_steps(sites)
    stage += nginx.host_steps(inventory, host)
    migrate = [app.migrate_step(builds[s.name]) for s in sites if app.migrates_here(s, host)]
    switch = []
    for site in sites:
        switch.append(app.Switch(site))
        if site.celery is not None:
            switch.append(celery.Restart(site, lambda ctx, site=site: app.wanted(ctx, site)))
    return HostPlan(host, [stage, migrate, switch], lock_sites=[s.name for s in sites])


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
