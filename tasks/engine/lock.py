"""The deploy lock: one deploy or rollback per site at a time, tied to the SSH connection.

A keeper process on the host takes an flock per site and holds it while the control machine
keeps its stdin open. When the run ends, is killed, or its connection drops, stdin closes and the
kernel releases the lock, so a dead run never leaves a lock behind. The holder's who / when /
pid / command sit beside the lock for the message a second deploy gets.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from .facts import Fact

LOCK_DIR = "/var/lib/djk/locks"
BUSY_EXIT = 75

KEEPER = r"""
import fcntl, json, os, sys, time
names, wait, info = sys.argv[1].split(","), float(sys.argv[2]), json.loads(sys.argv[3])
needle = ("DJK_RUN=" + sys.argv[4]).encode() + b"\0"
os.makedirs(LOCK_DIR, exist_ok=True)
deadline = time.monotonic() + wait
fds = []
for name in names:
    path = os.path.join(LOCK_DIR, name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                try:
                    holder = open(path + ".info").read().strip()
                except OSError:
                    holder = "{}"
                try:
                    draining = json.loads(holder).get("draining", False)
                except ValueError:
                    draining = False
                # A holder whose run is over only waits for its last commands: wait for it too.
                if not (draining and time.monotonic() < deadline + 300):
                    print("BUSY", name, holder, flush=True)
                    sys.exit(BUSY_EXIT)
            time.sleep(0.2)
    fds.append(fd)
    info.update(keeper_pid=os.getpid(), since=time.time())
    with open(path + ".info", "w") as f:
        f.write(json.dumps(info))
print("LOCKED", flush=True)
sys.stdin.read()
info["draining"] = True
for name in names:
    with open(os.path.join(LOCK_DIR, name + ".lock.info"), "w") as f:
        f.write(json.dumps(info))
# The run is over or its connection is gone. Its commands may still be running on this host
# (nothing kills them when the connection drops): keep the lock until the last one has ended.
deadline = time.monotonic() + 1800
while time.monotonic() < deadline:
    running = False
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    running = needle in f.read()
            except OSError:
                continue
            if running:
                break
    if not running:
        break
    time.sleep(0.2)
""".replace("LOCK_DIR", repr(LOCK_DIR)).replace("BUSY_EXIT", str(BUSY_EXIT))

STATUS = r"""
import fcntl, glob, json, os, time
for path in sorted(glob.glob(LOCK_DIR + "/*.lock")):
    name = os.path.basename(path)[:-5]
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        continue
    except BlockingIOError:
        pass
    try:
        info = json.loads(open(path + ".info").read())
    except (OSError, ValueError):
        info = {}
    info["site"] = name
    info["age"] = round(time.time() - info.get("since", time.time()), 1)
    print(json.dumps(info))
""".replace("LOCK_DIR", repr(LOCK_DIR))


def keeper_command(sites: list[str], wait: float, command: str, by: str, run_id: str) -> str:
    info = json.dumps({"by": by, "pid": os.getpid(), "command": command})
    args = " ".join(shlex.quote(a) for a in (",".join(sites), str(wait), info, run_id))
    return f"exec python3 -c {shlex.quote(KEEPER)} {args}"


def status_command() -> str:
    return f"[ -d {LOCK_DIR} ] || exit 0; python3 -c {shlex.quote(STATUS)}"


def clear_command(site: str) -> str:
    """Ends the keeper holding a site's lock (a run that hangs); the kernel frees the lock."""
    info = shlex.quote(f"{LOCK_DIR}/{site}.lock.info")
    return (
        f"pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))"
        f'["keeper_pid"])\' {info} 2>/dev/null) || exit 0; '
        f'kill "$pid" 2>/dev/null || true'
    )


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
