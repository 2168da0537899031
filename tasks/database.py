"""The site's database: `[sites.<name>.database]`.

- `engine = "sqlite"` (the default): /srv/djk/<site>/shared/db.sqlite3 on each app host
  (DJANGO_DB_PATH).
- `engine = "postgresql"`: Debian's PostgreSQL (15 on Debian 12, 17 on Debian 13) on the site's
  first host with the `db` role, installed by `provision`. One role and one database per site;
  only that role may connect to it (PUBLIC's CONNECT is revoked). The server listens on loopback,
  plus the db host's own address only when app or worker hosts of a site are elsewhere, and
  pg_hba admits each site's role to its database from exactly those hosts, with scram. The role's
  password is DATABASE_PASSWORD from the site's secrets, or one made on the db host on the
  first deploy and kept there in a root-only file (engine/kept.py:
  /var/lib/djk/secrets/<site>.db-password); the server only ever gets its SCRAM verifier,
  computed here.
- `engine = "external"`: DATABASE_URL from the site's secrets.

The app reads DATABASE_URL and its parts (DATABASE_HOST, _PORT, _NAME, _USER, _PASSWORD) from
its env file: secrets, masked in every output. The table's keys: KEYS below
(docs/configuration.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shlex
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from .engine import kept, topology, values
from .engine.component import HostRun, register
from .engine.facts import Fact
from .engine.inventory import Host, Inventory, Site
from .engine.kept import Kept
from .engine.keys import Derived, Key, Keys, Kind, Reading, Rule, choice, integer
from .engine.layout import SitePaths
from .engine.render import MANAGED
from .engine.schema import InventoryError
from .engine.secrets import Secret
from .engine.service import HostService
from .engine.steps import Action, ApplyNow, Context, File, Plan, Service, Step

ENGINES = ("sqlite", "postgresql", "external")
PG_PORT = 5432
PG_UNIT = "postgresql.service"
# Debian's PostgreSQL per Debian release.
PG_VERSIONS = {"12": "15", "13": "17"}
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Database:
    engine: str = "sqlite"
    name: str = ""  # PostgreSQL database
    user: str = ""  # PostgreSQL role
    keep_backups: int = 7
    # DATABASES aliases besides default whose SQLite files are backed up with it
    also_back_up: tuple[str, ...] = ()


def of(site: Site) -> Database:
    return site.part(Database) or Database()


def uses_postgresql(site: Site) -> bool:
    return of(site).engine == "postgresql"


def identifier(value: str) -> str:
    if not _IDENT.fullmatch(value):
        raise ValueError(
            f"{values.show(value)} is not a PostgreSQL name the kit uses (a-z, 0-9, _; "
            "not starting with a digit; up to 63)"
        )
    return value


def db_host(inventory: Inventory, site: Site) -> Host | None:
    found = topology.hosts_with(inventory, site, "db")
    return found[0] if found else None


def held_by(inventory: Inventory, site: Site, host: Host) -> bool:
    """Whether the site's database is on `host`: its db host for PostgreSQL; every app host
    has its own SQLite file; an external one is on none."""
    db = of(site)
    if db.engine == "postgresql":
        found = db_host(inventory, site)
        return found is not None and found.name == host.name
    return db.engine == "sqlite"


def clients(inventory: Inventory, site: Site) -> list[Host]:
    """The hosts whose processes use the site's database: its app and worker hosts."""
    found = topology.hosts_with(inventory, site, "app")
    found += [h for h in topology.hosts_with(inventory, site, "worker") if h not in found]
    return found


def remote_clients(inventory: Inventory, site: Site) -> list[Host]:
    db = db_host(inventory, site)
    return [h for h in clients(inventory, site) if db is None or h.name != db.name]


def address(inventory: Inventory, site: Site) -> str:
    """The database as the site's processes reach it: loopback unless some are elsewhere."""
    db = db_host(inventory, site)
    if db is None or not remote_clients(inventory, site):
        return "127.0.0.1"
    return db.peer_address


def identity(inventory: Inventory, site: Site) -> str:
    """Which database the site's migrations went to ("" for the SQLite file, as before the kit
    knew other engines): migrate runs again when it changes."""
    db = of(site)
    if db.engine == "postgresql":
        return f"pg:{db.name}@{address(inventory, site)}"
    if db.engine == "external":
        url = site.secrets.get("DATABASE_URL")
        digest = hashlib.sha256(url.reveal().encode()).hexdigest()[:12] if url else ""
        return f"external:{digest}"
    return ""


def describe(inventory: Inventory, site: Site) -> str:
    """The site's database in a message: engine, name and where."""
    db = of(site)
    if db.engine == "postgresql":
        host = db_host(inventory, site)
        where = f" on {host.name}" if host is not None else ""
        return f"PostgreSQL database {db.name}{where} ({address(inventory, site)}:{PG_PORT})"
    if db.engine == "external":
        return "the external database of DATABASE_URL"
    return f"SQLite {SitePaths.of(site).db}"


# -- what the database has applied -------------------------------------------------------------
# Read where the database is (the db host for PostgreSQL, a migrating app host for SQLite): by
# the backup before migrations (db.py) and by a first deploy's prepare, which migrates a database
# with no tables in its own process (app.py).

NO_TABLE = "no-table"
# What Applied reads when the host's migrate marker already names this release and database:
# the migrate step will not run, so there is nothing to back up and no need to open the database
# (a no-op deploy then starts no Python and no psql for it, on the host or here).
MIGRATED = "djk-migrated"
# Django's default database is not SQLite (the project's own DATABASES): nothing to read here.
ELSEWHERE = "djk-elsewhere"


# The SQLite file: the one Django connects to, as the release's prepare wrote it down (argv[2:],
# the first that exists), else the kit's own path (argv[1]).
_SQLITE_APPLIED = (
    "import json, os, sqlite3, sys\n"
    "p = sys.argv[1]\n"
    "for f in sys.argv[2:]:\n"
    "    if os.path.exists(f):\n"
    "        d = json.load(open(f))['databases'].get('default', {})\n"
    "        if d.get('vendor') != 'sqlite': print('djk-elsewhere'); sys.exit(0)\n"
    "        p = d['name']; break\n"
    "if not os.path.exists(p): print('no-table'); sys.exit(0)\n"
    "c = sqlite3.connect('file:' + p + '?mode=ro', uri=True)\n"
    "t = c.execute(\"select 1 from sqlite_master where name = 'django_migrations'\").fetchone()\n"
    "rows = c.execute('select app, name from django_migrations') if t else []\n"
    "print('\\n'.join(a + '.' + n for a, n in rows) if t else 'no-table')\n"
)


@dataclass(frozen=True)
class Applied(Fact[frozenset]):
    """The migrations a site's database has applied ("<app>.<name>"); {NO_TABLE} when it has
    none yet; None when it could not be read. With `unless` (a marker file and a value): {MIGRATED}
    without reading the database when the file holds that value."""

    engine: str
    where: str  # the PostgreSQL database, or the SQLite file
    unless: tuple[str, str] | None = None
    # SQLite: what the release's prepare found (asked.FILE), where Django's own file is named
    asked: tuple[str, ...] = ()

    def from_data(self, raw: Any) -> frozenset:
        return frozenset(raw)

    def command(self) -> str:
        if self.engine == "postgresql":
            db = shlex.quote(self.where)
            psql = f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {db}"
            exists = "select to_regclass('django_migrations') is not null"
            rows = "select app || '.' || name from django_migrations"
            read = (
                f't=$({psql} -c "{exists}") || exit 3\n'
                f'if [ "$t" = t ]; then {psql} -c "{rows}"; else echo {NO_TABLE}; fi'
            )
        else:
            args = " ".join(shlex.quote(a) for a in (self.where, *self.asked))
            read = f"python3 -c {shlex.quote(_SQLITE_APPLIED)} {args}"
        if self.unless is None:
            return read
        marker, value = (shlex.quote(part) for part in self.unless)
        return (
            f'if [ "$(cat -- {marker} 2>/dev/null)" = {value} ]; then echo {MIGRATED}\n'
            f"else\n{read}\nfi"
        )

    def parse(self, rc: int, out: str) -> frozenset[str] | None:
        if rc != 0:
            return None
        lines = {line.strip() for line in out.splitlines() if line.strip()}
        for sentinel in (MIGRATED, NO_TABLE, ELSEWHERE):
            if sentinel in lines:
                return frozenset({sentinel})
        return frozenset(lines)


def applied_fact(
    site: Site, unless: tuple[str, str] | None = None, asked: tuple[str, ...] = ()
) -> Applied:
    """`asked`: files of what Django said (release/asked.py), for SQLite: its file is read."""
    db = of(site)
    if db.engine == "postgresql":
        return Applied("postgresql", db.name, unless)
    return Applied("sqlite", SitePaths.of(site).db, unless, asked)


# What env() derives for a PostgreSQL site, named before the password is known.
DERIVED = ("DATABASE_URL", "DATABASE_HOST", "DATABASE_PORT", "DATABASE_NAME", "DATABASE_USER")


def password(site: Site) -> Secret | None:
    return site.secrets.get("DATABASE_PASSWORD")


def pg_version(host: Host) -> str:
    return PG_VERSIONS.get(host.platform.version_id, PG_VERSIONS["12"])


# -- SCRAM: the server gets the verifier, never the password -------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def scram_verifier(secret: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of a password (RFC 5802/7677, as pg stores it)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}"


def verifies(verifier: str, secret: str) -> bool:
    """Whether a stored verifier is one of `secret` (same salt and iterations, recomputed)."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier or "")
    if not match:
        return False
    iterations, salt = int(match.group(1)), base64.b64decode(match.group(2))
    return hmac.compare_digest(scram_verifier(secret, salt, iterations), verifier)


# -- facts (on the db host) ------------------------------------------------------------------


def _psql(sql: str) -> str:
    return f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}"


@dataclass(frozen=True)
class PgRole(Fact[str]):
    """The role's stored password verifier ("" without one); None when there is no such role
    or no server to ask. Compared here, never shown."""

    user: str

    def command(self) -> str:
        return _psql(
            f"select 'role|' || coalesce(rolpassword, '') from pg_authid "
            f"where rolname = '{self.user}'"
        )

    def parse(self, rc: int, out: str) -> str | None:
        line = out.strip()
        return line.removeprefix("role|") if rc == 0 and line.startswith("role|") else None


@dataclass(frozen=True)
class PgDatabase(Fact[tuple]):
    """(owner, whether PUBLIC may connect) of a database; None when it does not exist."""

    name: str

    def command(self) -> str:
        return _psql(
            "select pg_get_userbyid(datdba) || '|' || coalesce(datacl::text, 'default') "
            f"from pg_database where datname = '{self.name}'"
        )

    def parse(self, rc: int, out: str) -> tuple[str, bool] | None:
        line = out.strip()
        if rc != 0 or "|" not in line:
            return None
        owner, _, acl = line.partition("|")
        # No ACL: the defaults, PUBLIC may connect. Else PUBLIC's entries start with "=".
        public = acl == "default" or any(
            item.startswith("=") and "c" in item.partition("/")[0]
            for item in acl.strip("{}").split(",")
        )
        return owner, public


@dataclass(frozen=True)
class PgOnline(Fact[bool]):
    """Whether the host's PostgreSQL cluster is up (pg_lsclusters, Debian's postgresql-common);
    None when PostgreSQL is not installed."""

    def command(self) -> str:
        return "pg_lsclusters -h"

    def parse(self, rc: int, out: str) -> bool | None:
        if rc == 127 or (rc != 0 and not out.strip()):
            return None
        return any(" online" in line for line in out.splitlines())


# -- steps on the db host --------------------------------------------------------------------


class RoleAndDatabase(Step):
    """The site's role (with its password's verifier) and its database, owned by the role,
    which alone may connect to it."""

    def __init__(self, site: Site, secret: Secret) -> None:
        self.site, self.secret = site, secret
        self.db = of(site)
        self.id = f"pg-site:{site.name}"
        self.name = f"database {self.db.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [PgOnline(), PgRole(self.db.user), PgDatabase(self.db.name)]

    def plan(self, ctx: Context) -> Plan:
        online = ctx.facts[PgOnline()]
        if online is None:
            return Plan(error="PostgreSQL is not installed here: run `fab provision` first")
        if not online:
            return Plan(error="PostgreSQL is not running here (pg_lsclusters: down)")
        user, name = self.db.user, self.db.name
        role = ctx.facts[PgRole(user)]
        found = ctx.facts[PgDatabase(name)]
        sql: list[str] = []
        said: list[str] = []
        if role is None or not verifies(role, self.secret.reveal()):
            verb = "CREATE" if role is None else "ALTER"
            verifier = scram_verifier(self.secret.reveal())
            sql.append(f"{verb} ROLE \"{user}\" LOGIN PASSWORD '{verifier}';")
            said.append("create role" if role is None else "set the role's password")
        if found is None:
            sql.append(f'CREATE DATABASE "{name}" OWNER "{user}";')
            said.append("create database")
        elif found[0] != user:
            sql.append(f'ALTER DATABASE "{name}" OWNER TO "{user}";')
            said.append(f"owner {found[0]} -> {user}")
        if found is None or found[1]:
            sql.append(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC;')
            said.append("only its role may connect")
        if not sql:
            return Plan(reason=f"role {user} with its password, owner, only it connects")
        # On stdin, as postgres: the verifier is in no process's arguments; a failing statement
        # would log only the verifier, never the password.
        script = "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -f -"
        return Plan([Action(", ".join(said), script, stdin="\n".join(sql).encode() + b"\n")])


def hba(inventory: Inventory, host: Host) -> str:
    """pg_hba.conf: Debian's local rules, then each site's role from its remote app and worker
    hosts to its database."""
    lines = [
        f"# {MANAGED}",
        "# TYPE  DATABASE        USER            ADDRESS                 METHOD",
        "local   all             postgres                                peer",
        "local   all             all                                     peer",
        "host    all             all             127.0.0.1/32            scram-sha-256",
        "host    all             all             ::1/128                 scram-sha-256",
    ]
    for site in DATABASE.served(inventory, host):
        db = of(site)
        for client in remote_clients(inventory, site):
            where = client.peer_address
            if re.fullmatch(r"[0-9.]+", where):
                where += "/32"
            elif ":" in where:
                where += "/128"
            lines.append(f'host    "{db.name}" "{db.user}" {where} scram-sha-256  # {site.name}')
    return "\n".join(lines) + "\n"


def listen(inventory: Inventory, host: Host) -> str:
    remote = any(remote_clients(inventory, s) for s in DATABASE.served(inventory, host))
    addresses = "localhost" + (f",{host.peer_address}" if remote else "")
    return (
        f"# {MANAGED}\n"
        "# Loopback, and this host's address only when app or worker hosts are elsewhere.\n"
        f"listen_addresses = '{addresses}'\n"
        "password_encryption = scram-sha-256\n"
    )


def server_steps(inventory: Inventory, host: Host) -> list[Step]:
    version = pg_version(host)
    conf = f"/etc/postgresql/{version}/main"
    return [
        File(
            f"{conf}/conf.d/djk.conf",
            listen(inventory, host),
            owner="postgres",
            group="postgres",
            notify=(f"restart:{PG_UNIT}",),
            name="postgresql listen",
        ),
        File(
            f"{conf}/pg_hba.conf",
            hba(inventory, host),
            owner="postgres",
            group="postgres",
            mode="640",
            notify=(f"reload:{PG_UNIT}",),
            name="postgresql pg_hba",
        ),
        Service(PG_UNIT),
        # Now, not after the run: the app hosts migrate through it in the next phase.
        ApplyNow(PG_UNIT),
    ]


def reached_db_hosts(inventory: Inventory, targets: list[Host]) -> list[Host]:
    """The db hosts of the target hosts' PostgreSQL sites that are not targets themselves: a
    deploy reaches them too (the role, its grants, the backup before migrating), as db hosts
    only, whatever else they run."""
    names = {h.name for h in targets}
    found: list[Host] = []
    for host in targets:
        for site in inventory.sites_on(host):
            db = db_host(inventory, site) if uses_postgresql(site) else None
            if db is not None and db.name not in names and db.name not in {h.name for h in found}:
                found.append(replace(db, roles=("db",)))
    return found


class Reached(Step):
    """Says why a host that was not among the targets takes part in the run."""

    def __init__(self, sites: list[str]) -> None:
        self.sites = sites
        self.id = "db-reached"
        self.name = "database host"

    def plan(self, ctx: Context) -> Plan:
        return Plan(reason=f"not among the targets; reached for site(s) {', '.join(self.sites)}")


# -- the component ---------------------------------------------------------------------------


IDENTIFIER = Kind(
    "PostgreSQL name",
    str,
    "a PostgreSQL name the kit uses: a-z, 0-9 and _, not starting with a digit, up to 63",
    identifier,
    samples=("shop", "blog_2"),
    edges=("Shop", "1shop", "a-b", "x" * 64, ""),
)


def alias(value: str) -> str:
    """A DATABASES alias other than default, as a file name can hold it."""
    if not _ALIAS.fullmatch(value) or value == "default":
        raise ValueError(
            f"{values.show(value)} is not a DATABASES alias besides default "
            "(letters, digits, _ and -, up to 63)"
        )
    return value


_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")
ALIAS = Kind(
    "DATABASES alias",
    str,
    "an alias of the project's DATABASES other than default",
    alias,
    samples=("legacy", "analytics"),
    edges=("default", "a b", "../x", "", "x" * 64),
)


def _external_needs_url(r: Reading) -> None:
    if r.got["engine"] == "external" and r.the_site().needs_secret("DATABASE_URL"):
        r.fail("engine", 'is "external": put DATABASE_URL in the secrets')


KEYS = Keys(
    Database,
    (
        Key(
            "engine",
            choice(*ENGINES),
            "sqlite",
            "SQLite on each app host, PostgreSQL on the db host, or DATABASE_URL from the secrets",
        ),
        Key(
            "name",
            IDENTIFIER,
            Derived(
                lambda r: r.the_site().name.replace("-", "_"),
                "the site's name, - as _",
                "the site's name does not make one: set it",
            ),
            "the PostgreSQL database",
        ),
        Key("user", IDENTIFIER, Derived(lambda r: r.got["name"], "`name`"), "the PostgreSQL role"),
        Key(
            "keep_backups",
            integer(1, 1000),
            7,
            "backups kept per site, where the database is (taken before migrations)",
        ),
        Key(
            "also_back_up",
            ALIAS,
            (),
            "DATABASES aliases besides default whose SQLite files are backed up and restored "
            "with it (an alias not listed is named in the backup's line, not backed up)",
            many=True,
            empty=True,
        ),
        Rule(
            ("engine", "DATABASE_URL"),
            _external_needs_url,
            "an external database's URL is a secret",
        ),
    ),
)


def _refuse_worker_only_hosts(inventory: Inventory, site: Site) -> None:
    """A SQLite file is on each app host: a worker on a host without the app role has none (each
    task that touches the database would fail with "no such table")."""
    for host in topology.hosts_with(inventory, site, "worker"):
        if "app" not in topology.roles(host):
            engine = "" if site.part(Database) else " (no [database] table)"
            raise InventoryError(
                inventory.path,
                f"sites.{site.name}.hosts",
                f"host {host.name!r} runs the site's workers but not its app: SQLite{engine} "
                "is on app hosts only; give it the app role, or use PostgreSQL "
                f'([sites.{site.name}.database] engine = "postgresql")',
            )


class DatabaseComponent(HostService):
    """`[sites.<name>.database]`: SQLite (default), PostgreSQL on the db host, or external."""

    name = "database"
    after = ("lock",)  # a site's database server and role before its app
    package = "postgresql"
    unit = PG_UNIT
    port = PG_PORT
    what = "PostgreSQL"
    table = "database"
    roles = ("db",)

    keys = KEYS

    def check(self, inventory: Inventory) -> None:
        for site in inventory.sites.values():
            if of(site).engine == "sqlite":
                _refuse_worker_only_hosts(inventory, site)
            if uses_postgresql(site) and db_host(inventory, site) is None:
                raise InventoryError(
                    inventory.path,
                    f"sites.{site.name}.hosts",
                    'database engine "postgresql" needs a host with the db role',
                )
            if uses_postgresql(site):
                kept.refuse_empty(inventory, site, "DATABASE_PASSWORD", "PostgreSQL", "db host")
        owners: dict[tuple[str, str], str] = {}
        for site in inventory.sites.values():
            if not uses_postgresql(site):
                continue
            host = db_host(inventory, site)
            if host is None:  # refused above
                continue
            for kind, value in (("database", of(site).name), ("role", of(site).user)):
                other = owners.setdefault((host.name, f"{kind} {value}"), site.name)
                if other != site.name:
                    raise InventoryError(
                        inventory.path,
                        f"sites.{site.name}.database.{'name' if kind == 'database' else 'user'}",
                        f"{kind} {value!r} on host {host.name!r} is already site {other!r}'s",
                    )

    def kept_secrets(self, inventory: Inventory, site: Site) -> list[Kept]:
        host = db_host(inventory, site) if uses_postgresql(site) else None
        return [Kept(site.name, "DATABASE_PASSWORD", host, "db-password")] if host else []

    def python_packages(self, site: Site) -> list[str]:
        return ["psycopg[binary]==3.2.10"] if uses_postgresql(site) else []

    def server_of(self, inventory: Inventory, site: Site) -> Host | None:
        return db_host(inventory, site) if uses_postgresql(site) else None

    def clients(self, inventory: Inventory, site: Site) -> list[Host]:
        """The site's app and worker hosts elsewhere."""
        return remote_clients(inventory, site)

    def env_names(self, inventory: Inventory, site: Site) -> set[str]:
        given = {"DJK_DATABASE"} if of(site).engine != "sqlite" else set()
        return given | (set(DERIVED) if uses_postgresql(site) else set())

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        # The settings layer sets DATABASES only for a server hosts.toml names; with SQLite
        # (the default) the project's own DATABASES stand.
        given: dict[str, str | Secret] = {}
        if of(site).engine != "sqlite":
            given["DJK_DATABASE"] = of(site).engine
        if not uses_postgresql(site):
            return given
        db, secret = of(site), password(site)
        if secret is None:  # not resolved (an inventory read without secrets)
            return {}
        where = address(inventory, site)
        url = (
            f"postgres://{quote(db.user, safe='')}:{quote(secret.reveal(), safe='')}@"
            f"{values.url_host(where)}:{PG_PORT}/{db.name}"
        )
        # DATABASE_PASSWORD itself is one of the site's secrets (given, or made on the db host).
        return {
            **given,
            "DATABASE_URL": Secret(url),
            "DATABASE_HOST": where,
            "DATABASE_PORT": str(PG_PORT),
            "DATABASE_NAME": db.name,
            "DATABASE_USER": db.user,
        }

    def configure(self, run: HostRun, served: list[Site]) -> list[Step]:
        served = [s for s in served if s in run.sites]
        if not served:
            return []
        steps: list[Step] = []
        if run.options.reached:
            steps.append(Reached([s.name for s in served]))
        steps += server_steps(run.inventory, run.host)
        steps += [RoleAndDatabase(s, p) for s in served if (p := password(s)) is not None]
        return steps


DATABASE = DatabaseComponent()
register(DATABASE)
