"""The Django app of each site: its hosts.toml keys, user, directories, releases, dependencies,
env file, gunicorn units, migrations and the health-gated switch.

A deploy stages a release on every host, migrates once per site before any switch, then switches
(see agent/switch.py) and, where nginx runs on other hosts than the app, verifies the release
through nginx. Which release a site switches to is a pure function of the facts: the live one if
it already has this deploy's source and dependency set, else this deploy's new release.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from . import database
from .database import NO_TABLE, Applied
from .engine import agent, locks, procs, python_env, topology, values, wheels
from .engine import releases as R
from .engine import source as shipping
from .engine.cli import run_plans, targets_task, user_error
from .engine.component import Component, HostRun, Opening, components, register
from .engine.facts import Fact, Facts, Stat, Text, Unit
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SLOTS, App, SitePaths, app_of
from .engine.render import render
from .engine.schema import InventoryError, Table
from .engine.secrets import Secret
from .engine.steps import (
    Action,
    Context,
    Directories,
    Directory,
    File,
    MarkedCommand,
    Plan,
    Service,
    Step,
    SystemUser,
    UnitStatus,
)
from .engine.wheels import DependencyError, Wheelhouse

# -- what a deploy ships and which release a site switches to -----------------------------------


@dataclass(frozen=True)
class Build:
    """What this deploy wants for a site, computed once on the control machine."""

    site: Site
    release_id: str
    tree: str
    deps: str
    revision: str
    archive: Callable[[], bytes] | None = None  # the source's tar (None: plan tests)
    requirements: Path | None = None  # as shipped, plus the server's pins (engine/python_env)
    # The pinned set and its wheels for one host's interpreter (for_host); `deps` is then the
    # venv key on that host.
    house: Wheelhouse | None = None
    # The project's own migrations in the shipped files, as "<app label>.<name>".
    migrations: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.tree[:16]}-{self.deps}"


def new_build(
    site: Site,
    now: float | None = None,
    ref: str | None = None,
    allow_dirty: bool = False,
    memo: dict | None = None,
    inventory: Path | None = None,
) -> Build:
    """The site's source as this deploy ships it (engine/source.py: git's tracked files at the
    ref, the build's outputs) and the dependency set it installs. SourceError: nothing can be
    shipped (a dirty tree, a failed build)."""
    app = app_of(site)
    skip = deploy_files(app.source, inventory, site.env_file)
    request = shipping.Request(app.source, ref, allow_dirty, app.build, app.build_outputs, skip)
    snap = shipping.snapshot(request, memo)
    rel = app.requirements.relative_to(app.source).as_posix()
    files = {f.path: f.data for f in snap.files}
    if rel not in files:
        raise shipping.SourceError(
            f"{rel} is not among the files shipped from {values.show_path(app.source)} "
            "(not tracked by git, or left out by .djkignore?)"
        )
    pins = [p for c in components() for p in c.python_packages(site)]
    requirements = python_env.materialize(python_env.with_server(locks.pinned(files, rel), pins))
    deps = python_env.deps_key(requirements, wheels.Target())
    release = R.new_release_id(snap.revision, now)
    return Build(
        site,
        release,
        snap.tree,
        deps,
        snap.revision,
        snap.archive,
        requirements,
        migrations=migrations_in(files),
    )


_MIGRATION = re.compile(r"(?:.*/)?([A-Za-z_][A-Za-z0-9_]*)/migrations/([0-9][A-Za-z0-9_]*)\.py")


def migrations_in(paths) -> tuple[str, ...]:
    """ "<app label>.<name>" of each migration file among `paths` (the label being, as Django's
    default, the app package's last name)."""
    found = {f"{m.group(1)}.{m.group(2)}" for p in paths if (m := _MIGRATION.fullmatch(p))}
    return tuple(sorted(found))


def for_host(build: Build, host: Host) -> Build:
    """The build as one host installs it: its dependency set resolved for the host's Python
    and platform (cached), and the venv key that goes with them. A user error, before any host
    is touched, when the site needs another Python or a package cannot be had for the host."""
    site, info = build.site, host.platform
    wanted = app_of(site).python
    where = f"site {site.name} on host {host.name}"
    if wanted and wanted != info.python_minor:
        raise user_error(
            f"{where}: the site needs Python {wanted} (sites.{site.name}.python), the host has "
            f"{info.python or 'none'} ({info.release})"
        )
    if build.requirements is None:
        return build  # plan tests give their wheelhouse
    target = wheels.Target.of(info)
    try:
        house = python_env.wheelhouse_for(build.requirements, target)
    except DependencyError as exc:
        raise user_error(f"{where} ({info.release}, Python {info.python}): {exc}") from None
    return replace(build, deps=python_env.deps_key(build.requirements, target), house=house)


def deploy_files(source: Path, inventory: Path | None, env_file: Path | None) -> tuple[str, ...]:
    """The deploy's own files inside a site's source (a team's hosts.toml beside manage.py):
    the inventories, the fabfile and the secrets beside them, and the site's env_file."""
    found: list[Path] = []
    if inventory is not None:
        here = inventory.resolve().parent
        found += [*here.glob("hosts*.toml"), here / "fabfile.py", here / "secrets"]
    if env_file is not None:
        found.append(env_file.resolve())
    root = source.resolve()
    return tuple(
        sorted({p.relative_to(root).as_posix() for p in found if p.is_relative_to(root)} - {"."})
    )


def live_release(facts: Facts, paths: SitePaths) -> str | None:
    """The release `current` points to on this host, or None."""
    current = facts[Stat(paths.current)]
    return current.target.removeprefix("releases/") if current and current.target else None


class Target(Protocol):
    """The release a site switches to, from the facts (LookupError: there is none)."""

    def facts(self) -> list[Fact]: ...

    def __call__(self, facts: Facts) -> str: ...


@dataclass(frozen=True)
class Wanted:
    """A deploy's release: the live one when it has this source and dependency set (nothing to
    stage), else the deploy's new release id."""

    build: Build

    @property
    def paths(self) -> SitePaths:
        return SitePaths.of(self.build.site)

    def facts(self) -> list[Fact]:
        current = self.paths.current
        return [Stat(current), Text(f"{current}/.djk-tree"), Stat(f"{current}/.venv")]

    def __call__(self, facts: Facts) -> str:
        live = live_release(facts, self.paths)
        venv = facts[Stat(f"{self.paths.current}/.venv")]
        live_deps = venv.target.rsplit("/", 1)[-1] if venv and venv.target else None
        live_tree = facts[Text(f"{self.paths.current}/.djk-tree")]
        if live and live_tree == self.build.tree and live_deps == self.build.deps:
            return live
        return self.build.release_id


@dataclass(frozen=True)
class Fixed:
    """A release named up front (the one a failed rolling deploy goes back to)."""

    release: str

    def facts(self) -> list[Fact]:
        return []

    def __call__(self, facts: Facts) -> str:
        return self.release


@dataclass(frozen=True)
class Previous:
    """`fab rollback`: the newest good release older than the live one, or the one named."""

    site: Site
    to: str | None = None

    def facts(self) -> list[Fact]:
        paths = SitePaths.of(self.site)
        return [Stat(paths.current), R.Releases(paths.base)]

    def __call__(self, facts: Facts) -> str:
        paths = SitePaths.of(self.site)
        releases = facts[R.Releases(paths.base)]
        target, why = R.rollback_target(releases, live_release(facts, paths), self.to)
        if target is None:
            raise LookupError(f"{self.site.name}: {why}; nothing changed")
        return target.id


# -- the env file --------------------------------------------------------------------------------


def env_entries(inventory: Inventory, site: Site) -> list[tuple[str, str | Secret]]:
    """The env file's variables: every component's (the app's derived ones first), then the
    inventory's `env`, then the secrets."""
    entries: dict[str, str | Secret] = {}
    for component in components():
        entries.update(component.env(inventory, site))
    entries.update(site.env)
    local = {key for component in components() for key in component.control_secrets(site)}
    entries.update((k, v) for k, v in site.secrets.items() if k not in local)
    return list(entries.items())


# Variables that change how the interpreter, the loader or the shell run: never from the
# inventory or the secrets file (a typo here runs other code as the site user).
REFUSED_ENV = (
    "PATH",
    "IFS",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
)


def check_env_names(inventory: Inventory, site: Site) -> None:
    """`env` and the secrets may not set what the kit derives (unless the site lists it in
    `env_override`) nor any of REFUSED_ENV."""
    derived = {k: c.name for c in components() for k in c.env_names(inventory, site)}
    given = [(f"sites.{site.name}.env.{k}", k, "env") for k in site.env]
    given += [(f"sites.{site.name}.env_file", k, "the secrets file") for k in site.secrets]
    for key, name, where in given:
        if name in REFUSED_ENV:
            raise InventoryError(
                inventory.path, key, f"{name} in {where}: the kit never sets {name} for a site"
            )
        if name in derived and name not in site.env_override:
            raise InventoryError(
                inventory.path,
                key,
                f"{name} in {where}: the kit derives it ({derived[name]}); to set it anyway, "
                f'add "{name}" to sites.{site.name}.env_override',
            )
    for i, name in enumerate(site.env_override):
        if name not in derived:
            raise InventoryError(
                inventory.path,
                f"sites.{site.name}.env_override[{i}]",
                f"{values.show(name)} is not a variable the kit derives (nothing to override)",
            )


def env_file(inventory: Inventory, site: Site, host: Host) -> File:
    paths = SitePaths.of(site)
    entries = env_entries(inventory, site)
    notify = tuple(n for c in components() for n in c.env_notify(site, host))
    return File(
        paths.env,
        render(
            "app/env.j2",
            inventory.templates,
            entries=[(k, v.reveal() if isinstance(v, Secret) else v) for k, v in entries],
        ),
        # The same template with the Secret objects themselves: env_quote masks them there.
        shown=render("app/env.j2", inventory.templates, entries=entries),
        owner=site.user,
        group=site.user,
        mode="600",
        notify=notify,
        secret_keys=tuple(k for k, v in entries if isinstance(v, Secret)),
        secret_env=True,
        name=f"env file {paths.env}",
    )


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


# -- steps ---------------------------------------------------------------------------------------


# awk: the filesystem a directory is on, and its free space.
_DF_AWK = 'NR == 2 { printf "%s is on %s (%s), %d MB free: disk full?\\n", d, $6, $1, $4 / 1024 }'


def disk_full(directory: str, partial: str, errors: str) -> str:
    """Shell for a failed write under `directory`: the partial copy removed; the first "No space
    left" of the command's `errors` file (else its last lines) and the filesystem `directory`
    is on, with what it has left, on stderr; exits 1."""
    q = shlex.quote
    return (
        f"rm -rf {q(partial)}; grep -m 1 'No space left' {errors} >&2 || tail -n 3 {errors} >&2; "
        f"df -Pk {q(directory)} | awk -v d={q(directory)} {q(_DF_AWK)} >&2; exit 1"
    )


class Stage(Step):
    """A release directory for this deploy's source, unless the live release already has it."""

    def __init__(self, build: Build) -> None:
        self.build = build
        self.target = Wanted(build)
        self.paths = SitePaths.of(build.site)
        self.id = f"stage:{build.site.name}"
        self.name = f"release {build.site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return self.target.facts()

    def plan(self, ctx: Context) -> Plan:
        b, paths = self.build, self.paths
        live = live_release(ctx.facts, paths)
        want = self.target(ctx.facts)
        report = {"releases": {b.site.name: want}}
        if want == live:
            return Plan(reason=f"{live} is live with this source and dependency set", report=report)
        q = shlex.quote
        target = paths.release(b.release_id)
        new = f"{target}.djk-new"
        group = q(b.site.user)
        manifest = R.manifest(b.release_id, b.revision, b.tree, b.deps)
        full = disk_full(paths.releases, new, '"$errors"')
        script = f"""set -e
rm -rf {q(new)}
install -d -m 750 -o root -g {group} {q(new)}
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
tar -xzf - -C {q(new)} --no-same-owner --no-same-permissions 2>"$errors" || {{ {full}; }}
printf '%s\\n' {b.tree} > {q(new)}/.djk-tree
printf 'APP_RELEASE=%s\\nDJANGO_STATIC_ROOT=%s\\n' {q(b.release_id)} \\
  {q(paths.release_static(b.release_id))} > {q(new)}/.djk-release.env
printf '%s\\n' {q(manifest)} > {q(new)}/.djk-release.json
echo staged > {q(new)}/.djk-status
ln -sfn {q(python_env.venv_path(b.deps))} {q(new)}/.venv
chown -R root:{group} {q(new)}
chmod -R u=rwX,g=rX,o= {q(new)}
# The id is the deploy's second and revision: a directory of it that is not live is what a
# deploy of the same revision in the same second left when it stopped before its switch.
rm -rf {q(target)}
mv -T {q(new)} {q(target)}
# nginx serves this release's static files (once collected) after the live one's, until the
# switch: pages of the new release find theirs on a web host before its `current` moves.
ln -sfn {q(b.release_id)} {q(paths.static)}/next.djk-new
mv -Tf {q(paths.static)}/next.djk-new {q(paths.static)}/next
"""
        was = f"live {live}" if live else "no live release"
        return Plan(
            [Action(f"stage {b.release_id} ({was})", script, stdin=b.archive or (lambda: b""))],
            report=report,
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
        self.target = Wanted(build)
        self.paths = SitePaths.of(build.site)

    def facts(self, diff: bool) -> list[Fact]:
        return super().facts(diff) + self.target.facts()

    def plan(self, ctx: Context) -> Plan:
        release = self.target(ctx.facts)
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

    findings = None  # what the command's output says, for the report (Action.findings)

    def arguments(self, ctx: Context) -> str:
        """What manage.py is called with."""
        return self.args

    def wrap(self, command: str, release_dir: str) -> str:
        if not self.mark_failed:
            return command
        # A failed migration marks the release failed: it never goes live. Its output streams
        # (progress); on failure the message is its last lines (a traceback's exception) and
        # the note, not the middle of a traceback.
        status = shlex.quote(f"{release_dir}/.djk-status")
        note = f"echo {shlex.quote(self.failure_note)} >&2\n  " if self.failure_note else ""
        return f"""log=$(mktemp); rc=$(mktemp)
trap 'rm -f "$log" "$rc"' EXIT
( ( {command} ) 2>&1; echo $? > "$rc" ) | tee "$log"
if [ "$(cat "$rc")" != 0 ]; then
  [ "$(cat {status})" = staged ] && echo failed > {status}
  tail -n 3 "$log" >&2
  {note}exit 1
fi"""


_CHECK_LINE = re.compile(r"^(\S+): \(([\w.]+\.([WE])\d+)\) (.*)$")


def check_findings(site: str):
    """The warnings of `manage.py check --deploy` as a note and report data."""

    def parse(out: str) -> tuple[str, dict]:
        warnings = []
        for line in out.splitlines():
            match = _CHECK_LINE.match(line.strip())
            if match and match.group(3) == "W":
                warnings.append(
                    {"id": match.group(2), "object": match.group(1), "message": match.group(4)}
                )
        note = f"{len(warnings)} warning(s): {', '.join(w['id'] for w in warnings)}"
        return (note if warnings else ""), {"check_deploy": {site: warnings}}

    return parse


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
            self.findings = check_findings(build.site.name)

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


class Switch(Step):
    """Health-gated switch to the target release (or a restart of the live one when its env,
    unit or dependencies changed); a no-op when the live slot runs the target release."""

    def __init__(
        self,
        site: Site,
        target: Target,
        mark_old: str = "previous",
        remote_bind: str | None = None,
        host: Host | None = None,
    ) -> None:
        self.remote_bind = remote_bind  # set on app hosts whose nginx runs elsewhere
        self.site, self.paths, self.app = site, SitePaths.of(site, host), app_of(site)
        self.target, self.mark_old = target, mark_old
        self.id = f"switch:{site.name}"
        self.name = f"switch {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        paths = self.paths
        return [
            Stat(paths.current),
            Stat(paths.live_socket),
            *(Stat(paths.slot(slot)) for slot in SLOTS),
            *(Unit(unit) for unit in paths.web_units),
            R.Releases(paths.base),
            *self.target.facts(),
        ]

    def plan(self, ctx: Context) -> Plan:
        paths, facts = self.paths, ctx.facts
        live = live_release(facts, paths)
        try:
            want = self.target(facts)
        except LookupError as exc:  # e.g. no earlier release to roll back to
            return Plan(error=str(exc))
        report = {"releases": {self.site.name: want}}
        releases = facts[R.Releases(paths.base)]
        slot = current_slot(facts, paths)
        restart = paths.cycle in ctx.pending
        problems: list[str] = []
        if want == live and not restart and slot is not None:
            problems = self._drift(facts, slot, want, releases)
            if not problems:
                unit = facts[Unit(paths.web_unit(slot))]
                return Plan(
                    reason=f"{live} is live in slot {slot} (pid {unit.main_pid})", report=report
                )
        if want != live:
            delete = retired(releases, want, live, self.mark_old, self.app.keep_releases)
            why = f"switch {live or 'nothing'} -> {want}"
        else:
            delete = []
            reason = "env, unit or dependencies changed" if restart else "; ".join(problems)
            why = f"restart {want} ({reason or 'not running'})"
        # nginx is reloaded only when its configuration changed in this run (then before the
        # check through it, so the release is checked as the run leaves nginx); a code deploy
        # never reloads it.
        reload = not self.remote_bind and "reload:nginx.service" in ctx.pending
        spec = {
            "mode": "app" if self.remote_bind else "local",
            "base": paths.base,
            "release": want,
            "sockets": {slot: paths.slot_socket(slot) for slot in SLOTS},
            "live": paths.live_socket,
            "units": {slot: paths.web_unit(slot) for slot in SLOTS},
            "manager": paths.manager,
            "group": self.site.user,
            "gate": gate(self.site),
            "front": front(self.site, self.remote_bind),
            "reload": reload,
            # Only when a unit file changed in this run (it costs ~0.15 s per switch).
            "daemon_reload": "daemon-reload" in ctx.pending,
            "mark_old": self.mark_old,
            "delete": delete,
            "static": paths.static,
            "drain": self.app.drain_timeout,
        }
        consumes: tuple[str, ...] = (paths.cycle, "daemon-reload")
        if reload:
            consumes += ("reload:nginx.service",)
        action = Action(
            why,
            agent.command("switch"),
            stdin=agent.payload(spec),
            progress=f"{why}: health check",
            consumes=consumes,
            echo=True,
        )
        return Plan([action], report=report)

    def _drift(self, facts: Facts, slot: str, want: str, releases: list) -> list[str]:
        """What differs from "want is live in slot, alone": left by a run that was cut off."""
        paths = self.paths
        problems = []
        link = facts[Stat(paths.slot(slot))]
        if link is None or link.target != f"../releases/{want}":
            problems.append(f"slot {slot} does not run {want}")
        unit = facts[Unit(paths.web_unit(slot))]
        if unit is None or not unit.running:
            problems.append(f"slot {slot} is not running")
        for other in SLOTS:
            state = facts[Unit(paths.web_unit(other))]
            if other != slot and state is not None and state.running:
                problems.append(f"slot {other} is still running")
        status = next((r.status for r in releases if r.id == want), None)
        if status != "live":
            problems.append(f"{want} is marked {status}")
        return problems


def retired(releases: list, want: str, live: str | None, mark_old: str, keep: int) -> list[str]:
    """The releases to delete once `want` is live and `live` is marked `mark_old`."""
    known = [r for r in releases if r.id != want]
    known.append(R.Release(want, "live"))
    if live:
        known = [r if r.id != live else R.Release(live, mark_old) for r in known]
    return R.cleanup(sorted(known, key=lambda r: r.id), want, keep)


def current_slot(facts: Facts, paths: SitePaths) -> str | None:
    """The live slot: the one sockets/live.sock links to; None before the first switch."""
    link = facts[Stat(paths.live_socket)]
    target = link.target if link is not None else None
    return next((s for s in SLOTS if target == f"{s}.sock"), None)


def _uses_tls(site: Site):
    """Whether any component serves the site over HTTPS (then checks through nginx use it)."""
    return (getattr(part, "https", False) for part in site.parts.values())


def front(site: Site, remote_bind: str | None = None) -> str:
    """Where a switched release is checked as clients reach it: this host's nginx, or on an app
    host behind nginx elsewhere the forwarder nginx there connects to."""
    if remote_bind:
        return f"http://{values.url_host(remote_bind)}:{app_of(site).port}"
    return "https://127.0.0.1:443" if any(_uses_tls(site)) else "http://127.0.0.1:80"


def gate(site: Site) -> dict:
    """The health gate of the site's releases (agent/probe.py): the health URL with the site's
    Host, and X-Forwarded-Proto: https for a TLS site (nginx sends it; without it an app with
    SECURE_SSL_REDIRECT answers 301 to the slot). Without health_path, / is probed and a
    redirect that stays on the site's domains passes too."""
    app = app_of(site)
    return {
        "path": app.health_path or "/",
        "accept_redirect": app.health_path is None,
        "host": site.health_host,
        "domains": list(site.domains),
        "timeout": app.health_timeout,
        "expect_release": app.health_expect_release,
        "https": any(_uses_tls(site)),
    }


class Verify(Step):
    """On a web host of a site whose app runs on other hosts: after the app hosts switched,
    the target release answers through this nginx; then `current` here points at it (the next
    deploy compares with it), the statuses move as on an app host (a rollback here finds the
    same release to return to) and releases no longer kept go."""

    def __init__(self, site: Site, target: Target, mark_old: str = "previous") -> None:
        self.site, self.paths, self.target = site, SitePaths.of(site), target
        self.mark_old = mark_old  # rolled-back: only the release returned to serves static files
        self.marker = f"{self.paths.base}/.djk-verified"
        self.id = f"verify:{site.name}"
        self.name = f"verify {site.name} through nginx"

    def facts(self, diff: bool) -> list[Fact]:
        return [Text(self.marker), R.Releases(self.paths.base), *self.target.facts()]

    def plan(self, ctx: Context) -> Plan:
        try:
            want = self.target(ctx.facts)
        except LookupError as exc:
            return Plan(error=str(exc))
        if ctx.facts[Text(self.marker)] == want:
            return Plan(reason=f"{want} answers here")
        live = live_release(ctx.facts, self.paths)
        releases = ctx.facts[R.Releases(self.paths.base)]
        keep = app_of(self.site).keep_releases
        delete = retired(releases, want, live, self.mark_old, keep) if want != live else []
        # A reload only for a configuration this run changed: a code deploy reloads nothing.
        reload = "reload:nginx.service" in ctx.pending
        spec = {
            "base": self.paths.base,
            "release": want,
            "gate": gate(self.site),
            "front": front(self.site),
            "reload": reload,
            "static": self.paths.static,
            "mark_old": self.mark_old,
            "delete": delete,
        }
        script = agent.command("verify")
        script += f" && printf '%s\\n' {shlex.quote(want)} > {shlex.quote(self.marker)}"
        return Plan(
            [
                Action(
                    f"{want} answers through nginx",
                    script,
                    stdin=agent.payload(spec),
                    progress="health check through nginx",
                    echo=True,
                    consumes=("reload:nginx.service",) if reload else (),
                )
            ]
        )


# systemd's TCP-to-unix-socket forwarder (merged /usr: the same path on Debian 12 and 13), and
# under supervisor what holds its listening socket (systemd's socket activation without PID 1).
PROXYD = "/lib/systemd/systemd-socket-proxyd"
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


def unit_files(inventory: Inventory, site: Site, host: Host) -> list[Step]:
    """Both slots' gunicorn processes (systemd units or supervisor programs; under supervisor
    also the boot program that starts the live one); on an app host behind nginx elsewhere,
    the forwarder too."""
    paths = SitePaths.of(site, host)
    manager = paths.procs
    web = manager.template("web")
    found = [
        (paths.web_unit(slot), web, (paths.cycle,), {"slot": slot, "after": procs.BACKING_UNITS})
        for slot in SLOTS
    ]
    boot = manager.boot_program(site.name)
    if boot:
        # Started once whenever its file changes (it exits at once: the live slot runs).
        found.append((boot, manager.template("boot"), (f"restart:{boot}",), {}))
    if topology.split(inventory, site):
        web = [h.peer_address for h in topology.hosts_with(inventory, site, "web")]
        forward = {
            "proxyd": PROXYD,
            "socket_activate": SOCKET_ACTIVATE,
            "bind": values.url_host(host.peer_address),
            "port": app_of(site).port,
            "allow": [*web, host.peer_address, "127.0.0.0/8"],
        }
        unit = paths.forward_unit
        if manager.kind == procs.SYSTEMD:
            socket = paths.forward_socket
            found.append((socket, "systemd/forward.socket.j2", (f"restart:{socket}",), forward))
        found.append((unit, manager.template("forward"), (f"restart:{unit}",), forward))
    steps: list[Step] = [
        File(
            manager.config_path(name),
            render(
                template,
                inventory.templates,
                site=site,
                app=app_of(site),
                paths=paths,
                **extra,
            ),
            notify=(*manager.changed(name), *notify),
            name=f"{'program' if procs.is_program(name) else 'unit'} {name}",
        )
        for name, template, notify, extra in found
    ]
    steps.append(
        File(
            paths.gunicorn_conf,
            render("app/gunicorn.conf.py.j2", inventory.templates, site=site),
            group=site.user,
            mode="640",
            notify=(paths.cycle,),  # read as a slot starts: the next switch starts one
            name=f"gunicorn config {paths.gunicorn_conf}",
        )
    )
    if topology.split(inventory, site):
        steps.append(Service(paths.forward_socket))
    return steps


def stage_steps(build: Build, inventory: Inventory, host: Host) -> list[Step]:
    """Everything up to a staged release on a host, for the roles it has for the site."""
    site = build.site
    paths = SitePaths.of(site, host)
    steps: list[Step] = [
        SystemUser(site.user, paths.base),
        Directories(
            f"directories of {site.name}",
            [
                Directory(paths.base, "root", site.user, "751"),
                Directory(paths.shared, site.user, site.user, "700"),
                Directory(paths.static, site.user, site.user, "755"),
                Directory(paths.releases, "root", site.user, "750"),
                Directory(paths.venvs, "root", site.user, "750"),
                Directory(paths.slots, "root", site.user, "750"),
                # gunicorn (the site user) makes the slots' sockets here; nginx (www-data)
                # connects.
                Directory(paths.sockets, site.user, "www-data", "750"),
                # supervisor makes no runtime directory: the slots' gunicorn control sockets.
                *(
                    [Directory(paths.run_dir, site.user, site.user, "700")]
                    if paths.manager == procs.SUPERVISOR
                    else []
                ),
            ],
        ),
        env_file(inventory, site, host),
        Stage(build),
        Prepare(
            build,
            check=app_of(site).check_deploy and "app" in topology.roles(host),
            fresh=fresh_migrate(build, inventory, host),
        ),
    ]
    if "app" in topology.roles(host):
        steps += unit_files(inventory, site, host)
    return steps


def migrated_marker(site: Site) -> str:
    """What the migrate step writes on a migrating host once a release migrated the database."""
    return f"{SitePaths.of(site).shared}/.djk-migrated"


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
    return FreshMigrate(database.applied_fact(site, (marker, key)), marker, key)


def migrate_step(build: Build, inventory: Inventory) -> ReleaseCommand:
    return ReleaseCommand(
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


def migrates_here(inventory: Inventory, site: Site, host: Host) -> bool:
    """Migrations run on the site's first app host (on every app host with "every")."""
    apps = [h.name for h in topology.hosts_with(inventory, site, "app")]
    every = app_of(site).migrate_on == "every"
    return host.name in apps and (every or apps[0] == host.name)


def switch_step(run: HostRun, site: Site) -> Switch:
    remote = topology.bind_address(run.inventory, site, run.host)
    return Switch(
        site,
        target=run.target(site),
        mark_old=run.mark_old,
        remote_bind=remote if topology.split(run.inventory, site) else None,
        host=run.host,
    )


# What the app's processes run with, when the project's requirements do not name it (a project
# pinning its own gunicorn or uvicorn keeps its version).
SERVER = ("gunicorn==27.0.1",)
ASGI_SERVER = ("uvicorn-worker==0.4.0", "uvicorn==0.54.0", "websockets==17.4")


# -- the component -------------------------------------------------------------------------------


def _is(path: Path, test: Callable[[Path], bool]) -> bool:
    """Path.is_file/is_dir, False also where the system refuses the name (too long: pathlib
    raises ENAMETOOLONG rather than answer)."""
    try:
        return test(path)
    except OSError:
        return False


class AppComponent(Component):
    """The keys of [sites.<name>] itself: source, asgi, settings, port, workers, health, ..."""

    name = "app"
    config = App
    roles = ("app",)

    def parse(self, table: Table, site: Site) -> App:
        key = table.key
        source = table.get_path("source")
        if not _is(source, Path.is_dir):
            table.fail(f"{key}.source", f"{values.show_path(source)} is not a directory")
        requirements = source / table.get("requirements", str, default="requirements.txt")
        try:
            requirements = requirements.resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            # str(exc) may quote the whole path: the reason alone, the path shortened.
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            table.fail(f"{key}.requirements", f"{values.show_path(requirements)}: {reason}")
        if not requirements.is_relative_to(source):
            table.fail(
                f"{key}.requirements",
                f"{values.show_path(requirements)} is outside source ({values.show_path(source)})",
            )
        if not _is(requirements, Path.is_file):
            table.fail(f"{key}.requirements", f"{values.show_path(requirements)} does not exist")
        asgi = table.get("asgi", str, values.asgi_app, default=None)
        wsgi = table.get("wsgi", str, values.asgi_app, default=None)
        if asgi is None and wsgi is None:
            table.fail(f"{key}.asgi", 'is required (or wsgi = "package.wsgi:application")')
        if asgi is not None and wsgi is not None:
            table.fail(f"{key}.wsgi", "give asgi or wsgi, not both")
        worker_class = table.get(
            "worker_class", str, values.choice("gthread", "sync"), default=None
        )
        if asgi is not None and worker_class is not None:
            table.fail(f"{key}.worker_class", "is for wsgi sites (ASGI runs uvicorn workers)")
        threads = table.get("threads", int, values.count(1, 64), default=None)
        if threads is not None and (asgi is not None or (worker_class or "gthread") != "gthread"):
            table.fail(f"{key}.threads", 'is for wsgi sites with worker_class = "gthread"')
        build = table.get("build", str, values.build_command, default=None)
        outputs = table.get_list("build_outputs", values.relative_path, default=(), empty=True)
        if outputs and build is None:
            table.fail(f"{key}.build_outputs", "lists what `build` makes: give build too")
        return App(
            source=source,
            requirements=requirements,
            asgi=asgi,
            wsgi=wsgi,
            worker_class=worker_class or ("gthread" if wsgi else ""),
            threads=threads or (4 if wsgi and (worker_class or "gthread") == "gthread" else 1),
            build=build,
            build_outputs=outputs,
            settings=table.get("settings", str, values.dotted),
            port=table.get("port", int, values.count(1024, 65534)),
            workers=table.get("workers", int, values.count(1, 64), default=2),
            health_path=table.get("health_path", str, values.url_path, default=None),
            health_expect_release=table.get("health_expect_release", bool, default=False),
            keep_releases=table.get("keep_releases", int, values.count(1, 100), default=5),
            health_timeout=table.get("health_timeout", int, values.count(5, 900), default=60),
            drain_timeout=table.get("drain_timeout", int, values.count(0, 86400), default=30),
            migrate_on=table.get("migrate_on", str, values.choice("one", "every"), default="one"),
            check_deploy=table.get("check_deploy", bool, default=True),
            python=table.get("python", str, values.python_version, default=None),
        )

    def check(self, inventory: Inventory) -> None:
        for site in inventory.sites.values():
            if not topology.hosts_with(inventory, site, "app"):
                raise InventoryError(
                    inventory.path, f"sites.{site.name}.hosts", "no host with the app role"
                )
            check_env_names(inventory, site)

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        # No python3-venv: uv makes the venvs (engine/python_env.py).
        return ["python3"] if inventory.sites_on(host) else []

    def python_packages(self, site: Site) -> list[str]:
        app = app_of(site)
        return [*SERVER, *(ASGI_SERVER if app.asgi else ())]

    def openings(self, inventory: Inventory, host: Host) -> list[Opening]:
        """The forwarder of a split site on its app hosts, for the site's web hosts."""
        found = []
        for site in inventory.sites_on(host):
            if "app" in topology.roles(host) and topology.split(inventory, site):
                web = topology.peers(topology.hosts_with(inventory, site, "web"), host)
                if web:
                    found.append(Opening(app_of(site).port, f"{site.name}: app", web))
        return found

    def ports(self, site: Site) -> list[tuple[int, str]]:
        port = app_of(site).port
        # Where nginx on other hosts reaches the app (the forwarder); reserved on every host of
        # the site, so a change of roles cannot make it collide. The slots use unix sockets.
        return [(port, "the app's forwarder")]

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        paths = SitePaths.of(site)
        origins = []
        hosts = []
        for domain in site.domains:
            hosts.append(domain[1:] if domain.startswith("*.") else domain)
            origins += [f"https://{domain}", f"http://{domain}"]
        return {
            "DJANGO_SETTINGS_MODULE": app_of(site).settings,
            "DJANGO_ALLOWED_HOSTS": ",".join(hosts),
            "DJANGO_CSRF_TRUSTED_ORIGINS": ",".join(origins),
            "DJANGO_DB_PATH": paths.db,
            # Releases and venvs are read-only to the site user (the venvs' bytecode is compiled
            # when they are installed, engine/python_env.py).
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def env_notify(self, site: Site, host: Host) -> tuple[str, ...]:
        return (SitePaths.of(site).cycle,) if "app" in topology.roles(host) else ()

    def steps(self, phase: str, run: HostRun) -> list[Step]:
        inventory, host = run.inventory, run.host
        roles = topology.roles(host)
        if not roles & {"app", "web", "worker"}:  # e.g. a host that only holds databases
            return []
        if phase == "stage":
            builds = [run.builds[site.name] for site in run.sites]
            venvs = [(b.house, b.deps) for b in builds if b.house is not None]
            return [
                *python_env.host_steps(venvs, wheels.Target.of(host.platform)),
                *(s for build in builds for s in stage_steps(build, inventory, host)),
            ]
        if phase == "migrate":
            return [
                migrate_step(run.builds[s.name], inventory)
                for s in run.sites
                if migrates_here(inventory, s, host)
            ]
        if phase == "switch":
            # The agent runs the switch here and, on a web host of a split site, the check
            # through nginx in the verify phase after it.
            switching = [switch_step(run, site) for site in run.sites] if "app" in roles else []
            verifying = "web" in roles and any(topology.split(inventory, s) for s in run.sites)
            return [agent.installed(), *switching] if switching or verifying else []
        if phase == "verify" and "web" in roles:
            return [
                Verify(site, run.target(site), mark_old=run.mark_old)
                for site in run.sites
                if topology.split(inventory, site)
            ]
        return []


register(AppComponent())


# -- tasks ---------------------------------------------------------------------------------------


class LiveSlot(UnitStatus):
    """The site's live gunicorn slot (the one sockets/live.sock links to) is running."""

    def __init__(self, site: Site, host: Host) -> None:
        self.paths = SitePaths.of(site, host)
        super().__init__(self.paths.web_unit("a"))
        self.id = f"status:{site.name}"
        self.name = f"status {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Stat(self.paths.live_socket), *(Unit(u) for u in self.paths.web_units)]

    def plan(self, ctx: Context) -> Plan:
        slot = current_slot(ctx.facts, self.paths)
        if slot is None:
            return Plan(error="not deployed")
        return UnitStatus(self.paths.web_unit(slot)).plan(ctx)


def sites_or_exit(inventory: Inventory, host: Host) -> list[Site]:
    sites = inventory.sites_on(host)
    if not sites:
        raise user_error(
            f"host {host.name!r} runs no site: add it to a site's `hosts` in "
            f"{inventory.path.name} (sites.<name>.hosts)"
        )
    return sites


@targets_task(help={"json_": "print the report as JSON"})
def status(c, json_=False):
    """Show each site's live gunicorn slot on its app hosts; exits 1 where it is not running."""

    def build(inventory: Inventory, host: Host) -> list[Step]:
        sites = sites_or_exit(inventory, host)
        if "app" not in topology.roles(host):
            return []
        return [LiveSlot(site, host) for site in sites]

    run_plans(c, build, json_=json_)
