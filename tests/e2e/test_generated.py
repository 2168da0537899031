"""Projects exactly as their generators make them, made at test time from pinned wheels, each in
a git repository: `django-admin startproject` (Django 5.2, Debian 12, SQLite) and `wagtail
start` (Wagtail 8.0.1, Django 6.1 on the host, Debian 13, PostgreSQL, media). `djk init`,
the host's address and a secrets file are all that is added; no file of the project changes.
Then DEBUG is off in the live process, the admin's login form posts through nginx with its
CSRF token, a file saved through Django's storage is served by nginx; a code-only Wagtail
deploy takes no backup and rolls back (to a release without the settings layer: it gets one);
an app whose label is not its folder's name gets a backup naming its migration; an app that
keeps its SQLite file where its own setting says gets that file backed up, listed and
restored, and is never migrated by the prepare."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .kit import one_host, sh
from .test_projects import git, login, run

pytestmark = pytest.mark.e2e
WAGTAIL = "wagtail==8.0.1"
PASSWORD = "Admin-pw-4471"


def init_and_commit(root: Path, kit_venv: Path, host, domain: str, extra: str = "") -> str:
    """`djk init`, the host's address (and the test key) filled in, `extra` tables appended,
    committed; returns init's output."""
    done = run([str(kit_venv / "bin/djk"), "init"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    # Nothing the project tracks changed: init only added files.
    changed = [line for line in git(root, "status", "--porcelain").splitlines()]
    assert changed and all(line.startswith("??") for line in changed), changed
    text = (root / "hosts.toml").read_text().replace("203.0.113.10", host.address)
    text = text.replace('user = "deploy"', f'user = "deploy"\nssh_key = "{host.key_path}"')
    text = re.sub(r"(?m)^domains = .*$", f'domains = ["{domain}"]', text)
    (root / "hosts.toml").write_text(text + extra)
    known = subprocess.run(
        [str(kit_venv / "bin/fab"), "hosts.trust", "--yes"], cwd=root, capture_output=True
    )
    assert known.returncode == 0, known.stderr
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "deploy kit")
    return done.stdout


def fab(root: Path, kit_venv: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(kit_venv / "bin/fab"), *args], root)


def line_of(out: str, step: str) -> str:
    return next((line for line in out.splitlines() if step in line), f"no {step!r} in:\n{out}")


def get(host, domain: str, path: str) -> str:
    return sh(host, f"curl -s -i -m 10 -H 'Host: {domain}' http://127.0.0.1{path}")


def superuser(root: Path, kit_venv: Path, site: str) -> None:
    done = subprocess.run(
        [
            str(kit_venv / "bin/fab"),
            "app.manage",
            "--site",
            site,
            "--env",
            "DJANGO_SUPERUSER_PASSWORD",
        ]
        + ["--", "createsuperuser", "--noinput", "--username", "admin", "--email", "a@b.test"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PATH": f"{kit_venv / 'bin'}:/usr/bin:/bin", "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def debug_is_off(host, domain: str) -> None:
    page = get(host, domain, "/no-such-page/")
    assert page.startswith("HTTP/1.1 404"), page[:300]
    # DEBUG's technical 404 lists the URLconf; the production page does not.
    assert "URLconf" not in page and "DEBUG = True" not in page


# -- django-admin startproject ------------------------------------------------------------------

SITE = "mysite"
DOMAIN = "mysite.example.com"


@dataclass(frozen=True)
class Generated:
    root: Path
    deployed: str  # the first deploy's output


@pytest.fixture(scope="module")
def startproject(tmp_path_factory, fresh_host, kit_venv):
    root = tmp_path_factory.mktemp("generated") / SITE
    root.mkdir()
    admin = Path(sys.executable).parent / "django-admin"
    subprocess.run([str(admin), "startproject", SITE, str(root)], check=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "startproject")
    said = init_and_commit(root, kit_venv, fresh_host, DOMAIN)
    assert "hosts.toml names Django 5.2" in said and "health_path: /admin/login/" in said, said
    deployed = fab(root, kit_venv, "provision", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return Generated(root, deployed.stdout)


def test_startproject_deploys_with_no_edit_and_debug_off(startproject, fresh_host, kit_venv):
    assert "migrated the new database" in line_of(startproject.deployed, f"prepare {SITE}")
    debug_is_off(fresh_host, DOMAIN)
    login_page = get(fresh_host, DOMAIN, "/admin/login/")
    assert login_page.startswith("HTTP/1.1 200"), login_page[:300]
    # startproject's BASE_DIR / "db.sqlite3" lives in the shared directory, not the release.
    shown = fab(startproject.root, kit_venv, "app.settings", "--site", SITE)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "DEBUG = False" in shown.stdout and "SECRET_KEY = '********" in shown.stdout
    assert f"/srv/djk/{SITE}/shared/db.sqlite3" in shown.stdout
    assert git(startproject.root, "status", "--porcelain") == ""


def test_startprojects_admin_login_posts_through_nginx(startproject, fresh_host, kit_venv):
    superuser(startproject.root, kit_venv, SITE)
    assert login(fresh_host, "http", DOMAIN) == "HTTP/1.1 302 Found /admin/"


OWN_DB = f"/srv/djk/{SITE}/shared/own.sqlite3"
APP = {
    "blog/__init__.py": "",
    "blog/apps.py": "from django.apps import AppConfig\n\n\nclass BlogConfig(AppConfig):\n"
    "    name = 'blog'\n    label = 'journal'\n",
    "blog/migrations/__init__.py": "",
    "blog/migrations/0001_initial.py": "from django.db import migrations, models\n\n\n"
    "class Migration(migrations.Migration):\n    initial = True\n    operations = [\n"
    "        migrations.CreateModel('Post', [('id', models.AutoField(primary_key=True)),"
    " ('title', models.CharField(max_length=20))]),\n    ]\n",
}


def test_an_app_with_its_own_database_setting_gets_that_database_backed_up(
    startproject, fresh_host, kit_venv
):
    settings = startproject.root / SITE / "settings.py"
    text = settings.read_text()
    own = "'NAME': __import__('os').environ.get('APP_DB_FILE', BASE_DIR / 'db.sqlite3'),"
    settings.write_text(text.replace("'NAME': BASE_DIR / 'db.sqlite3',", own))
    inventory = startproject.root / "hosts.toml"
    inventory.write_text(
        inventory.read_text() + f'\n[sites.{SITE}.env]\nAPP_DB_FILE = "{OWN_DB}"\n'
    )
    git(startproject.root, "commit", "-q", "-am", "our own database file")
    first = fab(startproject.root, kit_venv, "deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    # Django's file had no tables: Django migrated it in the prepare.
    assert "migrated the new database" in line_of(first.stdout, f"prepare {SITE}")
    # The kit's own path has no tables from now on; Django's file has.
    sh(fresh_host, f"rm -f /srv/djk/{SITE}/shared/db.sqlite3")
    for path, body in APP.items():
        (startproject.root / path).parent.mkdir(parents=True, exist_ok=True)
        (startproject.root / path).write_text(body)
    settings.write_text(
        settings.read_text().replace(
            "'django.contrib.staticfiles',", "'django.contrib.staticfiles',\n    'blog',"
        )
    )
    git(startproject.root, "add", "-A")
    git(startproject.root, "commit", "-q", "-m", "blog, its label journal")
    second = fab(startproject.root, kit_venv, "deploy")
    assert second.returncode == 0, second.stdout + second.stderr
    prepare = line_of(second.stdout, f"prepare {SITE}")
    assert "migrated" not in prepare, prepare  # a database with tables: never in the prepare
    backup = line_of(second.stdout, f"backup {SITE}")
    assert "changed" in backup and "before 1 migration(s): journal.0001_initial" in backup, backup
    listed = fab(startproject.root, kit_venv, "db.backups", "--site", SITE, "--json")
    assert listed.returncode == 0, listed.stderr
    (host,) = json.loads(listed.stdout)["hosts"]
    (entry,) = host["extra"]["backup_table"][SITE]
    assert entry["database"] == OWN_DB and entry["migrations"] == ["journal.0001_initial"]
    count = "select count(*) from sqlite_master where name = 'journal_post'"
    code = f"import sqlite3; print(sqlite3.connect({OWN_DB!r}).execute({count!r}).fetchone()[0])"
    tables = f"python3 -c {shlex.quote(code)}"
    assert sh(fresh_host, tables).strip() == "1"
    restored = fab(
        startproject.root, kit_venv, "db.restore", "--site", SITE, "--from", entry["id"], "--yes"
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert sh(fresh_host, tables).strip() == "0"  # Django's file, as it was before


# -- wagtail start ------------------------------------------------------------------------------

WSITE = "acmesite"
WDOMAIN = "acme.example.com"


@pytest.fixture(scope="module")
def trixie():
    yield from one_host("e2ewag", 7, "trixie", "w13")


@pytest.fixture(scope="module")
def wagtail_start(tmp_path_factory) -> Path:
    """The generator: Wagtail 8.0.1 in a venv of its own (on this machine's Python, with the
    Django it takes there), and `wagtail start` as its docs say."""
    base = tmp_path_factory.mktemp("wagtail")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", WAGTAIL]
    subprocess.run(pip, check=True)
    root = base / WSITE
    root.mkdir()
    subprocess.run([str(venv / "bin/wagtail"), "start", WSITE, str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def wagtail(wagtail_start, trixie, kit_venv):
    root = wagtail_start
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "wagtail start")
    extra = f'\n[sites.{WSITE}.database]\nengine = "postgresql"\n\n[sites.{WSITE}.media]\n'
    said = init_and_commit(root, kit_venv, trixie, WDOMAIN, extra)
    assert f"settings: {WSITE}.settings.production (the package also has: base, dev)" in said
    deployed = fab(root, kit_venv, "provision", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return root


def test_wagtail_start_deploys_on_postgresql_with_no_edit(wagtail, trixie, kit_venv):
    home = get(trixie, WDOMAIN, "/")
    assert home.startswith("HTTP/1.1 200"), home[:500]  # Wagtail's home page, from its database
    debug_is_off(trixie, WDOMAIN)
    tables = sh(
        trixie,
        f'runuser -u postgres -- psql -XAtq -d {WSITE} -c "select count(*) from wagtailcore_page"',
    )
    assert int(tables) >= 2  # the root and the home page the project's migration made
    shown = fab(wagtail, kit_venv, "app.settings", "--site", WSITE)
    assert "django.contrib.postgres" in shown.stdout and "'PASSWORD': '********'" in shown.stdout
    assert git(wagtail, "status", "--porcelain") == ""
    superuser(wagtail, kit_venv, WSITE)
    assert login(trixie, "http", WDOMAIN) == "HTTP/1.1 302 Found /admin/"


def test_a_file_saved_through_djangos_storage_is_served_by_nginx(wagtail, trixie, kit_venv):
    code = (
        "from django.core.files.base import ContentFile; "
        "from django.core.files.storage import default_storage as s; "
        "print(s.save('documents/hello.txt', ContentFile(b'hello from media')))"
    )
    saved = fab(wagtail, kit_venv, "app.manage", "--site", WSITE, "--", "shell", "-c", code)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    name = saved.stdout.strip().split("|")[-1].strip()
    page = get(trixie, WDOMAIN, f"/media/{name}")
    assert page.startswith("HTTP/1.1 200") and page.endswith("hello from media"), page


def test_a_code_only_wagtail_deploy_takes_no_backup_and_rolls_back(wagtail, trixie, kit_venv):
    template = wagtail / "home/templates/home/home_page.html"
    text = template.read_text().replace("{% block content %}", "{% block content %}<!-- v2 -->")
    assert "<!-- v2 -->" in text
    template.write_text(text)
    git(wagtail, "commit", "-q", "-am", "v2")
    done = fab(wagtail, kit_venv, "deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    backup = line_of(done.stdout, f"backup {WSITE}")
    assert "ok" in backup and "no unapplied migrations" in backup, backup
    assert "<!-- v2 -->" in get(trixie, WDOMAIN, "/")
    # The release before, as a kit without the settings layer staged it: the rollback writes
    # the layer into it before its switch.
    releases = sh(trixie, f"ls /srv/djk/{WSITE}/releases").split()
    sh(trixie, f"rm /srv/djk/{WSITE}/releases/{releases[-2]}/djk_settings.py")
    back = fab(wagtail, kit_venv, "rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    layer = line_of(back.stdout, f"settings layer {WSITE}")
    assert "changed" in layer and f"written into {releases[-2]}" in layer, layer
    assert "<!-- v2 -->" not in get(trixie, WDOMAIN, "/")
