"""Reading hosts.toml tables: types, validators, unknown keys, and the one-line user error.

Components declare their tables with `Table`: every value goes through a validator from
values.py (whole-value matches), names that come from TOML keys are validated like values, and
whatever a table holds that nobody read is an "unknown key".
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .values import SHOW_LIMIT, escape, show, show_path

Check = Callable[[Any], Any]

FILE_LIMIT = 1 << 20  # hosts.toml, secrets and PEM files are small; /dev/zero is not
PATH_LIMIT = 4095
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class InventoryError(Exception):
    """A user error in the inventory: one line, file and key path first. Whatever the message
    quotes of the user's input is escaped, so it stays one line and moves no terminal cursor."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file, self.key, self.message = show_path(file), escape(key), escape(message)
        where = f"{self.file}: {self.key}: " if key else f"{self.file}: "
        super().__init__(where + self.message)


def key_name(name: str) -> str:
    """A TOML key as a key path shows it: bare when it can be, else quoted and escaped."""
    if _BARE_KEY.fullmatch(name) and len(name) <= SHOW_LIMIT:
        return name
    if len(name) > SHOW_LIMIT:
        return json.dumps(name[:SHOW_LIMIT])[:-1] + '..."'
    return json.dumps(name)


class FileProblem(ValueError):
    """Why a file of the user's cannot be read; `reason` without the path."""

    def __init__(self, path: Path, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{show_path(path)}: {reason}")


def read_text(path: Path, limit: int = FILE_LIMIT) -> str:
    """A small UTF-8 text file of the user's, or FileProblem saying why not (never quoting its
    content): missing, not a regular file (a directory, /dev/zero), too large, unreadable,
    not UTF-8."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise FileProblem(path, "not a regular file")
            data = f.read(limit + 1)
    except FileProblem:
        raise
    except FileNotFoundError:
        raise FileProblem(path, "file not found") from None
    except IsADirectoryError:
        raise FileProblem(path, "is a directory, not a file") from None
    except OSError as exc:
        raise FileProblem(path, f"cannot read it: {exc.strerror or type(exc).__name__}") from None
    except ValueError:  # a NUL in the path
        raise FileProblem(path, "not a usable path") from None
    if len(data) > limit:
        raise FileProblem(path, f"larger than {limit // 1024} kB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(path, f"not UTF-8 text (byte {exc.start})") from None


def local_path(base: Path, value: str) -> Path:
    """A path on the control machine, relative to `base`; ValueError for one no system call
    can take (a NUL, an unknown ~user, too long)."""
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        path = (base / Path(value).expanduser()).resolve()
    except (RuntimeError, OSError) as exc:  # ~nosuchuser; a loop of symlinks
        raise ValueError(f"{show(value)}: {exc}") from None
    text = str(path)
    if len(text) > PATH_LIMIT or any(len(p.encode()) > 255 for p in path.parts):
        raise ValueError(f"{show(value)} is too long for a path")
    return path


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

    def fail(self, key: str, message: str) -> NoReturn:
        raise InventoryError(self.file, key, message)

    def path(self, name: str) -> str:
        return f"{self.key}.{key_name(name)}" if self.key else key_name(name)

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

    def child(self, name: str) -> Table:
        """A sub-table that is there (one of names())."""
        found = self.sub(name)
        if found is None:
            raise KeyError(name)
        return found

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

    def get_path(self, name: str, default: Any = ...) -> Path | None:
        """A path on the control machine, relative to the inventory file's directory."""
        value = self.get(name, str, default=default)
        if value is None:
            return None
        try:
            return local_path(self.base, value)
        except ValueError as exc:
            self.fail(self.path(name), str(exc))

    def read_text(self, name: str, path: Path, limit: int = FILE_LIMIT) -> str:
        """The text of a file the key `name` names (see read_text)."""
        try:
            return read_text(path, limit)
        except ValueError as exc:
            self.fail(self.path(name), str(exc))

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            self.fail(self.path(unknown[0]), "unknown key")
