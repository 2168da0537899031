"""Python dependencies for hosts without internet: wheels resolved on the control machine for
each host's interpreter (engine/wheels.py), one wheel store per host, venvs installed with uv.

On the host, under /srv/djk/.kit/ (the filesystem the sites live on, so uv links files instead of
copying them):
  wheels/       every wheel any site needed, by file name: a wheel is sent once per host
  uv-cache/     uv's unpacked wheels; each venv's files are hard links into it
  uv-<version>  the installer, shipped once per host
  venvs/<key>   one venv per pinned set and interpreter, shared by every site and release that
                needs exactly it (public packages: root's, world-readable)
A code-only deploy reuses its venv; a changed dependency set gets a new one next to the old, whose
files are mostly links to what the cache already holds.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from .facts import Fact, Lines, Text
from .steps import Action, Context, Directory, Plan, Step
from .wheels import Target, Wheelhouse, cache_root, key_of, resolve

COMPLETE = ".djk-complete"
KIT_DIR = "/srv/djk/.kit"
HOST_WHEELS = f"{KIT_DIR}/wheels"
HOST_UV_CACHE = f"{KIT_DIR}/uv-cache"
HOST_VENVS = f"{KIT_DIR}/venvs"


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


def _pin_name(pin: str) -> str:
    found = _NAME.match(pin)
    if found is None:
        raise ValueError(f"not a pin: {pin!r}")
    return found.group(0)


def with_server(requirements: bytes, pins: list[str]) -> bytes:
    """The project's requirements plus each pin whose package they do not name."""
    text = requirements.decode("utf-8", "replace")
    have = named(text)
    missing = [p for p in pins if normalized(_pin_name(p)) not in have]
    if not missing:
        return requirements
    added = "".join(f"{p}\n" for p in missing)
    sep = "" if not text or text.endswith("\n") else "\n"
    return requirements + f"{sep}# added by djk: what the kit runs the site with\n{added}".encode()


def materialize(requirements: bytes) -> Path:
    """The requirements a release is built from, as a file of the control machine's cache
    (named by content): what pip downloads for and what the venv's key is computed from."""
    digest = hashlib.sha256(requirements).hexdigest()[:16]
    path = cache_root() / "requirements" / f"{digest}.txt"
    if not path.is_file() or path.read_bytes() != requirements:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(requirements)
        tmp.replace(path)
    return path


def deps_key(requirements: Path, target: Target) -> str:
    """The venv's name on a host: the requirements and the interpreter they are resolved for."""
    return key_of(requirements.read_bytes(), target)


def wheelhouse_for(requirements: Path, target: Target) -> Wheelhouse:
    return resolve(requirements.read_bytes(), target)


@cache
def uv_version() -> str:
    # Read from the installed distribution's metadata: a few milliseconds, asked by every host's
    # plan.
    from importlib.metadata import version

    return version("uv")


def uv_path() -> str:
    return f"{KIT_DIR}/uv-{uv_version()}"


_made: dict[tuple[str, ...], bytes] = {}
_made_lock = threading.Lock()


def _once(key: tuple[str, ...], make: Callable[[], bytes]) -> bytes:
    """Bytes made once per run however many hosts they go to (the hosts run in parallel: the
    first makes them while the others wait)."""
    with _made_lock:
        if key not in _made:
            _made[key] = make()
        return _made[key]


def archive_of(paths: list[Path]) -> bytes:
    """One tar in memory per set of files, however many hosts it goes to."""

    def make() -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in paths:
                tar.add(path, arcname=path.name)
        return buffer.getvalue()

    return _once(tuple(str(p) for p in paths), make)


def shared_bytes(path: Path) -> bytes:
    """A file's bytes read once however many hosts it goes to: uv's 17.6 MB read by each of 8
    hosts uploading it at once made a first deploy's peak 186 MB."""
    return _once((f"file:{path}",), path.read_bytes)


@dataclass(frozen=True)
class WheelFiles(Fact[list]):
    """The wheel files in the host's store."""

    directory: str = HOST_WHEELS
    default: ClassVar[Any] = []

    def command(self) -> str:
        return f"ls -1 -- {shlex.quote(self.directory)} 2>/dev/null || true"

    def parse(self, rc: int, out: str) -> list[str]:
        return sorted(line for line in out.split() if line.endswith(".whl"))


class HostWheels(Step):
    """The host's wheel store has every wheel this run's venvs install: only the missing ones
    are sent, once for all the sites of the host."""

    def __init__(self, houses: list[Wheelhouse]) -> None:
        names: dict[str, Path] = {}
        for house in houses:
            names.update(zip(house.wheels, house.paths(), strict=True))
        self.wanted = names
        self.id = "wheels"
        self.name = "wheels"

    def facts(self, diff: bool) -> list[Fact]:
        return [WheelFiles()]

    def plan(self, ctx: Context) -> Plan:
        have = set(ctx.facts[WheelFiles()])
        missing = sorted(n for n in self.wanted if n not in have)
        if not missing:
            return Plan(reason=f"{len(self.wanted)} on the host")
        paths = [self.wanted[n] for n in missing]
        q = shlex.quote
        script = f"""set -e
mkdir -p {q(HOST_WHEELS)}
incoming=$(mktemp -d {q(HOST_WHEELS)}/.in.XXXXXX)
trap 'rm -rf "$incoming"' EXIT
tar -xf - -C "$incoming"
chmod 0644 "$incoming"/*.whl
mv -f "$incoming"/*.whl {q(HOST_WHEELS)}/
"""
        size = sum(p.stat().st_size for p in paths if p.exists())
        return Plan(
            [
                Action(
                    f"send {len(missing)} of {len(self.wanted)} ({size / 1e6:.1f} MB)",
                    script,
                    stdin=lambda: archive_of(paths),
                    kind="wheels",
                )
            ]
        )


class UvTool(Step):
    """uv, the installer the venvs are made with, on the host (sent once per host and version:
    the wheel of uv for the host's platform, unpacked there)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.path = uv_path()
        self.id = "uv"
        self.name = "installer"
        # Resolved when the plan is built (cached): a failure is the run's, before any host.
        self.wheel = resolve(f"uv=={uv_version()}\n".encode(), target).paths()[0]

    def _present(self) -> Lines:
        # Not Stat: hashing a 37 MB binary on every run would cost a no-op deploy 0.17 s.
        return Lines(f"test -x {shlex.quote(self.path)} && echo present || true")

    def facts(self, diff: bool) -> list[Fact]:
        return [self._present()]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[self._present()] == ["present"]:
            return Plan(reason=f"uv {uv_version()}")
        wheel = self.wheel
        q = shlex.quote
        script = f"""set -e
mkdir -p {q(KIT_DIR)}
tmp=$(mktemp {q(self.path)}.XXXXXX)
trap 'rm -f "$tmp"' EXIT
python3 -c '
import io, shutil, sys, zipfile
with zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read())) as wheel:
    member = next(n for n in wheel.namelist() if n.endswith(".data/scripts/uv"))
    with wheel.open(member) as src, open(sys.argv[1], "wb") as dst:
        shutil.copyfileobj(src, dst)
' "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" {q(self.path)}
"""
        return Plan(
            [
                Action(
                    f"install uv {uv_version()} ({wheel.stat().st_size / 1e6:.1f} MB)",
                    script,
                    stdin=lambda: shared_bytes(wheel),
                    kind="uv",
                )
            ]
        )


# The packages a Django process imports first, in about that order: their bytecode is compiled
# before the rest of the venv, so the deploy's first processes (collectstatic, migrate, the
# server), started while the compile runs, find most of what they import already compiled.
# Only an order: whatever is missing from the venv is skipped, the rest of it follows.
FIRST_COMPILED = (
    "django/__init__.py",
    "django/utils",
    "django/conf/__init__.py",
    "django/conf/global_settings.py",
    "django/apps",
    "django/core",
    "django/db",
    "django/dispatch",
    "django/http",
    "django/urls",
    "django/template",
    "django/forms",
    "django/middleware",
    "django/views",
    "django/contrib/contenttypes",
    "django/contrib/auth",
    "django/contrib/sessions",
    "django/contrib/messages",
    "django/contrib/staticfiles",
    "django/contrib/admin",
    "asgiref",
    "sqlparse",
    "gunicorn",
    "uvicorn",
    "uvicorn_worker",
    "h11",
    "httptools",
    "websockets",
    "whitenoise",
    "celery",
    "kombu",
    "billiard",
    "vine",
    "amqp",
    "redis",
    "click",
    "dateutil",
    "tzdata",
    "django",
)

# Run by root's python3 with the venv's path and FIRST_COMPILED: every module of the venv in
# one pool of processes (one per CPU, niced by its caller), those first.
COMPILE = """
import compileall, functools, os, sys
from concurrent.futures import ProcessPoolExecutor
lib = os.path.join(sys.argv[1], "lib")
def sources(path):
    if os.path.isfile(path):
        yield path
    for root, dirs, names in os.walk(path):
        dirs.sort()
        yield from (os.path.join(root, n) for n in sorted(names) if n.endswith(".py"))
order, seen = [], set()
for site in (os.path.join(lib, d, "site-packages") for d in sorted(os.listdir(lib))):
    for rel in [*sys.argv[2:], ""]:
        for path in sources(os.path.join(site, rel)):
            if path not in seen:
                seen.add(path)
                order.append(path)
with ProcessPoolExecutor() as pool:
    list(pool.map(functools.partial(compileall.compile_file, quiet=2), order, chunksize=8))
"""


def venv_path(key: str) -> str:
    return f"{HOST_VENVS}/{key}"


class Venv(Step):
    """A complete virtualenv at /srv/djk/.kit/venvs/<key>, installed with uv from the host's
    wheel store (no index, no network): the pinned set exactly, with its bytecode.

    Its bytecode is compiled once, by root, niced, in the background right after the install:
    first what a Django process imports first, then the rest (the sites' processes run with
    PYTHONDONTWRITEBYTECODE: every start after that loads it).
    Releases link to the venv; a switch removes venvs no release of any site links to.
    """

    def __init__(self, house: Wheelhouse, key: str) -> None:
        self.house, self.key = house, key
        self.dest = venv_path(key)
        self.id = f"venv:{self.dest}"
        self.name = f"virtualenv {key}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Text(f"{self.dest}/{COMPLETE}")]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[Text(f"{self.dest}/{COMPLETE}")] == self.key:
            return Plan(reason=f"dependencies {self.key} installed")
        q = shlex.quote
        dest = q(self.dest)
        uv = q(uv_path())
        cache = q(HOST_UV_CACHE)
        # The bytecode is compiled after the venv is complete, in the background (a transient
        # systemd unit): the deploy goes on meanwhile, and its first processes compile in memory
        # what they import before the files are there. The venv never changes after this.
        unit = f"djk-compile-{self.key}"
        compile_ = f"/usr/bin/python3 -c {q(COMPILE)} {dest} {' '.join(FIRST_COMPILED)}"
        script = f"""set -e
export UV_CACHE_DIR={cache} UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1 NO_COLOR=1
cd /
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
cat > "$pins"
rm -rf {dest}
{uv} venv --quiet --python /usr/bin/python3 {dest}
{uv} pip install --quiet --offline --no-index --find-links {q(HOST_WHEELS)} --no-deps \\
  --link-mode hardlink --python {dest}/bin/python -r "$pins"
chmod 0755 {dest}
printf '%s\\n' {self.key} > {dest}/{COMPLETE}
systemd-run --quiet --collect --unit={unit} --description="djk: bytecode of venv {self.key}" \\
  --nice=10 {compile_} 2>/dev/null || nice -n 10 {compile_} > /dev/null || true
"""
        return Plan(
            [
                Action(
                    f"install {len(self.house.pins)} packages with uv",
                    script,
                    stdin=self.house.requirements.encode(),
                    progress="installing dependencies",
                )
            ]
        )


def host_steps(builds: list[tuple[Wheelhouse, str]], target: Target) -> list[Step]:
    """What the venvs of a host's sites need, each once however many sites share it: uv, the
    wheels, the venvs ((wheelhouse, key) per site)."""
    if not builds:
        return []
    venvs = {key: Venv(house, key) for house, key in builds}
    return [
        UvTool(target),
        HostWheels([house for house, _ in builds]),
        Directory(HOST_VENVS),
        *venvs.values(),
    ]
