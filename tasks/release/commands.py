"""manage.py commands in a release: the preparation of a staged release (collectstatic, the
deployment checklist, a first migration of an empty database) and the migrations, each run
once per source and dependency set."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace

from ..database import NO_TABLE, Applied
from ..engine import agent
from ..engine.facts import Fact, Text
from ..engine.inventory import Site
from ..engine.layout import SitePaths
from ..engine.steps import Context, Findings, MarkedCommand, Plan
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
        args = self.arguments(ctx)
        command = self.wrap(manage(self.site, self.paths, release_dir, args), release_dir)
        plan = self.command_plan(ctx, command)
        for action in plan.actions:
            action.findings = self.findings
        return plan

    findings: Findings | None = None  # what its output says, for the report

    def arguments(self, ctx: Context) -> str:
        """What manage.py is called with."""
        return self.args

    def wrap(self, command: str, release_dir: str) -> str:
        if not self.mark_failed:
            return command
        # A failed migration marks the release failed: it never goes live. Its output streams
        # (progress); on failure the message is its last lines (a traceback's exception) and
        # the note, not the middle of a traceback.
        release = release_dir.rsplit("/", 1)[-1]
        mark = agent.run(
            "release-status",
            {
                "base": self.paths.base,
                "release": release,
                "status": "failed",
                "only_from": "staged",
            },
        )
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


@dataclass(frozen=True)
class CheckFindings:
    """The warnings of `manage.py check --deploy` as a note and an outcome (steps.Findings)."""

    site: str

    def read(self, out: str) -> tuple[str, CheckWarnings]:
        warnings = []
        for line in out.splitlines():
            match = _CHECK_LINE.match(line.strip())
            if match and match.group(3) == "W":
                warnings.append(
                    {"id": match.group(2), "object": match.group(1), "message": match.group(4)}
                )
        note = f"{len(warnings)} warning(s): {', '.join(w['id'] for w in warnings)}"
        return (note if warnings else ""), CheckWarnings(self.site, tuple(warnings))


# collectstatic, then Django's deployment checklist, in one process: one Django start instead
# of two (each start of a release whose venv's bytecode is still being compiled costs seconds).
# Through the project's own manage.py, so whatever it sets up before Django does still happens.
_COLLECT = (
    "from django.core.management import call_command\n"
    'call_command("collectstatic", interactive=False)\n'
)
_CHECK = 'call_command("check", deploy=True, fail_level="ERROR")\n'
_PREPARE = _COLLECT + _CHECK
_MIGRATE = 'call_command("migrate", interactive=False)\n'


@dataclass(frozen=True)
class FreshMigrate:
    """What a prepare needs to migrate too, on the host that migrates the site's database and
    holds it: the database's Applied fact, and the migrate step's marker and its value."""

    applied: Applied
    marker: str
    key: str


class Prepare(ReleaseCommand):
    """`collectstatic` and, on app hosts, Django's deployment checklist (`check --deploy`) on
    the staged release with the site's env: a checklist error stops the deploy before any
    switch, its warnings go to the report.

    With `fresh` (the host migrates the database and holds it), a database with no tables yet
    (a first deploy) is migrated in the same process, after the checklist, and the migrate
    step's marker written: one Django start less, and the migrate phase then finds it done.
    Nothing can have used a database with no tables, so nothing is backed up or switched
    earlier for it; any other database is migrated in its own phase, after its backup."""

    def __init__(self, build: Build, check: bool, fresh: FreshMigrate | None = None) -> None:
        paths = SitePaths.of(build.site)
        args = f"shell -c {shlex.quote(_PREPARE)}" if check else "collectstatic --noinput"
        super().__init__(
            build,
            f"prepare:{build.site.name}",
            f"prepare {build.site.name}",
            args,
            # Another name than before (collectstatic and the checklist were two steps), so a
            # host upgraded from then prepares the release once more.
            f"{paths.base}/.djk-prepared",
            "collecting static files" + (", checking the deployment settings" if check else ""),
        )
        self.check, self.fresh = check, fresh
        if check:
            self.findings = CheckFindings(build.site.name)

    def facts(self, diff: bool) -> list[Fact]:
        return super().facts(diff) + ([self.fresh.applied] if self.fresh else [])

    def _migrating(self, ctx: Context) -> FreshMigrate | None:
        """`fresh` where the database has no tables yet."""
        if self.fresh is not None and ctx.facts[self.fresh.applied] == {NO_TABLE}:
            return self.fresh
        return None

    def arguments(self, ctx: Context) -> str:
        if self._migrating(ctx) is None:
            return self.args
        code = (_PREPARE if self.check else _COLLECT) + _MIGRATE
        return f"shell -c {shlex.quote(code)}"

    def plan(self, ctx: Context) -> Plan:
        plan = super().plan(ctx)
        fresh = self._migrating(ctx)
        if not plan.actions or fresh is None:
            return plan
        (action,) = plan.actions
        # The script runs under `set -e`: past the command, the migrations went in.
        done = f"printf '%s\\n' {shlex.quote(fresh.key)} > {shlex.quote(fresh.marker)}\n"
        return replace(
            plan,
            actions=[
                replace(
                    action,
                    summary=f"{action.summary}, and migrate (the database has no tables yet)",
                    script=action.script + done,
                    progress=f"{self.progress}, migrating the new database",
                )
            ],
        )

    def wrap(self, command: str, release_dir: str) -> str:
        if not self.check:
            return command
        errors = "'\\([a-z0-9_.]+\\.E[0-9]+\\)'"
        # On failure only the checks' error lines (else the output's end) make the message.
        return f"""out=$( ( {command} ) 2>&1 ) || {{
  rc=$?
  printf '%s\\n' "$out" | grep -E {errors} >&2 || printf '%s\\n' "$out" | tail -n 5 >&2
  exit $rc
}}
printf '%s\\n' "$out"
"""
