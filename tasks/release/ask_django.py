"""What the kit asks Django in a staged release, in the process that already collects its static
files and runs its deployment checklist (commands.Prepare sends this module's text to
`manage.py shell -c`): the databases it connects to and the project's migrations as its own
loader sees them (real app labels, MIGRATION_MODULES, squashed `replaces`), each marked
additive or not. Printed as one line, `DJK-DJANGO {json}`. With `fresh`, a default database
with no tables yet is migrated in the same process first.

Only Django and the standard library: this runs in the release's venv, not the kit's.
"""

import json

from django.conf import settings
from django.db import connections
from django.db.migrations import operations as ops
from django.db.migrations.loader import MigrationLoader
from django.db.models import NOT_PROVIDED

PREFIX = "DJK-DJANGO "

# Operations after which the previous release still runs: it never reads what they added.
_ADDING = (ops.CreateModel, ops.AddIndex, ops.AlterModelOptions, ops.AlterModelManagers)


def additive(operation) -> bool:
    """Whether an operation only adds what older code neither reads nor must write."""
    if isinstance(operation, _ADDING):
        return True
    if isinstance(operation, ops.AddField):
        field = operation.field
        default = getattr(field, "db_default", NOT_PROVIDED)
        return bool(field.null or field.many_to_many or default is not NOT_PROVIDED)
    return False


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


def migrations() -> list:
    """[label.name, [replaced label.name, ...], additive] of every migration on disk."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    found = []
    for (label, name), migration in sorted(loader.disk_migrations.items()):
        replaces = [f"{a}.{b}" for a, b in migration.replaces]
        adds = all(additive(op) for op in migration.operations)
        found.append([f"{label}.{name}", replaces, adds])
    return found


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
        "migrations": migrations(),
        "fresh": migrate_if_empty() if fresh else False,
    }
    print(PREFIX + json.dumps(found, sort_keys=True), flush=True)
