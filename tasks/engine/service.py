"""Host services: servers the kit runs on some hosts for the sites that use them — Redis,
RabbitMQ, PostgreSQL, or a team's own (memcached). One shape for all:

- `package`, installed by `fab provision` where the service serves a site, and its `unit`,
  enabled and running there (provision phase);
- `listens`: the ports its server holds on that host (no site may use them);
- `port`, opened by the firewall for the hosts that reach it (`clients`: by default the
  site's app and worker hosts on other machines);
- `backing_units`: the site's processes start after its unit at boot, stop before it;
- its URL (or whatever the site's processes read) in each site's env file (`env`);
- `configure`: the steps that set it up for the run's sites on its host (stage phase).

A subclass says where a site's server is (`server_of`); the rest follows.
"""

from __future__ import annotations

from . import topology
from .component import Component, HostRun, Opening, Phase
from .inventory import Host, Inventory, Site
from .steps import Service, Step


class HostService(Component):
    package: str = ""  # the Debian package
    unit: str = ""  # its systemd unit
    port: int = 0  # where clients reach it
    what: str = ""  # how the firewall and error messages name it ("Redis")
    listens: tuple[tuple[int, str], ...] = ()  # (port, what) it holds; default: (port, what)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.unit and not cls.backing_units:
            cls.backing_units = (cls.unit,)

    def server_of(self, inventory: Inventory, site: Site) -> Host | None:
        """The host that runs the site's server; None when the site does not use it."""
        raise NotImplementedError

    def clients(self, inventory: Inventory, site: Site) -> list[Host]:
        """The hosts whose processes reach the site's server (the firewall's sources)."""
        return topology.hosts_with(inventory, site, "app") + topology.hosts_with(
            inventory, site, "worker"
        )

    def configure(self, run: HostRun, served: list[Site]) -> list[Step]:
        """Stage-phase steps on the server host for the sites it serves (all of them, not
        only the run's: a subclass filters where it must)."""
        return []

    def served(self, inventory: Inventory, host: Host) -> list[Site]:
        """The sites whose server runs on `host`."""
        return [
            s
            for s in inventory.sites.values()
            if (server := self.server_of(inventory, s)) is not None and server.name == host.name
        ]

    # -- derived -------------------------------------------------------------------------------

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        return [self.package] if self.package and self.served(inventory, host) else []

    def host_ports(self, inventory: Inventory, host: Host) -> list[tuple[int, str]]:
        if not self.served(inventory, host):
            return []
        return list(self.listens or ((self.port, self.what),))

    def openings(self, inventory: Inventory, host: Host) -> list[Opening]:
        users = [h for s in self.served(inventory, host) for h in self.clients(inventory, s)]
        sources = topology.peers(users, host)
        return [Opening(self.port, self.what, sources)] if sources else []

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        if phase not in (Phase.PROVISION, Phase.STAGE):
            return []
        served = self.served(run.inventory, run.host)
        if not served:
            return []
        return [Service(self.unit)] if phase == Phase.PROVISION else self.configure(run, served)
