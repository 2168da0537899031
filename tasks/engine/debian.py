"""Debian packages for hosts without internet: the closure of what a host's roles need,
computed on the control machine from the Debian archive, downloaded and verified there.

`Archive` reads a release's package indexes (the release, -updates and -security, `main`) for
one architecture: InRelease over HTTPS (its signature checked with gpgv and Debian's keyring
when the control machine has them), each Packages.xz checked against InRelease's SHA256, parsed
once and cached under ~/.cache/djk/debian. `closure` is a small resolver for the one case a
deploy tool needs: install these packages on top of what dpkg says the host has. For each
dependency it keeps what the host has when the version fits, else takes the archive's newest
version (an upgrade) or a provider of a virtual package, first alternative first, like apt.
Conflicts and Recommends are apt's business on the host, which installs the shipped files.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

MIRROR = os.environ.get("DJK_DEBIAN_MIRROR", "https://deb.debian.org/debian")
SECURITY = os.environ.get("DJK_DEBIAN_SECURITY", "https://deb.debian.org/debian-security")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
FIELDS = (
    "Package",
    "Version",
    "Depends",
    "Pre-Depends",
    "Provides",
    "Filename",
    "SHA256",
    "Size",
    "Architecture",
)


class PackageError(Exception):
    """A package the host needs cannot be had; the message names it."""


# -- versions ------------------------------------------------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    while a or b:
        # `[^\d]*` and `\d*` match every string (if only empty): match() is never None.
        da = re.match(r"[^\d]*", a).group(0)  # type: ignore[union-attr]
        db = re.match(r"[^\d]*", b).group(0)  # type: ignore[union-attr]
        for i in range(max(len(da), len(db))):
            ca = _order(da[i]) if i < len(da) else 0
            cb = _order(db[i]) if i < len(db) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        a, b = a[len(da) :], b[len(db) :]
        na = re.match(r"\d*", a).group(0)  # type: ignore[union-attr]
        nb = re.match(r"\d*", b).group(0)  # type: ignore[union-attr]
        if int(na or 0) != int(nb or 0):
            return -1 if int(na or 0) < int(nb or 0) else 1
        a, b = a[len(na) :], b[len(nb) :]
    return 0


def compare(a: str, b: str) -> int:
    """Debian's version order (policy 5.6.12): -1, 0 or 1."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def satisfies(version: str, op: str, wanted: str) -> bool:
    c = compare(version, wanted)
    return {
        "<<": c < 0,
        "<=": c <= 0,
        "=": c == 0,
        ">=": c >= 0,
        ">>": c > 0,
        "<": c <= 0,
        ">": c >= 0,  # obsolete spellings
    }[op]


# -- relations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    name: str
    op: str = ""
    version: str = ""

    def fits(self, version: str | None) -> bool:
        if not self.op:
            return True
        return version is not None and satisfies(version, self.op, self.version)

    def __str__(self) -> str:
        return f"{self.name} ({self.op} {self.version})" if self.op else self.name


_REL = re.compile(
    r"^\s*([a-z0-9][a-z0-9+.\-]*)(?::[a-z0-9\-]+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?"
)


def parse_relations(text: str) -> list[list[Relation]]:
    """`a (>= 1) | b, c` -> [[a>=1, b], [c]]; architecture restrictions are dropped."""
    groups = []
    for group in text.split(","):
        alts = []
        for alt in group.split("|"):
            alt = re.sub(r"\[[^\]]*\]|<[^>]*>", "", alt)
            m = _REL.match(alt)
            if m:
                alts.append(Relation(m.group(1), m.group(2) or "", m.group(3) or ""))
        if alts:
            groups.append(alts)
    return groups


@dataclass
class Package:
    name: str
    version: str
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    filename: str = ""
    sha256: str = ""
    size: int = 0
    base: str = ""  # the archive URL its Filename is relative to

    def relations(self) -> list[list[Relation]]:
        return parse_relations(self.pre_depends) + parse_relations(self.depends)

    def provided(self) -> list[Relation]:
        return [alts[0] for alts in parse_relations(self.provides)]

    @property
    def file(self) -> str:
        return self.filename.rsplit("/", 1)[-1]


def parse_packages(text: str, base: str = "") -> dict[str, Package]:
    """A Packages index: the newest version of each package."""
    found: dict[str, Package] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")):
                if key:
                    fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        name = fields.get("Package")
        if not name or "Version" not in fields:
            continue
        pkg = Package(
            name,
            fields["Version"],
            fields.get("Depends", ""),
            fields.get("Pre-Depends", ""),
            fields.get("Provides", ""),
            fields.get("Filename", ""),
            fields.get("SHA256", ""),
            int(fields.get("Size", "0") or 0),
            base,
        )
        old = found.get(name)
        if old is None or compare(pkg.version, old.version) > 0:
            found[name] = pkg
    return found


# -- what the host has ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    version: str
    provides: tuple[Relation, ...] = ()


def parse_status(out: str) -> dict[str, Installed]:
    """`dpkg-query -W -f='${Package}\\t${Version}\\t${Status}\\t${Provides}\\n'`"""
    found = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].endswith("install ok installed"):
            continue
        provides = tuple(a[0] for a in parse_relations(parts[3])) if len(parts) > 3 else ()
        found[parts[0].split(":")[0]] = Installed(parts[1], provides)
    return found


STATUS_COMMAND = (
    "dpkg-query -W -f='${Package}\\t${Version}\\t${Status}\\t${Provides}\\n' 2>/dev/null || true"
)


# -- the resolver --------------------------------------------------------------------------------


@dataclass
class Closure:
    packages: list[Package] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.packages)


def providers_of(index: dict[str, Package]) -> dict[str, list[Package]]:
    """Virtual package name -> the packages that provide it."""
    found: dict[str, list[Package]] = {}
    for pkg in index.values():
        for rel in pkg.provided():
            found.setdefault(rel.name, []).append(pkg)
    return found


def closure(
    wanted: list[str],
    installed: dict[str, Installed],
    index: dict[str, Package],
    where: str,
    providers: dict[str, list[Package]] | None = None,
) -> Closure:
    """The packages to ship so that `wanted` installs on a host with `installed`."""
    chosen: dict[str, Package] = {}
    providers = providers_of(index) if providers is None else providers

    def have(rel: Relation) -> bool:
        if rel.name in chosen:
            return rel.fits(chosen[rel.name].version)
        host = installed.get(rel.name)
        if host is not None and rel.fits(host.version):
            return True
        given = [p for pkg in chosen.values() for p in pkg.provided()]
        given += [p for inst in installed.values() for p in inst.provides]
        return any(p.name == rel.name and (not rel.op or rel.fits(p.version)) for p in given)

    def candidate(rel: Relation) -> Package | None:
        pkg = index.get(rel.name)
        if pkg is not None and rel.fits(pkg.version):
            return pkg
        for provider in providers.get(rel.name, []):
            given = [p for p in provider.provided() if p.name == rel.name]
            if not rel.op or any(p.op == "=" and rel.fits(p.version) for p in given):
                return provider
        return None

    def take(pkg: Package, why: str) -> None:
        chosen[pkg.name] = pkg
        for alts in pkg.relations():
            if any(have(a) for a in alts):
                continue
            for alt in alts:
                found = candidate(alt)
                if found is not None and found.name not in chosen:
                    take(found, f"{pkg.name} needs {alt}")
                    break
            else:
                names = " | ".join(str(a) for a in alts)
                raise PackageError(f"{names} (needed by {pkg.name}) cannot be had for {where}")

    for name in wanted:
        if name in installed or name in chosen:
            continue
        pkg = candidate(Relation(name))
        if pkg is None:
            raise PackageError(f"package {name} is not in Debian's archive for {where}")
        take(pkg, "wanted")
    return Closure(sorted(chosen.values(), key=lambda p: p.name))


# -- the archive ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "djk" / "debian"


def _get(url: str, timeout: float = 60) -> bytes:
    import urllib.request  # only when an index or a package is fetched

    request = urllib.request.Request(url, headers={"User-Agent": "djk"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (https)
        return response.read()


def _verified_release(data: bytes, url: str) -> str:
    """InRelease's text, its signature checked when gpgv and Debian's keyring are here."""
    if shutil.which("gpgv") and KEYRING.is_file():
        with tempfile.NamedTemporaryFile(suffix=".InRelease") as tmp:
            tmp.write(data)
            tmp.flush()
            done = subprocess.run(
                ["gpgv", "--keyring", str(KEYRING), tmp.name], capture_output=True, text=True
            )
        if done.returncode != 0:
            raise PackageError(f"{url}: bad signature ({done.stderr.strip()[-200:]})")
    return data.decode("utf-8", "replace")


def _sha256_of(release: str, path: str) -> str | None:
    section = release.split("SHA256:", 1)[-1]
    for line in section.splitlines()[1:]:
        if not line.startswith(" "):
            break
        parts = line.split()
        if len(parts) == 3 and parts[2] == path:
            return parts[0]
    return None


class Archive:
    """One Debian release for one architecture (main, with -updates and -security)."""

    def __init__(self, codename: str, arch: str) -> None:
        self.codename, self.arch = codename, arch
        self.where = f"Debian {codename}/{arch}"
        self._index: dict[str, Package] | None = None
        self._providers: dict[str, list[Package]] = {}
        self._lock = threading.Lock()

    def suites(self) -> list[tuple[str, str]]:
        return [
            (MIRROR, self.codename),
            (MIRROR, f"{self.codename}-updates"),
            (SECURITY, f"{self.codename}-security"),
        ]

    def index(self) -> dict[str, Package]:
        with self._lock:
            if self._index is None:
                merged: dict[str, Package] = {}
                for base, suite in self.suites():
                    for name, pkg in self._suite(base, suite).items():
                        old = merged.get(name)
                        if old is None or compare(pkg.version, old.version) > 0:
                            merged[name] = pkg
                self._index = merged
                self._providers = providers_of(merged)
            return self._index

    def _suite(self, base: str, suite: str) -> dict[str, Package]:
        url = f"{base}/dists/{suite}/InRelease"
        try:
            release = _verified_release(_get(url), url)
        except OSError as exc:
            raise PackageError(f"cannot read {url}: {exc}") from None
        path = f"main/binary-{self.arch}/Packages.xz"
        digest = _sha256_of(release, path)
        if digest is None:
            raise PackageError(f"{url} lists no {path}")
        cached = cache_dir() / "indexes" / f"{digest}.json"
        if cached.is_file():
            data = json.loads(cached.read_text())
            return {name: Package(**fields) for name, fields in data.items()}
        try:
            raw = _get(f"{base}/dists/{suite}/{path}", timeout=300)
        except OSError as exc:
            raise PackageError(f"cannot read {base}/dists/{suite}/{path}: {exc}") from None
        if hashlib.sha256(raw).hexdigest() != digest:
            raise PackageError(f"{base}/dists/{suite}/{path}: checksum mismatch")
        packages = parse_packages(lzma.decompress(raw).decode("utf-8", "replace"), base)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({n: p.__dict__ for n, p in packages.items()}))
        tmp.replace(cached)
        return packages

    def closure(self, wanted: list[str], installed: dict[str, Installed]) -> Closure:
        index = self.index()
        return closure(wanted, installed, index, self.where, self._providers)

    def fetch(self, packages: list[Package]) -> list[Path]:
        """Each package's .deb in the cache, checked against the index's SHA256."""
        store = cache_dir() / "debs"
        store.mkdir(parents=True, exist_ok=True)
        paths = []
        for pkg in packages:
            path = store / pkg.file
            if not (path.is_file() and _sha256_file(path) == pkg.sha256):
                try:
                    data = _get(f"{pkg.base}/{pkg.filename}", timeout=300)
                except OSError as exc:
                    raise PackageError(f"cannot download {pkg.name}: {exc}") from None
                if hashlib.sha256(data).hexdigest() != pkg.sha256:
                    raise PackageError(f"{pkg.name} {pkg.version}: checksum mismatch")
                # Hosts plan in parallel threads: a name of this thread's own.
                tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
            paths.append(path)
        return paths


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_archives: dict[tuple[str, str], Archive] = {}
_archives_lock = threading.Lock()


def archive(codename: str, arch: str) -> Archive:
    """One Archive per release and architecture per process (hosts share its index)."""
    with _archives_lock:
        key = (codename, arch)
        if key not in _archives:
            _archives[key] = Archive(codename, arch)
        return _archives[key]
