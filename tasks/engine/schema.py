"""Reading hosts.toml tables: types, validators, unknown keys, and the one-line user error.

Components declare their tables with `Table`: every value goes through a validator from
values.py (whole-value matches), names that come from TOML keys are validated like values, and
whatever a table holds that nobody read is an "unknown key".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Check = Callable[[Any], Any]


class InventoryError(Exception):
    """A user error in the inventory: one line, file and key path first."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    list: "a list",
    dict: "a table",
    bool: "a boolean",
}


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class Table:
    """One table of the inventory: typed, validated reads; unknown keys rejected by done()."""

    def __init__(self, file: Path, table: Any, key: str, base: Path | None = None) -> None:
        self.file, self.key = file, key
        self.base = base if base is not None else file.parent
        if not isinstance(table, dict):
            self.fail(key, f"must be a table, not {type_name(table)}")
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def fail(self, key: str, message: str):
        raise InventoryError(self.file, key, message)

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def has(self, name: str) -> bool:
        return name in self.table

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
            self.fail(key, f"must be a list of strings, not {type_name(raw)}")
        if not raw and not empty:
            self.fail(key, "must not be empty")
        items = tuple(self.value(f"{key}[{i}]", item, str, check) for i, item in enumerate(raw))
        if len(set(items)) != len(items):
            self.fail(key, "lists the same value twice")
        return items

    def sub(self, name: str) -> Table | None:
        """A sub-table, or None when absent."""
        self.seen.add(name)
        if name not in self.table:
            return None
        return Table(self.file, self.table[name], self.path(name), self.base)

    def names(self, check: Check) -> list[str]:
        """The keys of this table as names (hosts, sites, env keys): each validated like a
        value, with its own key path."""
        found = []
        for name in self.table:
            self.value(self.path(name), name, str, check)
            found.append(name)
        return found

    def value(self, key: str, raw: Any, kind: type, check: Check | None) -> Any:
        if kind is int and isinstance(raw, bool) or not isinstance(raw, kind):
            self.fail(key, f"must be {type_name(kind())}, not {type_name(raw)}")
        if check is not None:
            try:
                return check(raw)
            except ValueError as exc:
                self.fail(key, str(exc))
        return raw

    def local_path(self, value: str) -> Path:
        """A path in the inventory, relative to the inventory file's directory."""
        return (self.base / Path(value).expanduser()).resolve()

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            self.fail(self.path(unknown[0]), "unknown key")
