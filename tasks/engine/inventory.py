"""hosts.toml: parse, validate and resolve targets, before any host is touched.

The core reads `[defaults]`, `[hosts.*]`, `[groups]` and, of each `[sites.*]`, what every
component needs: `domains`, `hosts`, `env` and the secrets file `env_file`. Every other key of a
site belongs to a registered component (engine/component.py), which reads and validates it.
Every error names the file, the key path and what is wrong, in one line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import keys, values
from .component import added_roles, components
from .hostinfo import DEFAULT as DEFAULT_HOST
from .hostinfo import HostInfo
from .procs import MANAGERS
from .schema import FileProblem, InventoryError, Table, read_text
from .secrets import Secret, load_env_file

KNOWN_HOSTS = "known_hosts"  # the team's pinned host keys, beside hosts.toml

__all__ = ["DEFAULT_INVENTORY", "ROLES", "Host", "Inventory", "InventoryError", "Site", "load"]

DEFAULT_INVENTORY = "hosts.toml"
ROLES = ("web", "app", "worker", "broker", "db")
PACKAGE_SOURCES = ("control", "host")

T = TypeVar("T")


def all_roles() -> tuple[str, ...]:
    """The kit's roles, then those registered components add (Component.adds_roles)."""
    added = added_roles()
    return (*ROLES, *(r for r in added if r not in ROLES)) if added else ROLES


@dataclass(frozen=True)
class Host:
    name: str
    address: str  # where the control machine reaches it over SSH
    user: str = "deploy"
    port: int = 22
    ssh_key: Path | None = None
    ssh_alias: str | None = None
    roles: tuple[str, ...] = ()
    in_inventory: bool = True
    process_manager: str = "systemd"  # or "supervisor": what runs the sites' processes
    # Where `provision` gets Debian packages: "control" (the control machine computes and
    # ships them: hosts need no internet) or "host" (the host's own apt sources).
    packages_from: str = "control"
    # provision: the kit's nftables ruleset (tasks/firewall.py), and Debian's unattended
    # security upgrades (None: on when the host uses its own apt sources).
    firewall: bool = True
    unattended_upgrades: bool | None = None
    # What the host was found to be (engine/hostinfo.py): set by the run before plans are
    # built, None in plans built without a host (tests, --check of pure logic).
    info: HostInfo | None = field(default=None, compare=False)
    # The team's known_hosts (beside hosts.toml): the host keys the kit trusts, with the user's
    # ~/.ssh/known_hosts (engine/hostkeys.py).
    known_hosts: Path | None = field(default=None, compare=False)
    # Where the host's peers reach it and where its own services listen for them (binds,
    # forwarders, firewall openings, upstreams); `address` when not given.
    private_address: str | None = None

    @property
    def peer_address(self) -> str:
        return self.private_address or self.address

    @property
    def role_set(self) -> set[str]:
        """Its roles; a host without `roles` has every role (the kit's and the components')."""
        return set(self.roles) if self.roles else set(all_roles())

    @property
    def platform(self) -> HostInfo:
        return self.info or DEFAULT_HOST

    @property
    def login(self) -> str:
        """user@address:port, what the control machine remembers the host's profile by."""
        return f"{self.user}@{self.connect_to}:{self.port}"

    @property
    def connect_to(self) -> str:
        """What the SSH client is given: an ssh_config alias wins over the address."""
        return self.ssh_alias or self.address


@dataclass(frozen=True, eq=False)
class Site:
    name: str
    domains: tuple[str, ...]
    hosts: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    env_override: tuple[str, ...] = ()  # variables the kit derives that env/secrets may set
    secrets: dict[str, Secret] = field(default_factory=dict)
    env_file: Path | None = None
    secrets_loaded: bool = True  # False when the inventory was read without its secrets
    parts: dict[type, Any] = field(default_factory=dict)  # each component's config, by type

    def part(self, kind: type[T]) -> T | None:
        """The config a component parsed for this site (None when the site does not use it)."""
        return self.parts.get(kind)

    def need(self, kind: type[T]) -> T:
        """The config a component parsed for this site, where the caller knows the site uses
        the component (KeyError otherwise: a defect of the caller)."""
        return self.parts[kind]

    def needs_secret(self, key: str) -> bool:
        """True when `key` is missing from secrets that were read (a component's check)."""
        return self.secrets_loaded and key not in self.secrets

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

    @property
    def templates(self) -> Path:
        """A team's template overrides: `templates/` beside hosts.toml."""
        return self.path.parent / "templates"

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
                known_hosts=self.path.parent / KNOWN_HOSTS,
            )
        ]


def load(path: Path | str = DEFAULT_INVENTORY, read_secrets: bool = True) -> Inventory:
    path = Path(path)
    try:
        text = read_text(path)
    except FileProblem as exc:
        raise InventoryError(path, "", exc.reason) from None
    return parse(loads(path, text), path, read_secrets=read_secrets)


def loads(path: Path, text: str) -> dict[str, Any]:
    """TOML text as data, or the one-line error for any text at all."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(path, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise InventoryError(path, "", "not valid TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InventoryError(path, "", f"not valid TOML: {exc}") from None


def _role(value: str) -> str:
    return values.choice(*all_roles())(value)


ROLE = keys.Kind(
    "role",
    str,
    "web, app, worker, broker, db, or a role a registered component adds",
    _role,
    samples=ROLES,
    edges=("Web", "cache2", "", "web "),
)
MANAGER = keys.choice(*MANAGERS)
PACKAGES_FROM = keys.choice(*PACKAGE_SOURCES)

DEFAULTS = keys.Keys(
    None,
    (
        keys.Key("user", keys.UNIX_USER, "deploy", "the SSH user (sudo without a password)"),
        keys.Key("port", keys.SSH_PORT, 22, "the SSH port"),
        keys.Key(
            "ssh_key", keys.LOCAL_PATH, None, "the SSH private key (default: your agent and ~/.ssh)"
        ),
        keys.Key("target", keys.HOST_NAME, None, "the host or group of a run without -H"),
        keys.Key("process_manager", MANAGER, "systemd", "what runs the sites' processes"),
        keys.Key("firewall", keys.BOOL, True, "provision writes the kit's nftables ruleset"),
        keys.Key(
            "unattended_upgrades",
            keys.BOOL,
            None,
            'Debian\'s security upgrades (default: on with packages_from = "host")',
        ),
        keys.Key(
            "packages_from",
            PACKAGES_FROM,
            "control",
            '"control": this machine ships the Debian packages (hosts need no internet); '
            '"host": the host\'s own apt sources',
        ),
    ),
    help="What every host has unless its own table says otherwise.",
)


def _address_or_alias(r: keys.Reading) -> None:
    if r.got["address"] is None and r.got["ssh_alias"] is None:
        r.fail("address", "is required (or give ssh_alias)")


HOST = keys.Keys(
    Host,
    (
        keys.Key("address", keys.ADDRESS, None, "where this machine reaches it over SSH"),
        keys.Key(
            "ssh_alias",
            keys.HOST_NAME,
            None,
            "a Host of your ~/.ssh/config to connect through instead",
        ),
        keys.Rule(("address", "ssh_alias"), _address_or_alias, "give address or ssh_alias"),
        keys.Key(
            "ssh_key", keys.LOCAL_PATH, keys.from_outer("ssh_key", "as [defaults]"), "the SSH key"
        ),
        keys.Key("user", keys.UNIX_USER, keys.from_outer("user", "as [defaults]"), "the SSH user"),
        keys.Key("port", keys.SSH_PORT, keys.from_outer("port", "as [defaults]"), "the SSH port"),
        keys.Key(
            "roles",
            ROLE,
            (),
            "what it runs for its sites (default: every role)",
            many=True,
        ),
        keys.Key(
            "process_manager",
            MANAGER,
            keys.from_outer("process_manager", "as [defaults]"),
            "systemd units or supervisord programs",
        ),
        keys.Key(
            "packages_from",
            PACKAGES_FROM,
            keys.from_outer("packages_from", "as [defaults]"),
            "where provision gets Debian packages",
        ),
        keys.Key(
            "firewall",
            keys.BOOL,
            keys.from_outer("firewall", "as [defaults]"),
            "the kit's nftables ruleset",
        ),
        keys.Key(
            "unattended_upgrades",
            keys.BOOL,
            keys.from_outer("unattended_upgrades", "as [defaults]"),
            "Debian's security upgrades",
        ),
        keys.Key(
            "private_address",
            keys.IP_ADDRESS,
            None,
            "where its peers reach it and its services listen for them (default: address)",
        ),
    ),
    derive={
        "address": lambda r: r.got["address"] or r.got["ssh_alias"],
        "known_hosts": lambda r: r.outer["known_hosts"],
    },
    help="One machine: how to reach it and what it runs.",
)


def parse(data: dict[str, Any], path: Path, read_secrets: bool = True) -> Inventory:
    top = Table(path, data, "")
    defaults_table = top.sub("defaults") or Table(path, {}, "defaults")
    defaults = DEFAULTS.read(defaults_table, None)
    defaults_table.done()
    target = defaults["target"]

    hosts: dict[str, Host] = {}
    raw_hosts = top.sub("hosts")
    if raw_hosts is None:
        top.fail("hosts", "is required")
    for name in raw_hosts.names(values.host_name):
        raw_hosts.seen.add(name)
        r = raw_hosts.child(name)
        outer = {**defaults, "name": name, "known_hosts": path.parent / KNOWN_HOSTS}
        hosts[name] = HOST.read(r, None, outer)
        r.done()
    raw_hosts.done()

    groups: dict[str, tuple[str, ...]] = {}
    raw_groups = top.sub("groups") or Table(path, {}, "groups")
    for name in raw_groups.names(values.host_name):
        key = raw_groups.path(name)
        if name in hosts:
            raw_groups.fail(key, f"a host is already named {values.show(name)}")
        members = raw_groups.get_list(name)
        for i, member in enumerate(members):
            if member not in hosts:
                raw_groups.fail(f"{key}[{i}]", f"unknown host {values.show(member)}")
        groups[name] = members
    raw_groups.done()
    if target is not None and target not in hosts and target not in groups:
        raise InventoryError(path, "defaults.target", f"unknown host or group {target!r}")

    sites: dict[str, Site] = {}
    raw_sites = top.sub("sites") or Table(path, {}, "sites")
    for name in raw_sites.names(values.site_name):
        raw_sites.seen.add(name)
        sites[name] = _parse_site(raw_sites.child(name), name, hosts, groups, read_secrets)
    raw_sites.done()
    top.done()
    inventory = Inventory(path=path, hosts=hosts, groups=groups, sites=sites)
    inventory.default_target = target
    for component in components():
        component.check(inventory)
    return inventory


def _targets(r: keys.Reading, key: keys.Key) -> tuple[str, ...]:
    """The site's hosts: host and group names, each group as its members, each host once."""
    hosts, groups = r.outer["hosts"], r.outer["groups"]
    targets: list[str] = []
    for i, target in enumerate(r.table.get_list(key.name)):
        if target in hosts:
            members: tuple[str, ...] = (target,)
        elif target in groups:
            members = groups[target]
        else:
            r.table.fail(
                f"{r.table.path(key.name)}[{i}]", f"unknown host or group {values.show(target)}"
            )
        targets += [m for m in members if m not in targets]
    return tuple(targets)


TARGETS = keys.Kind(
    "hosts and groups",
    str,
    "names of [hosts] or [groups] of this file; a group stands for its hosts",
    samples=("web1",),
    edges=("nosuchhost", "", "web1 "),
    read=_targets,
)
SITE = keys.Keys(
    None,
    (
        keys.Key(
            "domains", keys.DOMAIN, help="the server_name of its nginx server block", many=True
        ),
        keys.Key("hosts", TARGETS, help="the hosts (and groups) it runs on", many=True),
        keys.Map(
            "env",
            keys.ENV_NAME,
            keys.ENV_VALUE,
            "variables of the site's env file, beside those the kit derives",
        ),
        keys.Key(
            "env_override",
            keys.ENV_NAME,
            (),
            "variables the kit derives that `env` or the secrets may set anyway",
            many=True,
            empty=True,
        ),
        keys.Key(
            "env_file",
            keys.LOCAL_PATH,
            None,
            "the secrets file (dotenv syntax); its variables go to the env file, never shown",
        ),
    ),
    help="One site: its domains, its hosts, its env; every other key belongs to a component.",
)


def _parse_site(
    r: Table,
    name: str,
    hosts: dict[str, Host],
    groups: dict[str, tuple[str, ...]],
    read_secrets: bool,
) -> Site:
    key = r.key
    core = SITE.read(r, None, {"hosts": hosts, "groups": groups})
    env_file = core["env_file"]
    secrets: dict[str, Secret] = {}
    if env_file is not None and read_secrets:
        text = r.read_text("env_file", env_file)
        try:
            secrets = load_env_file(text)
        except ValueError as exc:
            r.fail(f"{key}.env_file", f"{values.show_path(env_file)}: {exc}")
    site = Site(
        name=name,
        domains=core["domains"],
        hosts=core["hosts"],
        env=core["env"],
        env_override=core["env_override"],
        secrets=secrets,
        env_file=env_file,
        secrets_loaded=read_secrets,
    )
    for component in components():
        table = r if component.table is None else r.sub(component.table)
        if table is None:
            continue
        config = component.read(table, site)
        if component.table is not None:
            table.done()
        if config is not None:
            site.parts[type(config)] = config
    r.done()
    return site
