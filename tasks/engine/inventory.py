"""hosts.toml: parse, validate and resolve targets, before any host is touched.

Every error names the file, the key path and what is wrong, in one line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import values
from .secrets import Secret, load_env_file

DEFAULT_INVENTORY = "hosts.toml"


class InventoryError(Exception):
    """A user error in the inventory: one line, file and key path first."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    user: str = "deploy"
    port: int = 22
    ssh_key: Path | None = None
    ssh_alias: str | None = None
    roles: tuple[str, ...] = ()
    in_inventory: bool = True

    @property
    def connect_to(self) -> str:
        """What the SSH client is given: an ssh_config alias wins over the address."""
        return self.ssh_alias or self.address


@dataclass(frozen=True)
class Celery:
    """Celery for a site: a worker (and optionally beat) on a Redis the kit runs on the host
    (`broker = "local"`) or on the broker URL in the site's secrets (`"external"`)."""

    app: str
    concurrency: int = 2
    queues: tuple[str, ...] = ("celery",)
    options: tuple[str, ...] = ()
    beat: bool = False
    broker: str = "local"
    redis_db: int = 0
    stop_timeout: int = 300


@dataclass(frozen=True)
class Flower:
    port: int


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Tls:
    """HTTPS for a site: certificate files given (mode "files"), or from an ACME server with
    certbot over http-01 (mode "acme"), renewed by certbot's timer."""

    mode: str = "files"
    cert: str = ""  # "files": PEM text of the chain
    key: Secret | None = None  # "files": PEM text of the private key
    hsts: bool = False
    email: str = ""  # "acme": the account's contact
    server: str = LETS_ENCRYPT  # "acme": the directory URL
    ca_bundle: str = ""  # "acme": PEM the host trusts for the ACME server (test servers)


@dataclass(frozen=True)
class Site:
    name: str
    domains: tuple[str, ...]
    hosts: tuple[str, ...]
    source: Path
    asgi: str
    settings: str
    requirements: Path
    port: int
    workers: int
    health_path: str
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)
    env_file: Path | None = None
    keep_releases: int = 5
    health_timeout: int = 60
    migrate_on: str = "one"  # "one" host per deploy (shared database) or "every" host
    max_body_size: str = "20m"  # nginx client_max_body_size
    celery: Celery | None = None
    flower: Flower | None = None
    redirect_to: str | None = None  # the canonical domain; the others answer 301 to it
    tls: Tls | None = None

    @property
    def ports(self) -> tuple[int, ...]:
        """The releases' two gunicorn slots (a switch never stops the old first), and Flower."""
        return (self.port, self.port + 1) + ((self.flower.port,) if self.flower else ())

    @property
    def health_host(self) -> str:
        plain = [d for d in self.domains if not d.startswith("*.")]
        return plain[0] if plain else "health" + self.domains[0][1:]

    @property
    def user(self) -> str:
        return f"djk-{self.name}"


@dataclass
class Inventory:
    path: Path
    hosts: dict[str, Host]
    groups: dict[str, tuple[str, ...]]
    sites: dict[str, Site]
    default_target: str | None = None

    def sites_on(self, host: Host) -> list[Site]:
        return [site for site in self.sites.values() if host.name in site.hosts]

    def resolve(self, spec: str | None) -> list[Host]:
        """Hosts for a -H value: host or group names, ssh_config aliases or plain addresses.

        Without -H the inventory's `defaults.target` is used.
        """
        if not spec:
            if not self.default_target:
                raise InventoryError(
                    self.path, "defaults.target", "no -H given and no default target is set"
                )
            spec = self.default_target
        hosts: list[Host] = []
        for token in (part.strip() for part in spec.split(",")):
            if not token:
                continue
            for host in self._resolve_one(token):
                if host not in hosts:
                    hosts.append(host)
        return hosts

    def _resolve_one(self, token: str) -> list[Host]:
        if token in self.hosts:
            return [self.hosts[token]]
        if token in self.groups:
            return [self.hosts[name] for name in self.groups[token]]
        user, _, rest = token.rpartition("@")
        name, _, port = rest.partition(":")
        for host in self.hosts.values():
            if name in (host.address, host.ssh_alias):
                return [host]
        try:
            values.address(name)
        except ValueError:
            raise InventoryError(
                self.path, "", f"-H {token}: not a host, group, ssh alias or address"
            ) from None
        return [
            Host(
                name=name,
                address=name,
                user=user,
                port=int(port) if port.isdigit() else 0,
                ssh_alias=name,
                in_inventory=False,
            )
        ]


# -- schema --------------------------------------------------------------------------------------

Check = Callable[[Any], Any]


class _Reader:
    """Walks one table, type-checking and validating each key, and rejects unknown keys."""

    def __init__(self, file: Path, table: Any, key: str) -> None:
        self.file, self.key = file, key
        if not isinstance(table, dict):
            self.fail(key, f"must be a table, not {_type_name(table)}")
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def fail(self, key: str, message: str) -> None:
        raise InventoryError(self.file, key, message)

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str, kind: type, check: Check | None = None, default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.table:
            if default is ...:
                self.fail(self.path(name), "is required")
            return default
        return self.value(self.path(name), self.table[name], kind, check)

    def get_list(
        self, name: str, check: Check | None = None, default: Any = ..., empty: bool = False
    ) -> tuple:
        self.seen.add(name)
        key = self.path(name)
        if name not in self.table:
            if default is ...:
                self.fail(key, "is required")
            return default
        raw = self.table[name]
        if not isinstance(raw, list):
            self.fail(key, f"must be a list of strings, not {_type_name(raw)}")
        if not raw and not empty:
            self.fail(key, "must not be empty")
        items = tuple(self.value(f"{key}[{i}]", item, str, check) for i, item in enumerate(raw))
        if len(set(items)) != len(items):
            self.fail(key, "lists the same value twice")
        return items

    def value(self, key: str, raw: Any, kind: type, check: Check | None) -> Any:
        if kind is int and isinstance(raw, bool) or not isinstance(raw, kind):
            self.fail(key, f"must be {_type_name(kind())}, not {_type_name(raw)}")
        if check is not None:
            try:
                return check(raw)
            except ValueError as exc:
                self.fail(key, str(exc))
        return raw

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            self.fail(self.path(unknown[0]), "unknown key")


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    list: "a list",
    dict: "a table",
    bool: "a boolean",
}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def load(path: Path | str = DEFAULT_INVENTORY, read_secrets: bool = True) -> Inventory:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InventoryError(path, "", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(path, "", f"not valid TOML: {exc}") from None
    return parse(data, path, read_secrets=read_secrets)


def parse(data: dict[str, Any], path: Path, read_secrets: bool = True) -> Inventory:
    base = path.parent
    top = _Reader(path, data, "")
    defaults = _Reader(path, top.get("defaults", dict, default={}), "defaults")
    d_user = defaults.get("user", str, values.unix_user, default="deploy")
    d_port = defaults.get("port", int, values.ssh_port, default=22)
    d_key = defaults.get("ssh_key", str, default=None)
    target = defaults.get("target", str, values.host_name, default=None)
    defaults.done()

    hosts: dict[str, Host] = {}
    raw_hosts = _Reader(path, top.get("hosts", dict), "hosts")
    for name in raw_hosts.table:
        key = f"hosts.{name}"
        raw_hosts.value(key, name, str, values.host_name)
        raw_hosts.seen.add(name)
        r = _Reader(path, raw_hosts.table[name], key)
        addr = r.get("address", str, values.address, default=None)
        alias = r.get("ssh_alias", str, values.host_name, default=None)
        if addr is None and alias is None:
            r.fail(f"{key}.address", "is required (or give ssh_alias)")
        ssh_key = r.get("ssh_key", str, default=d_key)
        hosts[name] = Host(
            name=name,
            address=addr or alias,
            user=r.get("user", str, values.unix_user, default=d_user),
            port=r.get("port", int, values.ssh_port, default=d_port),
            ssh_key=_local_path(base, ssh_key) if ssh_key else None,
            ssh_alias=alias,
            roles=r.get_list("roles", values.choice("web", "app", "worker", "broker"), default=()),
        )
        r.done()
    raw_hosts.done()

    groups: dict[str, tuple[str, ...]] = {}
    raw_groups = _Reader(path, top.get("groups", dict, default={}), "groups")
    for name in raw_groups.table:
        key = f"groups.{name}"
        raw_groups.value(key, name, str, values.host_name)
        if name in hosts:
            raw_groups.fail(key, f"a host is already named {name!r}")
        members = raw_groups.get_list(name)
        for i, member in enumerate(members):
            if member not in hosts:
                raw_groups.fail(f"{key}[{i}]", f"unknown host {member!r}")
        groups[name] = members
    raw_groups.done()
    if target is not None and target not in hosts and target not in groups:
        raise InventoryError(path, "defaults.target", f"unknown host or group {target!r}")

    sites: dict[str, Site] = {}
    raw_sites = _Reader(path, top.get("sites", dict, default={}), "sites")
    for name in raw_sites.table:
        raw_sites.value(f"sites.{name}", name, str, values.site_name)
        raw_sites.seen.add(name)
        table = raw_sites.table[name]
        sites[name] = _parse_site(path, base, name, table, hosts, groups, read_secrets)
    raw_sites.done()
    top.done()
    _check_conflicts(path, hosts, sites)
    _check_topology(path, hosts, sites, read_secrets)
    return Inventory(path=path, hosts=hosts, groups=groups, sites=sites, default_target=target)


def _parse_site(
    path: Path,
    base: Path,
    name: str,
    table: Any,
    hosts: dict[str, Host],
    groups: dict[str, tuple[str, ...]],
    read_secrets: bool,
) -> Site:
    key = f"sites.{name}"
    r = _Reader(path, table, key)
    domains = r.get_list("domains", values.domain)
    targets: list[str] = []
    for i, target in enumerate(r.get_list("hosts")):
        if target in hosts:
            members: tuple[str, ...] = (target,)
        elif target in groups:
            members = groups[target]
        else:
            r.fail(f"{key}.hosts[{i}]", f"unknown host or group {target!r}")
        targets += [m for m in members if m not in targets]
    source = _local_path(base, r.get("source", str))
    if not source.is_dir():
        r.fail(f"{key}.source", f"{source} is not a directory")
    requirements = source / r.get("requirements", str, default="requirements.txt")
    if not requirements.is_file():
        r.fail(f"{key}.requirements", f"{requirements} does not exist")
    env: dict[str, str] = {}
    raw_env = _Reader(path, r.get("env", dict, default={}), f"{key}.env")
    for env_name in raw_env.table:
        raw_env.value(f"{key}.env.{env_name}", env_name, str, values.env_key)
        env[env_name] = raw_env.get(env_name, str, values.env_value)
    raw_env.done()
    env_file_value = r.get("env_file", str, default=None)
    env_file = _local_path(base, env_file_value) if env_file_value else None
    secrets: dict[str, Secret] = {}
    if env_file is not None and read_secrets:
        if not env_file.is_file():
            r.fail(f"{key}.env_file", f"{env_file} does not exist")
        try:
            secrets = load_env_file(env_file)
        except ValueError as exc:
            r.fail(f"{key}.env_file", f"{env_file}: {exc}")
    site = Site(
        name=name,
        domains=domains,
        hosts=tuple(targets),
        source=source,
        asgi=r.get("asgi", str, values.asgi_app),
        settings=r.get("settings", str, values.dotted),
        requirements=requirements,
        port=r.get("port", int, values.count(1024, 65534)),
        workers=r.get("workers", int, values.count(1, 64), default=2),
        health_path=r.get("health_path", str, values.url_path, default="/health/"),
        keep_releases=r.get("keep_releases", int, values.count(1, 100), default=5),
        health_timeout=r.get("health_timeout", int, values.count(5, 900), default=60),
        migrate_on=r.get("migrate_on", str, values.choice("one", "every"), default="one"),
        max_body_size=r.get("max_body_size", str, values.nginx_size, default="20m"),
        redirect_to=r.get("redirect_to", str, values.domain, default=None),
        tls=_parse_tls(path, base, key, r.get("tls", dict, default=None)),
        celery=_parse_celery(path, key, r.get("celery", dict, default=None), secrets, read_secrets),
        flower=_parse_flower(path, key, r.get("flower", dict, default=None), secrets, read_secrets),
        env=env,
        secrets=secrets,
        env_file=env_file,
    )
    r.done()
    if site.tls and site.tls.mode == "acme" and any(d.startswith("*.") for d in domains):
        r.fail(f"{key}.tls.mode", "ACME over http-01 cannot cover a wildcard domain")
    if site.redirect_to and (site.redirect_to not in domains or "*" in site.redirect_to):
        r.fail(f"{key}.redirect_to", f"{site.redirect_to!r} must be one of the site's domains")
    if site.flower and not site.celery:
        r.fail(f"{key}.flower", "needs [sites.<name>.celery] (Flower watches the site's workers)")
    return site


def _parse_tls(path: Path, base: Path, key: str, table: Any) -> Tls | None:
    if table is None:
        return None
    key = f"{key}.tls"
    r = _Reader(path, table, key)
    mode = r.get("mode", str, values.choice("files", "acme"), default="files")
    hsts = r.get("hsts", bool, default=False)
    if mode == "acme":
        bundle_path = r.get("ca_bundle", str, default=None)
        bundle = (
            _read_pem(r, f"{key}.ca_bundle", base, bundle_path, "CERTIFICATE")
            if (bundle_path)
            else ""
        )
        tls = Tls(
            mode="acme",
            hsts=hsts,
            email=r.get("email", str, values.email),
            server=r.get("server", str, values.https_url, default=LETS_ENCRYPT),
            ca_bundle=bundle,
        )
    else:
        tls = Tls(
            cert=_read_pem(r, f"{key}.cert", base, r.get("cert", str), "CERTIFICATE"),
            key=Secret(_read_pem(r, f"{key}.key", base, r.get("key", str), "PRIVATE KEY")),
            hsts=hsts,
        )
    r.done()
    return tls


def _read_pem(r: _Reader, key: str, base: Path, value: str, marker: str) -> str:
    file = _local_path(base, value)
    try:
        text = file.read_text()
    except OSError as exc:
        r.fail(key, f"cannot read {file}: {exc.strerror}")
    if f"{marker}-----" not in text:
        r.fail(key, f"{file} holds no PEM {marker.lower()}")
    return text


def _parse_celery(
    path: Path, key: str, table: Any, secrets: dict[str, Secret], read_secrets: bool
) -> Celery | None:
    if table is None:
        return None
    key = f"{key}.celery"
    r = _Reader(path, table, key)
    celery = Celery(
        app=r.get("app", str, values.dotted),
        concurrency=r.get("concurrency", int, values.count(1, 256), default=2),
        queues=r.get_list("queues", values.env_key, default=("celery",)),
        options=r.get_list("options", values.cli_option, default=(), empty=True),
        beat=r.get("beat", bool, default=False),
        broker=r.get("broker", str, values.choice("local", "external"), default="local"),
        redis_db=r.get("redis_db", int, values.count(0, 15), default=0),
        stop_timeout=r.get("stop_timeout", int, values.count(10, 3600), default=300),
    )
    r.done()
    if celery.broker == "external" and read_secrets and "CELERY_BROKER_URL" not in secrets:
        r.fail(f"{key}.broker", 'is "external": put CELERY_BROKER_URL in the env_file secrets')
    return celery


def _parse_flower(
    path: Path, key: str, table: Any, secrets: dict[str, Secret], read_secrets: bool
) -> Flower | None:
    if table is None:
        return None
    key = f"{key}.flower"
    r = _Reader(path, table, key)
    flower = Flower(port=r.get("port", int, values.count(1024, 65535)))
    r.done()
    if read_secrets and "FLOWER_BASIC_AUTH" not in secrets:
        r.fail(key, "needs FLOWER_BASIC_AUTH=user:password in the env_file secrets")
    return flower


def _check_topology(
    path: Path, hosts: dict[str, Host], sites: dict[str, Site], read_secrets: bool = True
) -> None:
    """Roles a site needs among its hosts (a host without roles has them all)."""
    for site in sites.values():

        def having(role: str, site: Site = site) -> list[str]:
            return [n for n in site.hosts if not hosts[n].roles or role in hosts[n].roles]

        if not having("app"):
            raise InventoryError(path, f"sites.{site.name}.hosts", "no host with the app role")
        if site.celery and not having("worker"):
            raise InventoryError(
                path, f"sites.{site.name}.hosts", "[celery] needs a host with the worker role"
            )
        if site.celery and site.celery.broker == "local" and not having("broker"):
            raise InventoryError(
                path,
                f"sites.{site.name}.hosts",
                'celery broker = "local" needs a host with the broker role',
            )
        remote_broker = (
            site.celery
            and site.celery.broker == "local"
            and (set(having("app")) | set(having("worker"))) - set(having("broker")[:1])
        )
        if remote_broker and read_secrets and "BROKER_PASSWORD" not in site.secrets:
            raise InventoryError(
                path,
                f"sites.{site.name}.env_file",
                "the broker serves other hosts: put BROKER_PASSWORD=... in the secrets "
                "(Redis refuses remote clients without a password)",
            )
        if site.flower and set(having("web")) != set(having("worker")):
            raise InventoryError(
                path,
                f"sites.{site.name}.flower",
                "Flower needs the web and worker roles on the same hosts",
            )


def _check_conflicts(path: Path, hosts: dict[str, Host], sites: dict[str, Site]) -> None:
    for host in hosts:
        on_host = [s for s in sites.values() if host in s.hosts]
        domain_owner: dict[str, str] = {}
        port_owner: dict[int, str] = {}
        redis_owner: dict[int, str] = {}
        for site in on_host:
            for i, domain in enumerate(site.domains):
                other = domain_owner.setdefault(domain, site.name)
                if other != site.name:
                    raise InventoryError(
                        path,
                        f"sites.{site.name}.domains[{i}]",
                        f"{domain} is already served by site {other!r} on host {host!r}",
                    )
            if site.celery and site.celery.broker == "local":
                other = redis_owner.setdefault(site.celery.redis_db, site.name)
                if other != site.name:
                    raise InventoryError(
                        path,
                        f"sites.{site.name}.celery.redis_db",
                        f"redis db {site.celery.redis_db} is already used by site {other!r} "
                        f"on host {host!r} (each site needs its own)",
                    )
            for port in site.ports:
                other = port_owner.setdefault(port, site.name)
                if other != site.name:
                    raise InventoryError(
                        path,
                        f"sites.{site.name}.port",
                        f"port {port} is already used by site {other!r} on host {host!r} "
                        "(a site uses port, port + 1 and its Flower port)",
                    )


def _local_path(base: Path, value: str) -> Path:
    return (base / Path(value).expanduser()).resolve()
