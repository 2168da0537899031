"""A site's releases on this host: the one writer of each release's `.djk-status` and of the
site's `current` link (the switch, verify and Celery's restart on a worker host use these).

A release directory without `.djk-status` is staged: the stage step makes the directory, the
agent marks what becomes of it (live, previous, rolled-back, failed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .system import point, read_link

STAGED = "staged"


def status_file(base: Path, release: str) -> Path:
    return base / "releases" / release / ".djk-status"


def status_of(base: Path, release: str) -> str | None:
    """The release's status; None when it has no directory."""
    if not (base / "releases" / release).is_dir():
        return None
    try:
        return status_file(base, release).read_text().strip() or STAGED
    except FileNotFoundError:
        return STAGED


def mark(base: Path, release: str, status: str) -> None:
    """Write a release's status whole (a new file renamed over the old one)."""
    if not release or not (base / "releases" / release).is_dir():
        return
    target = status_file(base, release)
    tmp = target.with_name(f".djk-status.{os.getpid()}")
    tmp.write_text(status + "\n")
    os.replace(tmp, target)


def live(base: Path) -> str:
    """The release `current` points to ("" before the first switch)."""
    link = read_link(base / "current")
    return link.removeprefix("releases/") if link else ""


def point_current(base: Path, release: str) -> str:
    """`current` to `release`, renamed over atomically; returns the release it pointed to."""
    old = live(base)
    point(base / "current", f"releases/{release}")
    return old


# -- commands (JSON as the argument: engine/agent.py) -----------------------------------------


def set_status(spec: dict) -> int:
    """`release-status {"base", "release", "status", "only_from"?}`: mark a release; with
    only_from, only a release that has that status now (a failed migration marks a staged
    release failed, never a live one)."""
    base = Path(spec["base"])
    now = status_of(base, spec["release"])
    if now is None:
        print(f"no release {spec['release']} under {base}", file=sys.stderr)
        return 1
    if spec.get("only_from") and now != spec["only_from"]:
        return 0
    mark(base, spec["release"], spec["status"])
    return 0


def make_current(spec: dict) -> int:
    """`point-current {"base", "release"}`: on a host where no slot switch moves `current`
    (a worker host without the app): `current` to the release, marked live; the release it
    pointed to, marked previous."""
    base, release = Path(spec["base"]), spec["release"]
    if status_of(base, release) is None:
        print(f"no release {release} under {base}", file=sys.stderr)
        return 1
    old = point_current(base, release)
    mark(base, release, "live")
    if old and old != release:
        mark(base, old, "previous")
    return 0
