"""Backups before migrations, their pure parts: the applied-migrations fact read through the
migrate step's marker (a deploy whose release already migrated this database opens neither the
database nor the wheels), and where that marker is trusted."""

from __future__ import annotations

import shlex
import sqlite3
import subprocess
from dataclasses import replace
from pathlib import Path

from djk.tasks import release
from djk.tasks.database import MIGRATED, NO_TABLE, Applied
from djk.tasks.db import BeforeMigrate
from djk.tasks.deploy import deploy_plan
from djk.tasks.engine.inventory import parse
from djk.tasks.release import asked
from djk.tasks.release.commands import FreshMigrate, PrepareFindings

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


def read(fact: Applied) -> frozenset | None:
    done = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True)
    return fact.parse(done.returncode, done.stdout)


def test_applied_is_read_unless_the_marker_names_this_build(tmp_path):
    db, marker = tmp_path / "db.sqlite3", tmp_path / ".djk-migrated"
    plain = Applied("sqlite", str(db))
    assert read(plain) == {NO_TABLE}  # no database yet
    with sqlite3.connect(db) as c:
        c.execute("create table django_migrations (app text, name text)")
        c.execute("insert into django_migrations values ('pages', '0001_initial')")
    guarded = Applied("sqlite", str(db), (str(marker), "k1|sqlite:web1:x"))
    assert read(guarded) == {"pages.0001_initial"}  # no marker: the database is read
    marker.write_text("k0|sqlite:web1:x\n")
    assert read(guarded) == {"pages.0001_initial"}  # another build's marker: read
    marker.write_text("k1|sqlite:web1:x\n")
    db.unlink()
    db.mkdir()  # a database that cannot be opened: the marker alone answers
    assert read(plain) is None
    assert read(guarded) == {MIGRATED}


def _inventory(tmp_path, database: dict, hosts: list[str]):
    # With a db host, the app hosts do not hold the database (no roles: every role).
    roles = {"roles": ["web", "app", "worker", "broker"]} if "db1" in hosts else {}
    (tmp_path / "s.env").write_text("DJANGO_SECRET_KEY=k-123456789\n")
    site = {
        "domains": ["shop.test"],
        "hosts": hosts,
        "source": str(EXAMPLE),
        "asgi": "exampleproject.asgi:application",
        "settings": "exampleproject.settings",
        "port": 8001,
        "env_file": "s.env",
        "database": database,
    }
    data = {
        "hosts": {
            "web1": {"address": "10.213.5.11", **roles},
            "web2": {"address": "10.213.5.12", **roles},
            "db1": {"address": "10.213.5.20", "roles": ["db"]},
        },
        "sites": {"shop": site},
    }
    return parse(data, tmp_path / "hosts.toml")


def _backup_fact(inventory, host: str) -> Applied:
    site = inventory.sites["shop"]
    build = release.Build(site, "R2", "t2", "d1", "rev")
    plan = deploy_plan(inventory, inventory.hosts[host], {"shop": build}, targets=[host])
    (phase,) = [p for p in plan.phases if p.name == "backup"]
    (step,) = [s for s in phase.steps if isinstance(s, BeforeMigrate)]
    return step.fact


def test_the_marker_is_trusted_only_on_the_host_that_migrates(tmp_path):
    sqlite = _inventory(tmp_path, {"engine": "sqlite"}, ["web1"])
    build = release.Build(sqlite.sites["shop"], "R2", "t2", "d1", "rev")
    migrate = release.migrate_step(build, sqlite)
    # The very marker and value the migrate step checks: both skip, or neither.
    assert _backup_fact(sqlite, "web1").unless == (migrate.marker, migrate.key)
    postgres = _inventory(tmp_path, {"engine": "postgresql"}, ["web1", "web2", "db1"])
    # The db host migrates nothing: a marker there says nothing about the database.
    assert _backup_fact(postgres, "db1").unless is None
    assert _backup_fact(postgres, "db1").engine == "postgresql"


def _phase_steps(inventory, host: str, phase: str):
    build = release.Build(inventory.sites["shop"], "R2", "t2", "d1", "rev")
    plan = deploy_plan(inventory, inventory.hosts[host], {"shop": build}, targets=[host])
    (found,) = [p for p in plan.phases if p.name == phase]
    return found.steps


def _prepare_output(tmp_path, prepare, said: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The prepare's script around a command that prints what ask_django would."""
    release_dir = tmp_path / "releases" / "R2"
    release_dir.mkdir(parents=True)
    command = f"printf '%s\\n' 'collected 3 files' {shlex.quote(asked.PREFIX + said)}"
    script = prepare.wrap(command, str(release_dir))
    return subprocess.run(["sh", "-ec", script], capture_output=True, text=True), release_dir


def test_a_first_deploys_prepare_leaves_the_marker_only_when_django_migrated(tmp_path):
    inventory = _inventory(tmp_path, {"engine": "sqlite"}, ["web1"])
    (prepare,) = [s for s in _phase_steps(inventory, "web1", "stage") if s.name == "prepare shop"]
    (migrate,) = _phase_steps(inventory, "web1", "migrate")
    # The very marker and value the migrate step reads.
    assert prepare.fresh == FreshMigrate(migrate.marker, migrate.key)
    marker = tmp_path / "marker"
    prepare.fresh = FreshMigrate(str(marker), "k1|")
    report = asked.DjangoReport(
        "shop", (asked.Database("default", "sqlite", "/x/db.sqlite3"),), fresh=False
    )
    done, release_dir = _prepare_output(tmp_path / "a", prepare, report.json())
    assert done.returncode == 0, done.stderr
    assert not marker.exists()  # the database had tables: the migrate phase migrates
    kept = (release_dir / asked.FILE).read_text()
    assert asked.parse("shop", kept) == report  # what later runs read (asked.Asked)
    fresh = replace(report, fresh=True)
    done, _ = _prepare_output(tmp_path / "b", prepare, fresh.json())
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "k1|\n"
    assert PrepareFindings("shop", False, True).read(done.stdout) == (
        "migrated the new database (it had no tables)",
        (fresh,),
    )


def test_a_backup_with_an_opted_in_alias_copies_both_files_and_restores_both(tmp_path, monkeypatch):
    import json

    from djk.tasks import db as DB

    monkeypatch.setattr(DB, "BACKUPS", str(tmp_path / "backups"))
    inventory = _inventory(tmp_path, {"also_back_up": ["legacy"]}, ["web1"])
    site = inventory.sites["shop"]
    default, legacy = tmp_path / "shop.sqlite3", tmp_path / "legacy.sqlite3"
    for path, table in ((default, "orders"), (legacy, "archive")):
        with sqlite3.connect(path) as c:
            c.execute(f"create table {table} (id integer)")
    meta = DB.metadata(site, "R2", "on demand", [], str(default))
    script = DB.backup_script(site, "R2", meta, str(default), {"legacy": str(legacy)})
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kept = tmp_path / "backups" / "shop"
    about = json.loads((kept / "R2.json").read_text())
    assert about["database"] == str(default) and about["file"] == str(kept / "R2.sqlite3")
    assert about["aliases"] == {
        "legacy": {"database": str(legacy), "file": str(kept / "R2.legacy.sqlite3")}
    }
    for copy, table in (("R2.sqlite3", "orders"), ("R2.legacy.sqlite3", "archive")):
        with sqlite3.connect(kept / copy) as c:
            assert c.execute("select name from sqlite_master").fetchall() == [(table,)]
    assert not list(kept.glob(".*.tmp"))
    # The restore puts each file back where it was taken from, all copies before any rename.
    restore = DB.restore_script(site, about)
    lines = restore.splitlines()
    renames = [i for i, line in enumerate(lines) if line.startswith("mv -f")]
    copies = [i for i, line in enumerate(lines) if line.startswith("install -o")]
    assert len(renames) == len(copies) == 2 and max(copies) < min(renames)
    assert f"mv -f {legacy}.restoring {legacy}" in restore
    assert f"mv -f {default}.restoring {default}" in restore
