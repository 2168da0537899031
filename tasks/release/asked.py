"""What Django said of a release (ask_django.py ran in it, in its prepare step): the databases
it connects to and its migrations. An outcome of the prepare step on the host that migrates,
and the release's `.djk-django.json`, which later runs read (the `Asked` fact) when the
release was prepared before them."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..engine.facts import Fact
from ..engine.outcome import Outcome

FILE = ".djk-django.json"
PREFIX = "DJK-DJANGO "
# The module's text as `manage.py shell -c` runs it (ask_django.py).
SCRIPT = (Path(__file__).with_name("ask_django.py")).read_text()


# What an operation is for a live release running the code before it (ask_django.py's kinds).
EXPAND, DEFAULT, CONTRACT, UNSAFE = "expand", "default", "contract", "unsafe"
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Operation:
    """One operation of a migration, as Django's own objects made it, and its kind."""

    kind: str  # EXPAND, DEFAULT, CONTRACT or UNSAFE
    text: str  # Django's describe(): "Add field kind to visit"
    why: str = ""  # what makes it unsafe
    app: str = ""  # DEFAULT and RemoveField: where the column is
    model: str = ""
    field: str = ""
    value: Scalar | None = None  # DEFAULT: the constant the database holds meanwhile
    marked: bool = False  # RunPython/RunSQL the project marked (hints={"djk": ...})
    rename: bool = False

    def data(self) -> list:
        detail: dict[str, Any] = {}
        if self.why:
            detail["why"] = self.why
        if self.app:
            detail.update(app=self.app, model=self.model, field=self.field)
        if self.kind == DEFAULT:
            detail["value"] = self.value
        if self.marked:
            detail["marked"] = True
        if self.rename:
            detail["rename"] = True
        return [self.kind, self.text, detail]


def _operation(raw: Any) -> Operation:
    kind, text, detail = raw
    value = detail.get("value")
    return Operation(
        str(kind),
        str(text),
        str(detail.get("why", "")),
        str(detail.get("app", "")),
        str(detail.get("model", "")),
        str(detail.get("field", "")),
        value if isinstance(value, (str, int, float, bool)) else None,
        bool(detail.get("marked")),
        bool(detail.get("rename")),
    )


@dataclass(frozen=True)
class Migration:
    name: str  # "<app label>.<migration name>", as django_migrations records it
    replaces: tuple[str, ...] = ()  # a squashed migration's
    additive: bool = False  # only adds what the previous release neither reads nor must write
    depends: tuple[str, ...] = ()  # the migrations it needs applied first
    # Its operations; None: a release prepared by a kit that did not classify them.
    operations: tuple[Operation, ...] | None = None


@dataclass(frozen=True)
class Database:
    alias: str
    vendor: str  # "sqlite", "postgresql", ...
    name: str  # the SQLite file, or the database's name
    host: str = ""
    port: str = ""
    user: str = ""

    def describe(self) -> str:
        if self.vendor == "sqlite":
            return f"SQLite {self.name}"
        where = f" on {self.host}" + (f":{self.port}" if self.port else "") if self.host else ""
        return f"{self.vendor} database {self.name}{where}"


@dataclass(frozen=True)
class DjangoReport(Outcome):
    """Django's own view of a release of a site."""

    site: str
    databases: tuple[Database, ...] = ()
    migrations: tuple[Migration, ...] = ()
    fresh: bool = False  # the prepare found the default database empty and migrated it
    django: str = ""  # Django's version, "5.2.1"

    def data(self) -> dict[str, Any]:
        return {"django": {self.site: {"databases": [d.__dict__ for d in self.databases]}}}

    @property
    def default(self) -> Database | None:
        return next((d for d in self.databases if d.alias == "default"), None)

    def pending(self, applied: frozenset[str]) -> list[Migration]:
        """The migrations `migrate` would apply to a database that applied `applied`, with
        Django's rule for squashed ones: a squash counts as applied when every migration it
        replaces is; it is used instead of them when none is; else they are used."""
        replaced: set[str] = set()
        found = []
        for m in self.migrations:
            if not m.replaces:
                continue
            done = [r in applied for r in m.replaces]
            if all(done) or m.name in applied or not any(done):
                replaced |= set(m.replaces)
                if not (all(done) or m.name in applied):
                    found.append(m)
            # partly applied: the replaced ones stand, the squash is not used
        for m in self.migrations:
            if m.replaces or m.name in replaced or m.name in applied:
                continue
            found.append(m)
        return sorted(found, key=lambda m: m.name)

    def json(self) -> str:
        return json.dumps(
            {
                "databases": {d.alias: _db_data(d) for d in self.databases},
                "migrations": [_migration_data(m) for m in self.migrations],
                "fresh": self.fresh,
                "django": self.django,
            },
            sort_keys=True,
        )


def _migration_data(m: Migration) -> list:
    row: list = [m.name, list(m.replaces), m.additive]
    if m.operations is not None:
        row += [list(m.depends), [op.data() for op in m.operations]]
    return row


def _migration(row: Any) -> Migration:
    name, replaces, adds = row[:3]
    depends, operations = (row[3], row[4]) if len(row) >= 5 else ((), None)
    return Migration(
        str(name),
        tuple(str(r) for r in replaces),
        bool(adds),
        tuple(str(d) for d in depends),
        tuple(_operation(op) for op in operations) if operations is not None else None,
    )


def _db_data(db: Database) -> dict[str, str]:
    return {k: getattr(db, k) for k in ("vendor", "name", "host", "port", "user")}


def parse(site: str, text: str) -> DjangoReport | None:
    """The report of ask_django's JSON (a line of output without its prefix, or the file)."""
    try:
        raw = json.loads(text)
        databases = tuple(
            Database(
                alias, **{k: str(v.get(k, "")) for k in ("vendor", "name", "host", "port", "user")}
            )
            for alias, v in sorted(raw["databases"].items())
        )
        migrations = tuple(_migration(row) for row in raw["migrations"])
        version = str(raw.get("django", ""))
        return DjangoReport(site, databases, migrations, bool(raw.get("fresh")), version)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def from_output(site: str, out: str) -> DjangoReport | None:
    """The report in a prepare's output (its last DJK-DJANGO line)."""
    lines = [line[len(PREFIX) :] for line in out.splitlines() if line.startswith(PREFIX)]
    return parse(site, lines[-1]) if lines else None


def call(fresh: bool) -> str:
    """Python for `manage.py shell -c`: the module, then its report."""
    return f"{SCRIPT}\nreport(fresh={fresh!r})\n"


@dataclass(frozen=True)
class Asked(Fact[Any]):
    """The report a release's prepare left in the release (`.djk-django.json`): the first of
    `releases` that has one (None: none has; a release prepared by an older kit)."""

    site: str
    releases: tuple[str, ...]  # release directories, in order of preference
    # (releases directory, tree): else a release staged earlier with this source (a run that
    # stopped before its switch, a refused one), newest first, before the last of `releases`
    # (`deploy --check` shows what Django said of it).
    same_tree: tuple[str, str] | None = None
    default: ClassVar[Any] = None

    def command(self) -> str:
        q = shlex.quote
        first = " ".join(q(f"{r}/{FILE}") for r in self.releases[:-1])
        last = q(f"{self.releases[-1]}/{FILE}")
        script = f'for f in {first}; do [ -f "$f" ] && cat -- "$f" && exit 0; done\n'
        if self.same_tree is not None:
            where, tree = self.same_tree
            script += (
                f"for d in $(ls -1d {q(where)}/*/ 2>/dev/null | sort -r); do\n"
                f'  [ "$(cat -- "$d.djk-tree" 2>/dev/null)" = {q(tree)} ] && '
                f'[ -f "$d{FILE}" ] && cat -- "$d{FILE}" && exit 0\n'
                "done\n"
            )
        return script + f"[ -f {last} ] && cat -- {last}; true"

    def parse(self, rc: int, out: str) -> DjangoReport | None:
        return parse(self.site, out.strip()) if out.strip() else None

    def from_data(self, raw: Any) -> DjangoReport | None:
        return parse(self.site, json.dumps(raw)) if raw is not None else None
