"""Flower for each site that enables it: `[sites.<name>.flower]`, on 127.0.0.1, behind nginx at
/flower/, basic auth from the site's secrets (FLOWER_BASIC_AUTH in the env file, never on a
command line)."""

from __future__ import annotations

from dataclasses import dataclass

from . import celery
from .engine import topology
from .engine.cli import run_plans, targets_task, user_error
from .engine.component import Component, HostRun, NginxPart, Phase, register
from .engine.inventory import Host, Inventory, Site
from .engine.keys import Key, Keys, Reading, Rule, integer
from .engine.layout import SitePaths
from .engine.schema import InventoryError
from .engine.status import Running, StatusCheck
from .engine.steps import Step, UnitStatus


@dataclass(frozen=True)
class Flower:
    port: int


def cycle(site: Site) -> str:
    return f"cycle-flower:{site.name}"


def units(site: Site, host: Host | None = None) -> list[tuple[str, str, str]]:
    conf = site.part(Flower)
    if conf is None:
        return []
    # Basic auth comes from FLOWER_BASIC_AUTH in the env file, never from this line.
    command = f"flower --address=127.0.0.1 --port={conf.port} --url_prefix=flower"
    return [("flower", SitePaths.of(site, host).process("flower"), command)]


LOCATION = """\
# Flower serves these without its own auth: not through nginx.
location ^~ /flower/metrics {{ return 404; }}
location ^~ /flower/healthcheck {{ return 404; }}

location /flower/ {{
    proxy_pass http://127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $djk_connection_upgrade;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_read_timeout 300s;
}}
"""


def _needs_auth(r: Reading) -> None:
    if r.the_site().needs_secret("FLOWER_BASIC_AUTH"):
        r.fail(None, "needs FLOWER_BASIC_AUTH=user:password in the env_file secrets")


KEYS = Keys(
    Flower,
    (
        Key("port", integer(1024, 65535), help="Flower's port on 127.0.0.1; unique per host"),
        Rule(("FLOWER_BASIC_AUTH",), _needs_auth, "the secrets give FLOWER_BASIC_AUTH"),
    ),
    help="Celery's Flower on the worker hosts (which must be the web hosts), behind nginx at "
    "/flower/, basic auth from FLOWER_BASIC_AUTH in the secrets.",
)


class FlowerComponent(Component):
    name = "flower"
    after = ("rabbitmq",)  # Flower beside the workers
    table = "flower"
    roles = ("worker",)

    def status(self, inventory: Inventory, site: Site, host: Host) -> list[StatusCheck]:
        found = tuple(u for _, u, _ in units(site, host)) if "worker" in host.role_set else ()
        return [Running(found)] if found else []

    keys = KEYS

    def check(self, inventory: Inventory) -> None:
        for site in inventory.sites.values():
            if site.part(Flower) is None:
                continue
            key = f"sites.{site.name}.flower"
            if site.part(celery.Celery) is None:
                raise InventoryError(
                    inventory.path,
                    key,
                    "needs [sites.<name>.celery] (Flower watches the site's workers)",
                )
            web = {h.name for h in topology.hosts_with(inventory, site, "web")}
            if web != {h.name for h in topology.hosts_with(inventory, site, "worker")}:
                raise InventoryError(
                    inventory.path, key, "Flower needs the web and worker roles on the same hosts"
                )

    def python_packages(self, site: Site) -> list[str]:
        return ["flower==2.2.0"] if site.part(Flower) else []

    def ports(self, site: Site) -> list[tuple]:
        conf = site.part(Flower)
        return [(conf.port, "Flower", "flower.port")] if conf else []

    def env_notify(self, site: Site, host: Host) -> tuple[str, ...]:
        if site.part(Flower) is None or "worker" not in topology.roles(host):
            return ()
        return (cycle(site),)

    def nginx(self, inventory: Inventory, site: Site) -> NginxPart:
        conf = site.part(Flower)
        return NginxPart(server=[LOCATION.format(port=conf.port)]) if conf else NginxPart()

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        if "worker" not in topology.roles(run.host):
            return []
        sites = [s for s in run.sites if s.part(Flower) is not None]
        if phase == Phase.STAGE:
            return [
                step
                for site in sites
                for step in celery.unit_files(
                    run.inventory, site, run.host, units(site, run.host), cycle(site)
                )
            ]
        if phase == Phase.SWITCH and run.job is not None:
            job = run.job
            return [
                celery.Restart(
                    site,
                    job.target(site),
                    [u for _, u, _ in units(site, run.host)],
                    cycle(site),
                    "flower",
                )
                for site in sites
            ]
        return []


register(FlowerComponent())


@targets_task(help={"json_": "print the report as JSON"})
def status(c, json_=False):
    """Show each site's Flower unit; exits 1 where it is not running."""

    def build(inv, host):
        sites = [s for s in inv.sites_on(host) if s.part(Flower) is not None]
        if not sites:
            raise user_error(f"no site on {host.name!r} has [sites.<name>.flower]")
        return [UnitStatus(unit) for site in sites for _, unit, _ in units(site, host)]

    run_plans(c, build, json_=json_)
