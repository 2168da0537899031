"""Fake systemctl, supervisorctl, journalctl, ss and nginx for the agent's unit tests (one
program, called by the name its wrapper passes). State lives in the JSON file $FAKE_STATE; every
call is recorded in it. `systemctl restart UNIT` (or `supervisorctl start PROGRAM`) starts
fake_server.py in the slot directory (its cwd is the release, as gunicorn's), answering what
state["serve"] says for that release."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

STATE = Path(os.environ["FAKE_STATE"])
HERE = Path(__file__).resolve().parent


def load():
    return json.loads(STATE.read_text())


def save(state):
    STATE.write_text(json.dumps(state, indent=1))


def alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop(state, unit):
    u = state["units"].setdefault(unit, {})
    pid = u.get("MainPID", 0)
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.02)
    u.update(ActiveState="inactive", SubState="dead", MainPID=0)


def start(state, unit):
    stop(state, unit)
    u = state["units"][unit]
    slot_dir = Path(state["slot_dirs"][unit]).resolve()
    status, body = state["serve"].get(slot_dir.name, [200, "ok"])
    path = state["sockets"][unit]
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_server.py"), path, str(status), body],
        cwd=slot_dir,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state.setdefault("spawned", []).append(proc.pid)
    for _ in range(100):  # until it listens (a "nobind" one never does)
        if status == "nobind":
            break
        with socket.socket(socket.AF_UNIX) as s:
            if s.connect_ex(path) == 0 and proc.poll() is None:
                break
        time.sleep(0.02)
    u.update(
        ActiveState="active", SubState="running", MainPID=proc.pid, InvocationID=uuid.uuid4().hex
    )


def systemctl(state, args):
    verb, rest = args[0], args[1:]
    if verb == "show":
        props = rest[rest.index("-p") + 1].split(",")
        unit = rest[-1]
        u = state["units"].get(unit, {})
        if u.get("MainPID") and not alive(u["MainPID"]):
            u.update(ActiveState="failed", SubState="failed", MainPID=0)
        for p in props:
            print(f"{p}={u.get(p, 0 if p == 'MainPID' else '')}")
    elif verb in ("restart", "start") and rest[-1] in state["sockets"]:
        start(state, rest[-1])
    elif verb == "stop" and rest[-1] in state["sockets"]:
        stop(state, rest[-1])


SUPERVISOR_STATES = {"active": "RUNNING", "inactive": "STOPPED", "failed": "EXITED"}


def supervisorctl(state, args):
    """Programs are the same entries as units (named without a suffix); `update NAME` records
    that supervisord read the program's file (state["updated"]), as `start` needs."""
    verb, name = args[0], args[-1]
    u = state["units"].setdefault(name, {})
    if u.get("MainPID") and not alive(u["MainPID"]):
        u.update(ActiveState="failed", SubState="failed", MainPID=0)
    if verb == "status":
        word = SUPERVISOR_STATES.get(u.get("ActiveState", "inactive"), "STOPPED")
        detail = f"pid {u['MainPID']}, uptime 0:00:01" if word == "RUNNING" else "Not started"
        print(f"{name:33}{word:10}{detail}")
        return 0 if word == "RUNNING" else 3
    if verb == "pid":
        print(u.get("MainPID", 0))
    elif verb == "update":
        state.setdefault("updated", []).append(name)
    elif verb == "start" and name in state["sockets"]:
        if name not in state.get("updated", []):
            print(f"{name}: ERROR (no such process)")
            return 4
        if u.get("ActiveState") != "active":
            start(state, name)
        print(f"{name}: started")
    elif verb == "stop" and name in state["sockets"]:
        stop(state, name)
    elif verb == "tail":
        print(f"log of {name}: {state.get('log', 'started')}")
    return 0


def ss(state, args):
    """`ss -Hxa src PATH`: the listener (its Recv-Q) and accepted connections of a unix socket,
    as many as state["established"][PATH] says (one closes per look)."""
    path = args[-1]
    left = state.get("established", {}).get(path, 0)
    print(f"u_str LISTEN 0 128 {path} 1000 * 0")
    for i in range(left):
        print(f"u_str ESTAB 0 0 {path} {2000 + i} * {3000 + i}")
    if left:
        state["established"][path] = left - 1


def main():
    name, args = sys.argv[1], sys.argv[2:]  # the wrapper passes the name it was called by
    state = load()
    state.setdefault("calls", []).append([name, *args])
    code = 0
    if name == "systemctl":
        systemctl(state, args)
    elif name == "supervisorctl":
        code = supervisorctl(state, args)
    elif name == "ss":
        ss(state, args)
    elif name == "journalctl":
        print(f"log of {args[args.index('-u') + 1]}: {state.get('log', 'started')}")
    elif name == "nginx":
        if state.get("nginx_invalid"):
            print("nginx: [emerg] invalid configuration", file=sys.stderr)
            code = 1
    save(state)
    if (
        name in ("systemctl", "supervisorctl")
        and args
        and args[0] in state.get("kill_agent_on", [])
    ):
        # A run cut off at this point: the agent (our parent) dies as by SIGKILL.
        state["kill_agent_on"].remove(args[0])
        save(state)
        os.kill(os.getppid(), signal.SIGKILL)
    return code


if __name__ == "__main__":
    sys.exit(main())
