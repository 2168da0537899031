"""Facts: what a host is like, each a shell command, a pure parser of its output and a default.

A fact is a frozen dataclass: its type and fields name it (`Stat("/etc/x")`), so steps look facts
up by value, never by a hand-built string. All facts a phase needs are read in one round trip:
`build_script` joins their commands with markers between them and `parse_all` cuts the output
apart again. Parsers never touch the network, so they are tested on recorded output.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from .procs import SUPERVISORCTL, is_program

T = TypeVar("T")
# A fact of T is a fact of any supertype of T (a fact of list[str] reads as Iterable[str]).
T_co = TypeVar("T_co", covariant=True)

PENDING_FILE = "/var/lib/djk/pending-handlers"
_START = "\x1edjk-fact "
_END = "\x1fdjk-rc "

# Every Stat of a round trip is one `stat` and one `sha256sum` over all the paths (Stats): a
# process per path made the reading of a host with three sites 0.15 s. Paths the kit stats are
# its own (no newlines); `%N` with literal quoting is "path -> target" for a link.
PRELUDE = r"""
export LC_ALL=C QUOTING_STYLE=literal
djk_stats() {
  stat -c '%F|%a|%U|%G|%N' -- "$@"
  files=
  for p in "$@"; do
    if [ -f "$p" ] && [ ! -L "$p" ]; then files="$files$p
"; fi
  done
  [ -z "$files" ] && return 0
  echo '--'
  set -f; IFS='
'; sha256sum -- $files
}
"""


@dataclass(frozen=True)
class Fact(Generic[T_co]):
    """Base of every fact. Subclasses are frozen dataclasses whose fields are the arguments."""

    default: ClassVar[Any] = None

    def command(self) -> str:
        raise NotImplementedError

    def parse(self, rc: int, out: str) -> T_co | None:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """A unique marker for the fact's section in the gathered output."""
        fields = ",".join(repr(getattr(self, f.name)) for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"

    def from_data(self, raw: Any) -> T_co | None:
        """Its value as data writes it (a plan case's TOML), as parse() would give it; as is
        unless a fact says otherwise."""
        return raw


def fact_kinds() -> dict[str, type[Fact]]:
    """Every fact class by its name: the kit's and those of any component imported (a plan
    case names a fact by its class)."""
    found: dict[str, type[Fact]] = {}
    todo: list[type] = [Fact]
    while todo:
        kind = todo.pop()
        sub: type
        for sub in kind.__subclasses__():
            found.setdefault(sub.__name__, sub)
            todo.append(sub)
    return found


class Facts(Mapping):
    """Read-only: every fact read for a phase, looked up by the fact itself."""

    def __init__(self, values: Mapping[Fact, Any] | None = None) -> None:
        self._values: dict[Fact, Any] = dict(values or {})

    def __getitem__(self, fact: Fact[T]) -> T:
        if fact in self._values:
            return self._values[fact]
        if isinstance(fact, Unit):
            merged = _PROGRAMS if is_program(fact.name) else _UNITS
            if merged in self._values:
                return self._values[merged].get(fact.name)
        raise KeyError(f"fact {fact.label} was not gathered (declare it in the step's facts())")

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def with_values(self, values: Mapping[Any, Any]) -> Facts:
        return Facts({**self._values, **values})


@dataclass(frozen=True)
class On(Fact[T_co]):
    """Fact `fact` of another host of the run (e.g. a site's database host): read there in that
    host's first round trip and handed to the steps that ask for it here (engine/executor.py).
    Its value is as read at the start of the run; None when that host is not in the run. A
    fact a step declares like any other, never gathered on its own host."""

    host: str
    fact: Fact[T_co]

    @property
    def label(self) -> str:
        return f"On({self.host!r}, {self.fact.label})"


# -- files ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathState:
    kind: str  # file, dir, link, other
    mode: str = ""
    owner: str = ""
    group: str = ""
    sha256: str = ""
    target: str = ""  # for links


@dataclass(frozen=True)
class Stat(Fact[PathState]):
    """Kind, mode, owner, group and content hash of a path (link target for links); None when
    absent. Read with every other Stat of the round trip in one Stats."""

    path: str

    def from_data(self, raw: Any) -> PathState | None:
        return None if raw is None else PathState(**raw)

    def command(self) -> str:
        return Stats((self.path,)).command()

    def parse(self, rc: int, out: str) -> PathState | None:
        return parse_stats(out).get(self.path)


_KINDS = {"directory": "dir", "regular file": "file", "regular empty file": "file"}


def parse_stats(out: str) -> dict[str, PathState]:
    """`stat -c '%F|%a|%U|%G|%N'` lines, then `--` and `sha256sum` lines: the paths that exist.
    (A path stat cannot read is left out: absent.)"""
    listed, _, sums = out.partition("\n--\n")
    hashes = {}
    for line in sums.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64 and path:
            hashes[path] = digest
    found: dict[str, PathState] = {}
    for line in listed.splitlines():
        fields = line.split("|", 4)
        if len(fields) != 5:
            continue
        kind, mode, owner, group, name = fields
        if kind == "symbolic link":
            path, _, target = name.partition(" -> ")
            found[path] = PathState("link", target=target)
        elif _KINDS.get(kind) == "dir":
            found[name] = PathState("dir", mode, owner, group)
        elif _KINDS.get(kind) == "file":
            found[name] = PathState("file", mode, owner, group, hashes.get(name, ""))
        else:
            found[name] = PathState("other")
    return found


@dataclass(frozen=True)
class Stats(Fact[dict]):
    """Every Stat of a round trip (facts._plan_gather folds them in): path -> PathState."""

    paths: tuple[str, ...]
    default: ClassVar[Any] = {}

    def command(self) -> str:
        return "djk_stats " + " ".join(shlex.quote(p) for p in self.paths)

    def parse(self, rc: int, out: str) -> dict[str, PathState]:
        return parse_stats(out)


def parse_text(rc: int, out: str) -> str | None:
    return out.strip() if rc == 0 else None


@dataclass(frozen=True)
class Text(Fact[str]):
    """A small file's text (markers the kit writes), or None when absent."""

    path: str

    def command(self) -> str:
        return f"cat -- {shlex.quote(self.path)}"

    def parse(self, rc: int, out: str) -> str | None:
        return parse_text(rc, out)


@dataclass(frozen=True)
class Content(Fact[str]):
    """A managed file's whole content, read only for --diff."""

    path: str

    def command(self) -> str:
        return f"base64 -w0 -- {shlex.quote(self.path)}"

    def parse(self, rc: int, out: str) -> str | None:
        if rc != 0:
            return None
        return base64.b64decode(out.strip() or b"").decode("utf-8", "replace")


# -- users, units, handlers ----------------------------------------------------------------------


@dataclass(frozen=True)
class UserState:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def parse_passwd(rc: int, out: str) -> UserState | None:
    fields = out.strip().split(":")
    if rc != 0 or len(fields) != 7:
        return None
    return UserState(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6])


@dataclass(frozen=True)
class User(Fact[UserState]):
    name: str

    def command(self) -> str:
        return f"getent passwd {shlex.quote(self.name)}"

    def parse(self, rc: int, out: str) -> UserState | None:
        return parse_passwd(rc, out)


@dataclass(frozen=True)
class UnitState:
    name: str
    load: str  # loaded, not-found
    active: str  # active, inactive, failed, activating
    enabled: str  # enabled, disabled, static, "" when not found
    main_pid: int

    @property
    def running(self) -> bool:
        return self.active in ("active", "reloading")


def parse_units(rc: int, out: str) -> dict[str, UnitState]:
    """Parse `systemctl show -p Id,LoadState,ActiveState,UnitFileState,MainPID u1 u2 ...`."""
    units: dict[str, UnitState] = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" not in props:
            continue
        units[props["Id"]] = UnitState(
            name=props["Id"],
            load=props.get("LoadState", ""),
            active=props.get("ActiveState", ""),
            enabled=props.get("UnitFileState", ""),
            main_pid=int(props.get("MainPID") or 0),
        )
    return units


UNIT_PROPS = "Id,LoadState,ActiveState,UnitFileState,MainPID"


# supervisorctl's states as systemd's ActiveState (BACKOFF: it exited while starting and will
# be tried again, as systemd's auto-restart).
_PROGRAM_STATES = {
    "RUNNING": "active",
    "STARTING": "activating",
    "BACKOFF": "activating",
    "STOPPING": "deactivating",
    "STOPPED": "inactive",
    "EXITED": "inactive",
    "FATAL": "failed",
    "UNKNOWN": "failed",
}
_PROGRAM_PID = re.compile(r"pid (\d+),")


def parse_programs(rc: int, out: str) -> dict[str, UnitState]:
    """Parse `supervisorctl status p1 p2 ...` ("NAME  STATE  description" per program; a name
    supervisord does not know is left out)."""
    programs: dict[str, UnitState] = {}
    for line in out.splitlines():
        fields = line.split(None, 2)
        if len(fields) < 2 or fields[1] not in _PROGRAM_STATES:
            continue
        pid = _PROGRAM_PID.search(fields[2]) if len(fields) > 2 else None
        programs[fields[0]] = UnitState(
            name=fields[0],
            load="loaded",
            active=_PROGRAM_STATES[fields[1]],
            enabled="supervisor",
            main_pid=int(pid.group(1)) if pid else 0,
        )
    return programs


@dataclass(frozen=True)
class Unit(Fact[UnitState]):
    """A systemd unit's or a supervisor program's state (procs.is_program tells by the name).
    However many a phase needs, they are read in one systemctl and one supervisorctl call."""

    name: str

    def from_data(self, raw: Any) -> UnitState | None:
        return None if raw is None else UnitState(name=self.name, **raw)

    def command(self) -> str:  # pragma: no cover - gathered through Units
        return Units((self.name,)).command()

    def parse(self, rc: int, out: str) -> UnitState | None:  # pragma: no cover
        return parse_units(rc, out).get(self.name)


@dataclass(frozen=True)
class Units(Fact[dict]):
    names: tuple[str, ...]
    default: ClassVar[Any] = {}

    def command(self) -> str:
        quoted = " ".join(shlex.quote(n) for n in sorted(self.names))
        return f"systemctl show --no-pager -p {UNIT_PROPS} -- {quoted}"

    def parse(self, rc: int, out: str) -> dict[str, UnitState]:
        return parse_units(rc, out)


@dataclass(frozen=True)
class Programs(Fact[dict]):
    names: tuple[str, ...]
    default: ClassVar[Any] = {}

    def command(self) -> str:
        quoted = " ".join(shlex.quote(n) for n in sorted(self.names))
        return f"{SUPERVISORCTL} status {quoted}"

    def parse(self, rc: int, out: str) -> dict[str, UnitState]:
        return parse_programs(rc, out)


_UNITS = Units(("*",))  # where gather() keeps the merged unit states
_PROGRAMS = Programs(("*",))


def parse_lines(rc: int, out: str) -> list[str]:
    if rc != 0:
        return []
    seen: list[str] = []
    for line in out.splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.append(line)
    return seen


@dataclass(frozen=True)
class PendingHandlers(Fact[list]):
    """Handlers notified by an earlier run that did not get to run them."""

    default: ClassVar[Any] = []

    def command(self) -> str:
        return f"cat -- {PENDING_FILE}"

    def parse(self, rc: int, out: str) -> list[str]:
        return parse_lines(rc, out)


@dataclass(frozen=True)
class Lines(Fact[list]):
    """Any command's output lines (e.g. a directory listing), [] when it fails."""

    shell: str
    default: ClassVar[Any] = []

    def command(self) -> str:
        return self.shell

    def parse(self, rc: int, out: str) -> list[str]:
        return parse_lines(rc, out)


# -- one round trip ------------------------------------------------------------------------------


def _plan_gather(facts: Iterable[Fact]) -> list[Fact]:
    """The facts to run: each once, every Unit folded into one Units (systemd) and one Programs
    (supervisor) call, every Stat into one Stats."""
    found: dict[Fact, None] = {}
    units: set[str] = set()
    paths: dict[str, None] = {}
    for fact in facts:
        if isinstance(fact, Unit):
            units.add(fact.name)
        elif isinstance(fact, Stat):
            paths.setdefault(fact.path)
        else:
            found.setdefault(fact)
    run = list(found)
    if paths:
        run.append(Stats(tuple(paths)))
    systemd = sorted(n for n in units if not is_program(n))
    programs = sorted(n for n in units if is_program(n))
    if systemd:
        run.append(Units(tuple(systemd)))
    if programs:
        run.append(Programs(tuple(programs)))
    return run


def build_script(facts: Iterable[Fact]) -> str:
    parts = [PRELUDE]
    for fact in _plan_gather(facts):
        parts.append(
            f"printf '%s\\n' {shlex.quote(_START + fact.label)}; "
            f"( {fact.command()} ) 2>/dev/null; printf '{_END}%s\\n' $?"
        )
    return "\n".join(parts) + "\nexit 0\n"


def split_sections(output: str) -> dict[str, tuple[int, str]]:
    """Cut gathered output into {label: (rc, output)}."""
    sections: dict[str, tuple[int, str]] = {}
    for chunk in output.split(_START)[1:]:
        label, _, rest = chunk.partition("\n")
        body, _, tail = rest.rpartition(_END)
        rc_text = tail.strip()
        sections[label] = (int(rc_text) if rc_text.lstrip("-").isdigit() else 255, body)
    return sections


def parse_all(facts: Iterable[Fact], output: str) -> Facts:
    sections = split_sections(output)
    values: dict[Fact, Any] = {}
    for fact in _plan_gather(facts):
        value = None
        if fact.label in sections:
            rc, body = sections[fact.label]
            value = fact.parse(rc, body)
        value = fact.default if value is None else value
        if isinstance(fact, Stats):
            values.update((Stat(path), value.get(path)) for path in fact.paths)
            continue
        merged = {Units: _UNITS, Programs: _PROGRAMS}.get(type(fact))
        values[merged or fact] = value
    return Facts(values)
