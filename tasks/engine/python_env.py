"""Python dependencies for hosts without internet: a wheelhouse built on the control machine.

The venv on the host is keyed by a hash of the requirements and the target interpreter, so a
code-only deploy reuses it, and a changed dependency set gets a new venv next to the old one.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .facts import Fact, Text
from .steps import Action, Context, Plan, Step

COMPLETE = ".djk-complete"


@dataclass(frozen=True)
class Target:
    """The host interpreter the wheels are for (Debian 12: CPython 3.11 on x86_64)."""

    python_version: str = "3.11"
    platforms: tuple[str, ...] = (
        "manylinux_2_36_x86_64",
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "linux_x86_64",
    )
    interpreter: str = "/usr/bin/python3"


def requirements_key(requirements: Path, target: Target = Target()) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(repr(target).encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "djk" / "wheelhouse"


_build_lock = threading.Lock()

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def named(requirements: str) -> set[str]:
    """The distributions a requirements file names (normalized), options and comments aside."""
    found = set()
    for line in requirements.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = _NAME.match(line)
        if match:
            found.add(normalized(match.group(0)))
    return found


def with_server(requirements: bytes, pins: list[str]) -> bytes:
    """The project's requirements plus each pin whose package they do not name."""
    text = requirements.decode("utf-8", "replace")
    have = named(text)
    missing = [p for p in pins if normalized(_NAME.match(p).group(0)) not in have]
    if not missing:
        return requirements
    added = "".join(f"{p}\n" for p in missing)
    sep = "" if not text or text.endswith("\n") else "\n"
    return requirements + f"{sep}# added by djk: what the kit runs the site with\n{added}".encode()


def materialize(requirements: bytes) -> Path:
    """The requirements a release is built from, as a file of the control machine's cache
    (named by content): what pip downloads for and what the venv's key is computed from."""
    digest = hashlib.sha256(requirements).hexdigest()[:16]
    path = cache_root().parent / "requirements" / f"{digest}.txt"
    if not path.is_file() or path.read_bytes() != requirements:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(requirements)
        tmp.replace(path)
    return path


def wheelhouse(requirements: Path, target: Target = Target()) -> Path:
    """Download every wheel the requirements need for the target, once per requirements key."""
    key = requirements_key(requirements, target)
    dest = cache_root() / key
    with _build_lock:
        if (dest / COMPLETE).exists():
            return dest
        tmp = dest.with_name(dest.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        tmp.mkdir(parents=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            target.python_version,
            "-d",
            str(tmp),
            "-r",
            str(requirements),
        ]
        for platform in target.platforms:
            command += ["--platform", platform]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download failed for {requirements}: {done.stderr.strip()}")
        (tmp / "requirements.txt").write_bytes(requirements.read_bytes())
        (tmp / COMPLETE).write_text(key + "\n")
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        tmp.rename(dest)
    return dest


_archives: dict[Path, bytes] = {}
_archive_lock = threading.Lock()


def wheelhouse_archive(path: Path) -> bytes:
    """One archive in memory however many hosts it goes to: the hosts run in parallel, and the
    first of them builds it while the others wait."""
    with _archive_lock:
        if path not in _archives:
            _archives[path] = _build_archive(path)
        return _archives[path]


def _build_archive(path: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in sorted(path.iterdir()):
            if item.name != COMPLETE:
                tar.add(item, arcname=item.name)
    return buffer.getvalue()


class Venv(Step):
    """A complete virtualenv at venvs/<key>, installed from the control machine's wheelhouse.

    Releases link to it; the switch removes the ones no release uses any more.
    """

    def __init__(
        self, venvs: str, requirements: Path, group: str, target: Target = Target()
    ) -> None:
        self.venvs, self.requirements, self.group, self.target = venvs, requirements, group, target
        self.key = requirements_key(requirements, target)
        self.dest = f"{venvs}/{self.key}"
        self.id = f"venv:{self.dest}"
        self.name = f"virtualenv {self.dest}"

    @staticmethod
    def key_for(requirements: Path, target: Target = Target()) -> str:
        return requirements_key(requirements, target)

    def facts(self, diff: bool) -> list[Fact]:
        return [Text(f"{self.dest}/{COMPLETE}")]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[Text(f"{self.dest}/{COMPLETE}")] == self.key:
            return Plan(reason=f"dependencies {self.key} installed")
        q = shlex.quote
        dest = q(self.dest)
        script = f"""set -e
rm -rf {dest}
wheels=$(mktemp -d {q(self.venvs)}/.wheels.XXXXXX)
trap 'rm -rf "$wheels"' EXIT
tar -xf - -C "$wheels"
{q(self.target.interpreter)} -m venv {dest}
{dest}/bin/pip install --no-index --find-links "$wheels" --disable-pip-version-check \
  --no-cache-dir --progress-bar off -r "$wheels/requirements.txt"
chown -R root:{q(self.group)} {dest}
chmod -R u=rwX,g=rX,o= {dest}
printf '%s\\n' {self.key} > {dest}/{COMPLETE}
"""
        return Plan(
            [
                Action(
                    f"install dependencies {self.key} from the wheelhouse",
                    script,
                    stdin=lambda: wheelhouse_archive(wheelhouse(self.requirements, self.target)),
                    progress="installing dependencies",
                )
            ]
        )
