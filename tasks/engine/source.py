"""What a release ships of a site's source, decided on the control machine.

From a git repository: the files git tracks at a ref (`--ref`, default HEAD), read from git
itself — never the working tree, so an uncommitted change cannot slip in. Uncommitted changes to
tracked files are refused unless `--allow-dirty` is given; then the tracked files are shipped as
they are on disk and the revision (and so the release id) ends in `-dirty`. Untracked files
stay out either way.

Without git: the directory's files. Both ways, what `NEVER` names (a virtualenv, node_modules,
local databases, media uploads, caches, env files) and what `.djkignore` in the source lists
is left out.

A site's `build` command runs in a clean copy of exactly those files (never in the working
tree), and the paths it lists in `build_outputs` are shipped from there even though git ignores
them. A failing build, a bad ref or a refused dirty tree raises SourceError before any host is
touched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

# Matched against each path component: never shipped, whatever git or .djkignore say.
NEVER = (
    ".git",
    "__pycache__",
    "*.pyc",
    ".venv",
    "venv",
    "node_modules",
    ".env",
    "*.env",
    "db.sqlite3",
    "*.sqlite3",
    "*.sqlite3-journal",
    "media",
    "staticfiles",
)
IGNORE_FILE = ".djkignore"
BUILD_TIMEOUT = 1800


class SourceError(Exception):
    """A source that cannot be shipped; the message is one line."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, "/"-separated
    data: bytes  # a symlink's target for links
    mode: int  # 0o755, 0o644, or 0 for a symlink


@dataclass(frozen=True)
class Snapshot:
    """The files of one release's source, their content hash and the revision they came from."""

    files: tuple[SourceFile, ...]
    revision: str
    tree: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tree", _hash(self.files))

    def archive(self) -> bytes:
        """A deterministic gzip tar, built once per content for all hosts of a run."""
        with _lock:
            if self.tree not in _archives:
                _archives[self.tree] = _archive(self.files)
            return _archives[self.tree]

    def paths(self) -> list[str]:
        return [f.path for f in self.files]


_archives: dict[str, bytes] = {}
_lock = threading.Lock()


def _hash(files: tuple[SourceFile, ...]) -> str:
    # The same formula as before shipping from git: a non-git tree keeps its hash.
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.path.encode() + b"\0")
        bits = 0o120000 if f.mode == 0 else f.mode & 0o111
        digest.update(oct(bits).encode() + b"\0")
        digest.update(hashlib.sha256(f.data).digest())
    return digest.hexdigest()


def _archive(files: tuple[SourceFile, ...]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for f in files:
            info = tarfile.TarInfo(f.path)
            info.mtime = 0
            if f.mode == 0:
                info.type, info.linkname = tarfile.SYMTYPE, f.data.decode()
                tar.addfile(info)
                continue
            info.size, info.mode = len(f.data), f.mode
            tar.addfile(info, io.BytesIO(f.data))
    return buffer.getvalue()


# -- choosing the files ----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """How a deploy asks for a site's source."""

    source: Path
    ref: str | None = None
    allow_dirty: bool = False
    build: str | None = None
    outputs: tuple[str, ...] = ()
    # The deploy's own files when they sit inside the source (hosts.toml, fabfile.py, secrets/):
    # never shipped, and an edit to them is no uncommitted change of the app.
    skip: tuple[str, ...] = ()


def snapshot(request: Request, memo: dict[Request, Snapshot] | None = None) -> Snapshot:
    """The files to ship for a request; `memo` shares them between the sites of one run that
    ask the same (a build runs once)."""
    if memo is not None and request in memo:
        return memo[request]
    found = _take(request)
    if memo is not None:
        memo[request] = found
    return found


def _take(request: Request) -> Snapshot:
    source = request.source
    ignore = _ignore_patterns(source)
    skip = request.skip
    repo = _git_top(source)
    if repo is None:
        if request.ref is not None:
            raise SourceError(f"--ref {request.ref}: {source} is not in a git repository")
        files = tuple(f for f in _walk(source, ignore) if not _skipped(f.path, skip))
        revision = ""
    else:
        files, revision = _from_git(repo, source, request, ignore)
        files = tuple(f for f in files if not _skipped(f.path, skip))
    if request.build:
        files = files + _built(request, files)
        files = tuple({f.path: f for f in files}[p] for p in sorted({f.path for f in files}))
    snap = Snapshot(files, revision)
    if not revision:
        object.__setattr__(snap, "revision", snap.tree[:8])
    return snap


def _skipped(path: str, skip: tuple[str, ...]) -> bool:
    return any(path == s or path.startswith(s + "/") for s in skip)


def _ignore_patterns(source: Path) -> tuple[str, ...]:
    path = source / IGNORE_FILE
    if not path.is_file():
        return ()
    lines = path.read_text(errors="replace").splitlines()
    return tuple(s.strip().strip("/") for s in lines if s.strip() and not s.startswith("#"))


def shipped(path: str, ignore: tuple[str, ...]) -> bool:
    """Whether a relative path is shipped: none of its components matches NEVER or a
    .djkignore pattern, and the whole path matches no .djkignore pattern."""
    parts = path.split("/")
    for part in parts:
        if any(fnmatch.fnmatchcase(part, p) for p in NEVER + ignore):
            return False
    return not any(fnmatch.fnmatchcase(path, p) for p in ignore)


def _walk(root: Path, ignore: tuple[str, ...]) -> tuple[SourceFile, ...]:
    found: list[SourceFile] = []
    for directory, dirs, names in os.walk(root):
        rel_dir = Path(directory).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = sorted(d for d in dirs if shipped(prefix + d, ignore))
        for name in sorted(names):
            rel = prefix + name
            if shipped(rel, ignore):
                found.append(_read(Path(directory, name), rel))
    return tuple(sorted(found, key=lambda f: f.path))


def _read(path: Path, rel: str) -> SourceFile:
    if path.is_symlink():
        return SourceFile(rel, os.readlink(path).encode(), 0)
    mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
    return SourceFile(rel, path.read_bytes(), mode)


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120)
    if check and done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise SourceError(f"git {args[0]}: {err[-1] if err else f'exit {done.returncode}'}")
    return done


def _git_top(source: Path) -> Path | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def _from_git(
    repo: Path, source: Path, request: Request, ignore: tuple[str, ...]
) -> tuple[tuple[SourceFile, ...], str]:
    prefix = source.resolve().relative_to(repo.resolve()).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    ref = request.ref or "HEAD"
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if commit.returncode != 0:
        what = "has no commit yet" if ref == "HEAD" else "is not a commit"
        raise SourceError(f"{'--ref ' + ref if request.ref else 'HEAD'} in {repo} {what}")
    sha = commit.stdout.decode().strip()
    short = _git(repo, "rev-parse", "--short=8", sha).stdout.decode().strip()
    dirty = False
    if request.ref is None:
        status = _git(repo, "status", "--porcelain", "--untracked-files=no", "--", prefix or ".")
        changed = [
            line
            for line in status.stdout.decode(errors="replace").splitlines()
            if not _skipped(line[3:].strip().strip('"')[len(prefix) :], request.skip)
        ]
        dirty = bool(changed)
        if dirty and not request.allow_dirty:
            raise SourceError(
                f"{source} has uncommitted changes ({len(changed)} file(s), e.g. "
                f"{changed[0][3:].strip()}): commit them, or deploy them with --allow-dirty"
            )
    listing = _git(repo, "ls-tree", "-r", "-z", "--full-tree", sha, "--", prefix or ".").stdout
    entries = []
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, kind, blob = meta.decode().split()
        rel = path.decode(errors="surrogateescape")[len(prefix) :]
        if kind == "blob" and shipped(rel, ignore):  # submodules ("commit") are not shipped
            entries.append((rel, mode, blob))
    if dirty:
        files = []
        for rel, _, _ in entries:
            on_disk = source / rel
            if on_disk.exists() or on_disk.is_symlink():  # deleted ones stay out
                files.append(_read(on_disk, rel))
        return tuple(sorted(files, key=lambda f: f.path)), f"{short}-dirty"
    blobs = _cat_blobs(repo, [blob for _, _, blob in entries])
    modes = {"120000": 0, "100755": 0o755}  # a symlink, an executable; else 0o644
    files = [SourceFile(rel, blobs[blob], modes.get(mode, 0o644)) for rel, mode, blob in entries]
    return tuple(sorted(files, key=lambda f: f.path)), short


def _cat_blobs(repo: Path, blobs: list[str]) -> dict[str, bytes]:
    """Every blob's content in one `git cat-file --batch`."""
    if not blobs:
        return {}
    unique = list(dict.fromkeys(blobs))
    done = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "--batch"],
        input="".join(b + "\n" for b in unique).encode(),
        capture_output=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise SourceError(f"git cat-file: {done.stderr.decode(errors='replace').strip()}")
    out, pos, found = done.stdout, 0, {}
    for blob in unique:
        end = out.index(b"\n", pos)
        size = int(out[pos:end].split()[2])
        found[blob] = out[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1
    return found


def _built(request: Request, files: tuple[SourceFile, ...]) -> tuple[SourceFile, ...]:
    """Run the build in a clean copy of `files`; the listed outputs as they come out of it."""
    with tempfile.TemporaryDirectory(prefix="djk-build-") as tmp:
        work = Path(tmp) / "src"
        work.mkdir()
        for f in files:
            target = work / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.mode == 0:
                os.symlink(f.data.decode(), target)
            else:
                target.write_bytes(f.data)
                target.chmod(f.mode)
        try:
            done = subprocess.run(
                ["/bin/sh", "-c", request.build or ""],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise SourceError(f"build did not finish within {BUILD_TIMEOUT}s") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()
            last = tail[-1][:300] if tail else "no output"
            raise SourceError(f"build failed (exit {done.returncode}): {last}")
        out: list[SourceFile] = []
        for listed in request.outputs:
            path = work / listed
            if not path.exists():
                raise SourceError(f"build_outputs: {listed} was not made by the build")
            if path.is_dir() and not path.is_symlink():
                for directory, dirs, names in os.walk(path):
                    dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__"))
                    for name in sorted(names):
                        full = Path(directory, name)
                        out.append(_read(full, full.relative_to(work).as_posix()))
            else:
                out.append(_read(path, Path(listed).as_posix()))
        shutil.rmtree(work, ignore_errors=True)
        return tuple(out)
