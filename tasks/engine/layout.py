"""Where a site lives on a host. One place, so templates, steps and tests agree.

/srv/djk/<site>/
  releases/<id>/     source, .venv -> /srv/djk/.kit/venvs/<deps>, .djk-release.{json,env},
                     .djk-status (the venvs are the host's, shared by sites: engine/python_env.py)
  venvs/<deps>/      virtualenvs of kit versions before the host-wide ones
  shared/            env (0600), db, anything that outlives a release
  static/<id>/       each release's collected static files (its DJANGO_STATIC_ROOT)
  static/{current,next,previous} -> <id>: what nginx serves, in that order
  current            -> releases/<id>, renamed over atomically
  slots/{a,b}        -> ../releases/<id>: what each of the two gunicorn units runs
  sockets/{a,b}.sock each slot's gunicorn listens here (a unix socket, nothing else reaches it)
  sockets/live.sock  -> a.sock | b.sock: the live slot. nginx on this host, or the forwarder
                     that nginx on other hosts reaches (address:port), connects through this
                     link for each new connection: a switch renames it, nginx is not reloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import procs
from .inventory import Host, Site

ROOT = "/srv/djk"
SLOTS = ("a", "b")
NGINX_DEFAULT_CONF = "/etc/nginx/sites-enabled/djk-00-default.conf"
DEBIAN_DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
UPSTREAM_DIR = "/etc/nginx/djk"


@dataclass(frozen=True)
class App:
    """A site's Django app: the keys of [sites.<name>] that the app component reads."""

    source: Path
    requirements: Path | tuple[str, ...]  # a file in source, or the requirements themselves
    asgi: str | None
    settings: str
    port: int
    wsgi: str | None = None  # instead of asgi: gunicorn's own workers
    worker_class: str = ""  # wsgi: gthread (default) or sync
    threads: int = 1  # wsgi with gthread: threads per worker
    build: str | None = None  # run on the control machine in a clean copy of the source
    build_outputs: tuple[str, ...] = ()  # what the build makes that is shipped with the source
    workers: int = 2
    health_path: str | None = None  # None: probe / (a redirect on the site's domains passes)
    health_expect_release: bool = False  # the health answer must also name the release
    health_timeout: int = 60
    drain_timeout: int = 30  # seconds the old slot's connections (WebSockets) get to close
    keep_releases: int = 5
    migrate_on: str = "one"  # "one" host per deploy (shared database) or "every" host
    migrate_split: bool = True  # migrations split around the switch (release/schema.py)
    check_deploy: bool = True  # manage.py check --deploy on each staged release
    python: str | None = None  # "3.13": the hosts' python3 must be this version

    @property
    def application(self) -> str:
        """The module:attribute gunicorn serves."""
        return self.asgi or self.wsgi or ""

    @property
    def gunicorn_worker(self) -> str:
        """gunicorn's --worker-class (and --threads) for the app."""
        if self.asgi:
            return "--worker-class uvicorn_worker.UvicornWorker"
        threads = f" --threads {self.threads}" if self.worker_class == "gthread" else ""
        return f"--worker-class {self.worker_class}{threads}"


def app_of(site: Site) -> App:
    app = site.part(App)
    if app is None:  # the app component always parses its keys: only a broken setup lands here
        raise LookupError(f"site {site.name} has no app configuration")
    return app


@dataclass(frozen=True)
class SitePaths:
    name: str
    base: str
    port: int
    manager: str = procs.SYSTEMD  # the host's process manager (names of the site's processes)

    @classmethod
    def of(cls, site: Site, host: Host | None = None) -> SitePaths:
        manager = procs.of(host).kind if host is not None else procs.SYSTEMD
        return cls(site.name, f"{ROOT}/{site.name}", app_of(site).port, manager)

    @property
    def procs(self) -> procs.Manager:
        return procs.Manager(self.manager)

    def process(self, role: str) -> str:
        """A process of the site (web-a, worker, beat, flower, forward) as the manager names it."""
        return self.procs.name(f"djk-{self.name}-{role}")

    @property
    def releases(self) -> str:
        return f"{self.base}/releases"

    def release(self, release_id: str) -> str:
        return f"{self.releases}/{release_id}"

    @property
    def current(self) -> str:
        return f"{self.base}/current"

    @property
    def venvs(self) -> str:
        return f"{self.base}/venvs"

    @property
    def shared(self) -> str:
        return f"{self.base}/shared"

    @property
    def env(self) -> str:
        return f"{self.shared}/env"

    @property
    def gunicorn_conf(self) -> str:
        """The slots' gunicorn --config (root's: the site user reads it)."""
        return f"{self.base}/gunicorn.conf.py"

    @property
    def db(self) -> str:
        return f"{self.shared}/db.sqlite3"

    @property
    def static(self) -> str:
        return f"{self.base}/static"

    def release_static(self, release_id: str) -> str:
        """A release's collectstatic target (its DJANGO_STATIC_ROOT)."""
        return f"{self.static}/{release_id}"

    @property
    def slots(self) -> str:
        return f"{self.base}/slots"

    def slot(self, slot: str) -> str:
        return f"{self.slots}/{slot}"

    @property
    def sockets(self) -> str:
        return f"{self.base}/sockets"

    def slot_socket(self, slot: str) -> str:
        return f"{self.sockets}/{slot}.sock"

    @property
    def live_socket(self) -> str:
        return f"{self.sockets}/live.sock"

    @property
    def forward_unit(self) -> str:
        """The forwarder (systemd-socket-proxyd) from address:port to the live slot, on an app
        host whose nginx runs elsewhere; under systemd socket-activated by forward_socket."""
        return self.process("forward")

    @property
    def forward_socket(self) -> str:
        """What keeps the forwarder's address open: the systemd socket unit, or under
        supervisor the program itself (systemd-socket-activate holds the socket)."""
        if self.manager == procs.SUPERVISOR:
            return self.forward_unit
        return f"djk-{self.name}-forward.socket"

    def web_unit(self, slot: str) -> str:
        return self.process(f"web-{slot}")

    @property
    def run_dir(self) -> str:
        """Supervisor hosts: the slots' runtime directories (systemd makes them in /run)."""
        return f"{self.base}/run"

    @property
    def web_units(self) -> tuple[str, ...]:
        return tuple(self.web_unit(s) for s in SLOTS)

    @property
    def nginx_conf(self) -> str:
        return f"/etc/nginx/sites-enabled/djk-site-{self.name}.conf"

    @property
    def nginx_access_log(self) -> str:
        """The site's own nginx logs; Debian's logrotate rotates /var/log/nginx/*.log."""
        return f"/var/log/nginx/djk-{self.name}.access.log"

    @property
    def nginx_error_log(self) -> str:
        return f"/var/log/nginx/djk-{self.name}.error.log"

    @property
    def old_upstream_conf(self) -> str:
        """Where kit versions before the socket switch kept the upstream (removed on sight)."""
        return f"{UPSTREAM_DIR}/{self.name}.upstream"

    @property
    def tls_dir(self) -> str:
        return f"/etc/djk/tls/{self.name}"

    @property
    def acme_webroot(self) -> str:
        return f"/var/lib/djk/acme/{self.name}"

    @property
    def cycle(self) -> str:
        """The pending-handler name for "restart this site's app" (done by a slot switch)."""
        return f"cycle:{self.name}"
