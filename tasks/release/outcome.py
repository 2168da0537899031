"""What a run found or did to the releases of a site on a host, as typed outcomes
(engine/outcome.py): the release move, the checklist's warnings, the table of releases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.outcome import Outcome


@dataclass(frozen=True)
class ReleaseMove(Outcome):
    """A site's release on a host: live before the run, and the one it serves after it (as
    planned: a failed run keeps `before`, see plan.ReleaseAudit)."""

    site: str
    before: str | None
    after: str

    def data(self) -> dict[str, Any]:
        return {"releases": {self.site: self.after}}

    def recap(self) -> tuple[str, str]:
        return self.site, f"{self.site}={self.after}"


@dataclass(frozen=True)
class CheckWarnings(Outcome):
    """The warnings of Django's deployment checklist (`manage.py check --deploy`) for a site."""

    site: str
    warnings: tuple[dict[str, str], ...]

    def data(self) -> dict[str, Any]:
        return {"check_deploy": {self.site: list(self.warnings)}}


@dataclass(frozen=True)
class ReleaseTable(Outcome):
    """`fab releases`: the releases a host keeps for a site, oldest first."""

    site: str
    rows: tuple[dict[str, Any], ...]

    def data(self) -> dict[str, Any]:
        return {"release_table": {self.site: list(self.rows)}}
