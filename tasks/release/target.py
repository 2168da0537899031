"""Which release a site switches to: a rule of the run (the deploy's latest, one named, the
previous good one), resolved in the plan against the facts read on the host."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ..engine.facts import Fact, Facts, Stat, Text
from ..engine.inventory import Site
from ..engine.layout import SitePaths
from . import store
from .build import Build


def live_release(facts: Facts, paths: SitePaths) -> str | None:
    """The release `current` points to on this host, or None."""
    current = facts[Stat(paths.current)]
    return current.target.removeprefix("releases/") if current and current.target else None


class Target(Protocol):
    """The release a site switches to, from the facts (LookupError: there is none)."""

    def facts(self) -> list[Fact]: ...

    def resolve(self, facts: Facts) -> str: ...


@dataclass(frozen=True)
class Latest:
    """A deploy's release: the live one when it has this source and dependency set (nothing to
    stage), else the deploy's new release id."""

    build: Build

    @property
    def paths(self) -> SitePaths:
        return SitePaths.of(self.build.site)

    def facts(self) -> list[Fact]:
        current = self.paths.current
        return [Stat(current), Text(f"{current}/.djk-tree"), Stat(f"{current}/.venv")]

    def resolve(self, facts: Facts) -> str:
        live = live_release(facts, self.paths)
        venv = facts[Stat(f"{self.paths.current}/.venv")]
        live_deps = venv.target.rsplit("/", 1)[-1] if venv and venv.target else None
        live_tree = facts[Text(f"{self.paths.current}/.djk-tree")]
        if live and live_tree == self.build.tree and live_deps == self.build.deps:
            return live
        return self.build.release_id


@dataclass(frozen=True)
class Named:
    """A release named up front (the one a failed rolling deploy goes back to)."""

    release: str

    def facts(self) -> list[Fact]:
        return []

    def resolve(self, facts: Facts) -> str:
        return self.release


@dataclass(frozen=True)
class PreviousGood:
    """`fab rollback`: the newest good release older than the live one, or the one named."""

    site: Site
    to: str | None = None

    def facts(self) -> list[Fact]:
        paths = SitePaths.of(self.site)
        return [Stat(paths.current), store.Releases(paths.base)]

    def resolve(self, facts: Facts) -> str:
        paths = SitePaths.of(self.site)
        releases = facts[store.Releases(paths.base)]
        target, why = store.rollback_target(releases, live_release(facts, paths), self.to)
        if target is None:
            raise LookupError(f"{self.site.name}: {why}; nothing changed")
        return target.id


class Rule(StrEnum):
    """How a run picks each site's release."""

    LATEST = "latest"  # the deploy's build (or the live release when it has the same one)
    NAMED = "named"  # a release id per site, known up front (a failed rolling deploy's way back)
    PREVIOUS = "previous"  # the newest good release before the live one, or `to`


@dataclass(frozen=True)
class Job:
    """What a run asks of the releases of the sites on a host: the builds it ships, the rule
    that picks the release each site switches to, and what the release switched away from
    becomes. A typed value: it goes into the plan, the target is resolved against the facts."""

    rule: Rule
    builds: Mapping[str, Build] = field(default_factory=dict)  # per site name (a deploy's)
    named: Mapping[str, str] = field(default_factory=dict)  # per site name (Rule.NAMED)
    to: str | None = None  # Rule.PREVIOUS: the release asked for (--to)
    mark_old: str = "previous"

    @classmethod
    def deploy(cls, builds: Mapping[str, Build]) -> Job:
        return cls(Rule.LATEST, builds=builds)

    @classmethod
    def rollback(cls, to: str | None = None) -> Job:
        return cls(Rule.PREVIOUS, to=to, mark_old="rolled-back")

    @classmethod
    def back_to(cls, named: Mapping[str, str], builds: Mapping[str, Build]) -> Job:
        """A failed rolling deploy's way back: each site to the release it had."""
        return cls(Rule.NAMED, builds=builds, named=named, mark_old="rolled-back")

    def target(self, site: Site) -> Target:
        """The site's target (KeyError: the run has no release for the site)."""
        if self.rule is Rule.LATEST:
            return Latest(self.builds[site.name])
        if self.rule is Rule.NAMED:
            return Named(self.named[site.name])
        return PreviousGood(site, self.to)
