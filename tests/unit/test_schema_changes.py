"""Schema changes split around the switch: Django's own migration objects classified in a
project made by `django-admin startproject` (ask_django.py), the split decided from them
(schema.py, data-driven cases), and what schema_change.py does to a real SQLite database, seen
through the INSERTs the old and the new release send."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django_release import env, staged

from djk.tasks.release import asked, schema
from djk.tasks.release.asked import CONTRACT, DEFAULT, EXPAND, UNSAFE
from djk.tasks.release.migrate import runner

ADMIN = Path(sys.executable).parent / "django-admin"

HEAD = "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n"

INITIAL = HEAD + (
    "    initial = True\n"
    "    operations = [migrations.CreateModel('Item', [('id', models.AutoField("
    "primary_key=True)), ('name', models.CharField(max_length=20)),"
    " ('old', models.CharField(max_length=20))])]\n"
)
ADD_KIND = HEAD + (
    "    dependencies = [('shop', '0001_initial')]\n"
    "    operations = [migrations.AddField('item', 'kind', models.CharField(max_length=20,"
    " default='misc'))]\n"
)
REMOVE_OLD = HEAD + (
    "    dependencies = [('shop', '0002_item_kind')]\n"
    "    operations = [migrations.RemoveField('item', 'old')]\n"
)
MODELS_R1 = (
    "from django.db import models\n\n\nclass Item(models.Model):\n"
    "    name = models.CharField(max_length=20)\n    old = models.CharField(max_length=20)\n"
)
MODELS_R2 = (
    "from django.db import models\n\n\nclass Item(models.Model):\n"
    "    name = models.CharField(max_length=20)\n"
    "    kind = models.CharField(max_length=20, default='misc')\n"
)

# Operations of every kind, in one app, each migration on the state the one before left.
LAB = {
    "0001_initial": (
        "    initial = True\n"
        "    operations = [migrations.CreateModel('Thing', [('id', models.AutoField("
        "primary_key=True)), ('title', models.CharField(max_length=20)),"
        " ('code', models.CharField(max_length=10, null=True)),"
        " ('gone', models.IntegerField(default=0))])]\n"
    ),
    "0002_more": (
        "    dependencies = [('lab', '0001_initial')]\n"
        "    operations = [\n"
        "        migrations.AddField('thing', 'size', models.IntegerField(default=3)),\n"
        "        migrations.AddField('thing', 'note', models.TextField(null=True)),\n"
        "        migrations.AddField('thing', 'level', models.IntegerField(db_default=1)),\n"
        "        migrations.AddField('thing', 'token', models.UUIDField(default=uuid.uuid4)),\n"
        "        migrations.AddField('thing', 'slug', models.SlugField(default='x',"
        " unique=True)),\n"
        "        migrations.AlterField('thing', 'title', models.CharField(max_length=40,"
        " help_text='wider')),\n"
        "        migrations.AlterField('thing', 'code', models.CharField(max_length=10,"
        " default='')),\n"
        "        migrations.AlterField('thing', 'gone', models.TextField(default='')),\n"
        "        migrations.RenameField('thing', 'title', 'heading'),\n"
        "        migrations.AddIndex('thing', models.Index(fields=['code'], name='code_ix')),\n"
        "        migrations.AddConstraint('thing', models.UniqueConstraint(fields=['code'],"
        " name='code_uq')),\n"
        "        migrations.RunPython(migrations.RunPython.noop),\n"
        "        migrations.RunPython(print),\n"
        "        migrations.RunPython(print, hints={'djk': 'expand'}),\n"
        "        migrations.RunSQL('select 1', hints={'djk': 'contract'}),\n"
        "        migrations.RemoveField('thing', 'gone'),\n"
        "    ]\n"
    ),
}
WANT_KINDS = [
    (DEFAULT, "Add field size to thing"),
    (EXPAND, "Add field note to thing"),
    (EXPAND, "Add field level to thing"),  # a db_default: the database fills it
    (UNSAFE, "Add field token to thing"),  # uuid4(): no one value
    (UNSAFE, "Add field slug to thing"),  # unique
    (EXPAND, "Alter field title on thing"),  # wider, help_text
    (UNSAFE, "Alter field code on thing"),  # NULL to NOT NULL
    (UNSAFE, "Alter field gone on thing"),  # a type change
    (UNSAFE, "Rename field title on thing to heading"),
    (EXPAND, "Create index code_ix on field(s) code of model thing"),
    (UNSAFE, "Create constraint code_uq on model thing"),
    (EXPAND, "Raw Python operation"),  # RunPython.noop
    (UNSAFE, "Raw Python operation"),  # unmarked
    (EXPAND, "Raw Python operation"),  # marked expand
    (CONTRACT, "Raw SQL operation"),  # marked contract
    (CONTRACT, "Remove field gone from thing"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("schema") / "mysite"
    root.mkdir()
    subprocess.run([str(ADMIN), "startproject", "mysite", str(root)], check=True)
    app = root / "shop"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "models.py").write_text(MODELS_R1)
    (app / "migrations" / "0001_initial.py").write_text(INITIAL)
    settings = root / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text().replace(
            "'django.contrib.staticfiles',", "'django.contrib.staticfiles',\n    'shop',"
        )
    )
    return root


@pytest.fixture
def release(project, tmp_path) -> Path:
    """A release of the generated project as the stage step leaves it: the layer at its root."""
    return staged(project, tmp_path)


def django(release: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=release,
        env=env(release),
        capture_output=True,
        text=True,
    )


def ask(release: Path, fresh: bool = False) -> asked.DjangoReport:
    done = django(release, asked.call(fresh))
    assert done.returncode == 0, done.stderr
    report = asked.from_output("shop", done.stdout)
    assert report is not None
    return report


def database(release: Path) -> sqlite3.Connection:
    return sqlite3.connect(release.parent.parent / "shared" / "db.sqlite3")


def applied(release: Path) -> frozenset[str]:
    with database(release) as db:
        rows = db.execute("select app || '.' || name from django_migrations").fetchall()
    return frozenset(r[0] for r in rows)


def test_django_s_operations_are_classified_against_the_state_before_them(release):
    lab = release / "lab"
    (lab / "migrations").mkdir(parents=True)
    (lab / "__init__.py").write_text("")
    (lab / "migrations" / "__init__.py").write_text("")
    for name, body in LAB.items():
        (lab / "migrations" / f"{name}.py").write_text("import uuid\n" + HEAD + body)
    settings = release / "mysite" / "settings.py"
    settings.write_text(settings.read_text().replace("    'shop',", "    'shop',\n    'lab',"))
    report = ask(release)
    by_name = {m.name: m for m in report.migrations}
    ops = by_name["lab.0002_more"].operations
    assert ops is not None
    assert [(op.kind, op.text) for op in ops] == WANT_KINDS
    size = ops[0]
    assert (size.app, size.model, size.field, size.value) == ("lab", "thing", "size", 3)
    assert "computed per row" in ops[3].why and ops[8].rename
    assert by_name["lab.0002_more"].depends == ("lab.0001_initial",)
    assert report.django.startswith("5.")
    # What a release prepared now writes, a later run reads back the same.
    assert asked.parse("shop", report.json()) == report


M = asked.Migration


def op(kind: str, text: str = "op", **more) -> asked.Operation:
    return asked.Operation(kind, text, **more)


KIND = op(DEFAULT, "Add field kind to item", app="shop", model="item", field="kind", value="x")
CASES = [
    # (name, migrations, django version, before, after, defaults, refusal's words)
    ("nothing pending", [], "5.2", [], [], [], ""),
    ("additions", [M("a.1", operations=(op(EXPAND),))], "5.2", ["a.1"], [], [], ""),
    (
        "a temporary default",
        [M("a.1", operations=(KIND, op(EXPAND)))],
        "5.2",
        ["a.1"],
        [],
        ['shop.item.kind = "x"'],
        "",
    ),
    (
        "a tail of removals waits for the switch",
        [
            M("a.1", operations=(op(EXPAND),)),
            M("a.2", ("",), depends=("a.1",), operations=(op(CONTRACT),)),
        ],
        "5.2",
        ["a.1"],
        ["a.2"],
        [],
        "",
    ),
    (
        "a removal something before the switch needs",
        [
            M("a.1", operations=(op(CONTRACT, "Remove field x from y"),)),
            M("a.2", depends=("a.1",), operations=(op(EXPAND),)),
        ],
        "5.2",
        [],
        [],
        [],
        "migration a.2: depends on a removal: it needs a.1",
    ),
    (
        "additions and removals in one migration",
        [M("a.1", operations=(op(EXPAND), op(CONTRACT, "Remove field x from y")))],
        "5.2",
        [],
        [],
        [],
        "migration a.1: Remove field x from y: it mixes additions and removals",
    ),
    (
        "a rename",
        [
            M(
                "a.1",
                operations=(
                    op(UNSAFE, "Rename field a on b to c", why="a rename", rename=True),
                    op(UNSAFE, "Alter field d on b", why="NULL to NOT NULL"),
                ),
            )
        ],
        "5.2",
        [],
        [],
        [],
        "migration a.1: Rename field a on b to c: a rename; in two releases: add the new one "
        "beside the old and write both, then remove the old",
    ),
    (
        "a temporary default before Django 5",
        [M("a.1", operations=(KIND,))],
        "4.2.1",
        [],
        [],
        [],
        "needs Django 5.0's db_default (this is 4.2.1)",
    ),
]


@pytest.mark.parametrize(
    "migrations, version, before, after, defaults, refused",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_split(migrations, version, before, after, defaults, refused):
    report = asked.DjangoReport("shop", migrations=tuple(migrations), django=version)
    found = schema.split("shop", report, frozenset())
    if refused:
        assert found.refused.startswith("site shop: ") and refused in found.refused
        assert "\n" not in found.refused and "--maintenance" in found.refused
        return
    assert found.refused == ""
    assert [m.name for m in found.before] == before
    assert [m.name for m in found.after] == after
    assert [d.describe() for d in found.defaults] == defaults


def test_a_report_without_operations_or_a_site_that_turned_the_split_off_migrates_plainly():
    old = asked.DjangoReport("shop", migrations=(M("a.1"),))
    assert schema.split("shop", old, frozenset()).plain
    new = asked.DjangoReport("shop", migrations=(M("a.1", operations=(op(UNSAFE),)),))
    off = schema.split("shop", new, frozenset(), plain="migrate_split = false")
    assert off.plain and not off.refused and [m.name for m in off.before] == ["a.1"]


def test_the_record_keeps_defaults_an_earlier_run_left():
    split = schema.Split("shop", defaults=(schema.TemporaryDefault("a", "b", "c", 1),))
    earlier = {"release": "R1", "migrations": ["x.1"], "defaults": [["a", "m", "f", "v"]]}
    kept = schema.record(split, "R2", earlier)
    assert kept == {
        "release": "R2",
        "migrations": [],
        "defaults": [["a", "m", "f", "v"], ["a", "b", "c", 1]],
    }
    assert 'temporary defaults a.m.f = "v", a.b.c = 1' in schema.describe_record(kept)


def _insert(release: Path, sql: str) -> str:
    """What an INSERT a release would send does: "ok" or the database's error."""
    try:
        with database(release) as db:
            db.execute(sql)
        return "ok"
    except sqlite3.Error as exc:
        return str(exc)


def _release_two(release: Path) -> None:
    migrations = release / "shop" / "migrations"
    (migrations / "0002_item_kind.py").write_text(ADD_KIND)
    (migrations / "0003_remove_item_old.py").write_text(REMOVE_OLD)
    (release / "shop" / "models.py").write_text(MODELS_R2)


OLD_INSERT = "insert into shop_item (name, old) values ('from R1', 'o')"  # no kind
NEW_INSERT = "insert into shop_item (name, kind) values ('from R2', 'k')"  # no old


def test_split_migrations_keep_both_releases_inserts_working_on_sqlite(release):
    ask(release, fresh=True)  # R1's database
    assert _insert(release, OLD_INSERT) == "ok"
    _release_two(release)
    report = ask(release)
    split = schema.split("shop", report, applied(release))
    assert [m.name for m in split.before] == ["shop.0002_item_kind"]
    assert [m.name for m in split.after] == ["shop.0003_remove_item_old"]
    wanted = {
        "after": [m.name for m in split.after],
        "defaults": [d.data() for d in split.defaults],
    }
    done = django(release, runner("before", wanted))
    assert done.returncode == 0, done.stderr
    said = [json.loads(x[11:]) for x in done.stdout.splitlines() if x.startswith("DJK-SCHEMA ")]
    assert said[-1]["relaxed"] == ["shop.item.old"]
    # Both releases run now: the old one's INSERTs (no kind) and the new one's (no old) pass.
    assert _insert(release, OLD_INSERT) == "ok"
    assert _insert(release, NEW_INSERT) == "ok"
    with database(release) as db:
        kinds = [r[0] for r in db.execute("select kind from shop_item order by id")]
    assert kinds == ["misc", "misc", "k"]
    assert "shop.0003_remove_item_old" not in applied(release)
    # Once the old release is gone: the removal, and the temporary default dropped.
    done = django(release, runner("after", {"defaults": wanted["defaults"]}))
    assert done.returncode == 0, done.stderr
    assert "shop.0003_remove_item_old" in applied(release)
    assert "no column named old" in _insert(release, OLD_INSERT)
    assert "NOT NULL" in _insert(release, "insert into shop_item (name) values ('x')")
    assert _insert(release, NEW_INSERT) == "ok"


def test_without_the_split_the_old_release_s_inserts_fail(release):
    """The negative control: Django's plain migrate drops the default it filled rows with."""
    ask(release, fresh=True)
    _release_two(release)
    (release / "shop" / "migrations" / "0003_remove_item_old.py").unlink()
    done = django(
        release,
        "from django.core.management import call_command\n"
        "call_command('migrate', interactive=False)\n",
    )
    assert done.returncode == 0, done.stderr
    assert "NOT NULL constraint failed: shop_item.kind" in _insert(release, OLD_INSERT)


def test_a_rollback_puts_a_dropped_temporary_default_back(release):
    ask(release, fresh=True)
    (release / "shop" / "migrations" / "0002_item_kind.py").write_text(ADD_KIND)
    split = schema.split("shop", ask(release), applied(release))
    wanted = {"after": [], "defaults": [d.data() for d in split.defaults]}
    for call in ("before", "after"):
        done = django(release, runner(call, wanted))
        assert done.returncode == 0, done.stderr
    assert "NOT NULL constraint failed" in _insert(release, OLD_INSERT)
    # Back to the release before the column: its INSERTs omit it again.
    done = django(release, runner("defaults_back", wanted))
    assert done.returncode == 0, done.stderr
    assert _insert(release, OLD_INSERT) == "ok"


def test_what_the_runner_says_is_read_even_after_migrate_s_unfinished_line():
    from djk.tasks.release.migrate import SchemaFindings

    out = (
        "Running migrations:\n"
        '  Applying shop.0002_size...DJK-SCHEMA {"error": "lock timeout", "lock_wait": 1}\n'
        '\nDJK-SCHEMA {"adjusted": ["shop.0003: indexes built concurrently"], "relaxed": '
        '["shop.item.old"], "phase": "before"}\n'
    )
    note, _ = SchemaFindings().read(out)
    assert note == (
        "lock wait timed out, tried again (1); shop.0003: indexes built concurrently; "
        "NOT NULL dropped before the switch: shop.item.old"
    )


def test_what_django_said_of_a_release_staged_earlier_with_the_same_source_is_found(tmp_path):
    """`deploy --check` after a refused run: the new release id is not staged, but the refused
    release of the same source is, with what Django said of it."""
    releases = tmp_path / "releases"
    for name, tree in (("R1", "t1"), ("R2", "t2"), ("R3", "t2")):
        (releases / name).mkdir(parents=True)
        (releases / name / ".djk-tree").write_text(f"{tree}\n")
        (releases / name / asked.FILE).write_text(f'"{name}"\n')
    (tmp_path / "current").symlink_to(releases / "R1")
    fact = asked.Asked("shop", (str(releases / "R9"), str(tmp_path / "current")))

    def read(found: asked.Asked) -> str:
        done = subprocess.run(["sh", "-c", found.command()], capture_output=True, text=True)
        return done.stdout.strip()

    assert read(fact) == '"R1"'  # the live release's, as before
    tree = asked.Asked("shop", fact.releases, (str(releases), "t2"))
    assert read(tree) == '"R3"'  # the newest of that source
    (releases / "R9").mkdir()
    (releases / "R9" / asked.FILE).write_text('"R9"\n')
    assert read(tree) == '"R9"'  # the release itself, once staged
