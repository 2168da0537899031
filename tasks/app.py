"""The Django app of each site: user, directories, source, dependencies, env file, unit."""

from __future__ import annotations

import shlex

from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths
from .engine.python_env import Venv
from .engine.render import render
from .engine.steps import Directory, File, MarkedCommand, Service, Step, SystemUser, UnitStatus
from .engine.tasks import run_steps, targets_task, user_error
from .engine.tree import Tree


def env_entries(site: Site, paths: SitePaths, release: str) -> list[tuple[str, str]]:
    """The env file's variables: derived ones first, then the inventory's, then the secrets."""
    origins = []
    hosts = []
    for domain in site.domains:
        hosts.append(domain[1:] if domain.startswith("*.") else domain)
        origins += [f"https://{domain}", f"http://{domain}"]
    entries = {
        "DJANGO_SETTINGS_MODULE": site.settings,
        "DJANGO_ALLOWED_HOSTS": ",".join(hosts),
        "DJANGO_CSRF_TRUSTED_ORIGINS": ",".join(origins),
        "DJANGO_STATIC_ROOT": paths.static,
        "DJANGO_DB_PATH": paths.db,
        "APP_RELEASE": release,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    entries.update(site.env)
    entries.update({key: secret.reveal() for key, secret in site.secrets.items()})
    return list(entries.items())


def manage(site: Site, paths: SitePaths, args: str) -> str:
    """A manage.py command as the site user, with the site's env file, never as root."""
    inner = (
        f"set -a; . {shlex.quote(paths.env)}; set +a; cd {shlex.quote(paths.src)} && "
        f"exec {shlex.quote(paths.venv)}/bin/python manage.py {args}"
    )
    return f"runuser -u {shlex.quote(site.user)} -- /bin/sh -c {shlex.quote(inner)}"


def site_steps(site: Site) -> list[Step]:
    paths = SitePaths.of(site)
    restart = (f"restart:{paths.web_unit}",)
    source = Tree(site.source, paths.src, group=site.user, notify=restart)
    venv = Venv(paths.base, site.requirements, group=site.user, notify=restart)
    release = source.digest[:12]
    build = f"{source.digest[:16]}-{venv.key}"
    env_file = File(
        paths.env,
        render("app/env.j2", entries=env_entries(site, paths, release)),
        owner=site.user,
        group=site.user,
        mode="600",
        notify=restart,
        secret_keys=tuple(site.secrets),
        name=f"env file {paths.env}",
    )
    unit = File(
        f"/etc/systemd/system/{paths.web_unit}",
        render("systemd/web.service.j2", site=site, paths=paths),
        notify=("daemon-reload", *restart),
        name=f"unit {paths.web_unit}",
    )
    return [
        SystemUser(site.user, paths.base),
        Directory(paths.base, "root", site.user, "751"),
        Directory(paths.shared, site.user, site.user, "700"),
        Directory(paths.static, site.user, site.user, "755"),
        source,
        venv,
        env_file,
        MarkedCommand(
            f"migrate:{site.name}",
            f"migrate {site.name}",
            manage(site, paths, "migrate --noinput"),
            marker=f"{paths.shared}/.djk-migrated",
            key=build,
            progress="migrating",
        ),
        MarkedCommand(
            f"collectstatic:{site.name}",
            f"collectstatic {site.name}",
            manage(site, paths, "collectstatic --noinput"),
            marker=f"{paths.base}/.djk-collected",
            key=build,
            progress="collecting static files",
        ),
        unit,
        Service(paths.web_unit),
    ]


def sites_or_exit(inventory: Inventory, host: Host) -> list[Site]:
    sites = inventory.sites_on(host)
    if not sites:
        raise user_error(
            f"host {host.name!r} runs no site: add it to a site's `hosts` in "
            f"{inventory.path.name} (sites.<name>.hosts)"
        )
    return sites


def host_steps(inventory: Inventory, host: Host) -> list[Step]:
    return [step for site in sites_or_exit(inventory, host) for step in site_steps(site)]


@targets_task
def deploy(c, check=False, diff=False, json_=False, quiet=False):
    """Converge only the Django apps (no nginx): source, dependencies, env, migrate, unit."""
    run_steps(c, host_steps, check=check, diff=diff, json_=json_, quiet=quiet)


@targets_task
def status(c, json_=False):
    """Show each site's gunicorn unit state; exits 1 where one is not running."""
    run_steps(
        c,
        lambda inventory, host: [
            UnitStatus(SitePaths.of(site).web_unit) for site in sites_or_exit(inventory, host)
        ],
        json_=json_,
    )
