"""The settings layer (djk_settings.py beside it): its text, written into each release at its
root by the stage step, and what names it. Its digest is part of a build's tree: a kit whose
layer changed stages a new release. A release staged before the kit wrote a layer gets it when
a site switches back to it (switch.LayerIn)."""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..engine.facts import Fact

MODULE = "djk_settings"
FILE = f"{MODULE}.py"
TEXT = (Path(__file__).with_name(FILE)).read_text()
DIGEST = hashlib.sha256(TEXT.encode()).hexdigest()


def write(path: str) -> str:
    """Shell: the layer's text into `path`."""
    return f"printf '%s' {shlex.quote(TEXT)} > {shlex.quote(path)}"


def tree(source_tree: str) -> str:
    """A release's tree: the shipped source's and the layer's, in one hash."""
    return hashlib.sha1(f"{source_tree}\n{DIGEST}".encode()).hexdigest()


@dataclass(frozen=True)
class Layered(Fact[frozenset]):
    """The releases of a site (ids) that hold the settings layer."""

    releases: str  # the site's releases directory
    default: ClassVar[Any] = frozenset()

    def command(self) -> str:
        where = shlex.quote(self.releases)
        return (
            f'for f in {where}/*/{FILE}; do [ -f "$f" ] && basename "$(dirname "$f")"; done; true'
        )

    def parse(self, rc: int, out: str) -> frozenset[str]:
        return frozenset(line.strip() for line in out.splitlines() if line.strip())

    def from_data(self, raw: Any) -> frozenset[str]:
        return frozenset(raw)
