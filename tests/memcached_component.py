"""A team's component written outside the kit, from its public imports only: memcached as a
host service on the site's `cache` host, its address in the site's env file, in `fab status`,
in the boot order of the site's units, with a role of its own.

    [sites.shop.memcached]
    memory = 128            # MB (default 64)

A site's Django settings read MEMCACHED_LOCATION ("address:11211").
"""

from __future__ import annotations

from dataclasses import dataclass

from djk.tasks import HostRun, HostService, Key, Keys, Kind, Running, register, unregister
from djk.tasks.engine.inventory import Host, Inventory, Site
from djk.tasks.engine.steps import ApplyNow, File, Step

CONF = "/etc/memcached.conf"
PORT = 11211


@dataclass(frozen=True)
class Memcached:
    memory: int = 64


def _memory(value: int) -> int:
    if not 16 <= value <= 65536:
        raise ValueError("must be 16 to 65536 (MB)")
    return value


# A kind of the team's own: its check, its line in a reference, its fuzz cases.
MEMORY = Kind(
    "memory in MB",
    int,
    "megabytes memcached may use, 16 to 65536",
    _memory,
    samples=(16, 64, 65536),
    edges=(15, 65537, 0, -1),
)
KEYS = Keys(Memcached, (Key("memory", MEMORY, 64, "the cache's size"),))


class MemcachedComponent(HostService):
    """memcached on the first host of the site with the `cache` role."""

    name = "memcached"
    table = "memcached"
    roles = ("cache",)
    adds_roles = ("cache",)
    before = ("app",)  # the cache answers before the app's release is checked
    package = "memcached"
    unit = "memcached.service"
    port = PORT
    what = "memcached"

    keys = KEYS

    def server_of(self, inventory: Inventory, site: Site) -> Host | None:
        if site.part(Memcached) is None:
            return None
        found = [inventory.hosts[n] for n in site.hosts if "cache" in inventory.hosts[n].role_set]
        return found[0] if found else None

    def _address(self, inventory: Inventory, site: Site) -> str | None:
        server = self.server_of(inventory, site)
        if server is None:
            return None
        remote = [h for h in self.clients(inventory, site) if h.name != server.name]
        return server.peer_address if remote else "127.0.0.1"

    def env(self, inventory: Inventory, site: Site) -> dict:
        where = self._address(inventory, site)
        return {"MEMCACHED_LOCATION": f"{where}:{PORT}"} if where else {}

    def configure(self, run: HostRun, served: list[Site]) -> list[Step]:
        binds = ["127.0.0.1"]
        for site in served:
            where = self._address(run.inventory, site)
            if where and where not in binds:
                binds.append(where)
        memory = max(s.part(Memcached).memory for s in served)
        text = f"-u memcache\n-p {PORT}\n-m {memory}\n-l {','.join(binds)}\n"
        # Applied at once: the app's health check, later in the run, may read the cache.
        return [
            File(CONF, text, notify=(f"restart:{self.unit}",), name="memcached config"),
            ApplyNow(self.unit),
        ]

    def status(self, inventory: Inventory, site: Site, host: Host) -> list:
        server = self.server_of(inventory, site)
        return [Running((self.unit,))] if server and server.name == host.name else []


MEMCACHED = MemcachedComponent()


def install() -> None:
    register(MEMCACHED)


def uninstall() -> None:
    unregister(MEMCACHED.name)
