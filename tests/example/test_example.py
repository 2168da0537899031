"""Smoke tests for the bundled example Django project (run in subprocesses for isolation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("django")
pytest.importorskip("celery")

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "example"
VERSION = (EXAMPLE_DIR / "VERSION").read_text(encoding="utf-8").strip()
RELEASE = "20240101-120000-test"

PRELUDE = """
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")
import django
django.setup()
from django.test import Client
"""


def _env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "CELERY_")) and k != "APP_RELEASE"
    }
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="test-secret-key-not-for-production-0123456789abcdefghij",
        DJANGO_ALLOWED_HOSTS="localhost,example.test",
        DJANGO_DB_PATH=str(tmp_path / "db.sqlite3"),
        DJANGO_STATIC_ROOT=str(tmp_path / "static"),
        APP_RELEASE=RELEASE,
        CELERY_BROKER_URL="memory://",
        CELERY_RESULT_BACKEND="cache+memory://",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(overrides)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def manage(env: dict[str, str], *args: str) -> str:
    proc = _run(["manage.py", *args], env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_script(env: dict[str, str], body: str) -> dict:
    proc = _run(["-c", PRELUDE + textwrap.dedent(body)], env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def migrated_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = _env(tmp_path_factory.mktemp("example"))
    manage(env, "migrate", "--noinput")
    return env


def test_migration_exists_and_applies(migrated_env: dict[str, str]) -> None:
    assert (EXAMPLE_DIR / "pages" / "migrations" / "0001_initial.py").is_file()
    out = manage(migrated_env, "showmigrations", "pages")
    assert "[X] 0001_initial" in out
    manage(migrated_env, "makemigrations", "--check", "--dry-run")


def test_check_and_collectstatic(tmp_path: Path) -> None:
    env = _env(tmp_path)
    manage(env, "check")
    manage(env, "collectstatic", "--noinput")
    assert (tmp_path / "static" / "pages" / "style.css").is_file()


def test_index_shows_version_release_and_counts_visits(migrated_env: dict[str, str]) -> None:
    result = run_script(
        migrated_env,
        """
        c = Client()
        first = c.get("/", headers={"host": "example.test"})
        second = c.get("/", headers={"host": "example.test"})
        print(json.dumps({
            "status": first.status_code,
            "body": first.content.decode(),
            "body2": second.content.decode(),
        }))
        """,
    )
    assert result["status"] == 200
    body = result["body"]
    assert "Example site" in body
    assert VERSION in body
    assert RELEASE in body
    assert "example.test" in body
    assert 'href="/static/pages/style.css"' in body
    first = int(body.split('id="visits">')[1].split("<")[0])
    second = int(result["body2"].split('id="visits">')[1].split("<")[0])
    assert second == first + 1


def test_index_under_asgi(migrated_env: dict[str, str]) -> None:
    result = run_script(
        migrated_env,
        """
        import asyncio
        from asgiref.testing import ApplicationCommunicator
        from exampleproject.asgi import application

        async def main():
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
                "query_string": b"", "headers": [(b"host", b"localhost")],
                "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
            }
            comm = ApplicationCommunicator(application, scope)
            await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
            start = await comm.receive_output(10)
            body = b""
            while True:
                msg = await comm.receive_output(10)
                body += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            return {"status": start["status"], "body": body.decode()}

        print(json.dumps(asyncio.run(main())))
        """,
    )
    assert result["status"] == 200
    assert RELEASE in result["body"]


def test_health_and_version(migrated_env: dict[str, str]) -> None:
    result = run_script(
        migrated_env,
        """
        c = Client()
        h = c.get("/health/", headers={"host": "localhost"})
        v = c.get("/version/", headers={"host": "localhost"})
        print(json.dumps({
            "status": h.status_code, "json": h.json(),
            "vstatus": v.status_code, "vtype": v["Content-Type"], "vbody": v.content.decode(),
        }))
        """,
    )
    assert result["status"] == 200
    assert result["json"] == {"status": "ok", "version": VERSION, "release": RELEASE, "db": True}
    assert result["vstatus"] == 200
    assert result["vtype"].startswith("text/plain")
    assert result["vbody"].strip() == f"{VERSION} {RELEASE}"


def test_health_reports_db_error_without_migrations(tmp_path: Path) -> None:
    result = run_script(
        _env(tmp_path),
        """
        import logging
        logging.disable(logging.CRITICAL)
        h = Client().get("/health/", headers={"host": "localhost"})
        print(json.dumps({"status": h.status_code, "json": h.json()}))
        """,
    )
    assert result["status"] == 503
    assert result["json"]["status"] == "error"
    assert result["json"]["db"] is False


def test_unknown_host_is_rejected(migrated_env: dict[str, str]) -> None:
    result = run_script(
        migrated_env,
        """
        import logging
        logging.disable(logging.CRITICAL)
        r = Client().get("/health/", headers={"host": "evil.example.com"})
        print(json.dumps({"status": r.status_code}))
        """,
    )
    assert result["status"] == 400


def test_tasks_with_eager_celery(migrated_env: dict[str, str]) -> None:
    result = run_script(
        migrated_env,
        """
        from exampleproject.celery import app
        app.conf.task_always_eager = True
        c = Client()
        r = c.get("/tasks/add/", {"x": "1", "y": "2"}, headers={"host": "localhost"})
        bad = c.get("/tasks/add/", {"x": "one"}, headers={"host": "localhost"})
        s = c.get(
            "/tasks/slow/", {"x": "2", "y": "3", "seconds": "0"}, headers={"host": "localhost"}
        )
        print(json.dumps({
            "status": r.status_code, "json": r.json(),
            "bad": bad.status_code,
            "slow_status": s.status_code, "slow": s.json(),
        }))
        """,
    )
    assert result["status"] == 200
    assert result["json"]["result"] == 3
    assert result["json"]["task_id"]
    assert result["bad"] == 400
    assert result["slow_status"] == 202
    assert result["slow"]["task_id"]


def test_secret_key_required_without_debug(tmp_path: Path) -> None:
    env = _env(tmp_path)
    del env["DJANGO_SECRET_KEY"]
    proc = _run(["manage.py", "check"], env)
    assert proc.returncode != 0
    assert "DJANGO_SECRET_KEY" in proc.stderr

    env["DJANGO_DEBUG"] = "1"
    manage(env, "check")
