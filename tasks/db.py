"""Backups of a site's database: taken before a deploy migrates, on demand, listed, restored.

Before the `migrate` phase of a deploy, the host that holds the site's database (the db host
for PostgreSQL, each migrating app host for SQLite) compares the migrations the new release
brings (the project's own, from the shipped files, and its packages', from the wheels) with
the ones the database has applied. When one is not applied yet, it takes a backup with the
server's own tools (`pg_dump -Fc`; SQLite's online backup API) into
/var/backups/djk/<site>/<release>.{pgdump,sqlite3} (root-only), with <release>.json beside it,
and keeps the newest `keep_backups`. A backup that fails stops the deploy before it migrates.

Tasks: `db.backup` (now), `db.backups` (a table or --json), `db.restore --from ID`.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from . import celery, maintenance
from . import database as D
from .database import ELSEWHERE, MIGRATED, NO_TABLE, applied_fact
from .engine import events, procs, topology
from .engine import facts as F
from .engine.cli import (
    confirm,
    load_inventory,
    run_plans,
    site_hosts,
    site_named,
    targets_task,
    user_error,
)
from .engine.component import Component, HostRun, Phase, register
from .engine.executor import HostPlan, PhaseSteps
from .engine.facts import Fact, Facts
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths, app_of
from .engine.outcome import SiteRows
from .engine.report import HostReport
from .engine.status import StatusCheck, StatusPart
from .engine.steps import Action, Context, Plan, Run, Service, Step
from .lock import DeployLock
from .release import (
    Build,
    PreviousGood,
    Rule,
    after_switch_due,
    live_release,
    manage,
    migrate_marker,
    migrated_marker,
    migrates_here,
    migrating_host,
    read_record,
    record_fact,
    record_path,
    runner,
    schema,
    write_record,
)
from .release.asked import FILE as ASKED_FILE
from .release.asked import Asked, DjangoReport, Migration
from .release.schema import Split

BACKUPS = "/var/backups/djk"


def backup_dir(site: Site) -> str:
    return f"{BACKUPS}/{site.name}"


def holds_database(inventory: Inventory, site: Site, host: Host) -> bool:
    """Whether this host holds (a copy of) the site's database: the db host for PostgreSQL,
    a migrating app host for SQLite."""
    if D.of(site).engine == "sqlite":
        return migrates_here(inventory, site, host)
    return D.held_by(inventory, site, host)


# -- facts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backups(Fact[list]):
    """The site's backups: the metadata (<id>.json) of each, oldest first."""

    site: str
    default: ClassVar[Any] = []

    def command(self) -> str:
        where = shlex.quote(f"{BACKUPS}/{self.site}")
        return f'for f in {where}/*.json; do [ -f "$f" ] && cat "$f" && echo; done; true'

    def parse(self, rc: int, out: str) -> list[dict]:
        found = []
        for line in out.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and "id" in item:
                found.append(item)
        return sorted(found, key=lambda b: b["id"])


class BackupTable(SiteRows):
    """`fab db.backups`: the backups a host keeps of a site, oldest first."""

    key = "backup_table"


@dataclass(frozen=True)
class Restored:
    """`fab db.restore`'s audit line (executor.Audited): the backup the site went back to."""

    site: str
    backup: str

    def entry(self, facts: Facts | None, report: HostReport) -> dict:
        return {self.site: {"restored": self.backup}}


# -- the backup itself --------------------------------------------------------------------------


# SQLite's online backup API: a consistent copy while the app writes.
_SQLITE_COPY = (
    "import sqlite3, sys\n"
    "src = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n"
    "dst = sqlite3.connect(sys.argv[2])\n"
    "src.backup(dst)\n"
    "dst.close()\n"
)


def backup_script(
    site: Site,
    backup_id: str,
    meta: dict,
    sqlite_file: str | None = None,
    aliases: dict[str, str] | None = None,
) -> str:
    """Take the backup (atomically: temp files renamed), write its metadata, keep the newest
    keep_backups. Root-only directory and files. `sqlite_file`: the file Django connects to
    (default: the kit's own path); `aliases`: other SQLite files of DATABASES opted in
    (database.also_back_up), alias -> file, each backed up beside it as <id>.<alias>.sqlite3."""
    db = D.of(site)
    where = backup_dir(site)
    q = shlex.quote
    ext = "pgdump" if db.engine == "postgresql" else "sqlite3"
    target, tmp = f"{where}/{backup_id}.{ext}", f"{where}/.{backup_id}.{ext}.tmp"
    copies: list[tuple[str, str, str]] = []  # (source, tmp, target)
    if db.engine == "postgresql":
        take = f"runuser -u postgres -- pg_dump -Fc -d {q(db.name)} > {q(tmp)}"
    else:
        copies.append((sqlite_file or SitePaths.of(site).db, tmp, target))
        take = ""
    files: dict[str, dict[str, str]] = {}
    for name, path in sorted((aliases or {}).items()):
        kept = f"{where}/{backup_id}.{name}.sqlite3"
        copies.append((path, f"{where}/.{backup_id}.{name}.sqlite3.tmp", kept))
        files[name] = {"database": path, "file": kept}
    take += "\n".join(f"python3 -c {q(_SQLITE_COPY)} {q(src)} {q(t)}" for src, t, _ in copies)
    move = "\n".join(f"mv -f {q(t)} {q(final)}" for _, t, final in copies)
    if db.engine == "postgresql":
        move = f"mv -f {q(tmp)} {q(target)}\n{move}"
    temps = " ".join(q(t) for t in {tmp, *(t for _, t, _ in copies)})
    keep = db.keep_backups
    about = q(json.dumps({**meta, "file": target, "aliases": files}, sort_keys=True))
    return f"""set -e
umask 077
install -d -m 700 {BACKUPS} {q(where)}
trap 'rm -f {temps}' EXIT
{take}
{move}
printf '%s\\n' {about} > {q(where)}/{q(backup_id)}.json
# The newest {keep} stay.
ls -1 {q(where)}/*.json | sort | head -n -{keep} | while read -r old; do
  rm -f "${{old%.json}}".pgdump "${{old%.json}}".sqlite3 "${{old%.json}}".*.sqlite3 "$old"
done
du -h {q(target)} | cut -f1
"""


def metadata(
    site: Site,
    backup_id: str,
    reason: str,
    pending: list[Migration],
    sqlite_file: str | None = None,
) -> dict:
    """A backup's <id>.json. `additive`: every migration it preceded only added (a rollback
    past them needs no restore)."""
    where = D.of(site).name if D.uses_postgresql(site) else sqlite_file or SitePaths.of(site).db
    return {
        "id": backup_id,
        "site": site.name,
        "engine": D.of(site).engine,
        "database": where,
        "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reason": reason,
        "migrations": [m.name for m in pending],
        "additive": bool(pending) and all(m.additive for m in pending),
    }


def sqlite_of(report: DjangoReport | None) -> str | None:
    """The SQLite file Django's default database is, by what it said (None: not SQLite, or
    not said: the kit's own path)."""
    default = report.default if report is not None else None
    return default.name if default and default.vendor == "sqlite" else None


def other_aliases(site: Site, report: DjangoReport | None) -> tuple[dict[str, str], str]:
    """The aliases of DATABASES besides default: the SQLite files hosts.toml opts in
    (database.also_back_up), alias -> file, and a note naming the others, not backed up.
    ValueError: an opted-in alias Django does not have, or that is not a SQLite file beside a
    SQLite default database (the backup runs where that file is)."""
    if report is None:
        return {}, ""
    wanted = D.of(site).also_back_up
    found = {d.alias: d for d in report.databases if d.alias != "default"}
    for name in wanted:
        if name not in found:
            raise ValueError(
                f"sites.{site.name}.database.also_back_up: Django's DATABASES has no alias "
                f"{name!r} (it has: {', '.join(sorted(found)) or 'only default'})"
            )
        if found[name].vendor != "sqlite" or D.of(site).engine != "sqlite":
            raise ValueError(
                f"sites.{site.name}.database.also_back_up: alias {name!r} is "
                f"{found[name].describe()}: only SQLite files beside a SQLite default database "
                "are backed up with it"
            )
    note = "".join(
        f"; alias {d.alias} ({d.describe()}) is not backed up (also_back_up opts it in)"
        for name, d in sorted(found.items())
        if name not in wanted
    )
    return {name: found[name].name for name in wanted}, note


class BeforeMigrate(Step):
    """A backup before the deploy migrates, of the database Django connects to, when the release
    has a migration it has not applied (Django's own list, asked in the release's prepare on
    the host that migrates); the deploy stops here if it fails."""

    def __init__(
        self,
        inventory: Inventory,
        site: Site,
        host: Host,
        build: Build,
        migrated: tuple[str, str] | None = None,
        maintenance: bool = False,
    ) -> None:
        self.maintenance = maintenance  # deploy --maintenance: no split
        # `migrated`: the migrate step's marker and the value it holds once this build migrated
        # this database, on a host that migrates; where it holds it, neither step has work.
        self.site, self.build = site, build
        paths = SitePaths.of(site)
        releases = (paths.release(build.release_id), paths.current)
        asked = Asked(site.name, releases, (paths.releases, build.tree))
        files = tuple(f"{r}/{ASKED_FILE}" for r in releases)
        self.fact = applied_fact(site, migrated, files)
        # SQLite: this host migrates its own file; PostgreSQL: the first app host migrates.
        migrating = host if not D.uses_postgresql(site) else migrating_host(inventory, site)
        self.asked: Fact = asked if migrating.name == host.name else F.On(migrating.name, asked)
        self.id = f"backup:{site.name}"
        self.name = f"backup {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [self.fact, self.asked]

    def split(self, report: DjangoReport, applied: frozenset[str]) -> Split:
        if self.maintenance:
            plain = "--maintenance: as Django writes them, behind the maintenance page"
        elif not app_of(self.site).migrate_split:
            plain = "migrate_split = false: as Django writes them"
        else:
            plain = ""
        return schema.split(self.site.name, report, applied, plain=plain)

    def report(self, ctx: Context) -> DjangoReport | None:
        """What Django said of the release: in this run's prepare, else when it was prepared."""
        said = [r for _, r in ctx.outcomes_of(DjangoReport) if r.site == self.site.name]
        return said[-1] if said else ctx.facts[self.asked]

    def plan(self, ctx: Context) -> Plan:
        applied = ctx.facts[self.fact]
        report = self.report(ctx)
        default = report.default if report is not None else None
        if applied is None:
            return Plan(
                error=f"cannot read the migrations applied to {self.fact.where}: "
                "is the database up? (no backup: not migrating)"
            )
        if MIGRATED in applied:
            return Plan(reason="migrations done for this release")
        if ELSEWHERE in applied:
            what = default.describe() if default else "not SQLite"
            return Plan(
                reason=f"Django's database is {what}, which hosts.toml does not manage: "
                "not backed up (a [database] table puts it in the kit's hands)"
            )
        if NO_TABLE in applied:
            return Plan(reason="no migrations applied yet: nothing to back up")
        try:
            aliases, unmanaged = other_aliases(self.site, report)
        except ValueError as exc:
            return Plan(error=str(exc))
        found: tuple[Split, ...] = ()
        if report is None:
            # Prepared by a kit that did not ask Django: whatever the release brings.
            pending = [Migration("(the release's migrations are unknown)")]
        else:
            pending = report.pending(applied)
            found = (self.split(report, applied),)
            if found[0].refused:
                why = "not backed up: the migrations are refused (the migrate step says why)"
                return Plan(reason=why, outcomes=found)
        if not pending:
            return Plan(reason="no unapplied migrations" + unmanaged)
        backup_id = self.build.release_id
        sqlite_file = sqlite_of(report)
        meta = metadata(self.site, backup_id, "before migrate", pending, sqlite_file)
        if found and not (found[0].after or found[0].plain):
            # Only additions, some with a temporary database default: a plain rollback past
            # them puts those defaults back (DefaultsBack) and keeps the rest.
            meta["expand_only"] = True
            meta["defaults"] = [d.data() for d in found[0].defaults]
        names = [m.name for m in pending]
        also = f" (and alias {', '.join(aliases)})" if aliases else ""
        return Plan(
            [
                Action(
                    f"{backup_id}{also} before {len(names)} migration(s): "
                    + ", ".join(names[:3])
                    + (" ..." if len(names) > 3 else "")
                    + unmanaged,
                    backup_script(self.site, backup_id, meta, sqlite_file, aliases),
                    progress="backing up the database",
                )
            ],
            outcomes=found,
        )


class BeforeContract(BeforeMigrate):
    """A backup right before the contract phase removes what the old release read (after the
    switch, once it is gone): the rollback past it needs --restore-db, which names it."""

    def __init__(self, inventory: Inventory, site: Site, host: Host, build: Build) -> None:
        super().__init__(inventory, site, host, build)
        self.record = record_fact(inventory, site, host)
        self.id = f"backup-after:{site.name}"
        self.name = f"backup {site.name} before the removals"

    def facts(self, diff: bool) -> list[Fact]:
        return [self.asked, self.record]

    def plan(self, ctx: Context) -> Plan:
        due = after_switch_due(ctx, self.site, self.record)
        names = (due or {}).get("migrations") or []
        if not names:
            return Plan(reason="no migration left for after the switch")
        report = self.report(ctx)
        sqlite_file = sqlite_of(report)
        try:
            aliases, _ = other_aliases(self.site, report)
        except ValueError as exc:
            return Plan(error=str(exc))
        backup_id = f"{self.build.release_id}-after"
        pending = [Migration(name) for name in names]
        meta = metadata(self.site, backup_id, "before migrate", pending, sqlite_file)
        meta["release"] = self.build.release_id
        return Plan(
            [
                Action(
                    f"{backup_id} before {', '.join(names)} (after the switch)",
                    backup_script(self.site, backup_id, meta, sqlite_file, aliases),
                    progress="backing up the database",
                )
            ]
        )


@dataclass(frozen=True)
class AfterSwitchCheck:
    """`fab status`: work a deploy left for after its switch (removals, temporary defaults),
    kept on the migrating host until the next completed deploy does it."""

    path: str

    def facts(self) -> list[Fact]:
        return [F.Text(self.path)]

    def read(self, facts: Facts, now: float) -> StatusPart:
        found = read_record(facts[F.Text(self.path)])
        if not found:
            return StatusPart("after_switch", None)
        words = schema.describe_record(found)
        return StatusPart("after_switch", found, [("schema", words)], warnings=[words])


class DbComponent(Component):
    """Backups before migrations (the deploy's `backup` phase); a rollback's guard against an
    older release on a newer schema, and its --restore-db (the `restore` phase); what a deploy
    left for after its switch, in `fab status`."""

    name = "backups"
    after = ("database",)  # backups where the database is, once it is set up

    def status(self, inventory: Inventory, site: Site, host: Host) -> list[StatusCheck]:
        if not migrates_here(inventory, site, host):
            return []
        return [AfterSwitchCheck(record_path(site))]

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        inventory, host = run.inventory, run.host
        if phase == Phase.BACKUP and run.builds:
            return [
                BeforeMigrate(
                    inventory,
                    site,
                    host,
                    run.builds[site.name],
                    migrate_marker(run.builds[site.name], inventory)
                    if migrates_here(inventory, site, host)
                    else None,
                    run.options.maintenance,
                )
                for site in run.sites
                if site.name in run.builds and holds_database(inventory, site, host)
            ]
        if phase == Phase.VERIFY and run.builds:
            return [
                BeforeContract(inventory, site, host, run.builds[site.name])
                for site in run.sites
                if site.name in run.builds and holds_database(inventory, site, host)
            ]
        job = run.job
        if job is None or job.rule is not Rule.PREVIOUS:
            return []
        policy, to = run.options.rollback_db, job.to
        sites = [s for s in run.sites if D.of(s).engine != "external"]
        if phase == Phase.RESTORE and policy == "restore":
            return [
                *(
                    RestoreForRollback(inventory, s, host, to)
                    for s in sites
                    if holds_database(inventory, s, host)
                ),
                *(ForgetMigrated(s) for s in sites if migrates_here(inventory, s, host)),
            ]
        if phase == Phase.RESTORE:
            return [
                DefaultsBack(inventory, s, host, to)
                for s in sites
                if migrates_here(inventory, s, host)
            ]
        if phase == Phase.SWITCH and "app" in topology.roles(host):
            return [SchemaGuard(inventory, s, host, to, policy) for s in sites]
        return []


register(DbComponent())


# -- tasks ------------------------------------------------------------------------------------


class TakeBackup(Step):
    """A backup now (`fab db.backup`)."""

    def __init__(self, site: Site, backup_id: str) -> None:
        self.site, self.backup_id = site, backup_id
        self.asked = Asked(site.name, (SitePaths.of(site).current,))
        self.id = f"backup-now:{site.name}"
        self.name = f"backup {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [self.asked]

    def plan(self, ctx: Context) -> Plan:
        report = ctx.facts[self.asked]
        default = report.default if report is not None else None
        sqlite_file = None
        if default is not None and not D.uses_postgresql(self.site):
            if default.vendor != "sqlite":
                return Plan(error=f"Django's database is {default.describe()}: not the kit's")
            sqlite_file = default.name
        try:
            aliases, _ = other_aliases(self.site, report)
        except ValueError as exc:
            return Plan(error=str(exc))
        meta = metadata(self.site, self.backup_id, "on demand", [], sqlite_file)
        script = backup_script(self.site, self.backup_id, meta, sqlite_file, aliases)
        return Plan([Action(self.backup_id, script, progress="backing up the database")])


class ListBackups(Step):
    def __init__(self, site: Site) -> None:
        self.site = site
        self.id = f"backups:{site.name}"
        self.name = f"backups {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Backups(self.site.name)]

    def plan(self, ctx: Context) -> Plan:
        rows = ctx.facts[Backups(self.site.name)]
        newest = rows[-1]["id"] if rows else "none"
        return Plan(
            reason=f"{len(rows)} backup(s), newest: {newest}",
            outcomes=(BackupTable(self.site.name, tuple(rows)),),
        )


def _site(inventory: Inventory, name: str | None) -> Site:
    site = site_named(inventory, name)
    if D.of(site).engine == "external":
        raise user_error(
            f"site {name}: its database is external (sites.{name}.database.engine): "
            "back it up where it runs"
        )
    return site


def database_hosts(c, inventory: Inventory, site: Site) -> list[Host]:
    """The hosts that hold the site's database (narrowed to -H when given)."""
    found = [h for h in inventory.hosts.values() if holds_database(inventory, site, h)]
    chosen = site_hosts(c, inventory, found)
    if not chosen:
        raise user_error(f"site {site.name}: no host holds its database among the targets")
    return chosen


@targets_task(
    help={
        "site": "the site (sites.<name> in hosts.toml)",
        "json_": "print the report as JSON",
        "quiet": "print only changes, failures and the recap",
    }
)
def backup(c, site=None, json_=False, quiet=False):
    """Back up a site's database now, where it is (kept with the deploys' backups)."""
    inventory = load_inventory(c)
    chosen = _site(inventory, site)
    backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-manual"
    run_plans(
        c,
        lambda inv, host: [TakeBackup(chosen, backup_id)],
        json_=json_,
        quiet=quiet,
        inventory=inventory,
        hosts=database_hosts(c, inventory, chosen),
    )


@targets_task(help={"site": "the site (sites.<name> in hosts.toml)", "json_": "print JSON"})
def backups(c, site=None, json_=False):
    """List a site's database backups: id, when, why, the migrations it preceded."""
    inventory = load_inventory(c)
    chosen = _site(inventory, site)
    reports = run_plans(
        c,
        lambda inv, host: [ListBackups(chosen)],
        json_=json_,
        quiet=True,
        inventory=inventory,
        hosts=database_hosts(c, inventory, chosen),
    )
    if json_:
        return
    for report in reports:
        for table in report.outcomes_of(BackupTable):
            name, rows = table.site, table.rows
            print(f"\n{report.host} / {name}")
            print(f"  {'backup':<34} {'taken':<21} {'reason':<14} migrations")
            for row in reversed(rows):
                what = ", ".join(row.get("migrations", [])) or "-"
                print(f"  {row['id']:<34} {row['taken']:<21} {row['reason']:<14} {what}")


# -- restore ------------------------------------------------------------------------------------


def restore_script(site: Site, backup: dict) -> str:
    """Put a backup's data back, all or nothing: PostgreSQL in one transaction (the schema
    dropped and made again, then the dump's SQL), SQLite by an atomic rename of a copy."""
    q = shlex.quote
    db = D.of(site)
    file = backup.get("file") or ""
    if db.engine == "postgresql":
        fresh = f'drop schema public cascade; create schema public authorization "{db.user}";'
        sql = f"{BACKUPS}/{site.name}/.restore.sql"
        psql = (
            "runuser -u postgres -- psql -XAtq --single-transaction -v ON_ERROR_STOP=1 "
            f"-d {q(db.name)}"
        )
        # The dump's SQL is written out whole first (a damaged dump fails here, before anything
        # changed), then run in one transaction after the schema is made anew.
        return f"""set -e
umask 077
trap 'rm -f {q(sql)}' EXIT
printf '%s\\n' {q(fresh)} > {q(sql)}
pg_restore --no-acl -f - {q(file)} >> {q(sql)}
{psql} < {q(sql)} > /dev/null
"""
    # Where each file was taken from: the files Django connects to.
    pairs = [(file, backup.get("database") or SitePaths.of(site).db)]
    pairs += [(a["file"], a["database"]) for _, a in sorted(backup.get("aliases", {}).items())]
    user = q(site.user)
    # Every copy in place first, then the renames: a missing file changes nothing.
    copy = "\n".join(
        f"test -f {q(kept)}\ninstall -o {user} -g {user} -m 600 {q(kept)} {q(to + '.restoring')}"
        for kept, to in pairs
    )
    move = "\n".join(
        f"rm -f {q(to + '-wal')} {q(to + '-shm')}\nmv -f {q(to + '.restoring')} {q(to)}"
        for _, to in pairs
    )
    return f"set -e\n{copy}\n{move}\n"


class Restore(Step):
    """The site's database from one of its backups (`fab db.restore`)."""

    def __init__(self, site: Site, backup_id: str) -> None:
        self.site, self.backup_id = site, backup_id
        self.id = f"restore:{site.name}"
        self.name = f"restore {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Backups(self.site.name)]

    def plan(self, ctx: Context) -> Plan:
        found = {b["id"]: b for b in ctx.facts[Backups(self.site.name)]}
        if self.backup_id not in found:
            return Plan(
                error=f"no backup {self.backup_id} of site {self.site.name} here "
                f"(fab db.backups --site {self.site.name})"
            )
        script = restore_script(self.site, found[self.backup_id])
        return Plan([Action(f"from {self.backup_id}", script, progress="restoring the database")])


class ForgetMigrated(Step):
    """On a migrating host, after the database was put back: the migrate step's marker goes, so
    the next deploy migrates again (a release whose migrations the restore undid would otherwise
    count as migrated, and go live on the older schema)."""

    def __init__(self, site: Site) -> None:
        self.marker = migrated_marker(site)
        self.id = f"forget-migrated:{site.name}"
        self.name = f"migrate marker {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [F.Text(self.marker)]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[F.Text(self.marker)] is None:
            return Plan(reason="none: the next deploy migrates")
        script = f"rm -f -- {shlex.quote(self.marker)}"
        return Plan([Action("removed: the next deploy migrates again", script)])


def migrated_since(backups: list[dict], target: str, live: str | None) -> list[dict]:
    """The backups taken before a release newer than `target` (and not newer than the live
    one) migrated: the schema went past `target`'s there. Oldest first."""
    return [
        b
        for b in backups
        if b.get("reason") == "before migrate"
        and b.get("release", b["id"]) > target
        and (live is None or b.get("release", b["id"]) <= live)
    ]


PHASES = ("maintenance-on", "stop", "restore", "start", "maintenance-off")


def restore_plan(
    inventory: Inventory, host: Host, site: Site, backup_id: str, message: str
) -> HostPlan:
    """One host's part of a restore, phase by phase across the site's hosts: the page on (web
    hosts), the workers stopped, the data back (where the database is), workers started, page
    off."""
    mine = topology.roles(host) if host.name in site.hosts else set()
    workers = [u for _, u, _ in celery.units(site, host)] if "worker" in mine else []
    by_phase: dict[str, list[Step]] = {name: [] for name in PHASES}
    if "web" in mine:
        by_phase["maintenance-on"] = maintenance.steps(inventory, site, "on", message)
        by_phase["maintenance-off"] = maintenance.steps(inventory, site, "off", "")
    if workers:
        stop = "\n".join(line for u in workers for line in procs.stop(u))
        by_phase["stop"] = [Run(f"stop-workers:{site.name}", f"workers {site.name}", "stop", stop)]
        by_phase["start"] = [Service(u) for u in workers]
    if holds_database(inventory, site, host):
        by_phase["restore"] = [Restore(site, backup_id)]
    if migrates_here(inventory, site, host):
        by_phase["restore"].append(ForgetMigrated(site))
    return HostPlan(
        host,
        [PhaseSteps(name, steps) for name, steps in by_phase.items()],
        holds=[DeployLock((site.name,), 0.0)],
        audit=Restored(site.name, backup_id),
    )


@targets_task(
    help={
        "site": "the site (sites.<name> in hosts.toml)",
        "from_": "the backup's id (fab db.backups --site S)",
        "yes": "do it without asking (needed when stdin is not a terminal)",
        "message": "text of the maintenance page meanwhile",
        "json_": "print the report as JSON",
        "quiet": "print only changes, failures and the recap",
    }
)
def restore(c, site=None, from_=None, yes=False, message="", json_=False, quiet=False):
    """Restore a site's database from a backup: maintenance page on, workers stopped, restore,
    workers started, page off (under the deploy lock)."""
    inventory = load_inventory(c)
    chosen = _site(inventory, site)
    if not from_:
        raise user_error(f"which backup? --from ID (fab db.backups --site {chosen.name})")
    question = f"Replace the data of site {chosen.name} with backup {from_}?"
    refusal = f"restoring replaces the data of site {chosen.name}: pass --yes"
    if not confirm(question, yes, refusal):
        raise user_error("not restored")
    involved = [inventory.hosts[n] for n in chosen.hosts]
    involved += [h for h in database_hosts(c, inventory, chosen) if h not in involved]
    announced = events.announcer(
        "restore", inventory, involved, json_, False, only=chosen.name, detail=from_
    )
    events.announced_run(
        announced,
        lambda collect: run_plans(
            c,
            lambda inv, host: restore_plan(inv, host, chosen, from_, message),
            json_=json_,
            quiet=quiet,
            inventory=inventory,
            hosts=involved,
            collect=collect,
        ),
    )


# -- rollback across migrations -------------------------------------------------------------------


def _on(inventory: Inventory, site: Site, host: Host, fact: Fact):
    """`fact` of the host that keeps the site's backups, as seen from `host`."""
    keeper = next((h for h in inventory.hosts.values() if holds_database(inventory, site, h)), None)
    if keeper is None or keeper.name == host.name:
        return fact
    return F.On(keeper.name, fact)


class SchemaGuard(Step):
    """A rollback to a release older than migrations applied since refuses, unless told to
    restore the backup taken before them (--restore-db) or to keep today's schema
    (--keep-db)."""

    def __init__(self, inventory: Inventory, site: Site, host: Host, to: str | None, policy: str):
        self.site, self.policy = site, policy
        self.target = PreviousGood(site, to)
        self.backups = _on(inventory, site, host, Backups(site.name))
        self.id = f"schema-guard:{site.name}"
        self.name = f"database of {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [*self.target.facts(), self.backups]

    def plan(self, ctx: Context) -> Plan:
        try:
            target = self.target.resolve(ctx.facts)
        except LookupError:
            return Plan(reason="no rollback target (the switch says why)")
        live = live_release(ctx.facts, SitePaths.of(self.site))
        since = migrated_since(ctx.facts[self.backups] or [], target, live)
        if not since:
            return Plan(reason=f"no migration applied since {target}")
        names = sorted({m for b in since for m in b.get("migrations", [])})
        if self.policy != "restore" and all(b.get("additive") for b in since):
            # New models, nullable columns, columns with a database default: the older
            # release neither reads them nor must write them.
            return Plan(reason=f"only additions since {target} ({', '.join(names)}): kept")
        if self.policy != "restore" and only_additions(since):
            put = ", ".join(d.describe() for d in defaults_of(since))
            return Plan(
                reason=f"only additions since {target} ({', '.join(names)}): kept, with "
                f"their database defaults back ({put})"
            )
        if self.policy == "keep":
            return Plan(reason=f"keeping today's schema (--keep-db): {', '.join(names)}")
        if self.policy == "restore":
            return Plan(reason=f"restored from {since[0]['id']} before the switch (--restore-db)")
        return Plan(
            error=(
                f"{target} is older than migrations applied since ({', '.join(names)}): "
                f"--restore-db puts back the backup taken before them ({since[0]['id']}), "
                "--keep-db keeps today's schema"
            )
        )


def only_additions(since: list[dict]) -> bool:
    """Whether the backups a rollback goes past preceded only additions (some with a
    temporary database default, which the rollback puts back)."""
    return bool(since) and all(b.get("additive") or b.get("expand_only") for b in since)


def defaults_of(since: list[dict]) -> list[schema.TemporaryDefault]:
    found = [schema.TemporaryDefault.of(raw) for b in since for raw in b.get("defaults", [])]
    return [d for d in found if d is not None]


class DefaultsBack(Step):
    """A plain rollback past columns added with a temporary database default: the defaults
    are put back before the switch (the older release's INSERTs omit those columns), by the
    live release's Django on the migrating host, and kept on the record for the next deploy
    to drop once the older release is gone again."""

    def __init__(self, inventory: Inventory, site: Site, host: Host, to: str | None) -> None:
        self.site, self.paths = site, SitePaths.of(site)
        self.target = PreviousGood(site, to)
        self.backups = _on(inventory, site, host, Backups(site.name))
        self.record = F.Text(record_path(site))
        self.id = f"defaults-back:{site.name}"
        self.name = f"database defaults of {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [*self.target.facts(), self.backups, self.record]

    def plan(self, ctx: Context) -> Plan:
        try:
            target = self.target.resolve(ctx.facts)
        except LookupError:
            return Plan(reason="no rollback target (the switch says why)")
        live = live_release(ctx.facts, self.paths)
        since = migrated_since(ctx.facts[self.backups] or [], target, live)
        wanted = defaults_of(since)
        if live is None or not wanted or not only_additions(since):
            return Plan(reason="no temporary default to put back")
        code = runner("defaults_back", {"defaults": [d.data() for d in wanted]})
        keep = schema.record(
            Split(self.site.name, defaults=tuple(wanted)), live, read_record(ctx.facts[self.record])
        )
        q = shlex.quote
        script = (
            "set -e\n"
            f"{manage(self.site, self.paths, self.paths.release(live), f'shell -c {q(code)}')}\n"
            f"{write_record(self.record.path, keep)}\n"
        )
        words = ", ".join(d.describe() for d in wanted)
        return Plan([Action(f"put back before the switch to {target}: {words}", script)])


class RestoreForRollback(Step):
    """With --restore-db, where the database is: the backup taken before the first migration
    applied after the rollback's target, put back before the switch."""

    def __init__(self, inventory: Inventory, site: Site, host: Host, to: str | None) -> None:
        self.site = site
        self.target = PreviousGood(site, to)
        app_host = migrating_host(inventory, site)
        remote = app_host.name != host.name
        self.reads = {
            fact: F.On(app_host.name, fact) if remote else fact for fact in self.target.facts()
        }
        self.id = f"restore-for-rollback:{site.name}"
        self.name = f"restore {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [*self.reads.values(), Backups(self.site.name)]

    def plan(self, ctx: Context) -> Plan:
        seen = F.Facts({fact: ctx.facts[read] for fact, read in self.reads.items()})
        try:
            target = self.target.resolve(seen)
        except LookupError:
            return Plan(reason="no rollback target")
        live = live_release(seen, SitePaths.of(self.site))
        since = migrated_since(ctx.facts[Backups(self.site.name)], target, live)
        if not since:
            return Plan(reason=f"no migration applied since {target}: nothing to restore")
        backup = since[0]
        script = restore_script(self.site, backup)
        return Plan(
            [
                Action(
                    f"from {backup['id']} (before it migrated)",
                    script,
                    progress="restoring the database",
                )
            ]
        )
