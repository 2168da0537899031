"""The audit log: one JSON line per run on each host a run touches, in
/var/log/djk/audit.jsonl (root-only; releases come and go, it stays).

A line says who (the local user and machine, and the fingerprint of the SSH key that logged
in), the command, per site the release before and after, the result and the time. A run that
holds the deploy lock hands its line to the lock's keeper as it lets go (no command of its
own); any other appends it with one command. `fab audit` reads it back.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from .facts import Fact
from .outcome import Outcome

AUDIT_DIR = "/var/log/djk"
AUDIT_FILE = f"{AUDIT_DIR}/audit.jsonl"


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def command_line() -> str:
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))


def key_fingerprint(conn) -> str:
    """SHA256 fingerprint of the key the connection logged in with ("" when unknown)."""
    try:
        key = conn.client.get_transport().auth_handler.private_key
        return key.fingerprint if key is not None else ""
    except AttributeError:
        return ""


@dataclass(frozen=True)
class AuditLine(Outcome):
    """The audit line a run wrote on a host (what the run's end tells, engine/events.py)."""

    entry: dict

    def data(self) -> dict[str, Any]:
        return {"audit_line": self.entry}

    def site(self, name: str) -> dict | None:
        """What the line says of one site (release before and after), or None."""
        return self.entry.get("sites", {}).get(name)


@dataclass(frozen=True)
class AuditEntries(Outcome):
    """Lines read from a host's audit log (`fab audit`)."""

    entries: tuple[dict, ...]

    def data(self) -> dict[str, Any]:
        return {"audit": list(self.entries)}


@dataclass(frozen=True)
class Says:
    """executor.Audited for a run whose line says the same whatever it found: what it did to
    each site (`{"shop": {"lock": "cleared"}}`)."""

    sites: dict

    def entry(self, facts: Any, report: Any) -> dict:
        return self.sites


def record(host: str, key: str, result: str, sites: dict, error: str = "") -> dict:
    found = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host,
        "by": who(),
        "key": key,
        "command": command_line(),
        "result": result,
        "sites": sites,
    }
    if error:
        found["error"] = error[:300]
    return found


def line(entry: dict) -> bytes:
    return (json.dumps(entry, sort_keys=True) + "\n").encode()


# Appended under an flock: runs on several hosts, and a keeper writing at the same time.
APPEND = f"""set -e
umask 077
install -d -m 700 {AUDIT_DIR}
exec 9>>{AUDIT_FILE}
flock 9
cat >&9
"""


@dataclass(frozen=True)
class AuditLog(Fact[list]):
    """The host's audit lines, oldest first (the newest `limit`)."""

    limit: int = 200
    default: ClassVar[Any] = []

    def command(self) -> str:
        return f"tail -n {int(self.limit)} {shlex.quote(AUDIT_FILE)}"

    def parse(self, rc: int, out: str) -> list[dict]:
        found = []
        for text in out.splitlines():
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if isinstance(entry, dict):
                found.append(entry)
        return found
