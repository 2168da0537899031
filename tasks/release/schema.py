"""A deploy's pending migrations split around the switch, from Django's own operations (as
ask_django.py classified them against the live release):

- before the switch: migrations that only expand (new models, nullable columns, columns with a
  database default, indexes, code marked expand); a NOT NULL column with a constant model
  default is added with that constant as a database default, kept until no process of the old
  release is left (the old release's INSERTs omit the column);
- after the switch, once no process of the old release is left: a tail of migrations that only
  remove (columns, models, indexes, code marked contract) that nothing run before depends on;
  a removed NOT NULL column without a default gets its NOT NULL dropped before the switch (the
  new release's INSERTs omit it);
- refused, before any migration or switch: anything else (renames, type changes, NULL to NOT
  NULL, new unique constraints, unmarked code, a migration mixing additions and removals, a
  removal something else depends on), with one line naming the migration, the operation and
  the way to do it in two releases.

A pure function of the release's report and the applied migrations; schema_change.py does it
on the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..engine.outcome import Outcome
from .asked import CONTRACT, DEFAULT, EXPAND, UNSAFE, DjangoReport, Migration, Operation

DOCS = 'docs/stack.md, "Schema changes"'
RENAME_WAY = (
    "in two releases: add the new one beside the old and write both, then remove the old "
    f"({DOCS}); or deploy with --maintenance"
)
OTHER_WAY = f"in two releases ({DOCS}); or deploy with --maintenance"


@dataclass(frozen=True)
class TemporaryDefault:
    """A database default a column keeps while the release before it still runs."""

    app: str
    model: str
    field: str
    value: Any

    def data(self) -> list:
        return [self.app, self.model, self.field, self.value]

    @classmethod
    def of(cls, raw: Any) -> TemporaryDefault | None:
        try:
            app, model, name, value = raw
        except (TypeError, ValueError):
            return None
        return cls(str(app), str(model), str(name), value)

    def describe(self) -> str:
        return f"{self.app}.{self.model}.{self.field} = {json.dumps(self.value)}"


@dataclass(frozen=True)
class Split(Outcome):
    """What a deploy does with a site's pending migrations (see the module's text)."""

    site: str
    before: tuple[Migration, ...] = ()
    after: tuple[Migration, ...] = ()
    defaults: tuple[TemporaryDefault, ...] = ()
    refused: str = ""  # one line: why no split is safe, and the way out
    # The release was prepared by a kit that did not classify operations, or the site asked
    # for plain migrations (migrate_split = false): all before the switch, as Django writes them.
    plain: str = ""

    @property
    def pending(self) -> bool:
        return bool(self.before or self.after)

    def data(self) -> dict[str, Any]:
        return {
            "schema": {
                self.site: {
                    "before_switch": [m.name for m in self.before],
                    "after_switch": [m.name for m in self.after],
                    "temporary_defaults": [d.describe() for d in self.defaults],
                    "refused": self.refused,
                    "plain": self.plain,
                }
            }
        }

    def describe(self) -> str:
        """What the deploy's output says of it: which run before and after, and why."""
        if self.refused:
            return self.refused
        if self.plain:
            names = ", ".join(m.name for m in self.before)
            return f"{names} ({self.plain})"
        parts = []
        if self.before:
            parts.append("before the switch: " + ", ".join(_why(m) for m in self.before))
        if self.defaults:
            kept = ", ".join(d.describe() for d in self.defaults)
            parts.append(f"database default kept until the old release is gone: {kept}")
        if self.after:
            names = ", ".join(m.name for m in self.after)
            parts.append(f"after the switch, once the old release is gone: {names} (removals)")
        return "; ".join(parts)


def _why(m: Migration) -> str:
    kinds = {op.kind for op in m.operations or ()}
    if CONTRACT in kinds:
        return f"{m.name} (removals the live release no longer reads)"
    if DEFAULT in kinds:
        return f"{m.name} (NOT NULL with a database default)"
    return f"{m.name} (additions)"


def _refusal(site: str, m: Migration, op: Operation, more: int) -> str:
    way = RENAME_WAY if op.rename else OTHER_WAY
    tail = f" ({more} more refused)" if more else ""
    return f"site {site}: migration {m.name}: {op.text}: {op.why}; {way}{tail}"


def _needs(m: Migration, by_name: dict[str, Migration]) -> set[str]:
    """The pending migrations `m` needs first, directly or not."""
    found: set[str] = set()
    todo = list(m.depends)
    while todo:
        name = todo.pop()
        if name in found or name not in by_name:
            continue
        found.add(name)
        todo.extend(by_name[name].depends)
    return found


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def split(
    site: str,
    report: DjangoReport,
    applied: frozenset[str],
    plain: str = "",
) -> Split:
    """The split of the migrations `report` brings that `applied` lacks. `plain`: why there is
    no split (all run before the switch, as Django writes them)."""
    pending = report.pending(applied)
    if not pending:
        return Split(site)
    if plain:
        return Split(site, tuple(pending), plain=plain)
    if any(m.operations is None for m in pending):
        why = "prepared by a kit that did not classify them: as Django writes them"
        return Split(site, tuple(pending), plain=why)
    refused: list[tuple[Migration, Operation]] = []
    before: list[Migration] = []
    removing: list[Migration] = []
    for m in pending:
        ops = m.operations or ()
        kinds = {op.kind for op in ops}
        if UNSAFE in kinds:
            refused += [(m, op) for op in ops if op.kind == UNSAFE]
        elif CONTRACT in kinds and kinds & {EXPAND, DEFAULT}:
            first = next(op for op in ops if op.kind == CONTRACT)
            why = (
                "it mixes additions and removals: the removals must wait for the old release "
                "to be gone; put them in a migration of their own"
            )
            refused.append((m, Operation(UNSAFE, first.text, why)))
        elif CONTRACT in kinds:
            removing.append(m)
        else:
            before.append(m)
    by_name = {m.name: m for m in pending}
    later = {m.name for m in removing}
    for m in before:
        needed = sorted(_needs(m, by_name) & later)
        if needed:
            why = (
                f"it needs {needed[0]}, which removes what the live release reads: only a tail "
                "of removals can wait for the switch; deploy the removal in a release of its own"
            )
            refused.append((m, Operation(UNSAFE, "depends on a removal", why)))
    defaults = tuple(
        TemporaryDefault(op.app, op.model, op.field, op.value)
        for m in before
        for op in m.operations or ()
        if op.kind == DEFAULT
    )
    if defaults and report.django and _major(report.django) < 5:
        m = next(m for m in before if any(op.kind == DEFAULT for op in m.operations or ()))
        op = next(op for op in m.operations or () if op.kind == DEFAULT)
        why = (
            f"a temporary database default needs Django 5.0's db_default (this is "
            f"{report.django}): give the field null=True first, or a db_default"
        )
        refused.insert(0, (m, Operation(UNSAFE, op.text, why)))
    if refused:
        m, op = refused[0]
        line = _refusal(site, m, op, len(refused) - 1)
        return Split(site, tuple(pending), refused=line)
    return Split(site, tuple(before), tuple(removing), defaults)


def record(split: Split, release: str, earlier: dict | None) -> dict:
    """The after-switch work a migrating host keeps (migrate.RECORD) once the migrations
    before the switch ran: this split's, and an earlier run's defaults not dropped yet."""
    defaults = [TemporaryDefault.of(raw) for raw in (earlier or {}).get("defaults", [])]
    kept = [d for d in defaults if d is not None]
    for d in split.defaults:
        if d not in kept:
            kept.append(d)
    return {
        "release": release,
        "migrations": [m.name for m in split.after],
        "defaults": [d.data() for d in kept],
    }


def describe_record(found: dict) -> str:
    """`fab status`'s words for after-switch work left on a host."""
    return f"after-switch work of {found.get('release', '?')} pending: {describe_work(found)}"


def describe_work(found: dict) -> str:
    """What a record holds: its migrations and temporary defaults."""
    parts = []
    if found.get("migrations"):
        parts.append("migrations " + ", ".join(found["migrations"]))
    defaults = [TemporaryDefault.of(raw) for raw in found.get("defaults", [])]
    if any(defaults):
        parts.append(
            "temporary defaults " + ", ".join(d.describe() for d in defaults if d is not None)
        )
    return "; ".join(parts) or "nothing"
