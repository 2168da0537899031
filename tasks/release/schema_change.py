"""The migrations of a deploy, split around the switch (schema.py decides, this does it), in the
release's own Django through its manage.py (`manage.py shell -c`: this module's text, then one
call). Django's own `migrate` command runs them, so its signals (content types, permissions)
and output stay; the kit only narrows its plan and adjusts operations on their way:

- `before(plan)`: the migrations of the plan minus those left for after the switch; an
  AddField whose column the old release does not write gets the model default as a database
  default (db_default) too; on PostgreSQL a migration of only AddIndex builds its indexes
  concurrently (outside a transaction, writes go on meanwhile); then removed NOT NULL columns
  without a default become nullable (the new release's INSERTs omit them).
- `after(plan)`: every migration left, then the temporary defaults dropped.
- `defaults_back(plan)`: a rollback to a release that does not write those columns puts them
  back.

On PostgreSQL every statement waits at most LOCK_TIMEOUT for a lock (a long transaction delays
the migration instead of queueing every query behind it), and a migration that timed out is
tried again. Prints `DJK-SCHEMA {json}` lines. Only Django and the standard library.
"""

import copy
import json
import time

from django.core.management import call_command
from django.core.management.commands import migrate as migrate_command
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections
from django.db.backends.signals import connection_created
from django.db.migrations import operations as ops
from django.db.migrations.executor import MigrationExecutor
from django.db.models import NOT_PROVIDED

SCHEMA_PREFIX = "DJK-SCHEMA "
LOCK_TIMEOUT = "3s"
TRIES = 40  # with the waits between them: about three minutes


def _say(**what) -> None:
    # On a line of its own: migrate's "Applying x..." has no newline yet when a try fails.
    print("\n" + SCHEMA_PREFIX + json.dumps(what, sort_keys=True, default=str), flush=True)


def _lock_timeout(sender=None, connection=None, **kwargs) -> None:
    if connection is not None and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")


connection_created.connect(_lock_timeout)


def _locked(exc: Exception) -> bool:
    """A lock wait that timed out (PostgreSQL 55P03), or SQLite's busy database."""
    cause = exc.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return code == "55P03" or "database is locked" in str(exc)


def _with_db_default(field, value):
    """The same field, with `value` as its database default too."""
    name, path, args, kwargs = field.deconstruct()
    kwargs["db_default"] = value
    return field.__class__(*args, **kwargs)


def _concurrent_index():
    from django.contrib.postgres.operations import AddIndexConcurrently

    class Concurrent(AddIndexConcurrently):
        """CREATE INDEX CONCURRENTLY; an invalid index of the same name (a build an earlier try
        cut off) is dropped first."""

        def database_forwards(self, app_label, schema_editor, from_state, to_state):
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(
                    "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = %s AND NOT i.indisvalid",
                    [self.index.name],
                )
                if cursor.fetchone():
                    name = schema_editor.quote_name(self.index.name)
                    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    return Concurrent


class _Plan:
    def __init__(self, wanted: dict) -> None:
        self.later = set(wanted.get("after", []))
        self.defaults = {
            (app, model, field): value for app, model, field, value in wanted.get("defaults", [])
        }
        self.database = wanted.get("database", DEFAULT_DB_ALIAS)
        self.adjusted: set = set()
        self.said: list = []

    def adjust(self, migration, vendor: str) -> None:
        key = (migration.app_label, migration.name)
        if key in self.adjusted:
            return
        self.adjusted.add(key)
        changed = []
        for operation in migration.operations:
            where = (
                migration.app_label,
                getattr(operation, "model_name_lower", ""),
                getattr(operation, "name", ""),
            )
            if isinstance(operation, ops.AddField) and where in self.defaults:
                operation.field = _with_db_default(operation.field, self.defaults[where])
                changed.append(f"{where[1]}.{where[2]}: database default kept")
        indexes = migration.operations and all(
            type(op) is ops.AddIndex for op in migration.operations
        )
        if vendor == "postgresql" and indexes:
            concurrent = _concurrent_index()
            migration.operations = [
                concurrent(op.model_name, op.index) for op in migration.operations
            ]
            migration.atomic = False
            changed.append("indexes built concurrently")
        if changed:
            self.said.append(f"{migration.app_label}.{migration.name}: " + "; ".join(changed))


def _migrate(plan: _Plan) -> None:
    """Django's migrate command, its plan without the migrations left for after the switch,
    tried again while a lock wait times out."""
    vendor = connections[plan.database].vendor

    class Narrowed(MigrationExecutor):
        def migration_plan(self, targets, clean_start=False):
            found = super().migration_plan(targets, clean_start)
            if clean_start:  # the whole graph, for the project's state: untouched
                return found
            kept = [(m, back) for m, back in found if f"{m.app_label}.{m.name}" not in plan.later]
            for m, _ in kept:
                plan.adjust(m, vendor)
            return kept

    original = migrate_command.MigrationExecutor
    migrate_command.MigrationExecutor = Narrowed
    try:
        for attempt in range(1, TRIES + 1):
            try:
                call_command("migrate", database=plan.database, interactive=False)
                return
            except OperationalError as exc:
                if not _locked(exc) or attempt == TRIES:
                    raise
                _say(lock_wait=attempt, error=str(exc).strip()[:200])
                time.sleep(min(attempt, 5))
    finally:
        migrate_command.MigrationExecutor = original


def _state(database: str, node=None):
    loader = MigrationExecutor(connections[database]).loader
    return loader.project_state(node, at_end=node is None)


def _alter(database: str, model, old, new) -> None:
    with connections[database].schema_editor() as editor:
        editor.alter_field(model, old, new)


def _relax(plan: _Plan) -> list:
    """Removed NOT NULL columns without a database default, in the migrations left for after
    the switch: nullable now, so the new release's INSERTs, which omit them, succeed."""
    done: list = []
    if not plan.later:
        return done
    loader = MigrationExecutor(connections[plan.database]).loader
    for name in sorted(plan.later):
        label, _, migration_name = name.partition(".")
        node = (label, migration_name)
        if node not in loader.graph.nodes:
            continue
        migration = loader.graph.nodes[node]
        removals = [op for op in migration.operations if isinstance(op, ops.RemoveField)]
        if not removals:
            continue
        state = loader.project_state(node, at_end=False)
        for op in removals:
            model = state.apps.get_model(label, op.model_name)
            field = model._meta.get_field(op.name)
            if field.null or field.many_to_many or field.db_default is not NOT_PROVIDED:
                continue
            loose = copy.copy(field)
            loose.null = True
            _alter(plan.database, model, field, loose)
            done.append(f"{label}.{op.model_name_lower}.{op.name}")
    return done


def _defaults(plan: _Plan, keep: bool) -> list:
    """The temporary defaults dropped (keep False) or put back (keep True), on the columns
    today's state of the project has."""
    state = _state(plan.database)
    done = []
    for (label, model_name, name), value in sorted(plan.defaults.items()):
        try:
            model = state.apps.get_model(label, model_name)
            field = model._meta.get_field(name)
        except LookupError:
            continue  # gone since (removed by a later migration)
        if getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED:
            continue  # the project gave it a database default of its own
        with_default = copy.copy(field)
        with_default.db_default = value
        with_default.__dict__.pop("_db_default_expression", None)
        old, new = (field, with_default) if keep else (with_default, field)
        _alter(plan.database, model, old, new)
        done.append(f"{label}.{model_name}.{name}")
    return done


def before(wanted: dict) -> None:
    plan = _Plan(wanted)
    _migrate(plan)
    relaxed = _relax(plan)
    _say(phase="before", adjusted=plan.said, relaxed=relaxed)


def after(wanted: dict) -> None:
    plan = _Plan({**wanted, "after": []})
    _migrate(plan)
    dropped = _defaults(plan, keep=False)
    _say(phase="after", dropped=dropped)


def defaults_back(wanted: dict) -> None:
    plan = _Plan(wanted)
    put = _defaults(plan, keep=True)
    _say(phase="rollback", restored=put)
