"""Backups before migrations on SQLite (the PostgreSQL ones: test_postgres.py): a release with a
migration that adds a column and fills it gets a backup of the database first, with the rows of
before; a release without a new migration gets none; the backups are listed; a failing backup
stops the deploy before it migrates, and the release before keeps serving; a rollback past a
removal refuses, then restores with --restore-db."""

from __future__ import annotations

import json
import shlex

import pytest

from .kit import Project, add_migration, curl, health, sh

pytestmark = pytest.mark.e2e
DB = "/srv/djk/example/shared/db.sqlite3"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(src), database={"keep_backups": 2})
    project.write()
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    for _ in range(3):
        curl(fresh_host, "/")  # a visit each: rows to keep
    return project


def query(host, db: str, sql: str) -> list:
    code = (
        "import json, sqlite3; "
        f"print(json.dumps([r[0] for r in sqlite3.connect({db!r}).execute({sql!r})]))"
    )
    return json.loads(sh(host, f"python3 -c {shlex.quote(code)}"))


def count(host, db: str, where: str = "") -> int:
    return query(host, db, f"select count(*) from pages_visit {where}")[0]


def step_line(run, step: str) -> str:
    return next(line for line in run.out.splitlines() if step in line)


def deploy(project, *args: str):
    run = project.fab("-H", "web1", "deploy", *args)
    assert run.code == 0, run.out + run.err
    return run


def test_a_release_with_a_migration_is_preceded_by_a_backup(project, fresh_host, src):
    rows = count(fresh_host, DB)
    assert rows >= 3
    name = add_migration(src, 2, "note")
    run = deploy(project)
    line = step_line(run, "backup example")
    assert "changed" in line and f"before 1 migration(s): {name}" in line, line
    release = health(fresh_host)["release"]
    backup = f"/var/backups/djk/example/{release}.sqlite3"
    assert sh(fresh_host, f"stat -c '%a %U' {backup} /var/backups/djk/example").split() == [
        "600",
        "root",
        "700",
        "root",
    ]
    assert count(fresh_host, backup) == rows  # the rows of before, in the schema of before
    assert count(fresh_host, DB, "where note like 'filled-%'") == rows  # migrated after
    about = json.loads(sh(fresh_host, f"cat /var/backups/djk/example/{release}.json"))
    assert about["migrations"] == [name] and about["reason"] == "before migrate"
    listed = project.fab("db.backups", "--site", "example", "--json")
    assert listed.code == 0, listed.err
    (host,) = listed.report["hosts"]
    assert [b["id"] for b in host["extra"]["backup_table"]["example"]] == [release]


def test_a_release_without_a_new_migration_takes_no_backup(project, fresh_host, src):
    (src / "VERSION").write_text("5.0.0\n")
    run = deploy(project)
    line = step_line(run, "backup example")
    assert "ok" in line and "no unapplied migrations" in line, line
    assert len(sh(fresh_host, "ls /var/backups/djk/example/*.json").split()) == 1


def test_a_failing_backup_stops_the_deploy_before_it_migrates(project, fresh_host, src):
    before = health(fresh_host)["release"]
    name = add_migration(src, 3, "extra")
    # The backup cannot be written: its directory is a file now.
    sh(
        fresh_host,
        "mv /var/backups/djk/example /var/backups/djk/kept && touch /var/backups/djk/example",
    )
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        sh(
            fresh_host,
            "rm /var/backups/djk/example && mv /var/backups/djk/kept /var/backups/djk/example",
        )
    assert run.code == 1
    assert "failed  | backup example" in run.out, run.out
    assert "migrate example" in run.out and "skipped | migrate example" in run.out
    assert health(fresh_host)["release"] == before  # the release before still serves
    assert name.split(".")[1] not in query(fresh_host, DB, "select name from django_migrations")
    run = deploy(project)  # with the backup directory back: backed up, migrated, live
    assert f"before 1 migration(s): {name}" in run.out
    assert health(fresh_host)["release"] != before
    # keep_backups = 2: the oldest went.
    assert len(sh(fresh_host, "ls /var/backups/djk/example/*.json").split()) == 2


def columns(host) -> list[str]:
    return query(host, DB, "select name from pragma_table_info('pages_visit')")


REMOVE = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("pages", "{previous}")]
    operations = [migrations.RemoveField("visit", "{field}")]
"""


def remove_field(src, number: int, field: str) -> str:
    """A release whose migration removes a column add_migration added (and the model's field)."""
    folder = src / "pages/migrations"
    previous = sorted(p.stem for p in folder.glob("0*.py"))[-1]
    name = f"{number:04d}_remove_{field}"
    (folder / f"{name}.py").write_text(REMOVE.format(previous=previous, field=field))
    models = src / "pages/models.py"
    line = f'    {field} = models.CharField(max_length=60, default="")\n'
    models.write_text(models.read_text().replace(line, ""))
    return f"pages.{name}"


def test_a_rollback_across_a_removal_refuses_then_restores_with_restore_db(
    project, fresh_host, src
):
    name = remove_field(src, 4, "extra")
    removed = deploy(project)  # the removal runs after the switch, once the old release is gone
    assert "changed | after the switch example" in removed.out, removed.out
    live = health(fresh_host)["release"]
    assert "extra" not in columns(fresh_host)
    refused = project.fab("-H", "web1", "rollback")
    assert refused.code == 1
    assert "--restore-db" in refused.out and name in refused.out, refused.out
    assert health(fresh_host)["release"] == live  # nothing switched
    run = project.fab("-H", "web1", "rollback", "--restore-db")
    assert run.code == 0, run.out + run.err
    assert f"restore example: from {live} (before it migrated)" in run.out, run.out
    back = health(fresh_host)["release"]
    assert back != live and back < live
    assert "extra" in columns(fresh_host) and "note" in columns(fresh_host)
    applied = query(fresh_host, DB, "select name from django_migrations")
    assert name.split(".")[1] not in applied and "0003_extra" in applied
    # The newer release deployed again migrates again: the restore undid its migration, and
    # the marker that said it had run went with it.
    again = deploy(project)
    assert "changed" in step_line(again, "migrate example"), again.out
    assert health(fresh_host)["release"] > live
    assert "extra" not in columns(fresh_host)


def test_db_restore_puts_back_the_rows_of_a_backup(project, fresh_host):
    taken = project.fab("db.backup", "--site", "example", "--json")
    assert taken.code == 0, taken.out + taken.err
    (step,) = [s for s in taken.report["hosts"][0]["steps"] if s["step"] == "backup example"]
    backup_id = step["detail"]
    rows = count(fresh_host, DB)
    for _ in range(4):
        curl(fresh_host, "/")
    assert count(fresh_host, DB) == rows + 4
    asked = project.fab("db.restore", "--site", "example", "--from", backup_id)
    assert asked.code == 2 and "--yes" in asked.err  # stdin is not a terminal: nothing asked
    run = project.fab("db.restore", "--site", "example", "--from", backup_id, "--yes", "--json")
    assert run.code == 0, run.out + run.err
    steps = [(s["step"], s["status"]) for s in run.report["hosts"][0]["steps"]]
    assert steps.count(("maintenance page example", "changed")) == 2  # on, then off
    assert ("restore example", "changed") in steps
    assert ("migrate marker example", "changed") in steps  # the next deploy migrates again
    assert count(fresh_host, DB) == rows
    assert curl(fresh_host, "/").split("\n")[1].split(" ")[1] == "200"  # page off
    unknown = project.fab("db.restore", "--site", "example", "--from", "nope", "--yes")
    assert unknown.code == 1 and "no backup nope" in unknown.out
