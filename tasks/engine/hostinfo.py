"""What a host is: its Debian release, architecture, C library and Python — read over SSH, and
what the kit derives from it (the wheel tags its venvs need, the nginx dialect, supported or not).

Plans depend on it (a site's dependency set is resolved for the host's Python; the nginx
configuration is written for the host's nginx), so it must be known before a host's plan is
built. The executor reads it in every run's first round trip anyway (the `Profile` fact, with the
others), so the control machine keeps the last one read per host (`cached`) and builds the plan
from it; when the round trip shows the host changed, the plan is built again. A host seen for the
first time costs one more command (`probe_command`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from .facts import Fact

# Debian releases the kit supports: VERSION_ID -> (codename, nginx speaks `http2 on;`)
SUPPORTED = {"12": ("bookworm", False), "13": ("trixie", True)}
MACHINES = {"x86_64": "amd64", "aarch64": "arm64"}


class Unsupported(Exception):
    pass


@dataclass(frozen=True)
class HostInfo:
    os_id: str = "debian"
    version_id: str = "12"
    codename: str = "bookworm"
    arch: str = "amd64"  # dpkg's architecture
    machine: str = "x86_64"  # the kernel's (wheel platform tags use it)
    glibc: str = "2.36"
    python: str = "3.11.2"  # the host's python3, "" when it has none

    @property
    def release(self) -> str:
        return f"Debian {self.version_id} ({self.codename})"

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def nginx_http2_on(self) -> bool:
        """nginx >= 1.25.1 (Debian 13) takes `http2 on;` and warns on `listen ... http2`."""
        return SUPPORTED.get(self.version_id, ("", True))[1]

    def describe(self) -> str:
        python = f"Python {self.python}" if self.python else "no python3"
        return f"{self.release}, {self.arch}, {python}"

    def problem(self) -> str:
        """Why the kit cannot manage this host, or ''."""
        if self.os_id != "debian" or self.version_id not in SUPPORTED:
            name = f"{self.os_id} {self.version_id}".strip() or "an unknown system"
            return f"runs {name}; the kit supports Debian 12 (bookworm) and 13 (trixie)"
        if self.machine not in MACHINES:
            return f"is {self.machine}; the kit supports x86_64 and aarch64"
        if not self.python:
            return "has no python3 (install Debian's python3 package)"
        if not re.fullmatch(r"\d+\.\d+", self.glibc):
            return "does not say its C library's version (getconf GNU_LIBC_VERSION)"
        return ""


DEFAULT = HostInfo()

PROBE = r"""( . /etc/os-release 2>/dev/null
  echo "os=${ID:-}|${VERSION_ID:-}|${VERSION_CODENAME:-}" )
echo "arch=$(dpkg --print-architecture 2>/dev/null)"
echo "machine=$(uname -m)"
echo "glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null)"
echo "python=$(python3 --version 2>/dev/null)"
"""


def parse_probe(out: str) -> HostInfo:
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    os_id, version_id, codename = (fields.get("os", "") + "||").split("|")[:3]
    glibc = re.search(r"(\d+\.\d+)", fields.get("glibc", ""))
    python = re.search(r"(\d+\.\d+(?:\.\d+)?)", fields.get("python", ""))
    return HostInfo(
        os_id=os_id,
        version_id=version_id,
        codename=codename,
        arch=fields.get("arch", ""),
        machine=fields.get("machine", ""),
        glibc=glibc.group(1) if glibc else "",
        python=python.group(1) if python else "",
    )


@dataclass(frozen=True)
class Profile(Fact[HostInfo]):
    """The host's release, architecture, C library and Python."""

    default: ClassVar[Any] = None

    def command(self) -> str:
        return PROBE

    def parse(self, rc: int, out: str) -> HostInfo:
        return parse_probe(out)


# -- the control machine's memory of each host ----------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "djk" / "hosts"


def cache_file(key: str, suffix: str = ".json") -> Path:
    """Where the control machine keeps what it remembers of the host `key`."""
    return cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:24] + suffix)


def cached(key: str) -> HostInfo | None:
    """The profile last read from the host `key` (user@address:port), or None."""
    try:
        data = json.loads(cache_file(key).read_text())
        known = HostInfo.__dataclass_fields__
        return HostInfo(**{k: str(v) for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def remember(key: str, info: HostInfo) -> None:
    if cached(key) == info:
        return  # as remembered: no write on every run
    write_cache(cache_file(key), json.dumps(asdict(info), sort_keys=True) + "\n")


def write_cache(path: Path, text: str) -> None:
    """Replace a cache file whole: a reader (another thread of this run, another run) sees the
    old text or the new, never a part. The temporary name is this thread's own."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)  # only a cache: the next run asks the host again
