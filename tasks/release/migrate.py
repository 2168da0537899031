"""Where and when a site's migrations run: once per site on its first app host (every app
host with migrate_on = "every"), after the backup, before any switch — split around the switch
as schema.py decides: what the live release can run against before it, the removals after it
(the `contract` phase), once no process of the old release is left (OldGone, in `verify`)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from .. import database
from ..engine import facts as F
from ..engine import topology
from ..engine.facts import Fact, Text
from ..engine.inventory import Host, Inventory, Site
from ..engine.layout import SitePaths, app_of
from ..engine.steps import Action, Context, Plan, Step
from . import schema
from .build import Build
from .commands import FreshMigrate, ReleaseCommand, manage, mark_failed
from .schema import Split
from .target import Latest

RECORD = ".djk-after-switch.json"
# The module's text as `manage.py shell -c` runs it (schema_change.py), then one call.
SCRIPT = Path(__file__).with_name("schema_change.py").read_text()


def runner(call: str, wanted: dict) -> str:
    """Python for `manage.py shell -c`: schema_change.py, then `call(wanted)`."""
    return f"{SCRIPT}\nimport json as _json\n{call}(_json.loads({json.dumps(wanted)!r}))\n"


def migrated_marker(site: Site) -> str:
    """What the migrate step writes on a migrating host once a release migrated the database."""
    return f"{SitePaths.of(site).shared}/.djk-migrated"


def record_path(site: Site) -> str:
    """The after-switch work a migrating host keeps until a deploy's contract phase did it."""
    return f"{SitePaths.of(site).shared}/{RECORD}"


def write_record(path: str, content: dict) -> str:
    """Shell: the after-switch record written atomically (root writes it, after the step's
    Django work succeeded)."""
    q = shlex.quote
    text = json.dumps(content, sort_keys=True)
    return f"printf '%s\\n' {q(text)} > {q(path)}.tmp && mv -f {q(path)}.tmp {q(path)}"


def read_record(text: str | None) -> dict | None:
    try:
        found = json.loads(text) if text else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def migrate_marker(build: Build, inventory: Inventory) -> tuple[str, str]:
    """The migrate step's marker on a migrating host, and what it holds once this build has
    migrated the site's current database."""
    step = migrate_step(build, inventory)
    return step.marker, step.key


def fresh_migrate(build: Build, inventory: Inventory, host: Host) -> FreshMigrate | None:
    """On the host that migrates the site's database and holds it (its SQLite file, or its
    PostgreSQL server): what a prepare needs to migrate it too while it has no tables."""
    site = build.site
    if not (migrates_here(inventory, site, host) and database.held_by(inventory, site, host)):
        return None
    marker, key = migrate_marker(build, inventory)
    return FreshMigrate(marker, key)


def _split_of(ctx: Context, site: str, host: str) -> Split | None:
    """The split the backup step found (on this host first: SQLite on every app host)."""
    found = [(h, s) for h, s in ctx.outcomes_of(Split) if s.site == site]
    mine = [s for h, s in found if h == host]
    either = mine or [s for _, s in found]
    return either[-1] if either else None


# What schema_change.py's lines start with (its SCHEMA_PREFIX: that module imports Django).
SCHEMA_PREFIX = "DJK-SCHEMA "


@dataclass(frozen=True)
class SchemaFindings:
    """What schema_change.py printed: its notes for the report."""

    def read(self, out: str) -> tuple[str, tuple]:
        notes = []
        for line in out.splitlines():
            if SCHEMA_PREFIX not in line:
                continue
            try:
                said = json.loads(line.partition(SCHEMA_PREFIX)[2])
            except ValueError:
                continue
            for key, words in (
                ("adjusted", ""),
                ("relaxed", "NOT NULL dropped before the switch: "),
                ("dropped", "temporary default dropped: "),
                ("restored", "temporary default put back: "),
            ):
                for item in said.get(key, []):
                    notes.append(words + str(item))
            if "lock_wait" in said:
                notes.append(f"lock wait timed out, tried again ({said['lock_wait']})")
        return "; ".join(notes), ()


class Migrate(ReleaseCommand):
    """The migrations the live release can run against, before the switch (schema.Split, from
    the backup step); a refused split marks the release failed and stops the deploy here."""

    def __init__(self, build: Build, inventory: Inventory, host: str = "") -> None:
        super().__init__(
            build,
            f"migrate:{build.site.name}",
            f"migrate {build.site.name}",
            "migrate --noinput",
            migrated_marker(build.site),
            "migrating",
            mark_failed=True,
            # Another database (SQLite -> PostgreSQL, another db host) is migrated anew.
            scope=database.identity(inventory, build.site),
            failure_note=f"migrations of {build.site.name} failed; the database: "
            f"{database.describe(inventory, build.site)}; nothing was switched",
        )
        self.host = host
        self.record = record_path(build.site)

    def facts(self, diff: bool) -> list[Fact]:
        return [*super().facts(diff), Text(self.record)]

    def plan(self, ctx: Context) -> Plan:
        split = _split_of(ctx, self.site.name, self.host)
        if split is None or split.plain or not split.pending:
            plan = super().plan(ctx)
            if split is not None and split.plain and plan.actions:
                plan.actions[0].summary = split.describe()
            return plan
        release = self.target.resolve(ctx.facts)
        release_dir = self.paths.release(release)
        if split.refused:
            mark = Action("marked failed", mark_failed(self.paths, release_dir))
            return Plan([mark], error=split.refused)
        if ctx.facts[Text(self.marker)] == self.key:
            return Plan(reason=f"done for {self.key[:12]}")
        wanted = {
            "after": [m.name for m in split.after],
            "defaults": [d.data() for d in split.defaults],
        }
        code = runner("before", wanted)
        command = self.wrap(
            manage(self.site, self.paths, release_dir, f"shell -c {shlex.quote(code)}"),
            release_dir,
        )
        keep = schema.record(split, release, read_record(ctx.facts[Text(self.record)]))
        if keep["migrations"] or keep["defaults"]:
            command += "\n" + write_record(self.record, keep)
        plan = self.command_plan(ctx, command)
        for action in plan.actions:
            action.summary = split.describe()
            action.findings = SchemaFindings()
        return plan


def migrate_step(build: Build, inventory: Inventory, host: str = "") -> Migrate:
    return Migrate(build, inventory, host)


def migrates_here(inventory: Inventory, site: Site, host: Host) -> bool:
    """Migrations run on the site's first app host (on every app host with "every")."""
    apps = [h.name for h in topology.hosts_with(inventory, site, "app")]
    every = app_of(site).migrate_on == "every"
    return host.name in apps and (every or apps[0] == host.name)


def migrating_host(inventory: Inventory, site: Site) -> Host:
    """The site's first app host: its migrate step runs first (it keeps the after-switch
    record, and migrates a PostgreSQL database); a site without one: its first host."""
    found = topology.hosts_with(inventory, site, "app")
    return found[0] if found else inventory.hosts[site.hosts[0]]


def record_fact(inventory: Inventory, site: Site, host: Host) -> Fact:
    """The after-switch record as a step on `host` reads it: here, or on the migrating host."""
    fact = Text(record_path(site))
    first = migrating_host(inventory, site)
    return fact if migrates_here(inventory, site, host) else F.On(first.name, fact)


def after_switch_due(ctx: Context, site: Site, record: Fact) -> dict | None:
    """What this run or an earlier one left for after the switch: the record's content, or
    what this run's split will leave (check mode, or before the record is read again)."""
    found = read_record(ctx.facts[record])
    if found:
        return found
    split = _split_of(ctx, site.name, "")
    if split is not None and not split.refused and (split.after or split.defaults):
        return schema.record(split, "", None)
    return None


# A process of another release than the live one: its working directory is in it (systemd
# units and manage.py sessions start in `current`, which the kernel resolves to the release).
_OLD_PROCESSES = r"""releases=%(releases)s want=%(want)s
deadline=$(( $(date +%%s) + %(timeout)d ))
while :; do
  left=""
  for p in /proc/[0-9]*; do
    d=$(readlink "$p/cwd" 2>/dev/null) || continue
    case "$d" in "$releases"/*)
      r=${d#"$releases"/}; r=${r%%%%/*}
      [ "$r" = "$want" ] || left="$left ${p#/proc/}"
    esac
  done
  [ -n "$left" ] || exit 0
  if [ "$(date +%%s)" -ge "$deadline" ]; then
    echo "processes of an older release still run after %(timeout)ds:" >&2
    for pid in $left; do
      what=$(tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | cut -c1-120)
      printf '  pid %%s: %%s\n' "$pid" "$what" >&2
    done
    echo %(then)s >&2
    exit 1
  fi
  sleep 1
done"""


class OldGone(Step):
    """After the switch, on each host that runs the site's code: no process of an older
    release left (the old web slot is stopped by the switch; Celery, timer jobs and manage.py
    sessions started in the old `current` are waited for), when the contract phase has work."""

    def __init__(self, inventory: Inventory, site: Site, host: Host, build: Build) -> None:
        self.site, self.paths = site, SitePaths.of(site)
        self.target = Latest(build)
        self.record = record_fact(inventory, site, host)
        self.timeout = max(app_of(site).drain_timeout, 30) + 60
        self.id = f"old-gone:{site.name}"
        self.name = f"old release of {site.name} gone"

    def facts(self, diff: bool) -> list[Fact]:
        return [self.record, *self.target.facts()]

    def plan(self, ctx: Context) -> Plan:
        if after_switch_due(ctx, self.site, self.record) is None:
            return Plan(reason="nothing waits for it")
        want = self.target.resolve(ctx.facts)
        then = (
            f"site {self.site.name}: the after-switch migrations and defaults wait for the next "
            "deploy (fab status shows them)"
        )
        script = _OLD_PROCESSES % {
            "releases": shlex.quote(self.paths.releases),
            "want": shlex.quote(want),
            "timeout": self.timeout,
            "then": shlex.quote(then),
        }
        waiting = f"waiting for the processes of older releases of {self.site.name}"
        return Plan([Action(f"no process of a release before {want}", script, progress=waiting)])


class AfterSwitch(Step):
    """The contract phase on the migrating host: the migrations left for after the switch and
    the temporary defaults dropped, in the live release, then the record removed. A run cut
    before it leaves the record: the next deploy of the site does it (fab status shows it)."""

    def __init__(self, build: Build) -> None:
        self.site, self.paths = build.site, SitePaths.of(build.site)
        self.target = Latest(build)
        self.record = Text(record_path(build.site))
        self.id = f"after-switch:{self.site.name}"
        self.name = f"after the switch {self.site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [self.record, *self.target.facts()]

    def plan(self, ctx: Context) -> Plan:
        due = after_switch_due(ctx, self.site, self.record)
        if due is None:
            return Plan(reason="nothing left for after the switch")
        release = self.target.resolve(ctx.facts)
        release_dir = self.paths.release(release)
        code = runner("after", {"defaults": due.get("defaults", [])})
        q = shlex.quote
        script = (
            "set -e\n"
            f"{manage(self.site, self.paths, release_dir, f'shell -c {q(code)}')}\n"
            f"rm -f {q(self.record.path)}\n"
        )
        of = due.get("release") or "this deploy"  # no record yet: this run's split (--check)
        words = f"after-switch work of {of}: {schema.describe_work(due)}"
        return Plan(
            [
                Action(
                    words, script, progress="migrating after the switch", findings=SchemaFindings()
                )
            ]
        )
