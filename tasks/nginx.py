"""nginx in front of every site: the catch-all default server, one server block per site."""

from __future__ import annotations

from .engine.inventory import Host, Inventory, Site
from .engine.layout import DEBIAN_DEFAULT_SITE, NGINX_DEFAULT_CONF, UPSTREAM_DIR, SitePaths
from .engine.render import render
from .engine.steps import NGINX_RELOAD, Absent, Directory, File, Run, Service, Step, UnitStatus
from .engine.switch import upstream_text
from .engine.tasks import run_steps, targets_task

RELOAD = ("reload:nginx.service",)
# Candidates are checked together with the whole live configuration before they stay in place.
VALIDATE = "nginx -t -q"


def site_block(site: Site) -> File:
    paths = SitePaths.of(site)
    return File(
        paths.nginx_conf,
        render("nginx/site.conf.j2", site=site, paths=paths),
        notify=RELOAD,
        validate=VALIDATE,
        name=f"nginx server block {site.name}",
    )


def site_steps(site: Site) -> list[Step]:
    """The server block, and the upstream file it includes (each switch rewrites that one)."""
    paths = SitePaths.of(site)
    return [
        File(
            paths.upstream_conf,
            upstream_text(paths.slot_port("a")),
            create_only=True,
            name=f"nginx upstream {site.name}",
        ),
        site_block(site),
    ]


def base_steps() -> list[Step]:
    """Host-wide: Debian's default site off (it would answer unknown Hosts), ours on."""
    return [
        Directory(UPSTREAM_DIR),
        Absent(DEBIAN_DEFAULT_SITE, notify=RELOAD, name="nginx debian default site absent"),
        File(
            NGINX_DEFAULT_CONF,
            render("nginx/default.conf.j2"),
            notify=RELOAD,
            validate=VALIDATE,
            name="nginx default server",
        ),
        Service("nginx.service"),
    ]


def host_steps(inventory: Inventory, host: Host) -> list[Step]:
    return [
        *base_steps(),
        *(step for site in inventory.sites_on(host) for step in site_steps(site)),
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
