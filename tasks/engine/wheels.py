"""A site's dependency set, resolved on the control machine for the host's interpreter and
platform, as wheel files: what a host without internet installs from.

`resolve` pins the requirements with `uv pip compile` for the target (its Python version and
platform decide the markers, not the control machine's), then fetches exactly those pins with
`pip download --no-deps` for the target's tags. A pin with no wheel for the target is built from
its sdist here when it is pure Python, else refused with its name. Both steps are cached:
wheel files by name in one store (`~/.cache/djk/wheels`), each (requirements, target) pair's
result as a small manifest, so a warm run touches no network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .hostinfo import HostInfo

if TYPE_CHECKING:
    from packaging.tags import Tag

# packaging is imported where it is used: a run whose wheels are cached never needs it.

# The manylinux levels uv knows (`--python-platform x86_64-manylinux_2_NN`).
UV_MANYLINUX = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


class DependencyError(Exception):
    """The dependency set cannot be had for the target; `package` names the culprit."""

    def __init__(self, message: str, package: str = "") -> None:
        super().__init__(message)
        self.package = package


@dataclass(frozen=True)
class Target:
    """The interpreter and platform wheels are chosen for."""

    python: str = "3.11.2"  # the host's full version: markers compare it
    machine: str = "x86_64"
    glibc: str = "2.36"

    @classmethod
    def of(cls, info: HostInfo) -> Target:
        return cls(info.python, info.machine, info.glibc)

    @property
    def minor(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    @property
    def abi(self) -> str:
        return "cp{}{}".format(*self.minor)

    @property
    def glibc_minor(self) -> int:
        return int(self.glibc.split(".")[1])

    def platforms(self) -> list[str]:
        """Platform tags the host accepts, best first (manylinux down to 2_17, then plain)."""
        tags = [f"manylinux_2_{n}_{self.machine}" for n in range(self.glibc_minor, 16, -1)]
        return [*tags, f"manylinux2014_{self.machine}", f"linux_{self.machine}"]

    def tags(self) -> list[Tag]:
        from packaging.tags import compatible_tags, cpython_tags

        abis = [self.abi, "abi3", "none"]
        platforms = self.platforms()
        return [
            *cpython_tags(self.minor, abis=abis, platforms=platforms),
            *compatible_tags(self.minor, self.abi, platforms=platforms),
        ]

    @property
    def uv_platform(self) -> str:
        level = max([n for n in UV_MANYLINUX if n <= self.glibc_minor] or [17])
        return f"{self.machine}-manylinux_2_{level}"

    def describe(self) -> str:
        return f"Python {self.python} ({self.machine}, glibc {self.glibc})"

    @property
    def key(self) -> str:
        return f"cp{self.python}-{self.machine}-glibc{self.glibc}"


@dataclass(frozen=True)
class Wheelhouse:
    """The pins of a dependency set for one target and the wheel file of each."""

    target: Target
    pins: tuple[str, ...]  # name==version, as installed
    wheels: tuple[str, ...]  # file names in the store, one per pin

    def paths(self) -> list[Path]:
        return [store() / name for name in self.wheels]

    @property
    def requirements(self) -> str:
        return "".join(f"{pin}\n" for pin in self.pins)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "djk"


def store() -> Path:
    return cache_root() / "wheels"


def key_of(requirements: bytes, target: Target) -> str:
    digest = hashlib.sha256(requirements)
    digest.update(target.key.encode())
    return digest.hexdigest()[:16]


_lock = threading.Lock()
_memo: dict[str, Wheelhouse] = {}


def resolve(requirements: bytes, target: Target) -> Wheelhouse:
    """The wheelhouse of these requirements for the target (cached). DependencyError when a
    requirement cannot be had for it."""
    key = key_of(requirements, target)
    with _lock:
        if key in _memo:
            return _memo[key]
        manifest = cache_root() / "resolved" / f"{key}.json"
        house = _load(manifest, target)
        if house is None:
            pins = compile_pins(requirements, target)
            wheels = fetch(pins, target)
            house = Wheelhouse(target, tuple(pins), tuple(wheels))
            _save(manifest, house)
        _memo[key] = house
        return house


def _load(manifest: Path, target: Target) -> Wheelhouse | None:
    try:
        data = json.loads(manifest.read_text())
        house = Wheelhouse(target, tuple(data["pins"]), tuple(data["wheels"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if all(p.is_file() for p in house.paths()):
        return house
    return None


def _save(manifest: Path, house: Wheelhouse) -> None:
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pins": house.pins, "wheels": house.wheels}, indent=1) + "\n")
    tmp.replace(manifest)


# -- pinning -------------------------------------------------------------------------------------


def uv_binary() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def compile_pins(requirements: bytes, target: Target) -> list[str]:
    """`name==version` for every distribution the requirements need on the target."""
    with tempfile.TemporaryDirectory(prefix="djk-pins-") as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_bytes(requirements)
        done = subprocess.run(
            [
                uv_binary(),
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--no-annotate",
                "--no-strip-extras",
                "--python-version",
                target.python,
                "--python-platform",
                target.uv_platform,
                str(source),
            ],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
    if done.returncode != 0:
        raise compile_error(done.stderr, target)
    pins = []
    for line in done.stdout.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pins.append(line.split(";", 1)[0].strip())
    return pins


_PYTHON_CAUSE = re.compile(
    r"(?:and |Because )(?P<pkg>[A-Za-z0-9][A-Za-z0-9._\-\[\]]*)(?P<ver>[=<>!~][^ ]*)? depends on "
    r"Python(?P<need>[^ ,]+)"
)
_NO_VERSION = re.compile(r"there is no version of (?P<pkg>[A-Za-z0-9][A-Za-z0-9._\-]*)(?P<ver>\S*)")
_NOT_FOUND = re.compile(
    r"(?P<pkg>[A-Za-z0-9][A-Za-z0-9._\-]*) was not found in the package registry"
)


def compile_error(stderr: str, target: Target) -> DependencyError:
    """uv's explanation, as one line naming the package and what the target lacks."""
    text = " ".join(stderr.split())
    if m := _PYTHON_CAUSE.search(text):
        pkg = m.group("pkg") + (m.group("ver") or "")
        return DependencyError(
            f"{pkg} needs Python{m.group('need')} (the host has {target.python})", m.group("pkg")
        )
    if m := _NOT_FOUND.search(text):
        return DependencyError(f"{m.group('pkg')} is not in the package index", m.group("pkg"))
    if m := _NO_VERSION.search(text):
        pkg = m.group("pkg") + m.group("ver")
        return DependencyError(f"no version of {pkg} can be had", m.group("pkg"))
    first = next((line.strip() for line in stderr.splitlines() if line.strip()), "failed")
    first = first.removeprefix("error: ")
    return DependencyError(f"resolving the requirements failed: {first[:300]}")


# -- fetching ------------------------------------------------------------------------------------


def _pip() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    return [uv_binary(), "tool", "run", "--from", "pip", "pip"]


def best_wheel(candidates: list[str], target: Target) -> str | None:
    """The candidate file whose tags rank best for the target, or None."""
    from packaging.utils import parse_wheel_filename

    rank = {tag: i for i, tag in enumerate(target.tags())}
    scored = []
    for name in candidates:
        try:
            _, _, _, tags = parse_wheel_filename(name)
        except ValueError:
            continue
        best = min((rank[t] for t in tags if t in rank), default=None)
        if best is not None:
            scored.append((best, name))
    return min(scored)[1] if scored else None


def _name_version(pin: str) -> tuple[str, str]:
    from packaging.utils import canonicalize_name

    name, _, version = pin.partition("==")
    return canonicalize_name(name.split("[", 1)[0]), version.strip()


def _in_store(pin: str, target: Target) -> str | None:
    from packaging.utils import parse_wheel_filename

    name, version = _name_version(pin)
    found = []
    for path in store().glob("*.whl"):
        try:
            wname, wversion, _, _ = parse_wheel_filename(path.name)
        except ValueError:
            continue
        if wname == name and str(wversion) == version:
            found.append(path.name)
    return best_wheel(found, target)


def fetch(pins: list[str], target: Target) -> list[str]:
    """A wheel file in the store for every pin (downloaded or built when missing)."""
    store().mkdir(parents=True, exist_ok=True)
    have = {pin: _in_store(pin, target) for pin in pins}
    missing = [p for p, w in have.items() if w is None]
    if missing:
        _download(missing, target)
        for pin in missing:
            have[pin] = _in_store(pin, target)
    for pin in [p for p, w in have.items() if w is None]:
        have[pin] = _build_pure(pin, target)
    # Each is found now: _build_pure raises for a pin it cannot build.
    return [have[pin] for pin in pins]  # type: ignore[misc]


def _download(pins: list[str], target: Target) -> None:
    """Binary wheels for the target; pins that have none are left for _build_pure."""
    with tempfile.TemporaryDirectory(prefix="djk-wheels-", dir=store()) as tmp:
        command = [
            *_pip(),
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            ".".join(map(str, target.minor)),
            "--abi",
            target.abi,
            "--abi",
            "abi3",
            "--abi",
            "none",
            "-d",
            tmp,
        ]
        for platform in target.platforms():
            command += ["--platform", platform]
        done = subprocess.run([*command, *pins], capture_output=True, text=True)
        if done.returncode != 0 and len(pins) > 1:
            # pip stops at the first pin without a wheel: fetch the others one by one.
            for pin in pins:
                subprocess.run([*command, pin], capture_output=True, text=True)
        for path in Path(tmp).glob("*.whl"):
            os.replace(path, store() / path.name)


def _build_pure(pin: str, target: Target) -> str:
    """Build the pin's sdist into a wheel here; only a pure-Python one can go to the host."""
    from packaging.utils import parse_wheel_filename

    name, _ = _name_version(pin)
    where = f"no wheel of {pin} for {target.describe()}"
    with tempfile.TemporaryDirectory(prefix="djk-build-", dir=store()) as tmp:
        done = subprocess.run(
            [*_pip(), "wheel", "--quiet", "--disable-pip-version-check", "--no-deps", "-w", tmp]
            + [pin],
            capture_output=True,
            text=True,
        )
        built = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not built:
            raise DependencyError(f"{where}, and its source could not be built", name)
        wheel = built[0]
        _, _, _, tags = parse_wheel_filename(wheel.name)
        if not all(t.abi == "none" and t.platform == "any" for t in tags):
            raise DependencyError(
                f"{where}: it compiles code, which must be built for the host "
                "(publish a wheel for it, or pin a version that has one)",
                name,
            )
        os.replace(wheel, store() / wheel.name)
        return wheel.name
