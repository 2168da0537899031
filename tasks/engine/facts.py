"""Facts: a shell command, a pure parser of its output and a default.

All facts a phase needs are read in one round trip: `gather` joins their commands into one script
with markers between them, and `split_sections` cuts the output apart again. Parsers never touch
the network, so they are tested on recorded output.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PENDING_FILE = "/var/lib/djk/pending-handlers"
_START = "\x1edjk-fact "
_END = "\x1fdjk-rc "

PRELUDE = r"""
export LC_ALL=C
djk_stat() {
  if [ -L "$1" ]; then printf 'link|%s\n' "$(readlink -- "$1")"
  elif [ -d "$1" ]; then stat -c 'dir|%a|%U|%G' -- "$1"
  elif [ -f "$1" ]; then printf 'file|%s|%s\n' "$(stat -c '%a|%U|%G' -- "$1")" \
    "$(sha256sum -- "$1" | cut -c1-64)"
  elif [ -e "$1" ]; then echo 'other'
  else echo 'absent'; fi
}
"""


@dataclass(frozen=True)
class Fact:
    key: str
    command: str
    parse: Callable[[int, str], Any]
    default: Any = None


@dataclass(frozen=True)
class PathState:
    kind: str  # file, dir, link, other
    mode: str = ""
    owner: str = ""
    group: str = ""
    sha256: str = ""
    target: str = ""  # for links


def parse_stat(rc: int, out: str) -> PathState | None:
    line = out.strip()
    if rc != 0 or not line or line == "absent":
        return None
    kind, _, rest = line.partition("|")
    if kind == "link":
        return PathState("link", target=rest)
    fields = rest.split("|")
    if kind == "dir" and len(fields) == 3:
        return PathState("dir", *fields)
    if kind == "file" and len(fields) == 4:
        return PathState("file", *fields)
    return PathState("other")


def path_state(path: str) -> Fact:
    return Fact(f"stat:{path}", f"djk_stat {shlex.quote(path)}", parse_stat)


def parse_text(rc: int, out: str) -> str | None:
    return out.strip() if rc == 0 else None


def file_text(path: str) -> Fact:
    """A small file's text (markers the kit writes), or None when absent."""
    return Fact(f"text:{path}", f"cat -- {shlex.quote(path)}", parse_text)


def parse_content(rc: int, out: str) -> str | None:
    import base64

    if rc != 0:
        return None
    return base64.b64decode(out.strip() or b"").decode("utf-8", "replace")


def file_content(path: str) -> Fact:
    """A managed file's whole content, read only for --diff."""
    return Fact(f"content:{path}", f"base64 -w0 -- {shlex.quote(path)}", parse_content)


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


def user(name: str) -> Fact:
    return Fact(f"user:{name}", f"getent passwd {shlex.quote(name)}", parse_passwd)


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


def units(names: list[str]) -> Fact:
    """Every managed unit's state in one systemctl call."""
    quoted = " ".join(shlex.quote(n) for n in sorted(names))
    return Fact(
        f"units:{','.join(sorted(names))}",
        f"systemctl show --no-pager -p {UNIT_PROPS} -- {quoted}",
        parse_units,
        default={},
    )


def parse_lines(rc: int, out: str) -> list[str]:
    if rc != 0:
        return []
    seen: list[str] = []
    for line in out.splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.append(line)
    return seen


def pending_handlers() -> Fact:
    """Handlers notified by an earlier run that did not get to run them."""
    return Fact("pending-handlers", f"cat -- {PENDING_FILE}", parse_lines, default=[])


def build_script(facts: list[Fact]) -> str:
    parts = [PRELUDE]
    for fact in facts:
        parts.append(
            f"printf '%s\\n' {shlex.quote(_START + fact.key)}; "
            f"( {fact.command} ) 2>/dev/null; printf '{_END}%s\\n' $?"
        )
    return "\n".join(parts) + "\nexit 0\n"


def split_sections(output: str) -> dict[str, tuple[int, str]]:
    """Cut gathered output into {key: (rc, output)}."""
    sections: dict[str, tuple[int, str]] = {}
    for chunk in output.split(_START)[1:]:
        key, _, rest = chunk.partition("\n")
        body, _, tail = rest.rpartition(_END)
        rc_text = tail.strip()
        sections[key] = (int(rc_text) if rc_text.lstrip("-").isdigit() else 255, body)
    return sections


def parse_all(facts: list[Fact], output: str) -> dict[str, Any]:
    sections = split_sections(output)
    values: dict[str, Any] = {}
    for fact in facts:
        if fact.key in sections:
            rc, body = sections[fact.key]
            parsed = fact.parse(rc, body)
            values[fact.key] = fact.default if parsed is None else parsed
        else:
            values[fact.key] = fact.default
    return values
