"""The settings layer (release/djk_settings.py) and what the kit asks Django (ask_django.py),
run by a real Django (the test venv's) in a project made by `django-admin startproject`, with
the env the kit writes: what the layer sets over the project's settings, and the report a
release's prepare prints (databases, migrations with their real labels, a fresh migrate)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django_release import env, staged

from djk.tasks.release import asked

ADMIN = Path(sys.executable).parent / "django-admin"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated") / "mysite"
    root.mkdir()
    subprocess.run([str(ADMIN), "startproject", "mysite", str(root)], check=True)
    # An app whose label is not its folder's name, as wagtail/admin is wagtailadmin.
    app = root / "blog"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "apps.py").write_text(
        "from django.apps import AppConfig\n\n\n"
        "class BlogConfig(AppConfig):\n    name = 'blog'\n    label = 'journal'\n"
    )
    (app / "migrations" / "0001_initial.py").write_text(
        "from django.db import migrations, models\n\n\n"
        "class Migration(migrations.Migration):\n"
        "    initial = True\n"
        "    operations = [migrations.CreateModel('Post', [('id', models.AutoField("
        "primary_key=True)), ('title', models.CharField(max_length=20))])]\n"
    )
    (app / "migrations" / "0002_post_words.py").write_text(
        "from django.db import migrations, models\n\n\n"
        "class Migration(migrations.Migration):\n"
        "    dependencies = [('journal', '0001_initial')]\n"
        "    operations = [migrations.AddField('post', 'words', models.IntegerField("
        "default=0))]\n"
    )
    settings = root / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text().replace(
            "'django.contrib.staticfiles',",
            "'django.contrib.staticfiles',\n    'blog.apps.BlogConfig',",
        )
    )
    return root


@pytest.fixture
def release(generated, tmp_path) -> Path:
    """A release of the generated project as the stage step leaves it: the layer at its root."""
    return staged(generated, tmp_path)


def django(release: Path, code: str, **more: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=release,
        env=env(release, **more),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


SHOW = (
    "import json, djk_settings as s\n"
    "print(json.dumps({k: getattr(s, k, None) for k in ('DEBUG', 'SECRET_KEY', 'ALLOWED_HOSTS',"
    " 'STATIC_ROOT', 'STATIC_URL', 'SESSION_COOKIE_SECURE', 'INSTALLED_APPS', 'DJK_LAYER',"
    " 'LOGGING', 'MEDIA_ROOT')} | {'DATABASES': {a: {'ENGINE': c['ENGINE'], 'NAME': str(c['NAME'])}"
    " for a, c in s.DATABASES.items()}}))\n"
)


def shown(release: Path, **more: str) -> dict:
    """The settings module as Django imports it (without starting Django: no database driver
    is needed to see its DATABASES)."""
    done = subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=release,
        env=env(release, **more),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_layer_sets_what_hosts_toml_manages_over_the_projects_settings(release):
    got = shown(release)
    shared = release.parent.parent / "shared"
    assert got["DEBUG"] is False  # startproject's settings say True
    assert got["SECRET_KEY"] == "k-" + "x" * 50  # not startproject's insecure key
    assert got["ALLOWED_HOSTS"] == ["shop.test", ".shop.test"]
    assert got["STATIC_ROOT"].endswith("/static/R1") and got["STATIC_URL"] == "/static/"
    # startproject's BASE_DIR / "db.sqlite3" is in the release: moved to the shared directory.
    assert got["DATABASES"]["default"]["NAME"] == str(shared / "db.sqlite3")
    assert got["SESSION_COOKIE_SECURE"] is None  # not a TLS site: left to Django (False)
    assert "django.contrib.postgres" not in got["INSTALLED_APPS"]
    assert got["LOGGING"]["loggers"]["django.request"]["handlers"] == ["djk_stderr"]
    assert "DATABASES" in got["DJK_LAYER"] and "MEDIA_ROOT" not in got["DJK_LAYER"]


def test_tls_media_and_postgresql_from_hosts_toml(release):
    pg = {
        "DJK_DATABASE": "postgresql",
        "DATABASE_NAME": "shop",
        "DATABASE_USER": "shop",
        "DATABASE_PASSWORD": "pw",
        "DATABASE_HOST": "10.213.0.20",
        "DATABASE_PORT": "5432",
    }
    media = {"DJANGO_MEDIA_ROOT": "/srv/djk/shop/media", "DJANGO_MEDIA_URL": "/media/"}
    got = shown(release, DJK_TLS="1", **pg, **media)
    assert got["SESSION_COOKIE_SECURE"] is True
    assert got["MEDIA_ROOT"] == "/srv/djk/shop/media"
    assert got["DATABASES"]["default"] == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
    }
    # What Wagtail's checks ask of a PostgreSQL project (postgres.E005).
    assert "django.contrib.postgres" in got["INSTALLED_APPS"]


def test_only_a_sqlite_file_inside_the_release_moves(release):
    settings = release / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text()
        + "\nDATABASES['cache'] = {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}"
        + "\nDATABASES['old'] = {'ENGINE': 'django.db.backends.sqlite3', 'NAME': '/srv/old.db'}"
        + "\nDATABASES['rel'] = {'ENGINE': 'django.db.backends.sqlite3', 'NAME': 'data/r.db'}\n"
    )
    got = shown(release)["DATABASES"]
    shared = release.parent.parent / "shared"
    assert got["cache"]["NAME"] == ":memory:" and got["old"]["NAME"] == "/srv/old.db"
    assert got["rel"]["NAME"] == str(shared / "data" / "r.db")  # relative: in the release


def test_a_project_that_already_reads_the_contract_keeps_its_values(release):
    settings = release / "mysite" / "settings.py"
    fragment = (
        "\nimport os\nDATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', "
        "'NAME': os.environ['DJK_SHARED'] + '/mine.sqlite3'}}\n"
        "LOGGING = {'version': 1, 'loggers': {}}\n"
    )
    settings.write_text(settings.read_text() + fragment)
    got = shown(release)
    assert got["DATABASES"]["default"]["NAME"].endswith("/shared/mine.sqlite3")
    assert "DATABASES" not in got["DJK_LAYER"] and "LOGGING" not in got["DJK_LAYER"]


def test_django_says_its_databases_and_migrations_and_migrates_only_an_empty_database(release):
    out = django(release, asked.call(True))
    report = asked.from_output("shop", out)
    assert report is not None and report.fresh
    shared = release.parent.parent / "shared"
    assert report.default == asked.Database("default", "sqlite", str(shared / "db.sqlite3"))
    assert (shared / "db.sqlite3").stat().st_size > 0
    by_name = {m.name: m for m in report.migrations}
    # The label Django knows, not the folder's name.
    assert by_name["journal.0001_initial"].additive
    assert not by_name["journal.0002_post_words"].additive  # NOT NULL with a model default
    assert "blog.0001_initial" not in by_name
    assert by_name["admin.0001_initial"].additive
    # A wider column: what the live release writes still fits.
    assert by_name["auth.0002_alter_permission_name_max_length"].additive
    # Removes a column, makes one nullable and runs unmarked code.
    assert not by_name["contenttypes.0002_remove_content_type_name"].additive
    assert report.pending(frozenset(by_name)) == []
    # The database has tables now: asked again, Django does not migrate it.
    again = asked.from_output("shop", django(release, asked.call(True)))
    assert again is not None and not again.fresh


def test_pending_follows_djangos_rule_for_squashed_migrations():
    squash = asked.Migration("app.0001_squashed_0002", ("app.0001_a", "app.0002_b"), True)
    report = asked.DjangoReport(
        "shop",
        migrations=(
            squash,
            asked.Migration("app.0001_a"),
            asked.Migration("app.0002_b"),
            asked.Migration("app.0003_c"),
        ),
    )

    def pending(*applied: str) -> list[str]:
        return [m.name for m in report.pending(frozenset(applied))]

    assert pending() == ["app.0001_squashed_0002", "app.0003_c"]  # none applied: the squash
    assert pending("app.0001_a") == ["app.0002_b", "app.0003_c"]  # partly: the replaced ones
    assert pending("app.0001_a", "app.0002_b") == ["app.0003_c"]  # all: the squash is applied
    assert pending("app.0001_a", "app.0002_b", "app.0003_c") == []


def test_app_settings_shows_what_the_layer_set_with_secrets_masked(release):
    from djk.tasks.manage import SHOW_LAYER

    broker = {
        "CELERY_BROKER_URL": "redis://:br0ker-pw@10.213.0.3:6379/0",
        "CELERY_RESULT_BACKEND": "redis://:br0ker-pw@10.213.0.3:6379/1",
    }
    out = django(release, SHOW_LAYER, DJK_TLS="1", **broker)
    assert "project settings: mysite.settings" in out
    assert "SECRET_KEY = '******** (DJANGO_SECRET_KEY of the secrets)'" in out
    assert "DEBUG = False" in out and "SESSION_COOKIE_SECURE = True" in out
    assert "CELERY_BROKER_URL = 'redis://:********@10.213.0.3:6379/0'" in out
    assert "br0ker-pw" not in out and "k-xxxx" not in out
    assert "shared/db.sqlite3" in out  # DATABASES, moved out of the release
