"""What a run found or did to the releases of a site on a host, as typed outcomes
(engine/outcome.py): the release move, the checklist's warnings, the table of releases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.outcome import Outcome, SiteRows


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


class CheckWarnings(SiteRows):
    """The warnings of Django's deployment checklist (`manage.py check --deploy`) for a site."""

    key = "check_deploy"


class ReleaseTable(SiteRows):
    """`fab releases`: the releases a host keeps for a site, oldest first."""

    key = "release_table"
