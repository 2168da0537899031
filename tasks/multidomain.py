"""Several Django sites on one host, each with its own server_name block: the rules between
sites (a domain or a port only once per host), sites a host no longer has, and their removal."""

from __future__ import annotations

import shlex

from .engine import agent, procs, values
from .engine.cli import load_inventory, run_plans, target_hosts, targets_task, user_error
from .engine.component import Component, HostRun, Phase, components, register
from .engine.facts import Fact, Lines, Stat
from .engine.inventory import Host, Inventory, Site
from .engine.layout import ROOT, UPSTREAM_DIR
from .engine.schema import InventoryError
from .engine.steps import Action, Context, Plan, Step


def ports(site: Site) -> list[tuple[int, str, str]]:
    """Every port a site's processes listen on, from every component: (port, what, the key of
    the site's table that sets it)."""
    found = []
    for component in components():
        for port, what, *key in component.ports(site):
            found.append((port, what, key[0] if key else "port"))
    return found


def host_ports(inventory: Inventory, host: Host) -> list[tuple[int, str]]:
    """Ports of the host's own services: its SSH port and every component's host-wide ones."""
    found = [(host.port, "SSH")] if host.in_inventory else []
    return found + [p for c in components() for p in c.host_ports(inventory, host)]


def check_conflicts(inventory: Inventory) -> None:
    """Per host: each domain served by one site, each port used once across every service."""
    for host in inventory.hosts:
        on_host = [s for s in inventory.sites.values() if host in s.hosts]
        domain_owner: dict[str, str] = {}
        # Host-wide services first (sshd, Redis, ...): a site's port is checked against them.
        port_owner: dict[int, tuple[str, str]] = {}
        for port, what in host_ports(inventory, inventory.hosts[host]):
            _, other = port_owner.setdefault(port, ("", what))
            if other != what:
                raise InventoryError(
                    inventory.path,
                    f"hosts.{host}.port",
                    f"port {port} is used by both {other} and {what} on host {host!r}",
                )
        for site in on_host:
            for i, domain in enumerate(site.domains):
                other = domain_owner.setdefault(domain, site.name)
                if other != site.name:
                    raise InventoryError(
                        inventory.path,
                        f"sites.{site.name}.domains[{i}]",
                        f"{domain} is already served by site {other!r} on host {host!r}",
                    )
            for port, what, key in ports(site):
                owner, used_for = port_owner.setdefault(port, (site.name, what))
                if (owner, used_for) != (site.name, what):
                    by = f"site {owner!r} ({used_for})" if owner else used_for
                    raise InventoryError(
                        inventory.path,
                        f"sites.{site.name}.{key}",
                        f"port {port} is already used by {by} on host {host!r}, "
                        f"here for {what} (a site uses its port and its Flower port)",
                    )


class MultidomainComponent(Component):
    name = "multidomain"
    after = ("nginx",)  # the rules between sites, once every site's nginx is set
    roles = ("web",)

    def check(self, inventory: Inventory) -> None:
        check_conflicts(inventory)

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        if phase == Phase.STAGE and self.runs_on(run.host):
            return [Orphans([s.name for s in run.inventory.sites_on(run.host)], run.host.name)]
        return []


register(MultidomainComponent())


@targets_task
def sites(c):
    """List the sites, domains and ports each target host serves (reads only hosts.toml)."""
    inventory = load_inventory(c)
    for host in target_hosts(c, inventory):
        on_host = inventory.sites_on(host)
        print(f"{host.name} ({host.connect_to}): {len(on_host)} site(s)")
        for site in on_host:
            listed = "+".join(str(p[0]) for p in ports(site))
            print(f"  {site.name:<16} 127.0.0.1:{listed:<12} {' '.join(site.domains)}")


SITE_CONF_GLOB = "/etc/nginx/sites-enabled/djk-site-*.conf"


def _deployed_sites(rc: int, out: str) -> list[str]:
    names = []
    for line in out.split():
        name = line.rsplit("/", 1)[-1].removeprefix("djk-site-").removesuffix(".conf")
        if name and name != "*":
            names.append(name)
    return sorted(names)


DEPLOYED = Lines(f"ls -1 {SITE_CONF_GLOB}")


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
        deployed = _deployed_sites(0, "\n".join(ctx.facts[DEPLOYED]))
        extra = [name for name in deployed if name not in self.wanted]
        if not extra:
            return Plan(reason="none")
        hint = " ".join(f"`fab -H {self.host} multidomain.remove --site {n}`" for n in extra)
        return Plan(reason=f"{', '.join(extra)} still deployed; to take away: {hint}")


class RemoveSite(Step):
    """Stop and delete a site's units or programs, server block and upstream; with purge, its
    files and user too. nginx is reloaded after validating what remains."""

    def __init__(self, name: str, purge: bool) -> None:
        self.site, self.purge = name, purge
        self.id = f"remove:{name}"
        self.name = f"remove site {name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [self._units, Stat(self._conf), Stat(f"{ROOT}/{self.site}")]

    @property
    def _units(self) -> Lines:
        return Lines(procs.site_processes_command(self.site))

    @property
    def _conf(self) -> str:
        return f"/etc/nginx/sites-enabled/djk-site-{self.site}.conf"

    def plan(self, ctx: Context) -> Plan:
        units = ctx.facts[self._units]
        conf = self._conf
        present = units or ctx.facts[Stat(conf)] is not None
        files = ctx.facts[Stat(f"{ROOT}/{self.site}")] is not None
        if not present and not (self.purge and files):
            return Plan(reason="not on this host")
        q = shlex.quote
        # The remaining configuration must be valid before nginx reloads without the site.
        script = ["set -e", agent.receive()]
        script += procs.stop_and_remove(units)
        script += [
            f"rm -f {q(conf)} {q(f'{UPSTREAM_DIR}/{self.site}.upstream')}",
            agent.run("nginx-reload", {}),
        ]
        if self.purge:
            script += [
                f"rm -rf -- {q(f'{ROOT}/{self.site}')}",
                f"userdel djk-{q(self.site)} 2>/dev/null || true",
            ]
        what = f"{len(units)} processes, server block" + (", files and user" if self.purge else "")
        return Plan([Action(f"remove {what}", "\n".join(script), stdin=agent.carried_head)])


@targets_task(
    help={
        "site": "the site to take away",
        "purge": "also delete /srv/djk/<site> (releases, database, uploads) and the site user",
        "json_": "print the report as JSON",
    }
)
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

    run_plans(c, build, json_=json_)


def _valid(site: str) -> bool:
    try:
        values.site_name(site)
    except ValueError as exc:
        raise user_error(f"--site: {exc}") from None
    return True
