"""The host as the agent sees it: systemd units, nginx, listening sockets, processes, links.

Programs are found on PATH (fakes in the unit tests); /proc is read for processes, under a root
that tests may point elsewhere (DJK_AGENT_PROC).
"""

from __future__ import annotations

import os
import re
import subprocess
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


def journal_tail(unit: str, lines: int = 20) -> str:
    return run("journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat",
               check=False).stdout  # fmt: skip


# -- processes and sockets -------------------------------------------------------------------


_PID = re.compile(r"pid=(\d+)")


def listeners(port: int) -> set[int]:
    """The processes holding a listening TCP socket on `port` (any address)."""
    out = run("ss", "-Hltnp", f"sport = :{port}", check=False).stdout
    return {int(p) for p in _PID.findall(out)}


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


def write(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write a file atomically: a temp file beside it, renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.djk-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# -- nginx -----------------------------------------------------------------------------------


def nginx_reload(timeout: float = 10.0) -> None:
    """Validate, reload, and wait until workers of the new configuration run (new connections
    go to them; the old workers finish what they hold — a WebSocket may keep one for long, so
    this does not wait for them to leave); start nginx when it is not running."""
    run("nginx", "-t", "-q")
    master = int(unit_state("nginx.service").get("MainPID") or 0)
    if master == 0:
        systemctl("start", "nginx.service")
        return
    old = _workers(master)
    systemctl("reload", "nginx.service")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _workers(master) - old:
            return
        time.sleep(0.05)
    raise Failed(f"nginx did not switch to the new configuration within {timeout:.0f}s")


def connections(port: int) -> int:
    """Established TCP connections to a local `port` (requests in flight, kept-alive upstream
    connections of nginx workers, WebSockets)."""
    out = run("ss", "-Htn", "state", "established", f"( sport = :{port} )", check=False).stdout
    return len([line for line in out.splitlines() if line.strip()])


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
