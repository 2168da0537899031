"""The deploy lock's host side: one deploy or rollback per site at a time, tied to the run.

`keep` takes an flock per site and holds it while the control machine keeps its stdin open
(the run's SSH channel). When the run ends, is killed, or its connection drops, stdin closes;
the keeper then waits for the run's last commands on this host (every command of a run carries
DJK_RUN=<id> in its environment) and exits, and the kernel releases the flocks: a dead run
never leaves a lock behind. The holder's who / when / pid / command sit beside each lock for
the message a second deploy gets (`BUSY <site> <info>`), for `status` and for `clear`.

Called as `agent.pyz lock-keep '<json>'`: its input is an argument, as stdin is the lifeline.
With `"then": true` the lifeline starts with a script (`<length>\n<bytes>`) that the keeper runs
as soon as the locks are taken and answers `LOCKED <rc> <stdout bytes> <stderr bytes>\n` with
its output: the run's first reading of the host's state rides on the lock, one command less.
"""

from __future__ import annotations

# No pathlib, no subprocess: the keeper starts on every host at the start of every run, and
# those imports were a third of its start-up.
import fcntl
import json
import os
import signal
import sys
import time

LOCK_DIR = os.environ.get("DJK_AGENT_LOCK_DIR", "/var/lib/djk/locks")
PROC = os.environ.get("DJK_AGENT_PROC", "/proc")
BUSY_EXIT = 75
# A holder whose run is over only waits for its last commands: a second run waits that long
# for it beyond its own wait.
DRAINING_GRACE = 300.0
# How long a keeper whose run is gone waits for that run's commands to end.
LINGER = 1800.0


def _lock_path(site: str) -> str:
    return os.path.join(LOCK_DIR, f"{site}.lock")


def _info_path(site: str) -> str:
    return os.path.join(LOCK_DIR, f"{site}.lock.info")


def _read_info(site: str) -> dict:
    try:
        with open(_info_path(site)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _write_info(site: str, info: dict) -> None:
    tmp = os.path.join(LOCK_DIR, f".{site}.lock.info.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(info))
    os.replace(tmp, _info_path(site))


def keep(spec: dict) -> int:
    """Take every site's lock (waiting up to spec["wait"] seconds), say LOCKED, hold them until
    stdin closes and the run's commands on this host have ended. BUSY <site> <info>, exit 75,
    when one stays taken."""
    sites, wait, run = spec["sites"], float(spec["wait"]), spec["run"]
    info = dict(spec.get("info", {}))
    os.makedirs(LOCK_DIR, exist_ok=True)
    deadline = time.monotonic() + wait
    fds = []
    for site in sites:
        fd = os.open(_lock_path(site), os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    holder = _read_info(site)
                    if not (holder.get("draining") and now < deadline + DRAINING_GRACE):
                        print("BUSY", site, json.dumps(holder), flush=True)
                        return BUSY_EXIT
                time.sleep(0.2)
        fds.append(fd)
        info.update(keeper_pid=os.getpid(), since=time.time())
        _write_info(site, info)
    if spec.get("then"):
        _run_first(run)
    else:
        print("LOCKED", flush=True)
    rest = sys.stdin.buffer.read()
    if _append_audit(rest):
        # The run waits for this before it closes its connection: sshd drops what it has not
        # yet passed on when the connection goes, and the audit lines would go with it.
        try:
            print("AUDITED", flush=True)
        except OSError:
            pass  # the run did not wait; the lines are written all the same
    info["draining"] = True
    for site in sites:
        _write_info(site, info)
    _wait_for_run(run, LINGER)
    return 0


AUDIT_FILE = os.environ.get("DJK_AGENT_AUDIT", "/var/log/djk/audit.jsonl")


def _append_audit(data: bytes) -> bool:
    """The run's audit lines (`AUDIT <json>`), handed over as it lets go: appended to the audit
    log (root-only, under an flock: other hosts' keepers write their own files). Whether there
    were any."""
    lines = [ln[6:] for ln in data.splitlines() if ln.startswith(b"AUDIT ")]
    if not lines:
        return False
    os.makedirs(os.path.dirname(AUDIT_FILE), mode=0o700, exist_ok=True)
    fd = os.open(AUDIT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"".join(line + b"\n" for line in lines))
    finally:
        os.close(fd)
    return True


def _run_first(run: str) -> None:
    """The script at the head of stdin, run with the run's tag; its status and output follow
    LOCKED (byte counts first: the output is any bytes)."""
    size = int(sys.stdin.buffer.readline().strip() or 0)
    script = sys.stdin.buffer.read(size)
    rc, out, err = _sh(script.decode("utf-8", "replace"), {**os.environ, "DJK_RUN": run})
    head = f"LOCKED {rc} {len(out)} {len(err)}\n".encode()
    sys.stdout.buffer.write(head + out + err)
    sys.stdout.buffer.flush()


def _sh(script: str, env: dict) -> tuple[int, bytes, bytes]:
    """`/bin/sh -c script`, stdin from /dev/null, its output and errors caught in memory files
    (a process the script leaves running cannot hold them up as it could a pipe)."""
    out, err = os.memfd_create("djk-out"), os.memfd_create("djk-err")
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        pid = os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", "-c", script],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
            # Python ignores SIGPIPE; a pipeline in the script (`ss | head`) must not.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return rc, _read_all(out), _read_all(err)
    finally:
        for fd in (out, err, null):
            os.close(fd)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait_for_run(run: str, seconds: float) -> None:
    """Until no process on the host has DJK_RUN=<run> in its environment (the run's commands
    are not killed when its connection drops), at most `seconds`."""
    needle = f"DJK_RUN={run}".encode() + b"\0"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _running(needle):
        time.sleep(0.2)


def _running(needle: bytes) -> bool:
    me = str(os.getpid())
    for name in os.listdir(PROC):
        if not name.isdigit() or name == me:
            continue
        try:
            with open(os.path.join(PROC, name, "environ"), "rb") as f:
                if needle in f.read():
                    return True
        except OSError:
            continue
    return False


def status(spec: dict) -> int:
    """One JSON line per site whose lock is held: who, pid, command, age."""
    names = sorted(os.listdir(LOCK_DIR)) if os.path.isdir(LOCK_DIR) else []
    for name in (n for n in names if n.endswith(".lock") and not n.startswith(".")):
        site = name[: -len(".lock")]
        fd = os.open(os.path.join(LOCK_DIR, name), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            continue
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        info = _read_info(site)
        info["site"] = site
        info["age"] = round(time.time() - float(info.get("since", time.time())), 1)
        print(json.dumps(info))
    return 0


def clear(spec: dict) -> int:
    """End the keeper holding a site's lock (a run that hangs); the kernel frees the lock."""
    pid = int(_read_info(spec["site"]).get("keeper_pid", 0) or 0)
    if pid > 1:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    return 0
