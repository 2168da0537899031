"""The host as the agent sees it: systemd units, nginx, listening sockets, processes, links
(the site's own processes, under systemd or supervisor: procs.py).

Programs are found on PATH (fakes in the unit tests); /proc is read for processes, under a root
that tests may point elsewhere (DJK_AGENT_PROC).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

PROC = Path(os.environ.get("DJK_AGENT_PROC", "/proc"))


class Failed(Exception):
    """A step of the agent that did not work; the message is the one-line cause."""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        err = (done.stderr or done.stdout).strip().splitlines()
        raise Failed(f"{' '.join(argv)}: {err[-1] if err else f'exit {done.returncode}'}")
    return done


# -- systemd ---------------------------------------------------------------------------------


def unit_state(unit: str) -> dict[str, str]:
    out = run(
        "systemctl",
        "show",
        "-p",
        "ActiveState,SubState,MainPID,InvocationID",
        unit,
        check=False,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def systemctl(*args: str, check: bool = True) -> None:
    run("systemctl", *args, check=check)


# -- processes and sockets -------------------------------------------------------------------


def connections(path: str) -> int:
    """Connections to the unix socket at `path`: accepted ones (requests in flight, WebSockets)
    and the ones waiting in its accept queue (the listener's Recv-Q)."""
    out = run("ss", "-Hxa", "src", path, check=False).stdout
    count = 0
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5 or _local(line) != path:
            continue
        if fields[1] == "LISTEN":
            count += int(fields[2]) if fields[2].isdigit() else 0
        elif fields[1] == "ESTAB":
            count += 1
    return count


def _local(line: str) -> str:
    """The local address of an `ss -x` line: Netid State Recv-Q Send-Q Local Port Peer Port."""
    fields = line.split()
    return fields[4] if len(fields) > 4 else ""


def parent(pid: int) -> int:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0
    # pid (comm) state ppid ...: comm may hold spaces and parentheses; the last ")" ends it.
    return int(stat.rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        pid = parent(pid)
    return False


def cwd(pid: int) -> str | None:
    try:
        return os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        return None


# -- files -----------------------------------------------------------------------------------


def point(link: str | Path, target: str) -> None:
    """Make `link` point at `target` atomically (a new link renamed over the old one)."""
    link = Path(link)
    tmp = link.with_name(link.name + ".djk-new")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def read_link(link: str | Path) -> str | None:
    try:
        return os.readlink(link)
    except OSError:
        return None


# -- nginx -----------------------------------------------------------------------------------


def nginx_reload(timeout: float = 10.0, test: bool = True) -> None:
    """Validate, reload, and wait until the new configuration takes every new connection:
    workers of it run, and no old worker still listens (an old worker accepts connections,
    with the old configuration, until it handles the master's QUIT). Old workers may go on
    serving what they hold — a WebSocket may keep one for long — so this does not wait for
    them to leave. Starts nginx when it is not running."""
    if test:
        run("nginx", "-t", "-q")
    master = int(unit_state("nginx.service").get("MainPID") or 0)
    if master == 0:
        systemctl("start", "nginx.service")
        return
    old = _workers(master)
    systemctl("reload", "nginx.service")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _workers(master) - old and not old & listening_pids():
            return
        time.sleep(0.05)
    raise Failed(f"nginx did not switch to the new configuration within {timeout:.0f}s")


def reload_nginx(spec: dict) -> int:
    """`nginx-reload`: nginx_reload as a command (the kit's only way to reload nginx). Exit 0,
    or 1 with the cause on stderr (an invalid configuration: nginx -t's own words)."""
    tested = run("nginx", "-t", "-q", check=False)
    if tested.returncode != 0:
        print((tested.stderr or tested.stdout).strip() or "nginx -t failed", file=sys.stderr)
        return 1
    try:
        nginx_reload(float(spec.get("timeout", 10.0)), test=False)
    except Failed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


_PID = re.compile(r"pid=(\d+)")


def listening_pids() -> set[int]:
    """The processes holding a listening TCP socket."""
    return {int(p) for p in _PID.findall(run("ss", "-Hltnp", check=False).stdout)}


def _workers(master: int) -> set[int]:
    found = set()
    for entry in PROC.iterdir() if PROC.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            if parent(int(entry.name)) != master:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "worker process" in cmdline:
            found.add(int(entry.name))
    return found
