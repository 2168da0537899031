"""Several Django sites on one host: what runs where, composed into one plan per host."""

from __future__ import annotations

from . import app, nginx
from .engine.inventory import Host, Inventory
from .engine.steps import Step
from .engine.tasks import load_inventory, target_hosts, targets_task


def host_steps(inventory: Inventory, host: Host) -> list[Step]:
    """The whole stack for a host: every site's app first, then nginx in front of them."""
    return [*app.host_steps(inventory, host), *nginx.host_steps(inventory, host)]


@targets_task
def sites(c):
    """List the sites, domains and ports each target host serves (reads only hosts.toml)."""
    inventory = load_inventory()
    for host in target_hosts(c, inventory):
        on_host = inventory.sites_on(host)
        print(f"{host.name} ({host.connect_to}): {len(on_host)} site(s)")
        for site in on_host:
            print(f"  {site.name:<16} 127.0.0.1:{site.port:<6} {' '.join(site.domains)}")
