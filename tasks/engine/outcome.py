"""Outcomes: typed values a step's plan or action hands back, what a run found or did.

The executor collects them per host without knowing what they mean; the report, the recap, the
audit line, events and notifications read them by class (`HostReport.outcomes_of(ReleaseMove)`),
and a step of a later phase reads those of every host of the run so far
(`Context.outcomes_of`). What a script reads stays the report's JSON: each outcome gives its
share of the host's `extra` table (`data`), merged as tables by key and lists added up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar


class Outcome:
    """Base of every outcome; a subclass is a frozen dataclass."""

    def data(self) -> dict[str, Any]:
        """Its share of the host's `extra` in the JSON report (nothing by default)."""
        return {}

    def recap(self) -> tuple[str, str] | None:
        """(key, text) for the host's recap line, texts sorted by key, the last of a key kept
        (e.g. ("shop", "shop=20261207T...")); None: not in the recap."""
        return None


K = TypeVar("K", bound=Outcome)


@dataclass(frozen=True)
class SiteRows(Outcome):
    """Rows a step found of one site (a table, warnings): `{key: {site: [rows]}}` in the
    host's `extra`. A subclass names its key."""

    key: ClassVar[str]
    site: str
    rows: tuple[dict[str, Any], ...]

    def data(self) -> dict[str, Any]:
        return {self.key: {self.site: list(self.rows)}}


def of_kind(outcomes: Iterable[Outcome], kind: type[K]) -> list[K]:
    return [o for o in outcomes if isinstance(o, kind)]


def merged(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    """The outcomes' data as one table: tables merge by key, lists add up."""
    into: dict[str, Any] = {}
    for outcome in outcomes:
        for key, values in outcome.data().items():
            if isinstance(values, list):
                into.setdefault(key, []).extend(values)
            elif isinstance(values, dict):
                into.setdefault(key, {}).update(values)
            else:
                into[key] = values
    return into
