"""The deploy lock: one deploy or rollback per site at a time, tied to the SSH connection.

A keeper process on the host (the host agent's `lock-keep`, agent/lock.py) takes an flock per
site and holds it while the control machine keeps its stdin open. When the run ends, is killed,
or its connection drops, stdin closes and the kernel releases the lock, so a dead run never
leaves a lock behind. The holder's who / when / pid / command sit beside the lock for the
message a second deploy gets. Here: the commands that start the agent, and their parsers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from . import agent
from .facts import Fact

BUSY_EXIT = 75


def keeper_command(
    sites: list[str],
    wait: float,
    command: str,
    by: str,
    run_id: str,
    then: bool = False,
    carry: bool = False,
) -> str:
    """The agent's lock keeper (agent/lock.py), or agent.MISSING when it must be uploaded. With
    `then`, its stdin starts with a script it runs once the locks are taken (script_head); with
    `carry`, before that with the agent itself (agent.carried_head)."""
    spec = {
        "sites": sites,
        "wait": wait,
        "run": run_id,
        "info": {"by": by, "pid": os.getpid(), "command": command},
    }
    if then:
        spec["then"] = True
    text = json.dumps(spec, sort_keys=True)
    return agent.carried("lock-keep", text) if carry else agent.if_installed("lock-keep", text)


def script_head(script: str) -> bytes:
    data = script.encode()
    return f"{len(data)}\n".encode() + data


def parse_locked(line: str) -> tuple[int, int, int] | None:
    """`LOCKED <rc> <stdout bytes> <stderr bytes>` (a keeper that ran a script): the numbers;
    None for anything else."""
    parts = line.split()
    if len(parts) == 4 and parts[0] == "LOCKED" and all(p.lstrip("-").isdigit() for p in parts[1:]):
        return int(parts[1]), int(parts[2]), int(parts[3])
    return None


def status_command() -> str:
    return agent.any_installed("lock-status")


def clear_command(site: str) -> str:
    """Ends the keeper holding a site's lock (a run that hangs); the kernel frees the lock."""
    return agent.any_installed("lock-clear", json.dumps({"site": site}))


@dataclass(frozen=True)
class Holder:
    site: str
    by: str
    pid: int
    command: str
    age: float

    def describe(self) -> str:
        return (
            f"site {self.site} is locked by {self.by} (pid {self.pid}, `{self.command}`) "
            f"for {self.age:.0f}s"
        )


def parse_busy(line: str) -> Holder:
    """`BUSY <site> <info json>` from the keeper."""
    _, site, *rest = line.split(" ", 2)
    try:
        info = json.loads(rest[0]) if rest else {}
    except ValueError:
        info = {}
    return Holder(
        site=site,
        by=str(info.get("by", "?")),
        pid=int(info.get("pid", 0) or 0),
        command=str(info.get("command", "?")),
        age=time.time() - float(info.get("since", time.time())),
    )


def parse_status(rc: int, out: str) -> list[Holder]:
    holders = []
    for line in out.splitlines():
        try:
            info = json.loads(line)
        except ValueError:
            continue
        holders.append(
            Holder(
                site=str(info.get("site", "?")),
                by=str(info.get("by", "?")),
                pid=int(info.get("pid", 0) or 0),
                command=str(info.get("command", "?")),
                age=float(info.get("age", 0)),
            )
        )
    return holders


@dataclass(frozen=True)
class Locks(Fact[list]):
    """The sites whose lock a run holds on the host, with who, what and how long."""

    default: ClassVar[Any] = []

    def command(self) -> str:
        return status_command()

    def parse(self, rc: int, out: str) -> list[Holder]:
        return parse_status(rc, out)


def command_line() -> str:
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
