"""Testbed: boot and stop Debian hosts under systemd-nspawn."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import image as image_mod
from . import net
from ._sys import (
    TestbedError,
    cgroup_dirs,
    cgroup_pids,
    cgroup_roots,
    cmdline,
    find_nspawn,
    free_bytes,
    kill_cgroups,
    log,
    overlay_mount,
    pid_alive,
    proc_starttime,
    ram_disk,
    remove_cgroups,
    require_root,
    run,
    safe_rmtree,
    signal_pid,
    tail,
    unmount_all_under,
    wait_gone,
)

STATE_ROOT = Path("/run/djk-testbed")
FALLBACK_DISK_ROOT = Path("/var/tmp/djk-testbed")
KEY_PATH = Path("/var/lib/djk-testbed/ssh/id_ed25519")
# Overlay upper dirs grow with whatever a deploy installs. With DJK_TESTBED_DISK=ram (the
# bench) they go to a tmpfs of the testbed's own when the machine has this much memory free;
# else to /run when it has MIN_RUN_FREE free, else to /var/tmp.
RAM_DISK_ROOT = STATE_ROOT / ".disks"
RAM_DISK_NEED = 8 << 30
MIN_RUN_FREE = 4 << 30
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")
_HOST = re.compile(r"[a-z][a-z0-9-]{0,20}")

REQUIRED_BINARIES = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
DEPS_PACKAGES = ("systemd-container", "debootstrap", "iproute2", "openssh-client")


def _which(binary: str) -> bool:
    # PATH may lack the sbin dirs when not started from a root login shell.
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return any(os.access(os.path.join(d, binary), os.X_OK) for d in path.split(":") if d)


def ensure_deps() -> None:
    """apt-get install what the testbed needs, only if something is missing."""
    missing = sorted(b for b in REQUIRED_BINARIES if not _which(b))
    if not missing:
        return
    require_root()
    log(f"deps: missing {', '.join(missing)}; installing {' '.join(DEPS_PACKAGES)}")
    env_argv = ["env", "DEBIAN_FRONTEND=noninteractive"]
    run([*env_argv, "apt-get", "update"], capture=False)
    run([*env_argv, "apt-get", "install", "-y", *DEPS_PACKAGES], capture=False)


def ensure_key(key_path: Path = KEY_PATH) -> Path:
    """Create the testbed's SSH key pair once; it stays stable across runs."""
    if key_path.exists() and _pub(key_path).exists():
        return key_path
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _flock(key_path.parent / ".keygen.lock"):
        if key_path.exists() and _pub(key_path).exists():
            return key_path
        tmp = key_path.parent / f".{key_path.name}.tmp"
        for p in (tmp, _pub(tmp)):
            p.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "djk-testbed", "-f", tmp])
        # Public half first: a present private key means the pair is complete.
        _pub(tmp).rename(_pub(key_path))
        tmp.rename(key_path)
    return key_path


def _pub(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".pub")


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class TestHost:
    """A booted host, reachable over SSH as ``user`` with ``key_path``."""

    __test__ = False  # not a pytest test class despite the name

    name: str
    address: str
    user: str = "deploy"
    port: int = 22
    key_path: Path = field(default=KEY_PATH)
    # Its own SSH host key ("ssh-ed25519 AAAA…"), made when it booted: what a client that
    # checks host keys must know (known_hosts_line).
    host_key: str = ""

    def known_hosts_line(self) -> str:
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {self.host_key}"

    def ssh_argv(self, cmd: str, *, connect_timeout: int = 5) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",  # a user's ~/.ssh/config must not reroute test traffic
            "-i",
            str(self.key_path),
            "-p",
            str(self.port),
            *self._host_key_options(),
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"ConnectTimeout={connect_timeout}",
            f"{self.user}@{self.address}",
            cmd,
        ]

    def _host_key_options(self) -> list[str]:
        """The host's own key is the one accepted (no known_hosts file is read or written)."""
        if not self.host_key:  # a host booted by an older testbed: nothing to check against
            return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return [
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            f"KnownHostsCommand=/bin/echo {self.known_hosts_line()}",
        ]

    def ssh(
        self, cmd: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.ssh_argv(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, proc.stdout, proc.stderr
            )
        return proc

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["key_path"] = str(self.key_path)
        return d


@dataclass
class _HostState:
    """What is persisted in <state>/<host>/state.json while a host runs."""

    name: str
    machine: str
    address: str
    pid: int
    starttime: int | None
    disk: str
    started: float

    def alive(self) -> bool:
        return pid_alive(self.pid, self.starttime)


class Testbed:
    """A named group of hosts on bridge djkbr<subnet>, 10.213.<subnet>.0/24."""

    __test__ = False

    def __init__(
        self,
        name: str = "demo",
        subnet: int = 0,
        *,
        state_root: Path = STATE_ROOT,
        key_path: Path = KEY_PATH,
        boot_timeout: float = BOOT_TIMEOUT,
        image: str = image_mod.DEFAULT,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise TestbedError(f"bad testbed name {name!r} (want [a-z0-9-], max 16 chars)")
        self.name = name
        self.subnet = net.check_subnet(subnet)
        self.bridge = net.bridge_name(subnet)
        self.cgroup_prefix = f"djk-{name}"
        self.state_dir = state_root / name
        self.key_path = key_path
        self.boot_timeout = boot_timeout
        image_mod.parse_kind(image)
        self.image = image  # bookworm, trixie, bare-bookworm, bare-trixie (see image.py)
        self.bare = image_mod.is_bare(image)
        # Hosts we launched ourselves; kept so their exit status gets reaped.
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        #: seconds from launch to ready, per host, for the last boot
        self.boot_seconds: dict[str, float] = {}

    # --- public API ---------------------------------------------------------

    def ensure_image(self) -> Path:
        require_root()
        ensure_deps()
        return image_mod.ensure_image(kind=self.image)

    def up(self, hosts: Iterable[str], *, keep_failed: bool = False) -> list[TestHost]:
        """Boot ``hosts`` fresh (replacing same-named ones) and wait until usable."""
        names = self._check_hosts(hosts)
        if not names:
            return []
        img = self.ensure_image()
        key = ensure_key(self.key_path)
        with self._lock():
            addresses = self._allocate(names)
            net.ensure_bridge(self.subnet)
            for host in names:
                self._cleanup(host)
                self._launch(host, addresses[host], img, key)
        try:
            self._wait_all(names)
        except BaseException:
            if not keep_failed:
                self.down(names)
            raise
        return [self._testhost(h, addresses[h]) for h in names]

    def down(self, hosts: Iterable[str] | None = None) -> None:
        """Stop the given hosts (default: all of this testbed's) and clean up."""
        with self._lock():
            names = self._known_hosts() if hosts is None else self._check_hosts(hosts)
            # Every host powers off at once (a clean poweroff takes each a second or two):
            # a 32-host testbed went down in a minute one host after the other.
            for host in names:
                st = self._read_state(host)
                if st is not None and st.alive():
                    signal_pid(st.pid, signal.SIGTERM)
            for host in names:
                self._cleanup(host)
            if not self._state_hosts():
                net.remove_bridge(self.subnet)
                (self.state_dir / "addresses.json").unlink(missing_ok=True)
                with suppress(OSError):
                    self.state_dir.rmdir()

    def running(self) -> list[TestHost]:
        out = []
        for host in self._state_hosts():
            st = self._read_state(host)
            if st is not None and st.alive():
                out.append(self._testhost(host, st.address))
        return out

    def restart_fresh(self, host: str) -> TestHost:
        """Stop ``host``, throw away its disk, boot it again on the same address."""
        # up() already cleans the old instance and keeps recorded addresses.
        return self.up([host])[0]

    def reboot(self, host: str) -> TestHost:
        """Power ``host`` off cleanly and boot it again with the same disk and address: what
        a server's reboot keeps (files, enabled units) stays, what it loses (processes, /run)
        goes."""
        st = self._read_state(host)
        if st is None or not st.alive():
            raise TestbedError(f"host {host} of testbed {self.name} is not up")
        img = self.ensure_image()
        key = ensure_key(self.key_path)
        with self._lock():
            signal_pid(st.pid, signal.SIGTERM)  # nspawn: a clean poweroff of the container
            if not wait_gone(st.pid, st.starttime, STOP_TIMEOUT):
                left = sorted(cgroup_pids(cgroup_dirs(self.cgroup_prefix, host)))
                what = "; ".join(" ".join(cmdline(p))[:80] for p in left[:12])
                raise TestbedError(
                    f"{host}: no clean shutdown in {STOP_TIMEOUT:.0f}s (still running: {what})"
                )
            proc = self._procs.pop(host, None)
            if proc is not None:
                proc.wait()
            disk = Path(st.disk)
            unmount_all_under(disk)
            kill_cgroups(cgroup_dirs(self.cgroup_prefix, host))
            veth = f"vb-{self._machine(host)}"
            if len(veth) <= 15 and net.link_exists(veth):
                run(["ip", "link", "del", veth], check=False)
            self._launch(host, st.address, img, key, disk=disk)
        self._wait_all([host])
        return self._testhost(host, st.address)

    def status(self) -> list[dict[str, object]]:
        rows = []
        for host in self._state_hosts():
            st = self._read_state(host)
            if st is None:
                continue
            rows.append(
                {
                    **self._testhost(host, st.address).as_dict(),
                    "machine": st.machine,
                    "pid": st.pid,
                    "running": st.alive(),
                    "uptime": round(time.time() - st.started, 1),
                }
            )
        return rows

    def host(self, name: str) -> TestHost:
        st = self._read_state(name)
        if st is None:
            raise TestbedError(f"host {name} of testbed {self.name} is not up")
        return self._testhost(name, st.address)

    def console_log(self, host: str) -> Path:
        return self.state_dir / host / "console.log"

    # --- internals ----------------------------------------------------------

    @property
    def login(self) -> str:
        """Who the key logs in as: root on a bare host (nobody else exists), else deploy."""
        return "root" if self.bare else "deploy"

    def _testhost(self, host: str, address: str) -> TestHost:
        pub = self.state_dir / host / HOST_KEY_FILE
        host_key = pub.read_text().strip() if pub.is_file() else ""
        return TestHost(
            name=host, address=address, user=self.login, key_path=self.key_path, host_key=host_key
        )

    def _machine(self, host: str) -> str:
        return f"{self.name}-{host}"

    def _check_hosts(self, hosts: Iterable[str]) -> list[str]:
        if isinstance(hosts, str):
            raise TypeError("pass a list of host names, not a string")
        names = list(dict.fromkeys(hosts))
        for h in names:
            if not _HOST.fullmatch(h) or h == "addresses":
                raise TestbedError(f"bad host name {h!r} (want [a-z][a-z0-9-]*, max 21 chars)")
        return names

    @contextmanager
    def _lock(self) -> Iterator[None]:
        require_root()
        with _flock(self.state_dir.parent / f".{self.name}.lock"):
            yield

    def _allocate(self, names: list[str]) -> dict[str, str]:
        path = self.state_dir / "addresses.json"
        taken: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        for h in names:
            taken[h] = net.assign_address(self.subnet, h, taken)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(taken, indent=2, sort_keys=True) + "\n")
        return {h: taken[h] for h in names}

    def _state_hosts(self) -> list[str]:
        if not self.state_dir.is_dir():
            return []
        return sorted(p.name for p in self.state_dir.iterdir() if p.is_dir())

    def _known_hosts(self) -> list[str]:
        # State can be gone while processes live on (e.g. /run wiped); the
        # per-host cgroups still name them.
        found = set(self._state_hosts())
        for root in cgroup_roots():
            d = root / self.cgroup_prefix
            if d.is_dir():
                found.update(p.name for p in d.iterdir() if p.is_dir())
        return sorted(h for h in found if _HOST.fullmatch(h))

    def _read_state(self, host: str) -> _HostState | None:
        try:
            return _HostState(**json.loads((self.state_dir / host / "state.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _disk_dir(self, host: str) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ram = ram_disk(RAM_DISK_ROOT, RAM_DISK_NEED)
        if ram is not None:
            return ram / self.name / host
        if free_bytes(self.state_dir) >= MIN_RUN_FREE:
            return self.state_dir / host
        return FALLBACK_DISK_ROOT / self.name / host

    def _launch(
        self, host: str, address: str, img: Path, key: Path, disk: Path | None = None
    ) -> None:
        hdir = self.state_dir / host
        reboot = disk is not None
        disk = disk or self._disk_dir(host)
        hdir.mkdir(parents=True, exist_ok=True)
        merged = disk / "merged"
        overlay_mount(img, disk / "upper", disk / "work", merged)
        _write_host_files(merged, host, address, _pub(key).read_text(), self.login)
        # A reboot (same disk) keeps the host's key; a fresh disk gets a key of its own.
        (hdir / HOST_KEY_FILE).write_text(_host_key(merged, keep=reboot) + "\n")

        cgroups = cgroup_dirs(self.cgroup_prefix, host)
        for d in cgroups:
            d.mkdir(parents=True, exist_ok=True)
        machine = self._machine(host)
        nspawn = [
            "systemd-nspawn",
            # No system bus here: nspawn must neither register with machined
            # nor ask systemd for a scope; it stays in the cgroup we give it.
            "--register=no",
            "--keep-unit",
            f"--directory={merged}",
            "--boot",
            f"--machine={machine}",
            f"--hostname={host}",
            f"--network-bridge={self.bridge}",
            "--console=read-only",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
        ]
        # The shell moves itself into the host's own cgroups and then execs
        # nspawn (same pid). A preexec_fn would do too, but is unsafe when
        # the caller (pytest) has threads.
        moves = " && ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in cgroups)
        script = f'{moves} && exec "$@"' if moves else 'exec "$@"'
        console = hdir / "console.log"
        with console.open("wb") as logf:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", script, "sh", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the caller's terminal must not
                # hit the hosts; down() stops them properly.
                start_new_session=True,
                close_fds=True,
            )
        self._procs[host] = proc
        state = _HostState(
            name=host,
            machine=machine,
            address=address,
            pid=proc.pid,
            starttime=proc_starttime(proc.pid),
            disk=str(disk),
            started=time.time(),
        )
        (hdir / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")

    def _wait_all(self, names: list[str]) -> None:
        deadline = time.monotonic() + self.boot_timeout
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            futures = [pool.submit(self._wait_ready, h, deadline) for h in names]
            errors = [str(e) for f in futures if (e := f.exception()) is not None]
        if errors:
            raise TestbedError("\n\n".join(errors))

    def _wait_ready(self, host: str, deadline: float) -> None:
        st = self._read_state(host)
        if st is None:
            raise TestbedError(f"{host}: no state after launch")
        th = self._testhost(host, st.address)
        last = "no answer on port 22"
        while True:
            proc = self._procs.get(host)
            if (proc is not None and proc.poll() is not None) or not st.alive():
                raise TestbedError(
                    f"{host}: systemd-nspawn exited during boot; console log "
                    f"{self.console_log(host)}:\n{tail(self.console_log(host))}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TestbedError(
                    f"{host} ({st.address}) not ready after {self.boot_timeout:.0f}s "
                    f"(last: {last}); console log {self.console_log(host)}:\n"
                    f"{tail(self.console_log(host))}"
                )
            if not _port_open(st.address, th.port):
                time.sleep(0.2)
                continue
            try:
                r = th.ssh("systemctl is-system-running --wait", check=False, timeout=remaining)
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
                continue
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                self.boot_seconds[host] = time.time() - st.started
                if state == "degraded":
                    failed = th.ssh("systemctl --failed --plain --no-legend", check=False)
                    log(f"{host}: degraded; failed units: {failed.stdout.strip()}")
                return
            last = f"ssh rc={r.returncode} {state or r.stderr.strip()}"
            time.sleep(0.3)

    def _cleanup(self, host: str) -> None:
        """Stop ``host`` if it runs and remove every trace of it.

        Also handles a previous run that was killed: stale pid, nspawn
        without state, overlay still mounted, cgroups left behind.
        """
        st = self._read_state(host)
        machine = self._machine(host)
        cgroups = cgroup_dirs(self.cgroup_prefix, host)
        pids = {(p, proc_starttime(p)) for p in find_nspawn(machine)}
        if st is not None and st.alive():
            pids.add((st.pid, st.starttime))
        for pid, _start in pids:
            # nspawn turns SIGTERM into a clean poweroff of the container.
            signal_pid(pid, signal.SIGTERM)
        for pid, start in pids:
            if not wait_gone(pid, start, STOP_TIMEOUT):
                log(f"{host}: no clean shutdown in {STOP_TIMEOUT:.0f}s, killing")
                signal_pid(pid, signal.SIGKILL)
        proc = self._procs.pop(host, None)
        if proc is not None:
            proc.wait()
        # Leftovers: the container's own processes if nspawn got SIGKILLed.
        kill_cgroups(cgroups)
        disks = {
            self.state_dir / host,
            FALLBACK_DISK_ROOT / self.name / host,
            RAM_DISK_ROOT / self.name / host,
        }
        if st is not None:
            disks.add(Path(st.disk))
        for disk in disks:
            unmount_all_under(disk)
        remove_cgroups(cgroups)
        veth = f"vb-{machine}"
        if len(veth) <= 15 and net.link_exists(veth):
            run(["ip", "link", "del", veth], check=False)
        for disk in disks:
            safe_rmtree(disk)
        safe_rmtree(self.state_dir / host)
        for root in (FALLBACK_DISK_ROOT, RAM_DISK_ROOT):
            with suppress(OSError):
                (root / self.name).rmdir()
        self.boot_seconds.pop(host, None)


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _lookup_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise TestbedError(f"user {user} missing in image {root}")


HOST_KEY_FILE = "host_key.pub"


def _host_key(root: Path, keep: bool = False) -> str:
    """A host key of the host's own (the image's are shared by every host booted from it, and
    a real server has its own): one ed25519 key, the image's keys removed; with `keep`, the
    one it has. Its public line."""
    ssh = root / "etc/ssh"
    pub = ssh / "ssh_host_ed25519_key.pub"
    if keep and pub.is_file():
        words = pub.read_text().split()
        return f"{words[0]} {words[1]}"
    for old in ssh.glob("ssh_host_*_key*"):
        old.unlink()
    key = ssh / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    words = key.with_name(key.name + ".pub").read_text().split()
    return f"{words[0]} {words[1]}"


def _write_host_files(
    root: Path, host: str, address: str, pubkey: str, user: str = "deploy"
) -> None:
    """Per-host identity, written through the overlay before boot.

    Writing via the merged dir (not into upper/ directly) makes overlayfs
    copy up parent dirs with their real owner and mode.
    """
    (root / "etc/hostname").write_text(host + "\n")
    (root / "etc/hosts").write_text(net.render_hosts(host))
    network = root / "etc/systemd/network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "10-djk-host0.network").write_text(net.render_networkd(address))
    uid, gid = _lookup_ids(root, user)
    ssh_dir = root / ("root/.ssh" if user == "root" else f"home/{user}/.ssh")
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, uid, gid)
    ssh_dir.chmod(0o700)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(pubkey if pubkey.endswith("\n") else pubkey + "\n")
    os.chown(keys, uid, gid)
    keys.chmod(0o600)


__all__ = ["TestHost", "Testbed", "TestbedError", "ensure_deps", "ensure_key"]
