"""Lock files as the pinned requirements a site's venv is built from.

A site's `requirements` may name a `requirements*.txt`, or a lock file beside the project's
`pyproject.toml`: `uv.lock` (exported with uv, a dependency of the kit, from the lock alone:
`--frozen`, no resolution, no network) or `poetry.lock` (poetry 2's lock format, read here: the
packages of the `main` group with their markers). Both are read from the files being shipped,
so the dependency set follows the lock at the deployed ref.
"""

from __future__ import annotations

import subprocess
import tempfile
import tomllib
from pathlib import Path, PurePosixPath

from .source import SourceError

LOCKS = ("uv.lock", "poetry.lock")


def is_lock(rel: str) -> bool:
    return PurePosixPath(rel).name in LOCKS


def pinned(files: dict[str, bytes], rel: str) -> bytes:
    """Requirements text for the file `rel` of the shipped `files` (a lock is exported; a
    pyproject.toml stands for the lock beside it)."""
    if PurePosixPath(rel).name == "pyproject.toml":
        beside = [str(PurePosixPath(rel).parent / lock).removeprefix("./") for lock in LOCKS]
        found = next((lock for lock in beside if lock in files), None)
        if found is None:
            raise SourceError(f"{rel}: no uv.lock or poetry.lock beside it to install from")
        rel = found
    name = PurePosixPath(rel).name
    if name not in LOCKS:
        return files[rel]
    pyproject = str(PurePosixPath(rel).parent / "pyproject.toml").removeprefix("./")
    if pyproject not in files:
        raise SourceError(f"{rel} needs the pyproject.toml beside it (not among the shipped files)")
    if name == "uv.lock":
        return _uv(files[pyproject], files[rel], rel)
    return _poetry(files[rel], rel)


def uv_bin() -> str:
    from uv import find_uv_bin  # the kit's dependency: a uv binary in the same venv

    return find_uv_bin()


def _uv(pyproject: bytes, lock: bytes, rel: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="djk-lock-") as tmp:
        (Path(tmp) / "pyproject.toml").write_bytes(pyproject)
        (Path(tmp) / "uv.lock").write_bytes(lock)
        done = subprocess.run(
            [
                uv_bin(),
                "export",
                "--frozen",
                "--no-hashes",
                "--no-dev",
                "--no-emit-project",
                "--no-annotate",
                "--no-header",
                "--format",
                "requirements-txt",
                "--offline",
                "--directory",
                tmp,
            ],
            capture_output=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "UV_NO_CONFIG": "1", "HOME": tmp},
        )
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise SourceError(f"{rel}: uv export failed: {err[-1] if err else done.returncode}")
    return done.stdout


def _poetry(lock: bytes, rel: str) -> bytes:
    try:
        data = tomllib.loads(lock.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{rel}: not a poetry.lock ({exc})") from None
    lines = []
    for package in data.get("package", []):
        groups = package.get("groups")
        if groups is None:
            raise SourceError(
                f"{rel}: written by poetry before 2.0 (no groups): export it with "
                "`poetry export -o requirements.txt` and name that file"
            )
        if "main" not in groups:
            continue
        source = package.get("source", {})
        if source.get("type") not in (None, "legacy"):
            raise SourceError(
                f"{rel}: {package['name']} comes from a {source.get('type')} source: "
                "only index packages can be pinned"
            )
        markers = package.get("markers", "")
        if isinstance(markers, dict):  # per group
            markers = markers.get("main", "")
        line = f"{package['name']}=={package['version']}"
        lines.append(f"{line} ; {markers}" if markers else line)
    return "".join(f"{line}\n" for line in sorted(lines)).encode()
