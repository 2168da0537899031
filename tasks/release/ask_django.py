"""What the kit asks Django in a staged release, in the process that already collects its static
files and runs its deployment checklist (commands.Prepare sends this module's text to
`manage.py shell -c`): the databases it connects to and the project's migrations as its own
loader sees them (real app labels, MIGRATION_MODULES, squashed `replaces`, dependencies), each
operation classified against a live release that still runs the code before it (schema.py
splits the pending ones around the switch). Printed as one line, `DJK-DJANGO {json}`. With
`fresh`, a default database with no tables yet is migrated in the same process first.

Only Django and the standard library: this runs in the release's venv, not the kit's.
"""

import json

import django
from django.conf import settings
from django.db import connections
from django.db.migrations import operations as ops
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState
from django.db.models import NOT_PROVIDED

PREFIX = "DJK-DJANGO "

# What an operation is, for a live release that runs the code from before it:
EXPAND = "expand"  # it never reads what this adds, nor must write it: before the switch
DEFAULT = "default"  # a NOT NULL column it does not write: before, with a database default
CONTRACT = "contract"  # removes what only it reads: after the switch, once it is gone
UNSAFE = "unsafe"  # it cannot run against this: refused (or --maintenance)

# The marker a project puts on RunPython/RunSQL: hints={"djk": "expand"} or "contract".
MARKER = "djk"

_ADDING = (
    ops.CreateModel,
    ops.AddIndex,
    ops.AlterModelOptions,
    ops.AlterModelManagers,
    ops.AlterModelTableComment,
    ops.AlterIndexTogether,
    ops.RenameIndex,
)
_REMOVING = (ops.RemoveField, ops.DeleteModel, ops.RemoveIndex, ops.RemoveConstraint)
_RENAMING = (ops.RenameField, ops.RenameModel, ops.AlterModelTable)
# Attributes of a field that change no column (Django's own list, and the model default, which
# Django never leaves in the database).
_NO_COLUMN = {"default", "db_comment", "db_default", "to", "preserve_default"}


def _contrib_postgres(operation):
    """django.contrib.postgres's operations, when that app's module imports (psycopg)."""
    try:
        from django.contrib.postgres import operations as pg
    except Exception:  # no PostgreSQL driver in this venv: none of its operations either
        return None
    if isinstance(operation, (pg.CreateExtension, pg.AddIndexConcurrently, pg.CreateCollation)):
        return EXPAND, ""
    if isinstance(operation, (pg.RemoveIndexConcurrently, pg.RemoveCollation)):
        return CONTRACT, ""
    return None


def _added_field(operation, label: str):
    field = operation.field
    if field.many_to_many or field.null:
        return EXPAND, {}
    if getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED:
        return EXPAND, {}
    if not field.has_default():
        return UNSAFE, {"why": "NOT NULL without a default: the live release's INSERTs omit it"}
    value = field.default
    if callable(value):
        name = getattr(value, "__name__", repr(value))
        why = f"its default {name}() is computed per row: no one value the database can hold"
        return UNSAFE, {"why": why}
    if field.unique or field.primary_key:
        return UNSAFE, {"why": "a unique NOT NULL column: one default cannot fill it"}
    if not isinstance(value, (str, int, float, bool)):
        why = f"its default {value!r} is not a text, number or boolean the kit carries"
        return UNSAFE, {"why": why}
    where = {"app": label, "model": operation.model_name_lower, "field": operation.name}
    return DEFAULT, {**where, "value": value}


def _kwargs(field) -> tuple:
    _, path, args, kwargs = field.deconstruct()
    for name in (*field.non_db_attrs, *_NO_COLUMN):
        kwargs.pop(name, None)
    return path, args, kwargs


def _altered_field(operation, label: str, state):
    if state is None:
        return UNSAFE, {"why": "its previous state is not known (a squashed migration's part)"}
    try:
        old = state.models[label, operation.model_name_lower].fields[operation.name]
    except KeyError:
        return UNSAFE, {"why": "the field it alters is not in the previous state"}
    new = operation.field
    old_path, old_args, old_kw = _kwargs(old)
    new_path, new_args, new_kw = _kwargs(new)
    if old_path != new_path or old_args != new_args:
        short = new_path.rsplit(".", 1)[-1]
        return UNSAFE, {"why": f"a type change to {short}: the live release writes the old type"}
    old_default = getattr(old, "db_default", NOT_PROVIDED)
    if old_default is not NOT_PROVIDED and getattr(new, "db_default", NOT_PROVIDED) != old_default:
        return UNSAFE, {"why": "it drops a database default the live release relies on"}
    changed = sorted(k for k in set(old_kw) | set(new_kw) if old_kw.get(k) != new_kw.get(k))
    unsafe = []
    for name in changed:
        before, after = old_kw.get(name), new_kw.get(name)
        if name == "null" and after:
            continue  # NOT NULL dropped: the live release writes values anyway
        if name == "max_length" and before and after and after > before:
            continue  # wider: what the live release writes still fits
        unsafe.append(name)
    if "null" in unsafe:
        return UNSAFE, {"why": "NULL to NOT NULL: the live release may write NULL"}
    if unsafe:
        return UNSAFE, {"why": f"it changes {', '.join(unsafe)} of the column"}
    return EXPAND, {}


def _unique_together(operation, label: str, state):
    if state is None:
        return UNSAFE, {"why": "its previous state is not known"}
    try:
        before = state.models[label, operation.name_lower].options.get("unique_together", set())
    except KeyError:
        return UNSAFE, {"why": "the model is not in the previous state"}
    after = operation.option_value or set()
    if {tuple(t) for t in after} <= {tuple(t) for t in before}:
        return EXPAND, {}
    return UNSAFE, {"why": "a new unique constraint: the live release's writes may break it"}


def _code(operation):
    marked = (getattr(operation, "hints", None) or {}).get(MARKER)
    if marked in (EXPAND, CONTRACT):
        return marked, {"marked": True}
    noop = (isinstance(operation, ops.RunPython) and operation.code is ops.RunPython.noop) or (
        isinstance(operation, ops.RunSQL) and operation.sql == ops.RunSQL.noop
    )
    if noop:
        return EXPAND, {}
    why = (
        "code the kit cannot judge: mark it hints={'djk': 'expand'} (the live release runs "
        "with its result) or {'djk': 'contract'} (only after the switch)"
    )
    return UNSAFE, {"why": why}


def _separate(operation, label: str, state):
    kinds = [classify(o, label, None)[0] for o in operation.database_operations]
    if all(k == EXPAND for k in kinds):
        return EXPAND, {}
    if all(k == CONTRACT for k in kinds):
        return CONTRACT, {}
    return UNSAFE, {"why": "its database operations are not all of one kind"}


def classify(operation, label: str, state):
    """[kind, description, detail] of one operation, given the project's state before it
    (None: not known). What is not named here is unsafe."""
    text = operation.describe()
    kind = UNSAFE
    detail: dict = {"why": "an operation the kit does not know"}
    try:
        found = _contrib_postgres(operation)
        if found is not None:
            kind, detail = found[0], {}
        elif isinstance(operation, _ADDING):
            kind, detail = EXPAND, {}
        elif isinstance(operation, ops.AddField):
            kind, detail = _added_field(operation, label)
        elif isinstance(operation, _REMOVING):
            kind, detail = CONTRACT, {}
            if isinstance(operation, ops.RemoveField):
                where = {"model": operation.model_name_lower, "field": operation.name}
                detail = {"app": label, **where}
        elif isinstance(operation, _RENAMING):
            why = "a rename: the live release reads the old name"
            kind, detail = UNSAFE, {"why": why, "rename": True}
        elif isinstance(operation, ops.AlterField):
            kind, detail = _altered_field(operation, label, state)
        elif isinstance(operation, ops.AlterUniqueTogether):
            kind, detail = _unique_together(operation, label, state)
        elif isinstance(operation, ops.AddConstraint):
            why = "a new constraint: the live release's writes may break it"
            kind, detail = UNSAFE, {"why": why}
        elif isinstance(operation, (ops.RunPython, ops.RunSQL)):
            kind, detail = _code(operation)
        elif isinstance(operation, ops.SeparateDatabaseAndState):
            kind, detail = _separate(operation, label, state)
    except Exception as exc:  # a third-party operation's oddity: judged unsafe, said why
        kind, detail = UNSAFE, {"why": f"could not be classified ({type(exc).__name__})"}
    return [kind, text, detail]


def databases() -> dict:
    """Each alias of DATABASES: its vendor, and where it is (never a password)."""
    found = {}
    for alias, conf in settings.DATABASES.items():
        found[alias] = {
            "vendor": connections[alias].vendor,
            "name": str(conf.get("NAME") or ""),
            "host": str(conf.get("HOST") or ""),
            "port": str(conf.get("PORT") or ""),
            "user": str(conf.get("USER") or ""),
        }
    return found


def _in_order(loader) -> list:
    """Every node of the migration graph, each after its dependencies."""
    seen, order = set(), []
    for leaf in sorted(loader.graph.leaf_nodes()):
        for node in loader.graph.forwards_plan(leaf):
            if node not in seen:
                seen.add(node)
                order.append(node)
    return order


def migrations() -> list:
    """[label.name, [replaced], additive, [dependencies], [[kind, text, detail], ...]] of every
    migration on disk; operations are classified against the state before them, walked once
    in the graph's order (no model is rendered)."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    classified = {}
    state = ProjectState(real_apps=loader.unmigrated_apps)
    for node in _in_order(loader):
        migration = loader.graph.nodes[node]
        found = []
        for operation in migration.operations:
            found.append(classify(operation, migration.app_label, state))
            operation.state_forwards(migration.app_label, state)
        classified[node] = found
    rows = []
    for key, migration in sorted(loader.disk_migrations.items()):
        label, name = key
        found = classified.get(key) or [classify(op, label, None) for op in migration.operations]
        if key in loader.graph.node_map:
            parents = sorted(loader.graph.node_map[key].parents)
        else:
            parents = [d for d in migration.dependencies if not d[1].startswith("__")]
        rows.append(
            [
                f"{label}.{name}",
                [f"{a}.{b}" for a, b in migration.replaces],
                all(kind == EXPAND for kind, _, _ in found),
                [f"{a}.{b}" for a, b in parents],
                found,
            ]
        )
    return rows


def migrate_if_empty() -> bool:
    """Migrate the default database when it has no tables yet (a first deploy): nothing can
    have used it, so there is nothing to back up first."""
    from django.core.management import call_command

    if connections["default"].introspection.table_names():
        return False
    call_command("migrate", interactive=False)
    return True


def report(fresh: bool) -> None:
    found = {
        "databases": databases(),
        "django": ".".join(str(part) for part in django.VERSION[:3]),
        "migrations": migrations(),
        "fresh": migrate_if_empty() if fresh else False,
    }
    print(PREFIX + json.dumps(found, sort_keys=True, default=str), flush=True)
