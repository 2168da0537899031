"""A local source tree: its files, its content hash, and the archive a release is staged from."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

EXCLUDE = ("__pycache__", "*.pyc", ".git", ".env", "*.env", "db.sqlite3", "staticfiles", ".venv")


def tree_files(root: Path, exclude: tuple[str, ...] = EXCLUDE) -> list[Path]:
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _excluded(d, exclude))
        for name in sorted(files):
            if not _excluded(name, exclude):
                found.append(Path(directory, name).relative_to(root))
    return found


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in exclude)


def tree_hash(root: Path, exclude: tuple[str, ...] = EXCLUDE) -> str:
    digest = hashlib.sha256()
    for rel in tree_files(root, exclude):
        path = root / rel
        digest.update(str(rel).encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o111).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


_archives: dict[tuple[Path, str], bytes] = {}
_archive_lock = threading.Lock()


def tree_archive(root: Path, digest: str, exclude: tuple[str, ...] = EXCLUDE) -> bytes:
    """A deterministic gzip tar of the tree whose tree_hash is `digest`: built once per content
    for all the hosts of a run."""
    key = (root, digest)
    with _archive_lock:
        if key not in _archives:
            _archives[key] = _build_archive(root, exclude)
        return _archives[key]


def _build_archive(root: Path, exclude: tuple[str, ...]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for rel in tree_files(root, exclude):
            data = (root / rel).read_bytes()
            info = tarfile.TarInfo(str(rel))
            info.size = len(data)
            info.mode = 0o755 if (root / rel).stat().st_mode & 0o111 else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
