"""The site's processes as the agent controls them: under systemd (`systemctl`) or supervisor
(`supervisorctl`), chosen by the spec's "manager". Both answer the same questions: is it up, what
is its main process, was it started anew since a given look (`token`), and its log's tail."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .system import PROC, run, systemctl, unit_state

RUNNING, STARTING, STOPPING = "running", "starting", "stopping"
FAILED, STOPPED = "failed", "stopped"


@dataclass(frozen=True)
class State:
    state: str
    pid: int = 0
    token: str = ""  # differs for each start of the process (systemd's InvocationID)
    detail: str = ""  # the manager's own words, for messages

    @property
    def up(self) -> bool:
        return self.state in (RUNNING, STARTING, STOPPING)


class Systemd:
    kind = "systemd"

    def state(self, name: str) -> State:
        s = unit_state(name)
        active, sub = s.get("ActiveState", ""), s.get("SubState", "")
        if sub == "auto-restart":
            state = FAILED
        else:
            state = {
                "active": RUNNING,
                "reloading": RUNNING,
                "activating": STARTING,
                "deactivating": STOPPING,
                "failed": FAILED,
            }.get(active, STOPPED)
        pid = int(s.get("MainPID") or 0)
        return State(state, pid, s.get("InvocationID", ""), f"{active} {sub}".strip())

    def load(self, name: str, changed: bool) -> None:
        """Its file as it is now is what the next start uses."""
        if changed:  # a unit file changed in this run (daemon-reload costs ~0.15 s)
            systemctl("daemon-reload")

    def restart(self, name: str) -> None:
        systemctl("restart", name, check=False)  # one that cannot start fails the gate

    def stop(self, name: str) -> None:
        systemctl("stop", name, check=False)

    def boot(self, name: str, on: bool) -> None:
        """Started at boot or not. --no-reload: the unit files did not change, only which one
        starts at boot (the implicit daemon-reload would cost more than the rest)."""
        systemctl("enable" if on else "disable", "--quiet", "--no-reload", name, check=not on)

    def log_tail(self, name: str, lines: int = 20) -> str:
        return run(
            "journalctl", "-u", name, "-n", str(lines), "--no-pager", "-o", "cat", check=False
        ).stdout


_PID = re.compile(r"pid (\d+),")
_STATES = {
    "RUNNING": RUNNING,
    "STARTING": STARTING,
    "BACKOFF": FAILED,
    "STOPPING": STOPPING,
    "FATAL": FAILED,
    "UNKNOWN": FAILED,
}


class Supervisor:
    """supervisorctl's verbs wait (start: until RUNNING, the slots' startsecs is 0; stop: until
    the process is gone, up to stopwaitsecs). Starting a started process or stopping a stopped
    one exits 0."""

    kind = "supervisor"

    def state(self, name: str) -> State:
        out = run("supervisorctl", "status", name, check=False).stdout
        fields = next(
            (line.split(None, 2) for line in out.splitlines() if line.split(None, 1)[:1] == [name]),
            [],
        )
        word = fields[1] if len(fields) > 1 else "STOPPED"
        found = _PID.search(fields[2]) if len(fields) > 2 else None
        pid = int(found.group(1)) if found else 0
        if not pid and word == "STARTING":  # status shows no pid until RUNNING
            text = run("supervisorctl", "pid", name, check=False).stdout.strip()
            pid = int(text) if text.isdigit() else 0
        state = _STATES.get(word, STOPPED)
        return State(state, pid, _started(pid) if pid else "", word)

    def load(self, name: str, changed: bool) -> None:
        """Always: supervisord keeps a program's file as it read it, and a program changed by an
        earlier run that did not start it (the other slot) would start with the old one."""
        run("supervisorctl", "update", name, check=False)

    def restart(self, name: str) -> None:
        run("supervisorctl", "stop", name, check=False)
        run("supervisorctl", "start", name, check=False)

    def stop(self, name: str) -> None:
        run("supervisorctl", "stop", name, check=False)

    def boot(self, name: str, on: bool) -> None:
        """Nothing to record: the site's boot program starts the slot live.sock links to."""

    def log_tail(self, name: str, lines: int = 20) -> str:
        out = run("supervisorctl", "tail", "-4000", name, check=False).stdout
        return "".join(out.splitlines(keepends=True)[-lines:])


def _started(pid: int) -> str:
    """pid and start time: another process under the same pid is another token."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return str(pid)
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"


def manager(kind: str | None) -> Systemd | Supervisor:
    return Supervisor() if kind == "supervisor" else Systemd()
