"""nginx in front of every site: the catch-all default server, one server block per site."""

from __future__ import annotations

from . import tls
from .engine import topology
from .engine.inventory import Host, Inventory, Site
from .engine.layout import DEBIAN_DEFAULT_SITE, NGINX_DEFAULT_CONF, UPSTREAM_DIR, SitePaths
from .engine.render import render
from .engine.steps import (
    NGINX_RELOAD,
    ConfigSet,
    Directory,
    File,
    Run,
    Service,
    Step,
    UnitStatus,
)
from .engine.switch import static_upstream, upstream_text
from .engine.tasks import run_steps, targets_task

RELOAD = ("reload:nginx.service",)
VALIDATE = "nginx -t"


def site_files(site: Site, inventory: Inventory | None = None) -> list[File]:
    """The server block, and the upstream file it includes: on a host that also runs the app,
    each switch rewrites it; when the app runs on other hosts, it lists them all."""
    paths = SitePaths.of(site)
    if inventory is not None and topology.split(inventory, site):
        apps = [h.address for h in topology.hosts_with(inventory, site, "app")]
        upstream = File(
            paths.upstream_conf, static_upstream(paths, apps), name=f"upstream {site.name}"
        )
    else:
        upstream = File(
            paths.upstream_conf,
            upstream_text(paths.slot_port("a")),
            create_only=True,
            name=f"upstream {site.name}",
        )
    return [
        upstream,
        File(
            paths.nginx_conf,
            render("nginx/site.conf.j2", site=site, paths=paths),
            name=f"server block {site.name}",
        ),
        *tls_files(site),
    ]


def tls_files(site: Site) -> list[File]:
    if site.tls is None or site.tls.mode != "files":
        return []
    paths = SitePaths.of(site)
    return [
        File(f"{paths.tls_dir}/fullchain.pem", site.tls.cert, name=f"certificate {site.name}"),
        File(
            f"{paths.tls_dir}/privkey.pem",
            site.tls.key.reveal(),
            mode="600",
            name=f"private key {site.name}",
            secret_content=True,
        ),
    ]


def host_steps(inventory: Inventory, host: Host) -> list[Step]:
    """nginx's whole managed configuration for a host, validated as one candidate set: our
    default server (Debian's default site goes: it would answer unknown Hosts), and every site's
    server block and upstream."""
    sites = [s for s in inventory.sites_on(host) if "web" in topology.roles(host)]
    default = render("nginx/default.conf.j2", tls=any(site.tls for site in sites))
    files = [File(NGINX_DEFAULT_CONF, default, name="default server")]
    for site in sites:
        files += site_files(site, inventory)
    tls_dirs = [SitePaths.of(s).tls_dir for s in sites if s.tls]
    return [
        Directory(UPSTREAM_DIR),
        Directory("/var/lib/djk"),
        *([Directory("/etc/djk"), Directory("/etc/djk/tls")] if tls_dirs else []),
        *(Directory(d, mode="700") for d in tls_dirs),
        *tls.before_nginx(sites),
        ConfigSet("nginx-config", "nginx config", files, [DEBIAN_DEFAULT_SITE], VALIDATE, RELOAD),
        Service("nginx.service"),
        *tls.after_nginx(sites),
    ]


@targets_task
def deploy(c, check=False, diff=False, json_=False, quiet=False):
    """Converge nginx only: the default server and each site's server block."""
    run_steps(c, host_steps, check=check, diff=diff, json_=json_, quiet=quiet)


@targets_task
def reload(c, json_=False, quiet=False):
    """Validate the whole nginx configuration (nginx -t), then reload gracefully."""
    step = Run("nginx-reload", "nginx reload", "validate and reload", NGINX_RELOAD)
    run_steps(c, lambda inventory, host: [step], json_=json_, quiet=quiet)


@targets_task
def status(c, json_=False):
    """Show whether nginx is enabled and running; exits 1 where it is not."""
    run_steps(c, lambda inventory, host: [UnitStatus("nginx.service")], json_=json_)
