"""Low-level host helpers: commands, mounts, processes, cgroups.

Everything here talks to the kernel or to standard Debian binaries; the
testbed logic in ``core`` stays readable because the fiddly parts live here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path


class TestbedError(RuntimeError):
    """A testbed operation failed; the message is meant for humans."""

    __test__ = False  # keep pytest from collecting this as a test class


def log(msg: str) -> None:
    print(f"[testbed] {msg}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise TestbedError including its output."""
    proc = subprocess.run(
        [os.fspath(a) for a in argv],
        stdin=subprocess.DEVNULL,
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or "")).strip()
        raise TestbedError(f"command failed ({proc.returncode}): {' '.join(map(str, argv))}\n{out}")
    return proc


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError("must run as root (needs systemd-nspawn, mounts, bridges and cgroups)")


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data[-lines:])


# --- mounts -----------------------------------------------------------------


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) for every mount in our namespace."""
    result = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        result.append((_unescape_mount(fields[4]), rfields[0], rfields[2]))
    return result


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (safe unmount order)."""
    base = os.path.realpath(path)
    found = [m for m, _, _ in mounts() if m == base or m.startswith(base + "/")]
    return sorted(set(found), key=len, reverse=True)


def unmount_all_under(path: Path) -> None:
    for mnt in mounts_under(path):
        if run(["umount", mnt], check=False).returncode != 0:
            # Something still holds it (a dying process); detach so cleanup proceeds.
            run(["umount", "-l", mnt], check=False)


def safe_rmtree(path: Path) -> None:
    """rm -rf that refuses to descend into anything still mounted.

    A stale overlay or a /proc left by a killed debootstrap below ``path``
    would otherwise turn rmtree into deleting through the mount.
    """
    if not path.exists():
        return
    unmount_all_under(path)
    if mounts_under(path):
        raise TestbedError(f"refusing to delete {path}: still has mounts {mounts_under(path)}")
    shutil.rmtree(path)


def overlay_mount(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", opts, merged])


# --- processes --------------------------------------------------------------


def proc_starttime(pid: int) -> int | None:
    """Kernel start time of ``pid``, or None if it is gone or a zombie.

    Paired with the pid it identifies a process across pid reuse.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm may contain spaces/parens; the fields after the last ')' are fixed.
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    st = proc_starttime(pid)
    if st is None:
        return False
    return starttime is None or st == starttime


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def find_nspawn(machine: str) -> list[int]:
    """Pids of systemd-nspawn processes running ``machine`` (stale or not)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name))
        if argv and argv[0].endswith("systemd-nspawn") and f"--machine={machine}" in argv:
            pids.append(int(entry.name))
    return pids


def wait_gone(pid: int, starttime: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, starttime):
            return True
        time.sleep(0.1)
    return not pid_alive(pid, starttime)


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --- cgroups ----------------------------------------------------------------


def cgroup_roots() -> list[Path]:
    """Hierarchies a host's launcher must be moved in.

    The container's systemd manages its own cgroup in the name=systemd v1
    hierarchy and/or in cgroup2; those are the ones where hosts sharing a
    cgroup trample each other. Plain v1 controllers are left alone.
    """
    roots: list[Path] = []
    for mnt, fstype, opts in mounts():
        if not mnt.startswith("/sys/fs/cgroup"):
            continue
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts.split(",")):
            roots.append(Path(mnt))
    return roots


def cgroup_dirs(prefix: str, host: str) -> list[Path]:
    return [root / prefix / host for root in cgroup_roots()]


def cgroup_pids(dirs: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        if not d.is_dir():
            continue
        for sub, _, _ in os.walk(d):
            try:
                text = (Path(sub) / "cgroup.procs").read_text()
            except OSError:
                continue
            pids.update(int(p) for p in text.split())
    pids.discard(os.getpid())
    return pids


def kill_cgroups(dirs: list[Path], timeout: float = 5.0) -> None:
    """SIGKILL everything in the host's cgroups.

    Killing nspawn alone would orphan the container's init (it is nspawn's
    child in its own pid namespace) and keep its netns and veth alive.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(dirs)
        if not pids:
            return
        for pid in pids:
            signal_pid(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TestbedError(f"processes survive SIGKILL in {dirs}: {sorted(pids)}")
        time.sleep(0.1)


def remove_cgroups(dirs: list[Path]) -> None:
    for d in dirs:
        if not d.is_dir():
            continue
        # cgroupfs only allows rmdir of empty groups, so go bottom-up.
        for sub, _, _ in os.walk(d, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(sub)
        with contextlib.suppress(OSError):
            os.rmdir(d.parent)  # the per-testbed prefix, if now empty


def mem_available() -> int:
    """Bytes of memory the kernel says it could give without swapping."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def is_tmpfs(path: Path) -> bool:
    base = os.path.realpath(path)
    return any(m == base and fs == "tmpfs" for m, fs, _ in mounts())


def ram_disk(path: Path, need: int) -> Path | None:
    """With DJK_TESTBED_DISK=ram (the bench sets it): a tmpfs at ``path`` for the hosts' disks
    (mounted here once, half of the memory at most, used as filled); None otherwise, with less
    than ``need`` bytes available, or when the mount is refused.

    Why: an overlay upper dir on a VM's virtual disk made small-file work in the hosts slow
    and erratic (uv unpacking the same 31 wheels: 0.7-0.9 s on tmpfs, 1.2-4.8 s on the
    disk, nearly all of it kernel time), which is the machine's, not what the bench measures.
    Not the default: hosts on it sometimes took over 30 s to power off after a few deploys
    (2 of 3 reboots in one full test run, cause not found); on disk they never did.
    """
    if os.environ.get("DJK_TESTBED_DISK", "disk") != "ram":
        return None
    if is_tmpfs(path):
        return path
    if mem_available() < need:
        return None
    path.mkdir(parents=True, exist_ok=True)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    opts = f"size={total // 2},mode=0755"
    if run(["mount", "-t", "tmpfs", "-o", opts, "djk-testbed", str(path)], check=False).returncode:
        return None
    return path


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
