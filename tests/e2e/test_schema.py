"""Schema changes under load with zero failed requests (release/schema.py): a site on SQLite and
one on PostgreSQL on one host, keep-alive clients that never retry sending GETs and POSTs that
INSERT into the altered table and answer with the release that served them, from before the
migrations until every old process is gone.

(a) a NOT NULL column with a constant model default and (c) a new model and a nullable column,
in one deploy; (b) a NOT NULL column without a default removed; (d) an index on 100,000 rows,
built concurrently on PostgreSQL. The negative control: the same kind of change with the split
turned off shows failed requests. A rename is refused before any migration, and runs behind the
maintenance page with --maintenance. A run cut after its switch leaves its removal pending
(`fab status` says so) and the next deploy does it."""

from __future__ import annotations

import shlex
import shutil
import signal
import time
from pathlib import Path

import pytest

from .kit import EXAMPLE, Load, Project, health, sh, spawn_fab, wait_for_line

pytestmark = pytest.mark.e2e

# One view in every release: it INSERTs a Visit with the fields this release's model has.
VISIT_VIEW = """

def _fields(where: str) -> dict:
    names = {f.name for f in Visit._meta.get_fields()}
    return {"path": where} if "path" in names else {}


@csrf_exempt
@require_POST
def visit(request: HttpRequest) -> JsonResponse:
    row = Visit.objects.create(**_fields("/visit/"))
    return JsonResponse({"release": settings.APP_RELEASE, "id": row.pk})
"""

MODEL_HEAD = "from django.db import models\n\n\nclass Visit(models.Model):\n"
CREATED = "    created_at = models.DateTimeField(auto_now_add=True)\n"
PATH = "    path = models.CharField(max_length=255)\n"
KIND = '    kind = models.CharField(max_length=20, default="misc")\n'
NOTE = "    note = models.TextField(null=True)\n"
TAG = "\n\nclass Tag(models.Model):\n    name = models.CharField(max_length=40)\n"

MIGRATION = (
    "from django.db import migrations, models\n\n\n"
    "class Migration(migrations.Migration):\n"
    "    dependencies = [('pages', '{previous}')]\n"
    "    operations = [\n{operations}    ]\n"
)
ADD_KIND = (
    "        migrations.AddField('visit', 'kind', "
    "models.CharField(max_length=20, default='misc')),\n"
)
ADD_TAG_NOTE = (
    "        migrations.AddField('visit', 'note', models.TextField(null=True)),\n"
    "        migrations.CreateModel('Tag', [('id', models.BigAutoField(auto_created=True, "
    "primary_key=True, serialize=False)), ('name', models.CharField(max_length=40))]),\n"
)
REMOVE_PATH = "        migrations.RemoveField('visit', 'path'),\n"
ADD_INDEX = (
    "        migrations.AddIndex('visit', models.Index(fields=['created_at'], "
    "name='visit_created_ix')),\n"
)
RENAME = "        migrations.RenameField('visit', 'kind', 'category'),\n"
REMOVE_NOTE = "        migrations.RemoveField('visit', 'note'),\n"


def table(host, site: str = "example") -> str:
    """How SQLite keeps the pages_visit table of a site (its CREATE TABLE)."""
    code = (
        "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("
        "\"select sql from sqlite_master where name = 'pages_visit'\").fetchone()[0])"
    )
    return sh(host, f"python3 -c {shlex.quote(code)} /srv/djk/{site}/shared/db.sqlite3")


def source(tmp_path_factory, name: str) -> Path:
    path = tmp_path_factory.mktemp(name) / "example"
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    views = path / "pages/views.py"
    text = views.read_text().replace(
        "Visit.objects.create(path=request.path[:255])",
        "Visit.objects.create(**_fields(request.path[:255]))",
    )
    views.write_text(text + VISIT_VIEW)
    urls = path / "pages/urls.py"
    urls.write_text(
        urls.read_text().replace(
            '    path("echo/", views.echo, name="echo"),\n',
            '    path("echo/", views.echo, name="echo"),\n'
            '    path("visit/", views.visit, name="visit"),\n',
        )
    )
    return path


def release(src: Path, number: int, operations: str, model: str, suffix: str = "") -> str:
    """The next release of a source: a migration and the model it leaves."""
    folder = src / "pages/migrations"
    previous = sorted(p.stem for p in folder.glob("0*.py"))[-1]
    name = f"{number:04d}_{suffix or 'change'}"
    text = MIGRATION.format(previous=previous, operations=operations)
    (folder / f"{name}.py").write_text(text)
    (src / "pages/models.py").write_text(MODEL_HEAD + model)
    return f"pages.{name}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return {"example": source(tmp_path_factory, "lite"), "shop": source(tmp_path_factory, "pg")}


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, sources):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(sources["example"]), health_path="/health/")
    project.others["shop"] = {
        "domains": ["shop.test"],
        "hosts": [fresh_host.name],
        "source": str(sources["shop"]),
        "asgi": "exampleproject.asgi:application",
        "settings": "exampleproject.settings",
        "port": 8002,
        "env_file": "example.env",
        "health_path": "/health/",
        "database": {"engine": "postgresql"},
    }
    project.write()
    run = project.fab("provision", "deploy")
    assert run.code == 0, run.out + run.err
    return project


DOMAINS = {"example": "example.test", "shop": "shop.test"}


class Watched:
    """A deploy run with a keep-alive client on each site, and where in each client's answers
    each site's migrations committed."""

    def __init__(self, project: Project, host, *args: str) -> None:
        self.project, self.host, self.args = project, host, args
        self.loads = {
            site: Load(host.address, domain, "/health/", keep_alive=True, post_path="/visit/")
            for site, domain in DOMAINS.items()
        }
        self.before = {site: health(host, domain)["release"] for site, domain in DOMAINS.items()}
        self.committed: dict[str, int] = {}
        self.out = ""
        self.code: int | None = None

    def run(self, marks: tuple[str, ...] = ()) -> Watched:
        for load in self.loads.values():
            load.__enter__()
        time.sleep(1.5)  # answers of the old release before anything changes
        proc = spawn_fab(self.project.inventory, *self.args)
        lines: list[str] = []
        try:
            for site in marks:
                lines += wait_for_line(proc, f"| changed | migrate {site}", timeout=300)
                self.committed[site] = self.loads[site].mark()
            rest, _ = proc.communicate(timeout=600)
            lines.append(rest)
            self.code = proc.returncode
        finally:
            if proc.poll() is None:
                proc.kill()
            time.sleep(1.5)  # answers of the new release after everything is done
            for load in self.loads.values():
                load.__exit__()
        self.out = "".join(lines)
        return self

    def old_posts_after_commit(self, site: str) -> int:
        load, start = self.loads[site], self.committed[site]
        return sum(
            1 for i in load.posted if i >= start and load.results[i] == ("200", self.before[site])
        )


def test_a_and_c_new_not_null_column_new_model_and_nullable_column(project, fresh_host, sources):
    release(sources["example"], 2, ADD_KIND, CREATED + PATH + KIND, "visit_kind")
    release(sources["example"], 3, ADD_TAG_NOTE, CREATED + PATH + KIND + NOTE + TAG, "tag")
    release(sources["shop"], 2, ADD_KIND, CREATED + PATH + KIND, "visit_kind")
    release(sources["shop"], 3, ADD_TAG_NOTE, CREATED + PATH + KIND + NOTE + TAG, "tag")
    watched = Watched(project, fresh_host, "deploy").run(marks=("example", "shop"))
    assert watched.code == 0, watched.out
    for site, load in watched.loads.items():
        assert load.failures == [], (site, load.failures[:5], watched.out)
        # The old release answered POSTs that INSERT into the altered table after the
        # migration committed: the database default carried them.
        assert watched.old_posts_after_commit(site) > 0, (site, watched.out)
        assert health(fresh_host, DOMAINS[site])["release"] != watched.before[site]
    out = watched.out
    assert "database default kept until the old release is gone" in out, out
    assert "temporary default dropped: pages.visit.kind" in out, out
    # The default is gone once the old release is: Django's own schema again.
    pg = "runuser -u postgres -- psql -d shop -Atc"
    default = f'{pg} "select column_default from information_schema.columns where '
    default += "table_name = 'pages_visit' and column_name = 'kind'\""
    assert sh(fresh_host, default).strip() == ""
    schema = table(fresh_host)
    assert "'misc'" not in schema and '"kind" varchar(20) NOT NULL' in schema


def test_a_plain_rollback_past_a_temporary_default_puts_it_back(project, fresh_host):
    rolled = Watched(project, fresh_host, "rollback", "--site", "example").run()
    assert rolled.code == 0, rolled.out
    assert rolled.loads["example"].failures == [], rolled.out
    assert "| changed | database defaults of example: put back" in rolled.out, rolled.out
    assert "'misc'" in table(fresh_host)  # the older release's INSERTs omit kind
    status = project.fab("status")
    assert "temporary defaults pages.visit.kind" in status.out, status.out
    again = Watched(project, fresh_host, "deploy").run()
    assert again.code == 0, again.out
    assert again.loads["example"].failures == [], again.out
    assert "temporary default dropped: pages.visit.kind" in again.out, again.out
    assert "'misc'" not in table(fresh_host)


def test_b_a_not_null_column_without_default_removed_after_the_switch(project, fresh_host, sources):
    for site in ("example", "shop"):
        release(sources[site], 4, REMOVE_PATH, CREATED + KIND + NOTE + TAG, "remove_path")
    watched = Watched(project, fresh_host, "deploy").run(marks=("example", "shop"))
    assert watched.code == 0, watched.out
    for site, load in watched.loads.items():
        assert load.failures == [], (site, load.failures[:5], watched.out)
        # The old release still wrote `path` after NOT NULL was dropped, until the switch.
        assert watched.old_posts_after_commit(site) > 0, (site, watched.out)
    out = watched.out
    assert "after the switch, once the old release is gone: pages.0004_remove_path" in out
    assert "NOT NULL dropped before the switch: pages.visit.path" in out, out
    assert "| changed | backup shop before the removals" in out, out
    columns = table(fresh_host)
    assert '"path"' not in columns
    # A plain rollback now would need the removed column: refused, naming the backup.
    back = project.fab("rollback", "--site", "shop")
    assert back.code != 0
    assert "--restore-db puts back the backup taken before them" in back.out + back.err


def test_d_an_index_on_100k_rows_is_built_concurrently(project, fresh_host, sources):
    seed = (
        'runuser -u postgres -- psql -d shop -q -c "insert into pages_visit (created_at, kind) '
        "select now(), 'seed' from generate_series(1, 100000)\""
    )
    sh(fresh_host, seed)
    model = CREATED + KIND + NOTE + "\n    class Meta:\n        indexes = [models.Index("
    model += "fields=['created_at'], name='visit_created_ix')]\n" + TAG
    release(sources["shop"], 5, ADD_INDEX, model, "index")
    watched = Watched(project, fresh_host, "deploy").run(marks=("shop",))
    assert watched.code == 0, watched.out
    load = watched.loads["shop"]
    assert load.failures == [], (load.failures[:5], watched.out)
    assert watched.old_posts_after_commit("shop") > 0, watched.out
    assert "pages.0005_index: indexes built concurrently" in watched.out
    valid = sh(
        fresh_host,
        'runuser -u postgres -- psql -d shop -Atc "select indisvalid from pg_index i join '
        "pg_class c on c.oid = i.indexrelid where c.relname = 'visit_created_ix'\"",
    )
    assert valid.strip() == "t"


def test_a_long_transaction_delays_the_migration_instead_of_queueing_queries(
    project, fresh_host, sources
):
    # A transaction that read the table keeps its lock for 20 s. Without lock_timeout the
    # ALTER would wait all that time, and every query of the table behind it (the clients
    # give up after 15 s); with it, the ALTER gives way every few seconds and tries again.
    hold = (
        "runuser -u postgres -- psql -d shop -q -c 'begin' -c 'select count(*) from pages_visit'"
        " -c 'select pg_sleep(20)' -c 'commit' >/dev/null"
    )
    sh(fresh_host, f"systemd-run --unit djk-test-hold sh -c {shlex.quote(hold)}")
    model = CREATED + KIND + NOTE + "    size = models.IntegerField(null=True)\n"
    model += "\n    class Meta:\n        indexes = [models.Index("
    model += "fields=['created_at'], name='visit_created_ix')]\n" + TAG
    release(
        sources["shop"],
        6,
        "        migrations.AddField('visit', 'size', models.IntegerField(null=True)),\n",
        model,
        "visit_size",
    )
    watched = Watched(project, fresh_host, "deploy").run(marks=("shop",))
    assert watched.code == 0, watched.out
    assert watched.loads["shop"].failures == [], watched.out
    assert "lock wait timed out, tried again" in watched.out, watched.out


def test_the_negative_control_sees_failed_requests(project, fresh_host, sources):
    project.site["migrate_split"] = False
    project.write()
    try:
        model = CREATED + KIND + NOTE + "    grade = models.IntegerField(default=1)\n" + TAG
        release(
            sources["example"],
            5,
            "        migrations.AddField('visit', 'grade', models.IntegerField(default=1)),\n",
            model,
            "grade",
        )
        watched = Watched(project, fresh_host, "deploy").run(marks=("example",))
    finally:
        project.site.pop("migrate_split")
        project.write()
    assert watched.code == 0, watched.out
    failures = watched.loads["example"].failures
    assert failures, watched.out  # the old release's INSERTs failed until the switch
    assert watched.loads["shop"].failures == []


def test_a_rename_is_refused_then_runs_behind_the_maintenance_page(project, fresh_host, sources):
    live = health(fresh_host)["release"]
    model = CREATED + '    category = models.CharField(max_length=20, default="misc")\n'
    model += NOTE + "    grade = models.IntegerField(default=1)\n" + TAG
    name = release(sources["example"], 6, RENAME, model, "rename")
    refused = project.fab("deploy")
    assert refused.code != 0
    said = [line for line in (refused.out + refused.err).splitlines() if "Rename field" in line]
    assert said and f"migration {name}: Rename field kind on visit to category" in said[0]
    assert "in two releases" in said[0] and "--maintenance" in said[0]
    assert health(fresh_host)["release"] == live  # nothing migrated, nothing switched
    columns = table(fresh_host)
    assert '"kind"' in columns
    failed = sh(fresh_host, "cat /srv/djk/example/releases/*/.djk-status | sort | uniq -c")
    assert "failed" in failed
    # --check says the same from what Django said of the refused release, changing nothing.
    checked = project.fab("deploy", "--check")
    assert checked.code != 0 and said[0].split("| ")[-1] in checked.out, checked.out
    watched = Watched(project, fresh_host, "deploy", "--maintenance").run()
    assert watched.code == 0, watched.out
    answers = [outcome for outcome, _ in watched.loads["example"].results]
    assert "503" in answers, watched.out  # the page, while it migrated and switched
    assert answers[-1] == "200" and health(fresh_host)["release"] != live
    assert sh(fresh_host, "ls /var/lib/djk/maintenance/ 2>/dev/null || true").strip() == ""
    assert watched.loads["shop"].failures == []


def test_a_run_cut_after_its_switch_leaves_the_removal_to_the_next_deploy(
    project, fresh_host, sources
):
    model = CREATED + '    category = models.CharField(max_length=20, default="misc")\n'
    model += "    grade = models.IntegerField(default=1)\n" + TAG
    name = release(sources["example"], 7, REMOVE_NOTE, model, "remove_note")
    # A manage.py session of the live release keeps running: the removal waits for it.
    sh(
        fresh_host,
        "systemd-run --unit djk-test-session --property=WorkingDirectory="
        "/srv/djk/example/current sleep 600",
    )
    proc = spawn_fab(project.inventory, "deploy")
    try:
        wait_for_line(proc, "| changed | switch example", timeout=300)
        wait_for_line(proc, "waiting for the processes of older releases of example", timeout=60)
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sh(fresh_host, "systemctl stop djk-test-session || true")
    status = project.fab("status")
    assert "after-switch work of" in status.out and name in status.out, status.out
    columns = table(fresh_host)
    assert '"note"' in columns
    again = project.fab("deploy")
    assert again.code == 0, again.out + again.err
    assert "| changed | after the switch example" in again.out, again.out
    columns = table(fresh_host)
    assert '"note"' not in columns
    status = project.fab("status")
    assert "after-switch work of" not in status.out
