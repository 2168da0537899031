"""A local directory mirrored onto the host, identified by a content hash of the whole tree."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shlex
import tarfile
import threading
from functools import cached_property
from pathlib import Path

from . import facts as F
from .facts import Fact
from .steps import Action, Context, Plan, Step

EXCLUDE = ("__pycache__", "*.pyc", ".git", ".env", "*.env", "db.sqlite3", "staticfiles", ".venv")
MARKER = ".djk-tree"


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


def tree_archive(root: Path, exclude: tuple[str, ...] = EXCLUDE) -> bytes:
    """A deterministic gzip tar of the tree: same tree, same bytes; built once per content for
    all the hosts of a run."""
    key = (root, tree_hash(root, exclude))
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


class Tree(Step):
    """Upload a source tree into dest (replaced whole) when its content hash differs."""

    def __init__(
        self, root: Path, dest: str, group: str, notify: tuple[str, ...] = (), name: str = ""
    ):
        self.root, self.dest, self.group, self.notify = root, dest, group, notify
        self.id = f"tree:{dest}"
        self.name = name or f"source {dest}"

    @cached_property
    def digest(self) -> str:
        return tree_hash(self.root)

    def facts(self, diff: bool) -> list[Fact]:
        return [F.file_text(f"{self.dest}/{MARKER}")]

    def plan(self, ctx: Context) -> Plan:
        current = ctx.facts[f"text:{self.dest}/{MARKER}"]
        if current == self.digest:
            return Plan(reason=f"source {self.digest[:12]} in place")
        dest = shlex.quote(self.dest)
        new, old = shlex.quote(self.dest + ".djk-new"), shlex.quote(self.dest + ".djk-old")
        script = f"""set -e
rm -rf {new} {old}
install -d -m 750 -o root -g {shlex.quote(self.group)} {new}
tar -xzf - -C {new} --no-same-owner --no-same-permissions
chown -R root:{shlex.quote(self.group)} {new}
chmod -R u=rwX,g=rX,o= {new}
printf '%s\\n' {self.digest} > {new}/{MARKER}
if [ -d {dest} ]; then mv {dest} {old}; fi
mv {new} {dest}
rm -rf {old}
"""
        was = current[:12] if current else "none"
        return Plan(
            [
                Action(
                    f"upload source {was} -> {self.digest[:12]}",
                    script,
                    stdin=lambda: tree_archive(self.root),
                    notify=self.notify,
                )
            ]
        )
