"""Which host does what for a site: roles (web, app, worker, broker, db), addresses and binds.

A host without `roles` in hosts.toml has them all. A site is *split* when some of its web hosts
do not run its app (nginx proxies to app hosts over the network); otherwise every web host is
also an app host and everything talks over loopback.
"""

from __future__ import annotations

from .inventory import Host, Inventory, Site


def roles(host: Host) -> set[str]:
    return host.role_set


def hosts_with(inventory: Inventory, site: Site, role: str) -> list[Host]:
    return [inventory.hosts[n] for n in site.hosts if role in roles(inventory.hosts[n])]


def peers(hosts: list[Host], host: Host) -> tuple[str, ...]:
    """The addresses of `hosts` other than `host`, each once (who reaches `host` over the
    network: the firewall's sources)."""
    found: list[str] = []
    for h in hosts:
        if h.name != host.name and h.peer_address not in found:
            found.append(h.peer_address)
    return tuple(found)


def split(inventory: Inventory, site: Site) -> bool:
    web = {h.name for h in hosts_with(inventory, site, "web")}
    app = {h.name for h in hosts_with(inventory, site, "app")}
    return not web or web != app


def bind_address(inventory: Inventory, site: Site, host: Host) -> str:
    """Where gunicorn listens: loopback unless nginx runs on another host."""
    return host.peer_address if split(inventory, site) else "127.0.0.1"


def broker_host(inventory: Inventory, site: Site) -> Host | None:
    found = hosts_with(inventory, site, "broker")
    return found[0] if found else None


def broker_address(inventory: Inventory, site: Site) -> str:
    """The local Redis as the site's processes reach it."""
    broker = broker_host(inventory, site)
    users = {h.name for h in hosts_with(inventory, site, "app")} | {
        h.name for h in hosts_with(inventory, site, "worker")
    }
    if broker is None or users <= {broker.name}:
        return "127.0.0.1"
    return broker.peer_address
