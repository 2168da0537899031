"""nginx in front of every site: the catch-all default server, one server block per site built
from every component's snippets, the base configuration `provision` writes, and the keys
`max_body_size`, `redirect_to` and `read_timeout` of [sites.<name>]."""

from __future__ import annotations

from dataclasses import dataclass

from . import tls as tls_component
from .engine import agent, topology, values
from .engine.cli import run_plans, targets_task
from .engine.component import Component, HostRun, NginxPart, Opening, Phase, components, register
from .engine.hostinfo import DEFAULT as DEFAULT_HOST
from .engine.inventory import Host, Inventory, Site
from .engine.keys import DOMAIN, NGINX_SIZE, NGINX_TIME, Key, Keys, Reading, Rule
from .engine.layout import DEBIAN_DEFAULT_SITE, NGINX_DEFAULT_CONF, SitePaths, app_of
from .engine.render import render
from .engine.steps import (
    ConfigSet,
    Directory,
    File,
    Run,
    Service,
    Step,
    UnitStatus,
)

RELOAD = ("reload:nginx.service",)
VALIDATE = "nginx -t"


@dataclass(frozen=True)
class Nginx:
    max_body_size: str = "20m"  # client_max_body_size
    redirect_to: str | None = None  # the canonical domain; the others answer 301 to it
    # proxy_read_timeout to the app: how long a response, or a WebSocket, may stay silent
    read_timeout: str = "60s"


def parts(inventory: Inventory, site: Site) -> list[NginxPart]:
    return [component.nginx(inventory, site) for component in components()]


def upstream_servers(inventory: Inventory, site: Site) -> list[str]:
    """The `server` lines of the site's upstream. They never change at a switch: the live slot
    is chosen by the link sockets/live.sock on each app host, which nginx (here) or the
    forwarder (on an app host behind nginx elsewhere) follows for each new connection."""
    paths = SitePaths.of(site)
    if not topology.split(inventory, site):
        return [f"unix:{paths.live_socket}"]
    port = app_of(site).port
    return [
        f"{values.url_host(h.peer_address)}:{port}"
        for h in topology.hosts_with(inventory, site, "app")
    ]


def site_files(inventory: Inventory, site: Site, host: Host | None = None) -> list[File]:
    """The server block (its upstream inline) and the files the components' snippets need,
    in the dialect of the host's nginx."""
    paths = SitePaths.of(site)
    contributed = parts(inventory, site)
    block = render(
        "nginx/site.conf.j2",
        inventory.templates,
        site=site,
        paths=paths,
        servers=upstream_servers(inventory, site),
        nginx=site.part(Nginx) or Nginx(),
        tls=site.part(tls_component.Tls),
        snippets=[snippet for part in contributed for snippet in part.server],
        # nginx >= 1.25.1 (Debian 13) takes `http2 on;`, warns at `listen ... http2`
        http2_on=(host.platform if host else DEFAULT_HOST).nginx_http2_on,
    )
    files = [File(paths.nginx_conf, block, name=f"server block {site.name}")]
    return files + [f for part in contributed for f in part.files]


def _unique(steps: list[Step]) -> list[Step]:
    """Steps several sites contribute alike (a shared directory) once each."""
    seen: set[str] = set()
    found = []
    for step in steps:
        if step.id not in seen:
            seen.add(step.id)
            found.append(step)
    return found


def host_steps(inventory: Inventory, host: Host) -> list[Step]:
    """nginx's whole managed configuration for a host, validated as one candidate set: our
    default server (Debian's default site goes: it would answer unknown Hosts), and every site's
    server block, upstream and the files its components add."""
    if "web" not in topology.roles(host):
        return []
    sites = inventory.sites_on(host)
    https = any(site.part(tls_component.Tls) for site in sites)
    default = render("nginx/default.conf.j2", inventory.templates, tls=https)
    files = [File(NGINX_DEFAULT_CONF, default, name="default server")]
    before: list[Step] = []
    after: list[Step] = []
    for site in sites:
        files += site_files(inventory, site, host)
        for part in parts(inventory, site):
            before += part.before
            after += part.after
    return _unique(
        [
            Directory("/var/lib/djk"),
            *before,
            ConfigSet(
                "nginx-config",
                "nginx config",
                files,
                # Debian's default site would answer unknown Hosts; an upstream file of a kit
                # version before the socket switch is no longer included.
                [DEBIAN_DEFAULT_SITE, *(SitePaths.of(s).old_upstream_conf for s in sites)],
                VALIDATE,
                RELOAD,
            ),
            Service("nginx.service"),
            *after,
        ]
    )


def base_steps(inventory: Inventory) -> list[Step]:
    """What `provision` writes on a web host: nginx's base configuration, and nginx running."""
    conf = File(
        "/etc/nginx/nginx.conf",
        render("nginx/nginx.conf.j2", inventory.templates),
        name="nginx base configuration",
    )
    return [
        ConfigSet("nginx-base", "nginx base config", [conf], [], VALIDATE, RELOAD),
        Service("nginx.service"),
    ]


def _one_of_the_domains(r: Reading) -> None:
    redirect_to = r.got["redirect_to"]
    if redirect_to and (redirect_to not in r.the_site().domains or "*" in redirect_to):
        r.fail("redirect_to", f"{values.show(redirect_to)} must be one of the site's domains")


KEYS = Keys(
    Nginx,
    (
        Key(
            "redirect_to",
            DOMAIN,
            None,
            "the canonical domain: the site's other domains answer 301 to it",
        ),
        Rule(("redirect_to", "domains"), _one_of_the_domains, "redirect_to is one of `domains`"),
        Key("max_body_size", NGINX_SIZE, "20m", "the largest request body (uploads)"),
        Key(
            "read_timeout",
            NGINX_TIME,
            "60s",
            "how long a response, or a WebSocket, may stay silent",
        ),
    ),
    help="The site's nginx server block on its web hosts.",
)


class NginxComponent(Component):
    """The keys of [sites.<name>] about nginx; the web host's whole nginx configuration."""

    name = "nginx"
    after = ("tls",)  # nginx in front, last of what a site runs
    roles = ("web",)

    keys = KEYS

    def openings(self, inventory: Inventory, host: Host) -> list[Opening]:
        """HTTP and HTTPS on web hosts, for everyone."""
        if not self.runs_on(host) or not inventory.sites_on(host):
            return []
        return [Opening(80, "HTTP"), Opening(443, "HTTPS")]

    def host_ports(self, inventory: Inventory, host: Host) -> list[tuple[int, str]]:
        """nginx listens on 80 and 443 on every web host: no SSH port, site or service there."""
        if not self.runs_on(host) or not inventory.sites_on(host):
            return []
        return [(80, "nginx (HTTP)"), (443, "nginx (HTTPS)")]

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        # logrotate: Debian's nginx package ships its rules (/var/log/nginx/*.log, each site's
        # own files included) but does not depend on it; a bare host lacks it.
        return ["nginx", "logrotate"] if self.runs_on(host) else []

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        if not self.runs_on(run.host):
            return []
        if phase == Phase.PROVISION:
            return base_steps(run.inventory)
        if phase == Phase.STAGE:
            return host_steps(run.inventory, run.host)
        return []


register(NginxComponent())


@targets_task(
    help={
        "check": "change nothing; report what would change",
        "diff": "show a diff of every changed file (secrets masked)",
        "json_": "print the report as JSON",
        "quiet": "print only changes, failures and the recap",
    }
)
def deploy(c, check=False, diff=False, json_=False, quiet=False):
    """Converge nginx only: the default server and each site's server block."""
    run_plans(c, host_steps, check=check, diff=diff, json_=json_, quiet=quiet)


@targets_task(
    help={"json_": "print the report as JSON", "quiet": "print only changes, failures and recap"}
)
def reload(c, json_=False, quiet=False):
    """Validate the whole nginx configuration (nginx -t), then reload gracefully."""
    script = agent.carried("nginx-reload", "{}")
    step = Run("nginx-reload", "nginx reload", "validate and reload", script, agent.carried_head)
    run_plans(c, lambda inventory, host: [step], json_=json_, quiet=quiet)


@targets_task(help={"json_": "print the report as JSON"})
def status(c, json_=False):
    """Show whether nginx is enabled and running; exits 1 where it is not."""
    run_plans(c, lambda inventory, host: [UnitStatus("nginx.service")], json_=json_)
