"""Releases: ids, manifests, and the pure decisions about them (rollback target, cleanup).

On a host a site keeps `releases/<id>/` (source, `.venv` link, `.djk-release.json` manifest,
`.djk-status`), `shared/`, and a `current` link renamed atomically over the old one.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.facts import Fact

STATUSES = ("staged", "live", "previous", "failed", "rolled-back")
GOOD = ("live", "previous", "rolled-back")
SEPARATOR = "\x1edjk-release "


@dataclass(frozen=True)
class Release:
    id: str
    status: str
    revision: str = ""
    tree: str = ""
    deps: str = ""
    deployed_by: str = ""
    deployed_at: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def new_release_id(revision: str, now: float | None = None) -> str:
    """Generated once per deploy on the control machine: the same on every host."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{revision}"


def deployer() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def manifest(release_id: str, revision: str, tree: str, deps: str) -> str:
    return json.dumps(
        {
            "id": release_id,
            "revision": revision,
            "tree": tree,
            "deps": deps,
            "deployed_by": deployer(),
            "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        sort_keys=True,
    )


def list_command(base: str) -> str:
    """Prints every release's manifest and status, separated by markers."""
    return (
        f"cd {base}/releases 2>/dev/null || exit 0; for d in */; do d=${{d%/}}; "
        f"case $d in *.djk-new) continue;; esac; "
        f'printf \'{SEPARATOR}%s\\n\' "$d"; cat "$d/.djk-release.json" 2>/dev/null; echo; '
        f'cat "$d/.djk-status" 2>/dev/null || echo staged; done'
    )


def parse_releases(rc: int, out: str) -> list[Release]:
    releases = []
    for chunk in out.split(SEPARATOR)[1:]:
        lines = chunk.split("\n")
        release_id = lines[0].strip()
        data: dict = {}
        for line in lines[1:]:
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                except ValueError:
                    data = {}
        status = next((s.strip() for s in reversed(lines[1:]) if s.strip()), "unknown")
        if status.startswith("{"):
            status = "unknown"
        releases.append(
            Release(
                id=release_id,
                status=status,
                revision=str(data.get("revision", "")),
                tree=str(data.get("tree", "")),
                deps=str(data.get("deps", "")),
                deployed_by=str(data.get("deployed_by", "")),
                deployed_at=str(data.get("deployed_at", "")),
            )
        )
    return sorted(releases, key=lambda r: r.id)


@dataclass(frozen=True)
class Releases(Fact[list]):
    """Every release of a site on the host, with its manifest and status, oldest first."""

    base: str
    default: ClassVar[Any] = []

    def from_data(self, raw: Any) -> list[Release]:
        return [Release(**r) for r in raw]

    def command(self) -> str:
        return list_command(self.base)

    def parse(self, rc: int, out: str) -> list[Release]:
        return parse_releases(rc, out)


def rollback_target(
    releases: list[Release], live: str | None, to: str | None = None
) -> tuple[Release | None, str]:
    """The release to go back to, or None and why not."""
    by_id = {r.id: r for r in releases}
    if to is not None:
        if to not in by_id:
            return None, f"release {to} does not exist on this host"
        if to == live:
            return None, f"release {to} is already live"
        if by_id[to].status in ("failed", "staged"):
            return None, f"release {to} is {by_id[to].status}, not a good release"
        return by_id[to], ""
    older = [r for r in releases if (live is None or r.id < live) and r.status in GOOD]
    if not older:
        return None, "no earlier good release to roll back to"
    return older[-1], ""


def cleanup(releases: list[Release], live: str, keep: int) -> list[str]:
    """Release ids to delete: never the live one nor the newest good one besides it;
    good releases are kept up to `keep` in all, failed ones do not count (the newest is kept
    for inspection)."""
    good = [r for r in releases if r.status in GOOD and r.id != live]
    failed = [r for r in releases if r.status in ("failed", "staged") and r.id != live]
    keep_good = {r.id for r in good[-max(keep - 1, 1) :]}
    keep_failed = {r.id for r in failed[-1:]}
    return [
        r.id
        for r in releases
        if r.id != live
        and r.id not in keep_good
        and r.id not in keep_failed
        and r.status != "unknown"
    ]
