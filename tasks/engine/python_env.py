"""Python dependencies for hosts without internet: a wheelhouse built on the control machine.

The venv on the host is keyed by a hash of the requirements and the target interpreter, so a
code-only deploy reuses it, and a changed dependency set gets a new venv next to the old one.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from . import facts as F
from .facts import Fact
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


def wheelhouse_archive(path: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in sorted(path.iterdir()):
            if item.name != COMPLETE:
                tar.add(item, arcname=item.name)
    return buffer.getvalue()


class Venv(Step):
    """A virtualenv at base/venvs/<key> with `base/venv` linked to it."""

    def __init__(
        self,
        base: str,
        requirements: Path,
        group: str,
        notify: tuple[str, ...] = (),
        target: Target = Target(),
    ) -> None:
        self.base, self.requirements, self.group = base, requirements, group
        self.notify, self.target = notify, target
        self.key = requirements_key(requirements, target)
        self.link = f"{base}/venv"
        self.dest = f"{base}/venvs/{self.key}"
        self.id = f"venv:{base}"
        self.name = f"virtualenv {self.link}"

    def facts(self, diff: bool) -> list[Fact]:
        return [F.path_state(self.link), F.file_text(f"{self.dest}/{COMPLETE}")]

    def plan(self, ctx: Context) -> Plan:
        link = ctx.facts[f"stat:{self.link}"]
        complete = ctx.facts[f"text:{self.dest}/{COMPLETE}"] == self.key
        linked = link is not None and link.kind == "link" and link.target == f"venvs/{self.key}"
        if complete and linked:
            return Plan(reason=f"dependencies {self.key} installed")
        q = shlex.quote
        switch = f"""ln -sfn venvs/{self.key} {q(self.link)}.djk-new
mv -Tf {q(self.link)}.djk-new {q(self.link)}
cd {q(self.base)}/venvs && for d in *; do
  [ "$d" = {self.key} ] || [ "$d" = "$(cat {q(self.base)}/.djk-venv-previous 2>/dev/null)" ] \
    || rm -rf -- "$d"
done
"""
        previous = f"{q(self.base)}/.djk-venv-previous"
        remember = f"readlink {q(self.link)} 2>/dev/null | sed 's#^venvs/##' > {previous} || true\n"
        if complete:
            return Plan(
                [
                    Action(
                        f"switch to installed dependencies {self.key}",
                        remember + switch,
                        notify=self.notify,
                    )
                ]
            )
        dest = q(self.dest)
        script = f"""set -e
install -d -m 750 -o root -g {q(self.group)} {q(self.base)}/venvs
rm -rf {dest}
wheels=$(mktemp -d {q(self.base)}/.wheels.XXXXXX)
trap 'rm -rf "$wheels"' EXIT
tar -xf - -C "$wheels"
{q(self.target.interpreter)} -m venv {dest}
{dest}/bin/pip install --no-index --find-links "$wheels" --disable-pip-version-check \
  --no-cache-dir --progress-bar off -r "$wheels/requirements.txt"
chown -R root:{q(self.group)} {dest}
chmod -R u=rwX,g=rX,o= {dest}
printf '%s\\n' {self.key} > {dest}/{COMPLETE}
{remember}{switch}"""
        return Plan(
            [
                Action(
                    f"install dependencies {self.key} from the wheelhouse",
                    script,
                    stdin=lambda: wheelhouse_archive(wheelhouse(self.requirements, self.target)),
                    notify=self.notify,
                    progress="installing dependencies",
                )
            ]
        )
