"""manage.py commands in a release: the preparation of a staged release (collectstatic, the
deployment checklist, a first migration of an empty database) and the migrations, each run
once per source and dependency set."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ..engine import agent
from ..engine.facts import Fact, Text
from ..engine.inventory import Site
from ..engine.layout import SitePaths
from ..engine.outcome import Outcome
from ..engine.steps import Context, Findings, MarkedCommand, Plan
from . import asked
from .build import Build
from .outcome import CheckWarnings
from .target import Latest, live_release


def manage(site: Site, paths: SitePaths, release_dir: str, args: str) -> str:
    """A manage.py command in a release, as the site user, with the site's env, never as root."""
    inner = (
        f"set -a; . {shlex.quote(paths.env)}; . ./.djk-release.env; set +a; "
        f"exec ./.venv/bin/python manage.py {args}"
    )
    return (
        f"cd {shlex.quote(release_dir)} && "
        f"runuser -u {shlex.quote(site.user)} -- /bin/sh -c {shlex.quote(inner)}"
    )


def mark_failed(paths: SitePaths, release_dir: str) -> str:
    """Shell: the staged release marked failed (it never goes live), by the host agent."""
    release = release_dir.rsplit("/", 1)[-1]
    change = {"base": paths.base, "release": release, "status": "failed", "only_from": "staged"}
    return agent.run("release-status", change)


class ReleaseCommand(MarkedCommand):
    """A manage.py command run in the wanted release, once per source + dependency set."""

    def __init__(
        self,
        build: Build,
        step_id: str,
        name: str,
        args: str,
        marker: str,
        progress: str,
        mark_failed: bool = False,
        scope: str = "",
        failure_note: str = "",
    ) -> None:
        # `scope`: what else the command's result is for (migrate: the database it migrated).
        key = f"{build.key}|{scope}" if scope else build.key
        super().__init__(step_id, name, "", marker, key, progress)
        self.site, self.args, self.mark_failed = build.site, args, mark_failed
        self.failure_note = failure_note  # said last when it fails (what it needed)
        self.scope = scope
        self.target = Latest(build)
        self.paths = SitePaths.of(build.site)

    def facts(self, diff: bool) -> list[Fact]:
        return super().facts(diff) + self.target.facts()

    def plan(self, ctx: Context) -> Plan:
        release = self.target.resolve(ctx.facts)
        done = ctx.facts[Text(self.marker)]
        same_scope = (done or "").partition("|")[2] == self.scope
        live = release == live_release(ctx.facts, self.paths)
        if done is not None and done != self.key and same_scope and live:
            # The marker names another source (a rollback went back to this one since), but a
            # release only goes live once this command succeeded for it.
            return Plan(reason=f"done for {release} before it went live")
        release_dir = self.paths.release(release)
        command = self.wrap(manage(self.site, self.paths, release_dir, self.args), release_dir)
        plan = self.command_plan(ctx, command)
        for action in plan.actions:
            action.findings = self.findings
        return plan

    findings: Findings | None = None  # what its output says, for the report

    def wrap(self, command: str, release_dir: str) -> str:
        if not self.mark_failed:
            return command
        # A failed migration marks the release failed: it never goes live. Its output streams
        # (progress); on failure the message is its last lines (a traceback's exception) and
        # the note, not the middle of a traceback.
        mark = mark_failed(self.paths, release_dir)
        note = f"echo {shlex.quote(self.failure_note)} >&2\n  " if self.failure_note else ""
        return f"""log=$(mktemp); rc=$(mktemp)
trap 'rm -f "$log" "$rc"' EXIT
( ( {command} ) 2>&1; echo $? > "$rc" ) | tee "$log"
if [ "$(cat "$rc")" != 0 ]; then
  {mark}
  tail -n 3 "$log" >&2
  {note}exit 1
fi"""


_CHECK_LINE = re.compile(r"^(\S+): \(([\w.]+\.([WE])\d+)\) (.*)$")


def check_warnings(site: str, out: str) -> CheckWarnings:
    """The warnings of `manage.py check --deploy` in its output."""
    warnings = []
    for line in out.splitlines():
        match = _CHECK_LINE.match(line.strip())
        if match and match.group(3) == "W":
            warnings.append(
                {"id": match.group(2), "object": match.group(1), "message": match.group(4)}
            )
    return CheckWarnings(site, tuple(warnings))


@dataclass(frozen=True)
class PrepareFindings:
    """What a prepare's output says (steps.Findings): the checklist's warnings, as a note and
    an outcome, and what Django said of the release (asked.DjangoReport)."""

    site: str
    check: bool
    ask: bool

    def read(self, out: str) -> tuple[str, tuple[Outcome, ...]]:
        notes: list[str] = []
        found: list[Outcome] = []
        if self.check:
            warnings = check_warnings(self.site, out)
            if warnings.rows:
                ids = ", ".join(w["id"] for w in warnings.rows)
                notes.append(f"{len(warnings.rows)} warning(s): {ids}")
            found.append(warnings)
        report = asked.from_output(self.site, out) if self.ask else None
        if report is not None:
            found.append(report)
            if report.fresh:
                notes.append("migrated the new database (it had no tables)")
        return "; ".join(notes), tuple(found)


# collectstatic, then Django's deployment checklist, then what the kit asks Django, in one
# process: one Django start instead of three (each start of a release whose venv's bytecode is
# still being compiled costs seconds). Through the project's own manage.py, so whatever it sets
# up before Django does still happens.
_COLLECT = (
    "from django.core.management import call_command\n"
    'call_command("collectstatic", interactive=False)\n'
)
_CHECK = 'call_command("check", deploy=True, fail_level="ERROR")\n'


@dataclass(frozen=True)
class FreshMigrate:
    """On the host that migrates the site's database and holds it: the migrate step's marker
    and the value it holds once this build migrated the database."""

    marker: str
    key: str


class Prepare(ReleaseCommand):
    """`collectstatic`, and on app hosts Django's deployment checklist (`check --deploy`) and
    what the kit asks Django (asked.py: its databases and migrations), on the staged release
    with the site's env, in one process. A checklist error, or any failure, marks the release
    failed and stops the deploy before any switch; the warnings go to the report.

    With `fresh` (the host migrates the database and holds it), Django migrates its default
    database in the same process when it has no tables yet (a first deploy), and the migrate
    step's marker is written: nothing can have used a database with no tables, so nothing is
    backed up first. Django decides, on the database it connects to; any other database is
    migrated in its own phase, after its backup."""

    def __init__(
        self, build: Build, check: bool, ask: bool = False, fresh: FreshMigrate | None = None
    ) -> None:
        paths = SitePaths.of(build.site)
        code = _COLLECT + (_CHECK if check else "") + (asked.call(fresh is not None) if ask else "")
        args = f"shell -c {shlex.quote(code)}" if check or ask else "collectstatic --noinput"
        doing = ", checking the deployment settings" if check else ""
        super().__init__(
            build,
            f"prepare:{build.site.name}",
            f"prepare {build.site.name}",
            args,
            # Another name than before (collectstatic and the checklist were two steps), so a
            # host upgraded from then prepares the release once more.
            f"{paths.base}/.djk-prepared",
            "collecting static files" + doing,
        )
        # Per release directory: the same source staged again under a new id (after a run that
        # stopped before its switch) is prepared again: its static files, what Django says.
        self.key = f"{build.release_id}:{self.key}"
        self.check, self.ask, self.fresh = check, ask, fresh
        if check or ask:
            self.findings = PrepareFindings(build.site.name, check, ask)

    def wrap(self, command: str, release_dir: str) -> str:
        if not (self.check or self.ask):
            return command
        q = shlex.quote
        mark = mark_failed(self.paths, release_dir)
        errors = "'\\([a-z0-9_.]+\\.E[0-9]+\\)'"
        report = q(f"{release_dir}/{asked.FILE}")
        prefix = q(f"^{asked.PREFIX}")
        fresh = ""
        if self.fresh is not None:
            fresh = f"""if printf '%s\\n' "$found" | grep -q '"fresh": true'; then
  printf '%s\\n' {q(self.fresh.key)} > {q(self.fresh.marker)}
fi
"""
        # On failure the release is marked failed (it never goes live) and only the checks'
        # error lines (else the output's end) make the message.
        return f"""out=$( ( {command} ) 2>&1 ) || {{
  rc=$?
  {mark}
  printf '%s\\n' "$out" | grep -E {errors} >&2 || printf '%s\\n' "$out" | tail -n 5 >&2
  exit $rc
}}
printf '%s\\n' "$out"
found=$(printf '%s\\n' "$out" | grep {prefix} | tail -n 1 | cut -c{len(asked.PREFIX) + 1}-)
if [ -n "$found" ]; then
  printf '%s\\n' "$found" > {report}.tmp && mv -f {report}.tmp {report}
fi
{fresh}"""
