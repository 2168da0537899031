"""hosts.toml keys declared as data: one declaration per key is its validation, its line in the
generated reference (docs/configuration.md) and its cases in the input fuzz.

A `Kind` is a type of value: the TOML type it is written as, the check that holds it to what
the file it reaches reads (engine/values.py: nginx, systemd, sh, dotenv), the error message that
check gives, a line for the reference and the values the fuzz tries (`samples` it takes,
`edges` at and past its limits). A `Key` names one key of a table: its kind, its default (a
value, `REQUIRED`, or `Derived` from the site or from keys read before it), whether it is a
list, when it applies (`when`), and a line of help. A `Rule` joins keys no single kind can
hold; it stands after the keys it joins and runs where it stands, so keys are read, and their
errors found, in the order they are declared. `Each` is a table of named sub-tables (timers'
jobs), `Map` a table of names to values (a site's `env`).

A component's `keys` (a `Keys`) turns its table into its config: every value read, the rules
run, `derive` adds fields computed from what was read, and `config(**fields)` is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, NoReturn

from . import values
from .schema import InventoryError, Table

if TYPE_CHECKING:
    from .inventory import Site

Check = Callable[[Any], Any]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Derived:
    """A default computed from the site or from the keys read before (`Reading.got`); `doc`
    says what it is in the reference. With `hint`, the value is checked like a given one and
    the hint ends the message when it fails (the user's way out)."""

    compute: Callable[[Reading], Any]
    doc: str
    hint: str = ""


@dataclass(frozen=True)
class Kind:
    """A type of value in hosts.toml (see the module's docstring)."""

    name: str
    toml: type
    help: str
    check: Check | None = None
    samples: tuple = ()
    edges: tuple = ()
    # A reader for values that are more than one TOML value checked: a path on the control
    # machine, a file's content, a string or a list of strings. (Reading, Key) -> value.
    read: Callable[[Reading, Key], Any] | None = None
    inline: bool = False  # the reference shows it where it is used (a range, a choice)

    def fuzz(self) -> tuple:
        """What the input fuzz tries for a key of this kind: values it takes, and values at and
        past its limits."""
        return (*self.samples, *self.edges)


def integer(low: int, high: int, unit: str = "") -> Kind:
    """An integer from `low` to `high` (`unit`: what it counts, for the reference)."""
    what = f"{low}–{high}" + (f" {unit}" if unit else "")
    return Kind(
        f"integer {what}",
        int,
        f"a whole number from {low} to {high}" + (f" ({unit})" if unit else ""),
        values.count(low, high),
        samples=(low, high, (low + high) // 2),
        edges=(low - 1, high + 1, -1, 2**63, True, str(low)),
        inline=True,
    )


def choice(*allowed: str) -> Kind:
    return Kind(
        " or ".join(f'"{a}"' for a in allowed),
        str,
        "one of " + ", ".join(f'"{a}"' for a in allowed),
        values.choice(*allowed),
        samples=allowed,
        edges=("", allowed[0].upper(), allowed[0] + " ", allowed[0] + "\n", 1),
        inline=True,
    )


@dataclass(frozen=True)
class Key:
    """One key of a table."""

    name: str
    kind: Kind
    default: Any = REQUIRED
    help: str = ""
    many: bool = False  # a list of values of `kind`, no value twice
    empty: bool = False  # the list may be empty
    when: tuple[str, Any] | None = None  # read only when that key read this value
    field: str | None = None  # the config's field (default: the key's name); "" for none

    @property
    def into(self) -> str:
        return self.name if self.field is None else self.field

    def applies(self, reading: Reading) -> bool:
        if self.when is None:
            return True
        other, wanted = self.when
        return reading.got.get(other) == wanted

    def read(self, r: Reading) -> Any:
        table = r.table
        fallback = ... if self.default is REQUIRED else None
        if table.has(self.name):
            r.given.add(self.name)
        if self.kind.read is not None:
            # None when absent; a reader may make its own value of the default (a path).
            found = self.kind.read(r, self)
            return self.default_value(r) if found is None else found
        if self.many:
            value = table.get_list(self.name, self.kind.check, default=fallback, empty=self.empty)
        else:
            value = table.get(self.name, self.kind.toml, self.kind.check, default=fallback)
        return value if table.has(self.name) else self.default_value(r)

    def default_value(self, r: Reading) -> Any:
        if not isinstance(self.default, Derived):
            return self.default
        value = self.default.compute(r)
        if self.default.hint and value is not None and self.kind.check is not None:
            try:
                self.kind.check(value)
            except ValueError as exc:
                r.fail(self.name, f"{exc} ({self.default.hint})")
        return value

    def doc_default(self) -> str:
        if self.default is REQUIRED:
            return "required"
        if isinstance(self.default, Derived):
            return self.default.doc
        if self.default is None or self.default == ():
            return "—"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, tuple):
            return "[" + ", ".join(f'"{v}"' for v in self.default) + "]"
        if isinstance(self.default, str):
            return f'"{self.default}"'
        return str(self.default)


@dataclass(frozen=True)
class Rule:
    """A rule across keys read before it (`joins`); `check` calls `Reading.fail` when it does
    not hold. `help` states it in the reference."""

    joins: tuple[str, ...]
    check: Callable[[Reading], None]
    help: str


@dataclass(frozen=True)
class Each:
    """The table's keys name sub-tables of the same keys (a site's timer jobs): each name is
    checked by `name`, each sub-table read by `keys`; the configs go to `into` as a tuple."""

    into: str
    name: Kind
    keys: Keys
    help: str = ""

    def read(self, r: Reading) -> tuple:
        found = []
        for name in r.table.names(self.name.check or str):
            sub = r.table.child(name)
            found.append(self.keys.read(sub, r.site, {**r.outer, "name": name}))
            sub.done()
        return tuple(found)


@dataclass(frozen=True)
class Map:
    """A sub-table of names (checked as `name`) to values of `value` (a site's env)."""

    key: str
    name: Kind
    value: Kind
    help: str = ""
    field: str | None = None

    @property
    def into(self) -> str:
        return self.key if self.field is None else self.field

    def read(self, r: Reading) -> dict[str, Any]:
        sub = r.table.sub(self.key) or Table(r.table.file, {}, r.table.path(self.key))
        found = {
            name: sub.get(name, self.value.toml, self.value.check)
            for name in sub.names(self.name.check or str)
        }
        sub.done()
        return found


Item = Key | Rule | Each | Map


@dataclass(frozen=True)
class Keys:
    """A table's declaration: its items in reading order, the config built from them, and
    fields derived from what was read (not validation: that is in the kinds and rules)."""

    config: type | None
    items: tuple[Item, ...]
    derive: Mapping[str, Callable[[Reading], Any]] = field(default_factory=dict)
    help: str = ""

    def read(self, table: Table, site: Site | None, outer: Mapping[str, Any] | None = None) -> Any:
        """The table's config (the caller calls table.done() for unknown keys)."""
        r = Reading(table, site, outer or {})
        for item in self.items:
            if isinstance(item, Rule):
                item.check(r)
            elif isinstance(item, Key):
                if item.applies(r):
                    r.got[item.name] = item.read(r)
            else:
                r.got[item.into] = item.read(r)
        if self.config is None:
            return dict(r.got)
        wanted = {f.name for f in fields(self.config)}
        made: dict[str, Any] = {
            self.field_of(name): value
            for name, value in r.got.items()
            if self.field_of(name) in wanted
        }
        made.update({name: compute(r) for name, compute in self.derive.items()})
        if "name" in wanted and "name" in r.outer and "name" not in made:
            made["name"] = r.outer["name"]
        return self.config(**made)

    def field_of(self, name: str) -> str:
        for item in self.items:
            if isinstance(item, Key) and item.name == name:
                return item.into
        return name

    def keys(self) -> Iterator[Key]:
        return (item for item in self.items if isinstance(item, Key))

    def key(self, name: str) -> Key:
        found = next((k for k in self.keys() if k.name == name), None)
        if found is None:
            raise KeyError(name)
        return found

    def with_key(self, name: str, **changes: Any) -> Keys:
        """This declaration with one key changed (a test's edit of a default or a range)."""
        self.key(name)  # KeyError for a key it does not declare
        items = tuple(
            replace(item, **changes) if isinstance(item, Key) and item.name == name else item
            for item in self.items
        )
        return replace(self, items=items)


class Reading:
    """One table being read: the values so far (`got`), which keys were given, the site, and
    what the enclosing table passes down (`outer`: [defaults] for a host, a job's name)."""

    def __init__(self, table: Table, site: Site | None, outer: Mapping[str, Any]) -> None:
        self.table, self.site, self.outer = table, site, outer
        self.got: dict[str, Any] = {}
        self.given: set[str] = set()

    def fail(self, name: str | None, message: str) -> NoReturn:
        """The one-line error at a key of this table (`name`), or at the table (None)."""
        self.table.fail(self.table.path(name) if name else self.table.key, message)

    def the_site(self) -> Site:
        if self.site is None:
            raise InventoryError(self.table.file, self.table.key, "is not a site's table")
        return self.site


# -- kinds whose reading is more than one checked value -----------------------------------------


def read_local_path(r: Reading, key: Key) -> Any:
    """A path on the control machine, relative to hosts.toml's directory."""
    fallback = ... if key.default is REQUIRED else None
    return r.table.get_path(key.name, default=fallback)


def from_outer(name: str, doc: str) -> Derived:
    """A default the enclosing table passes down (a host's from [defaults])."""
    return Derived(lambda r: r.outer[name], doc)


def text_or_list(r: Reading, key: Key) -> tuple[str, ...]:
    """One string or a list of them (a hook's commands)."""
    if isinstance(r.table.table.get(key.name), list):
        return r.table.get_list(key.name, key.kind.check, default=())
    found = r.table.get(key.name, str, key.kind.check, default=None)
    return (found,) if found else ()


LOCAL_PATH = Kind(
    "path on this machine",
    str,
    "a file or directory on the control machine, relative to hosts.toml's directory (~ works)",
    samples=("id_test",),
    edges=("", "/tmp/\x00x", "~nosuchuser/x", "/" + "x" * 300),
    read=read_local_path,
)
BOOL = Kind("boolean", bool, "true or false", samples=(True, False), edges=("true", 1, 0))
DOMAIN = Kind(
    "domain",
    str,
    'a domain name for nginx\'s server_name: letters, digits, hyphens and dots, a leading "*." '
    "only; kept lower-case",
    values.domain,
    samples=("shop.test", "*.shop.test", "xn--bcher-kva.test"),
    edges=("shop.test.", "-shop.test", "a" * 64 + ".test", "shop_test", "*shop.test", "a..b"),
)
ADDRESS = Kind(
    "address",
    str,
    "an IP address (no IPv6 %zone) or a DNS name",
    values.address,
    samples=("10.0.0.9", "fd00::9", "app1.internal"),
    edges=("10.0.0.256", "fe80::1%eth0", "a b", ""),
)
IP_ADDRESS = Kind(
    "IP address",
    str,
    "an IPv4 or IPv6 address (no %zone): systemd's ListenStream= and IPAddressAllow= take no "
    "host name",
    values.ip_address,
    samples=("10.0.0.9", "fd00::9"),
    edges=("app1.internal", "10.0.0.256", "fe80::1%eth0", "localhost"),
)
HOST_NAME = Kind(
    "host name",
    str,
    "a host or group of this file: letters, digits, . _ -",
    values.host_name,
    samples=("web1",),
    edges=("", "-x", "a b", "x" * 64),
)
UNIX_USER = Kind(
    "user name",
    str,
    "a Unix user name: lower-case letters, digits, _ and -, at most 32",
    values.unix_user,
    samples=("deploy", "_ops"),
    edges=("Deploy", "1x", "x" * 33, ""),
)
SSH_PORT = Kind(
    "SSH port",
    int,
    "a TCP port from 1 to 65535",
    values.ssh_port,
    samples=(22, 2222, 65535),
    edges=(0, 65536, -1, "22"),
)
DOTTED = Kind(
    "Python module",
    str,
    "a dotted Python module path (package.module)",
    values.dotted,
    samples=("exampleproject",),
    edges=("1x", "a..b", "a.", "a-b", ""),
)
APPLICATION = Kind(
    "application",
    str,
    "package.module:application, as gunicorn and uvicorn take it",
    values.asgi_app,
    samples=("exampleproject.asgi:application",),
    edges=("exampleproject.asgi", "a:b:c", ":app", "a b:c"),
)
SHELL_LINE = Kind(
    "shell line",
    str,
    "one line of shell (sh -c), at most 2,000 characters",
    values.build_command,
    samples=("true", "npm ci && npm run build"),
    edges=("", " ", "x" * 2001, "a\nb"),
)
COMMANDS = Kind(
    "shell line or list",
    str,
    "one line of shell, or a list of them, run in order",
    values.build_command,
    samples=("true", ["true", "echo done"]),
    edges=("", [], [""], "a\nb"),
    read=text_or_list,
)
SOURCE_PATH = Kind(
    "path in the source",
    str,
    "a relative path inside the project: letters, digits, ._@+-, no ..",
    values.relative_path,
    samples=("pages/static", "assets/dist/"),
    edges=("../x", "/abs", "a//b", "a b"),
)
HOST_PATH = Kind(
    "absolute path",
    str,
    "an absolute path on the hosts: letters, digits, ._@+- between /, no ..",
    values.absolute_path,
    samples=("/srv/media/shop",),
    edges=("srv/x", "/", "/a/../b", "/a b"),
)
URL_PATH = Kind(
    "URL path",
    str,
    "a URL path: starts with /; letters, digits, ._~-/",
    values.url_path,
    samples=("/health/", "/"),
    edges=("health", "/a b", "/a?b", "/%20"),
)
ENV_NAME = Kind(
    "variable name",
    str,
    "an environment variable name: letters, digits and _, not starting with a digit",
    values.env_key,
    samples=("APP_MODE",),
    edges=("1X", "A-B", "A B", ""),
)
ENV_VALUE = Kind(
    "env value",
    str,
    "text systemd (EnvironmentFile=), sh and python-dotenv read alike: no control character, "
    "no ${...}, not ' or \\ together with $ or `",
    values.env_value,
    samples=("prod", "a b", "it's", "$HOME"),
    edges=("a\nb", "${X}", "a\\$b'", "\x1b[31m"),
)
QUEUE = Kind(
    "queue name",
    str,
    "a Celery queue name: letters, digits and _ . : -, at most 100",
    values.celery_queue,
    samples=("celery", "mail"),
    edges=("a b", "-x", "x" * 101, "a,b"),
)
CLI_OPTION = Kind(
    "command-line option",
    str,
    "one --name or --name=value (letters, digits and _ . : / , @ + -; no spaces, quotes, ; "
    "or %: systemd expands % on ExecStart=)",
    values.cli_option,
    samples=("--max-tasks-per-child=100",),
    edges=("-x", "--a b", "--a=%n", "--a;b"),
)
PYTHON_VERSION = Kind(
    "Python version",
    str,
    'a Python minor version such as "3.13"',
    values.python_version,
    samples=("3.11", "3.13"),
    edges=("3", "3.13.1", "python3", "2.7.1"),
)
NGINX_SIZE = Kind(
    "nginx size",
    str,
    "digits with an optional k, m or g (nginx's client_max_body_size)",
    values.nginx_size,
    samples=("20m", "1g", "512"),
    edges=("20 m", "20mb", "-1", "1234567"),
)
NGINX_TIME = Kind(
    "nginx time",
    str,
    "digits with ms, s, m, h or d (nginx's proxy_read_timeout)",
    values.nginx_time,
    samples=("60s", "1h", "500ms"),
    edges=("0", "60 s", "1y", "60S"),
)
EMAIL = Kind(
    "e-mail address",
    str,
    "an e-mail address",
    values.email,
    samples=("ops@shop.test",),
    edges=("ops", "ops@shop", "a b@c.test"),
)
HTTPS_URL = Kind(
    "https URL",
    str,
    "an https:// URL: host, optional port and path",
    values.https_url,
    samples=("https://acme.test/dir",),
    edges=("http://acme.test/", "https://", "https://a b/"),
)
