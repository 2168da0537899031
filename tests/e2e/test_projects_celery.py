"""`djk init` on a WSGI-only project with Celery (made with `django-admin startproject`, its
asgi.py removed, a Celery app as Celery's Django guide writes it): the inventory it writes
deploys once only the host's address is filled in, and a task goes through the worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .kit import curl, sh, team_fab
from .test_projects import git

pytestmark = pytest.mark.e2e

CELERY = """\
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "blog.settings")
app = Celery("blog")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ["blog.tasks"]
"""

TASKS = """\
from celery import shared_task


@shared_task
def add(x, y):
    return x + y
"""

URLS = """\
from django.http import JsonResponse
from django.urls import path

from .tasks import add


def home(request):
    return JsonResponse({"status": "ok"})


def add_view(request):
    return JsonResponse({"result": add.delay(2, 3).get(timeout=20)})


urlpatterns = [path("", home), path("add/", add_view)]
"""

REQUIREMENTS = """\
Django==5.2.19
celery[redis]==5.7.0
redis==8.1.0
# redis needs it on Python < 3.11.3 (Debian 12 has 3.11.2)
async-timeout==5.0.1
"""


@pytest.fixture(scope="module")
def blog(tmp_path_factory, fresh_host, kit_venv):
    root = tmp_path_factory.mktemp("projects") / "blog"
    root.mkdir()
    admin = Path(sys.executable).parent / "django-admin"
    subprocess.run([str(admin), "startproject", "blog", str(root)], check=True)
    (root / "blog" / "asgi.py").unlink()
    (root / "blog" / "celery.py").write_text(CELERY)
    (root / "blog" / "__init__.py").write_text("from .celery import app as celery_app  # noqa\n")
    (root / "blog" / "tasks.py").write_text(TASKS)
    (root / "blog" / "urls.py").write_text(URLS)
    (root / "requirements.txt").write_text(REQUIREMENTS)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "startproject")
    done = subprocess.run(
        [str(kit_venv / "bin/djk"), "init"], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WSGI" in done.stdout and "Celery app blog" in done.stdout, done.stdout
    text = (root / "hosts.toml").read_text().replace("203.0.113.10", fresh_host.address)
    text = text.replace('user = "deploy"', f'user = "deploy"\nssh_key = "{fresh_host.key_path}"')
    (root / "hosts.toml").write_text(text)
    # The host's own key, trusted explicitly (what `fab hosts.trust` records).
    (root / "known_hosts").write_text(fresh_host.known_hosts_line() + "\n")
    return root


def test_init_of_a_wsgi_project_with_celery_deploys_and_runs_a_task(blog, fresh_host, kit_venv):
    done = team_fab(kit_venv, blog, "-H", "web1", "provision", "deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    answer = curl(fresh_host, "/add/", host_header="blog.example.com")
    assert "200 OK" in answer, answer
    assert json.loads(answer.split("\n\n", 1)[-1]) == {"result": 5}
    args = sh(fresh_host, "ps -eo args | grep '[g]unicorn' | head -n 1")
    assert "--worker-class gthread" in args and "blog.wsgi:application" in args
    assert sh(fresh_host, "systemctl is-active djk-blog-worker").strip() == "active"
    again = team_fab(kit_venv, blog, "deploy", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["hosts"][0]["changed"] == 0
