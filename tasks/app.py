"""The Django app of each site: its hosts.toml keys, user, directories, env file and gunicorn
processes, and the phases of its release (tasks/release/: build, stage, prepare, migrate, the
health-gated switch and the check through nginx).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from . import release
from .engine import agent, procs, python_env, topology, values, wheels
from .engine.cli import run_plans, targets_task, user_error
from .engine.component import Component, HostRun, Opening, Phase, components, register
from .engine.facts import Fact, Stat, Unit
from .engine.inventory import Host, Inventory, Site
from .engine.keys import (
    APPLICATION,
    BOOL,
    DOTTED,
    PYTHON_VERSION,
    SHELL_LINE,
    SOURCE_PATH,
    URL_PATH,
    Derived,
    Key,
    Keys,
    Kind,
    Reading,
    Rule,
    choice,
    integer,
)
from .engine.layout import SLOTS, App, SitePaths, app_of
from .engine.render import render
from .engine.schema import InventoryError
from .engine.secrets import Secret
from .engine.steps import (
    Context,
    Directories,
    Directory,
    File,
    Plan,
    Service,
    Step,
    SystemUser,
    UnitStatus,
)

# -- the env file --------------------------------------------------------------------------------


def env_entries(inventory: Inventory, site: Site) -> list[tuple[str, str | Secret]]:
    """The env file's variables: every component's (the app's derived ones first), then the
    inventory's `env`, then the secrets."""
    entries: dict[str, str | Secret] = {}
    for component in components():
        entries.update(component.env(inventory, site))
    entries.update(site.env)
    local = {key for component in components() for key in component.control_secrets(site)}
    entries.update((k, v) for k, v in site.secrets.items() if k not in local)
    return list(entries.items())


# Variables that change how the interpreter, the loader or the shell run: never from the
# inventory or the secrets file (a typo here runs other code as the site user).
REFUSED_ENV = (
    "PATH",
    "IFS",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
)


def check_env_names(inventory: Inventory, site: Site) -> None:
    """`env` and the secrets may not set what the kit derives (unless the site lists it in
    `env_override`) nor any of REFUSED_ENV."""
    derived = {k: c.name for c in components() for k in c.env_names(inventory, site)}
    given = [(f"sites.{site.name}.env.{k}", k, "env") for k in site.env]
    given += [(f"sites.{site.name}.env_file", k, "the secrets file") for k in site.secrets]
    for key, name, where in given:
        if name in REFUSED_ENV:
            raise InventoryError(
                inventory.path, key, f"{name} in {where}: the kit never sets {name} for a site"
            )
        if name in derived and name not in site.env_override:
            raise InventoryError(
                inventory.path,
                key,
                f"{name} in {where}: the kit derives it ({derived[name]}); to set it anyway, "
                f'add "{name}" to sites.{site.name}.env_override',
            )
    for i, name in enumerate(site.env_override):
        if name not in derived:
            raise InventoryError(
                inventory.path,
                f"sites.{site.name}.env_override[{i}]",
                f"{values.show(name)} is not a variable the kit derives (nothing to override)",
            )


def env_file(inventory: Inventory, site: Site, host: Host) -> File:
    paths = SitePaths.of(site)
    entries = env_entries(inventory, site)
    notify = tuple(n for c in components() for n in c.env_notify(site, host))
    return File(
        paths.env,
        render(
            "app/env.j2",
            inventory.templates,
            entries=[(k, v.reveal() if isinstance(v, Secret) else v) for k, v in entries],
        ),
        # The same template with the Secret objects themselves: env_quote masks them there.
        shown=render("app/env.j2", inventory.templates, entries=entries),
        owner=site.user,
        group=site.user,
        mode="600",
        notify=notify,
        secret_keys=tuple(k for k, v in entries if isinstance(v, Secret)),
        secret_env=True,
        name=f"env file {paths.env}",
    )


# -- processes and steps ------------------------------------------------------------------------


PROXYD = "/lib/systemd/systemd-socket-proxyd"
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


def unit_files(inventory: Inventory, site: Site, host: Host) -> list[Step]:
    """Both slots' gunicorn processes (systemd units or supervisor programs; under supervisor
    also the boot program that starts the live one); on an app host behind nginx elsewhere,
    the forwarder too."""
    paths = SitePaths.of(site, host)
    manager = paths.procs
    web = manager.template("web")
    # (process, template, handlers it notifies, the template's own values)
    found: list[tuple[str, str, tuple[str, ...], dict[str, object]]] = [
        (paths.web_unit(slot), web, (paths.cycle,), {"slot": slot, "after": procs.backing_units()})
        for slot in SLOTS
    ]
    boot = manager.boot_program(site.name)
    if boot:
        # Started once whenever its file changes (it exits at once: the live slot runs).
        found.append((boot, manager.template("boot"), (f"restart:{boot}",), {}))
    if topology.split(inventory, site):
        fronts = [h.peer_address for h in topology.hosts_with(inventory, site, "web")]
        forward = {
            "proxyd": PROXYD,
            "socket_activate": SOCKET_ACTIVATE,
            "bind": values.url_host(host.peer_address),
            "port": app_of(site).port,
            "allow": [*fronts, host.peer_address, "127.0.0.0/8"],
        }
        unit = paths.forward_unit
        if manager.kind == procs.SYSTEMD:
            socket = paths.forward_socket
            found.append((socket, "systemd/forward.socket.j2", (f"restart:{socket}",), forward))
        found.append((unit, manager.template("forward"), (f"restart:{unit}",), forward))
    steps: list[Step] = [
        File(
            manager.config_path(name),
            render(
                template,
                inventory.templates,
                site=site,
                app=app_of(site),
                paths=paths,
                **extra,
            ),
            notify=(*manager.changed(name), *notify),
            name=f"{'program' if procs.is_program(name) else 'unit'} {name}",
        )
        for name, template, notify, extra in found
    ]
    steps.append(
        File(
            paths.gunicorn_conf,
            render("app/gunicorn.conf.py.j2", inventory.templates, site=site),
            group=site.user,
            mode="640",
            notify=(paths.cycle,),  # read as a slot starts: the next switch starts one
            name=f"gunicorn config {paths.gunicorn_conf}",
        )
    )
    if topology.split(inventory, site):
        steps.append(Service(paths.forward_socket))
    return steps


def site_steps(build: release.Build, inventory: Inventory, host: Host) -> list[Step]:
    """Everything up to a staged release on a host, for the roles it has for the site."""
    site = build.site
    paths = SitePaths.of(site, host)
    steps: list[Step] = [
        SystemUser(site.user, paths.base),
        Directories(
            f"directories of {site.name}",
            [
                Directory(paths.base, "root", site.user, "751"),
                Directory(paths.shared, site.user, site.user, "700"),
                Directory(paths.static, site.user, site.user, "755"),
                Directory(paths.releases, "root", site.user, "750"),
                Directory(paths.venvs, "root", site.user, "750"),
                Directory(paths.slots, "root", site.user, "750"),
                # gunicorn (the site user) makes the slots' sockets here; nginx (www-data)
                # connects.
                Directory(paths.sockets, site.user, "www-data", "750"),
                # supervisor makes no runtime directory: the slots' gunicorn control sockets.
                *(
                    [Directory(paths.run_dir, site.user, site.user, "700")]
                    if paths.manager == procs.SUPERVISOR
                    else []
                ),
            ],
        ),
        env_file(inventory, site, host),
        *release.release_steps(build, inventory, host),
    ]
    if "app" in topology.roles(host):
        steps += unit_files(inventory, site, host)
    return steps


# What the app's processes run with, when the project's requirements do not name it (a project
# pinning its own gunicorn or uvicorn keeps its version).
SERVER = ("gunicorn==27.0.1",)
ASGI_SERVER = ("uvicorn-worker==0.4.0", "uvicorn==0.54.0", "websockets==17.4")


# -- the component -------------------------------------------------------------------------------


def _is(path: Path, test: Callable[[Path], bool]) -> bool:
    """Path.is_file/is_dir, False also where the system refuses the name (too long: pathlib
    raises ENAMETOOLONG rather than answer)."""
    try:
        return test(path)
    except OSError:
        return False


def _source(r: Reading, key: Key) -> Path:
    source = r.table.get_path(key.name)
    if source is None or not _is(source, Path.is_dir):
        r.fail(key.name, f"{values.show_path(source)} is not a directory")
    return source


_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._ -]*\])?[ ]*([<>=!~;@ ].*)?")


def requirement(value: str) -> str:
    """One requirement as a requirements file's line holds it (PEP 508: a name, extras,
    versions, markers), never a pip option (`-e`, `--index-url`) or a second line."""
    if len(value) > 300 or not value.isprintable() or not _REQUIREMENT.fullmatch(value):
        raise ValueError(
            f'{values.show(value)} is not a requirement such as "Django>=5.2,<5.3" '
            "(a name, extras, versions, markers; no pip option)"
        )
    return value


def _requirements(r: Reading, key: Key) -> Path | tuple[str, ...]:
    if isinstance(r.table.table.get(key.name), list):
        # The project has no requirements file: hosts.toml names its dependencies.
        return r.table.get_list(key.name, requirement)
    source: Path = r.got["source"]
    requirements = source / r.table.get(key.name, str, default=key.default)
    try:
        requirements = requirements.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        # str(exc) may quote the whole path: the reason alone, the path shortened.
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        r.fail(key.name, f"{values.show_path(requirements)}: {reason}")
    if not requirements.is_relative_to(source):
        r.fail(
            key.name,
            f"{values.show_path(requirements)} is outside source ({values.show_path(source)})",
        )
    if not _is(requirements, Path.is_file):
        r.fail(key.name, f"{values.show_path(requirements)} does not exist")
    return requirements


SOURCE = Kind(
    "project directory",
    str,
    "a directory on the control machine, relative to hosts.toml's directory: the Django "
    "project (manage.py in it) as git tracks it",
    samples=("example",),
    edges=("", "~nosuchuser/x", "/tmp/\x00x", "/nonexistent"),
    read=_source,
)
REQUIREMENTS = Kind(
    "file in the source, or requirements",
    str,
    "a file inside `source`, relative to it; or, for a project without one, a list of "
    'requirements (`["Django>=5.2,<5.3"]`)',
    samples=("requirements.txt",),
    edges=("../README.md", "missing.txt", "/etc/passwd", ""),
    read=_requirements,
)


def _asgi_or_wsgi(r: Reading) -> None:
    asgi, wsgi = r.got["asgi"], r.got["wsgi"]
    if asgi is None and wsgi is None:
        r.fail("asgi", 'is required (or wsgi = "package.wsgi:application")')
    if asgi is not None and wsgi is not None:
        r.fail("wsgi", "give asgi or wsgi, not both")


def _worker_class_for_wsgi(r: Reading) -> None:
    if r.got["asgi"] is not None and "worker_class" in r.given:
        r.fail("worker_class", "is for wsgi sites (ASGI runs uvicorn workers)")


def _threads_for_gthread(r: Reading) -> None:
    gthread = r.got["asgi"] is None and r.got["worker_class"] == "gthread"
    if "threads" in r.given and not gthread:
        r.fail("threads", 'is for wsgi sites with worker_class = "gthread"')


def _outputs_need_build(r: Reading) -> None:
    if r.got["build_outputs"] and r.got["build"] is None:
        r.fail("build_outputs", "lists what `build` makes: give build too")


KEYS = Keys(
    App,
    (
        Key("source", SOURCE, help="the Django project's directory"),
        Key(
            "requirements",
            REQUIREMENTS,
            "requirements.txt",
            "the requirements file, or a lock (uv.lock, poetry.lock, pyproject.toml), the "
            "site's venv is made from; or the requirements themselves, as a list",
        ),
        Key("asgi", APPLICATION, None, "the ASGI application, served by uvicorn workers"),
        Key("wsgi", APPLICATION, None, "instead of asgi: the WSGI application"),
        Rule(("asgi", "wsgi"), _asgi_or_wsgi, "give asgi or wsgi, one of them"),
        Key(
            "worker_class",
            choice("gthread", "sync"),
            Derived(lambda r: "gthread" if r.got["wsgi"] else "", '"gthread" for wsgi'),
            "gunicorn's worker class for a wsgi site",
        ),
        Rule(("asgi", "worker_class"), _worker_class_for_wsgi, "worker_class is for wsgi sites"),
        Key(
            "threads",
            integer(1, 64),
            Derived(
                lambda r: 4 if r.got["wsgi"] and r.got["worker_class"] == "gthread" else 1,
                "4 with gthread",
            ),
            "threads per gunicorn worker",
        ),
        Rule(
            ("threads", "worker_class"),
            _threads_for_gthread,
            'threads is for wsgi sites with worker_class = "gthread"',
        ),
        Key(
            "build",
            SHELL_LINE,
            None,
            "run on the control machine in a clean copy of the source before it is shipped",
        ),
        Key(
            "build_outputs",
            SOURCE_PATH,
            (),
            "what `build` makes that is shipped though git ignores it",
            many=True,
            empty=True,
        ),
        Rule(("build_outputs", "build"), _outputs_need_build, "build_outputs needs build"),
        Key("settings", DOTTED, help="the Django settings module (DJANGO_SETTINGS_MODULE)"),
        Key(
            "port",
            integer(1024, 65534),
            help="the app's TCP port on an app host behind nginx elsewhere; unique per host",
        ),
        Key("workers", integer(1, 64), 2, "gunicorn workers per slot"),
        Key(
            "health_path",
            URL_PATH,
            None,
            "the path the health gate asks for (default: /, where a redirect passes)",
        ),
        Key(
            "health_expect_release",
            BOOL,
            False,
            "the health answer's body must also hold the release id (APP_RELEASE)",
        ),
        Key("keep_releases", integer(1, 100), 5, "releases kept on each host"),
        Key(
            "health_timeout",
            integer(5, 900, "seconds"),
            60,
            "how long a new slot may take to answer healthy",
        ),
        Key(
            "drain_timeout",
            integer(0, 86400, "seconds"),
            30,
            "how long the old slot's connections (WebSockets) get to close after a switch",
        ),
        Key(
            "migrate_on",
            choice("one", "every"),
            "one",
            'migrations on "one" app host per deploy (a shared database) or on "every" one',
        ),
        Key(
            "migrate_split",
            BOOL,
            True,
            "split migrations around the switch: additions before it, removals after the old "
            "release is gone, the rest refused (false: all before it, as Django writes them)",
        ),
        Key("check_deploy", BOOL, True, "run manage.py check --deploy on each staged release"),
        Key("python", PYTHON_VERSION, None, "the hosts' python3 must be this version"),
    ),
    help="The Django app: where its code is, what gunicorn serves, and how a release goes live.",
)


class AppComponent(Component):
    """The keys of [sites.<name>] itself: source, asgi, settings, port, workers, health, ..."""

    name = "app"
    after = ("broker-check",)  # the app before its workers
    roles = ("app",)

    keys = KEYS

    def check(self, inventory: Inventory) -> None:
        for site in inventory.sites.values():
            if not topology.hosts_with(inventory, site, "app"):
                raise InventoryError(
                    inventory.path, f"sites.{site.name}.hosts", "no host with the app role"
                )
            check_env_names(inventory, site)

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        # No python3-venv: uv makes the venvs (engine/python_env.py).
        return ["python3"] if inventory.sites_on(host) else []

    def python_packages(self, site: Site) -> list[str]:
        app = app_of(site)
        return [*SERVER, *(ASGI_SERVER if app.asgi else ())]

    def openings(self, inventory: Inventory, host: Host) -> list[Opening]:
        """The forwarder of a split site on its app hosts, for the site's web hosts."""
        found = []
        for site in inventory.sites_on(host):
            if "app" in topology.roles(host) and topology.split(inventory, site):
                web = topology.peers(topology.hosts_with(inventory, site, "web"), host)
                if web:
                    found.append(Opening(app_of(site).port, f"{site.name}: app", web))
        return found

    def ports(self, site: Site) -> list[tuple[int, str]]:
        port = app_of(site).port
        # Where nginx on other hosts reaches the app (the forwarder); reserved on every host of
        # the site, so a change of roles cannot make it collide. The slots use unix sockets.
        return [(port, "the app's forwarder")]

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        paths = SitePaths.of(site)
        origins = []
        hosts = []
        for domain in site.domains:
            hosts.append(domain[1:] if domain.startswith("*.") else domain)
            origins += [f"https://{domain}", f"http://{domain}"]
        return {
            # The kit's settings layer in each release (release/djk_settings.py) imports the
            # project's own module and sets what hosts.toml manages over it.
            "DJANGO_SETTINGS_MODULE": release.layer.MODULE,
            "DJK_SETTINGS": app_of(site).settings,
            "DJK_SHARED": paths.shared,
            "DJANGO_ALLOWED_HOSTS": ",".join(hosts),
            "DJANGO_CSRF_TRUSTED_ORIGINS": ",".join(origins),
            "DJANGO_DB_PATH": paths.db,
            # Releases and venvs are read-only to the site user (the venvs' bytecode is compiled
            # when they are installed, engine/python_env.py).
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def env_notify(self, site: Site, host: Host) -> tuple[str, ...]:
        return (SitePaths.of(site).cycle,) if "app" in topology.roles(host) else ()

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        inventory, host = run.inventory, run.host
        roles = topology.roles(host)
        if not roles & {"app", "web", "worker"}:  # e.g. a host that only holds databases
            return []
        job = run.job
        if job is None:
            return []
        if phase == Phase.STAGE:
            builds = [job.builds[site.name] for site in run.sites]
            venvs = [(b.house, b.deps) for b in builds if b.house is not None]
            return [
                *python_env.host_steps(venvs, wheels.Target.of(host.platform)),
                *(s for build in builds for s in site_steps(build, inventory, host)),
            ]
        if phase == Phase.MIGRATE:
            return [
                release.migrate_step(job.builds[s.name], inventory, host.name)
                for s in run.sites
                if release.migrates_here(inventory, s, host)
            ]
        if phase == Phase.CONTRACT:
            return [
                release.AfterSwitch(job.builds[s.name])
                for s in run.sites
                if s.name in job.builds and release.migrates_here(inventory, s, host)
            ]
        if phase == Phase.SWITCH:
            # The agent runs the switch here and, on a web host of a split site, the check
            # through nginx in the verify phase after it.
            switching = (
                [release.switch_step(run, job, site) for site in run.sites]
                if "app" in roles
                else []
            )
            verifying = "web" in roles and any(topology.split(inventory, s) for s in run.sites)
            # What runs the site's code here imports the layer from the target release.
            layers = (
                [release.LayerIn(site, job.target(site)) for site in run.sites]
                if roles & {"app", "worker"}
                else []
            )
            agent_step = [agent.installed()] if switching or verifying else []
            return [*agent_step, *layers, *switching]
        if phase == Phase.VERIFY:
            verify = [
                release.Verify(site, job.target(site), mark_old=job.mark_old)
                for site in run.sites
                if "web" in roles and topology.split(inventory, site)
            ]
            # Before the contract phase: no process of the old release left where the site's
            # code runs (only when that phase has work).
            gone = [
                release.OldGone(inventory, site, host, job.builds[site.name])
                for site in run.sites
                if roles & {"app", "worker"} and site.name in job.builds
            ]
            return [*verify, *gone]
        return []


register(AppComponent())


# -- tasks ---------------------------------------------------------------------------------------


class LiveSlot(UnitStatus):
    """The site's live gunicorn slot (the one sockets/live.sock links to) is running."""

    def __init__(self, site: Site, host: Host) -> None:
        self.paths = SitePaths.of(site, host)
        super().__init__(self.paths.web_unit("a"))
        self.id = f"status:{site.name}"
        self.name = f"status {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Stat(self.paths.live_socket), *(Unit(u) for u in self.paths.web_units)]

    def plan(self, ctx: Context) -> Plan:
        slot = release.current_slot(ctx.facts, self.paths)
        if slot is None:
            return Plan(error="not deployed")
        return UnitStatus(self.paths.web_unit(slot)).plan(ctx)


def sites_or_exit(inventory: Inventory, host: Host) -> list[Site]:
    sites = inventory.sites_on(host)
    if not sites:
        raise user_error(
            f"host {host.name!r} runs no site: add it to a site's `hosts` in "
            f"{inventory.path.name} (sites.<name>.hosts)"
        )
    return sites


@targets_task(help={"json_": "print the report as JSON"})
def status(c, json_=False):
    """Show each site's live gunicorn slot on its app hosts; exits 1 where it is not running."""

    def build(inventory: Inventory, host: Host) -> list[Step]:
        sites = sites_or_exit(inventory, host)
        if "app" not in topology.roles(host):
            return []
        return [LiveSlot(site, host) for site in sites]

    run_plans(c, build, json_=json_)
