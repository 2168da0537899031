"""Build and cache the Debian images the test hosts boot from.

`bookworm` (the default) and `trixie` carry the stack's packages and a `deploy` user with sudo:
hosts ready for `fab deploy`. `bare-bookworm` and `bare-trixie` are what a fresh server is: only
systemd, sshd, sudo and python3, reachable as root with a key, no deploy user — the kit's
`provision --bootstrap` makes the rest, shipping packages from the control machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ._sys import TestbedError, log, mounts, run, safe_rmtree, tail, unmount_all_under

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
MACHINES_DIR = Path("/var/lib/machines")
IMAGE_PREFIX = "djk-bookworm-"
DEFAULT = "bookworm"
SUITES = ("bookworm", "trixie")

PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "python3",
    "python3-venv",
    "nginx",
    "redis-server",
    "curl",
    "ca-certificates",
    "procps",
    "iproute2",
    "libpam-systemd",
    "certbot",
    # For hosts with process_manager = "supervisor" (disabled below: provision enables it there).
    "supervisor",
    # debootstrap does not resolve virtual packages: this provides the one cryptography needs.
    "python3-cffi-backend",
    "openssl",
)

BARE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "python3",
)

# Bump when the customisation changes in a way the script text does not show.
CUSTOMIZE_VERSION = 1

# Runs inside the freshly debootstrapped tree via chroot. Per-host files
# (hostname, address, authorized_keys) are written at boot time instead.
CUSTOMIZE_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

id deploy >/dev/null 2>&1 || useradd --create-home --home-dir /home/deploy --shell /bin/bash deploy
install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
printf 'deploy ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/deploy
chmod 0440 /etc/sudoers.d/deploy
passwd -l root

systemctl enable systemd-networkd.service
# Hosts have static addresses only; bound the wait so an odd link can't
# stall network-online.target (nginx wants it) for the default 2 minutes.
mkdir -p /etc/systemd/system/systemd-networkd-wait-online.service.d
cat > /etc/systemd/system/systemd-networkd-wait-online.service.d/djk.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=15
EOF

# Background apt runs would grab the dpkg lock in the middle of a deploy.
# Installed for supervisor hosts, running only where the kit's provision starts it.
systemctl disable supervisor.service

systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service

mkdir -p /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/10-djk-testbed.conf <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF

# Empty (not missing, not "uninitialized"): each boot gets a transient id
# without triggering first-boot logic.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id

# pam_env warns on every login without it; C.UTF-8 needs no locales package.
printf 'LANG=C.UTF-8\n' > /etc/default/locale

apt-get clean
# Hosts have no route to the outside; an empty resolv.conf keeps lookups on loopback.
printf '# djk testbed: no DNS servers\n' > /etc/resolv.conf
"""


# A fresh server: root logs in with a key (written at boot), nobody else exists.
BARE_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
systemctl enable systemd-networkd.service
mkdir -p /etc/systemd/system/systemd-networkd-wait-online.service.d
cat > /etc/systemd/system/systemd-networkd-wait-online.service.d/djk.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=15
EOF
systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
mkdir -p /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/10-djk-testbed.conf <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
EOF
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id
printf 'LANG=C.UTF-8\n' > /etc/default/locale
apt-get clean
rm -rf /var/lib/apt/lists/*
printf '# djk testbed: no DNS servers\n' > /etc/resolv.conf
"""


def parse_kind(kind: str) -> tuple[str, bool]:
    """`bookworm`, `trixie`, `bare-bookworm`, `bare-trixie` -> (suite, bare)."""
    bare = kind.startswith("bare-")
    suite = kind.removeprefix("bare-")
    if suite not in SUITES:
        raise TestbedError(f"unknown image {kind!r} (want one of {', '.join(KINDS)})")
    return suite, bare


KINDS = (*SUITES, *(f"bare-{s}" for s in SUITES))


def recipe(kind: str = DEFAULT) -> dict[str, object]:
    suite, bare = parse_kind(kind)
    if bare:
        return {
            "suite": suite,
            "mirror": MIRROR,
            "variant": "minbase",
            "packages": sorted(BARE_PACKAGES),
            "customize_script": BARE_SCRIPT,
        }
    return {
        "suite": suite,
        "mirror": MIRROR,
        "packages": sorted(PACKAGES),
        "customize_version": CUSTOMIZE_VERSION,
        "customize_script": CUSTOMIZE_SCRIPT,
    }


def recipe_hash(rec: dict[str, object] | None = None) -> str:
    blob = json.dumps(rec if rec is not None else recipe(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def prefix(kind: str = DEFAULT) -> str:
    return f"djk-{kind}-"


def is_bare(kind: str) -> bool:
    return parse_kind(kind)[1]


def image_dir(machines_dir: Path = MACHINES_DIR, kind: str = DEFAULT) -> Path:
    return machines_dir / f"{prefix(kind)}{recipe_hash(recipe(kind))}"


# debootstrap logs one line per package per phase; those become a counter.
_PER_PACKAGE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) ")
PROGRESS_EVERY = 5.0  # seconds between two progress lines


class BuildProgress:
    """debootstrap's output as a few lines: its other notes as they come, and for the per-package
    lines (hundreds, alternating retrieve/validate) one counter line every PROGRESS_EVERY
    seconds at most, plus the last count when another note or the end comes."""

    def __init__(self, clock=time.monotonic, every: float = PROGRESS_EVERY) -> None:
        self.clock, self.every = clock, every
        self.counted, self.phase, self.shown = 0, "", 0
        self.last = clock()

    def feed(self, line: str) -> list[str]:
        m = _PER_PACKAGE.match(line)
        if m:
            self.counted, self.phase = self.counted + 1, m.group(1).lower()
            if self.clock() - self.last >= self.every:
                return [self._counter()]
            return []
        if line.startswith(("I: ", "W: ", "E: ")):
            return [*self.flush(), f"image: {line.rstrip()[3:]}"]
        return []

    def flush(self) -> list[str]:
        return [self._counter()] if self.counted > self.shown else []

    def _counter(self) -> str:
        self.last, self.shown = self.clock(), self.counted
        return f"image: {self.phase} packages ({self.counted} steps so far)"


def _debootstrap(target: Path, build_log: Path, rec: dict[str, object]) -> None:
    argv = ["debootstrap", "--components=main"]
    if rec.get("variant"):
        argv.append(f"--variant={rec['variant']}")
    argv += [
        f"--include={','.join(rec['packages'])}",  # type: ignore[arg-type]
        str(rec["suite"]),
        str(target),
        str(rec["mirror"]),
    ]
    log(f"image: {' '.join(argv)}")
    with build_log.open("a") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        assert proc.stdout is not None
        progress = BuildProgress()
        for line in proc.stdout:
            logf.write(line)
            for shown in progress.feed(line):
                log(shown)
        for shown in progress.flush():
            log(shown)
        rc = proc.wait()
    if rc != 0:
        raise TestbedError(f"debootstrap failed ({rc}); log {build_log}:\n{tail(build_log)}")


def _customize(target: Path, build_log: Path, script: str) -> None:
    log("image: customising (users, sudo, sshd, networkd)")
    proc = run(["chroot", target, "/bin/sh", "-c", script], check=False)
    with build_log.open("a") as logf:
        logf.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise TestbedError(f"image customisation failed; log {build_log}:\n{tail(build_log)}")


def _prune_old(machines_dir: Path, keep: Path, kind: str) -> None:
    """Drop images of older recipes of this kind that no running host still uses."""
    in_use = " ".join(opts for _, fstype, opts in mounts() if fstype == "overlay")
    pattern = re.compile(re.escape(prefix(kind)) + r"[0-9a-f]{12}")
    for old in machines_dir.iterdir():
        if not pattern.fullmatch(old.name):
            continue
        if old == keep or not old.is_dir() or f"lowerdir={old}" in in_use:
            continue
        log(f"image: removing outdated {old}")
        safe_rmtree(old)


def ensure_image(machines_dir: Path = MACHINES_DIR, kind: str = DEFAULT) -> Path:
    """Return the cached image directory, building it first if needed."""
    rec = recipe(kind)
    target = image_dir(machines_dir, kind)
    if target.is_dir():
        return target
    machines_dir.mkdir(parents=True, exist_ok=True)
    # Serialise builds: concurrent test sessions must not debootstrap twice.
    with (machines_dir / f".{prefix(kind)}build.lock").open("w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        # Anything half-built is from a killed build; we hold the lock, so it is stale.
        for stale in machines_dir.glob(f".{prefix(kind)}*.tmp"):
            log(f"image: removing unfinished build {stale}")
            safe_rmtree(stale)
        tmp = machines_dir / f".{target.name}.tmp"
        build_log = machines_dir / f".{target.name}.log"
        build_log.write_text("")
        log(f"image: building {target} (takes ~2 minutes, once)")
        started = time.monotonic()
        try:
            _debootstrap(tmp, build_log, rec)
            _customize(tmp, build_log, str(rec["customize_script"]))
            (tmp / "etc/djk-testbed-image.json").write_text(json.dumps(rec, indent=2) + "\n")
            # debootstrap unmounts its /proc and /sys, but make sure before publishing.
            unmount_all_under(tmp)
            tmp.rename(target)
        except BaseException:
            # Leave nothing that looks usable; the next build removes the rest.
            print(f"[testbed] image: build failed, see {build_log}", file=sys.stderr)
            raise
        log(f"image: built {target} in {time.monotonic() - started:.0f}s")
        _prune_old(machines_dir, target, kind)
    return target


def remove_image(machines_dir: Path = MACHINES_DIR, kind: str = DEFAULT) -> None:
    target = image_dir(machines_dir, kind)
    if target.exists():
        safe_rmtree(target)


__all__ = ["KINDS", "ensure_image", "image_dir", "is_bare", "recipe", "recipe_hash", "remove_image"]
