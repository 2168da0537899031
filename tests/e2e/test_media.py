"""Uploads: a file posted to a view of the app lands in MEDIA_ROOT (outside every release),
nginx serves it itself with nosniff, it is still there after a deploy, a rollback and the
cleanup of old releases, and no user but the site's (and nginx's group) can read it."""

from __future__ import annotations

import json
import subprocess

import pytest

from .kit import Project, curl, sh

pytestmark = pytest.mark.e2e

UPLOAD_VIEW = '''
from django.core.files.storage import default_storage
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def upload(request):
    """Test-only: saves the posted file with Django's default storage (MEDIA_ROOT)."""
    uploaded = request.FILES["file"]
    name = default_storage.save(f"uploads/{uploaded.name}", uploaded)
    return JsonResponse({"name": name, "url": default_storage.url(name)})
'''
ROUTE = """
from django.urls import path as _path
from .upload import upload as _upload

urlpatterns.append(_path("upload/", _upload))
"""
SCRIPT = "<script>alert(1)</script>\n"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    (src / "pages/upload.py").write_text(UPLOAD_VIEW)
    urls = src / "pages/urls.py"
    urls.write_text(urls.read_text() + ROUTE)
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(src), keep_releases=2, media={"url": "/uploads/"})
    project.write()
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return project


def post(host, name: str, data: str, tmp_path) -> dict:
    file = tmp_path / name
    file.write_text(data)
    done = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "10",
            "-H",
            "Host: example.test",
            "-F",
            f"file=@{file}",
            f"http://{host.address}/upload/",
        ],
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout)


def fetch(host, url: str) -> tuple[str, str]:
    answer = curl(host, url).split("\n", 1)[1]
    head, _, body = answer.partition("\n\n")  # (curl -i, read as text: \n line ends)
    return head, body


def deploy(project, src, version: str) -> None:
    (src / "VERSION").write_text(version + "\n")
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err


def test_an_upload_is_saved_in_media_root_and_served_by_nginx(project, fresh_host, tmp_path):
    saved = post(fresh_host, "hello.html", SCRIPT, tmp_path)
    assert saved["url"] == "/uploads/uploads/hello.html"
    head, body = fetch(fresh_host, saved["url"])
    assert head.startswith("HTTP/1.1 200") and body == SCRIPT
    assert "x-content-type-options: nosniff" in head.lower()
    # The app does not serve media (DEBUG off): nginx answered from the directory itself.
    on_disk = sh(fresh_host, "cat /srv/djk/example/media/uploads/hello.html")
    assert on_disk == SCRIPT
    env = sh(fresh_host, "cat /srv/djk/example/shared/env")
    assert "DJANGO_MEDIA_ROOT='/srv/djk/example/media'" in env
    assert "DJANGO_MEDIA_URL='/uploads/'" in env
    # Python uploaded is a file like any other: nginx returns its bytes, nothing runs it.
    code = post(fresh_host, "x.py", "print('ran')\n", tmp_path)
    assert fetch(fresh_host, code["url"])[1] == "print('ran')\n"


def test_only_the_site_user_writes_and_no_other_user_reads(project, fresh_host):
    mode = sh(fresh_host, "stat -c '%a %U %G' /srv/djk/example/media").strip()
    assert mode == "2750 djk-example www-data"
    owner = sh(fresh_host, "stat -c '%U %G' /srv/djk/example/media/uploads/hello.html").strip()
    assert owner == "djk-example www-data"
    refused = sh(
        fresh_host,
        "runuser -u nobody -- cat /srv/djk/example/media/uploads/hello.html 2>&1; echo rc=$?",
    )
    assert "Permission denied" in refused and "rc=1" in refused


def test_uploads_survive_deploys_a_rollback_and_release_cleanup(project, fresh_host, src):
    first = sh(fresh_host, "ls /srv/djk/example/releases").split()
    for version in ("2.0.0", "3.0.0", "4.0.0"):  # keep_releases = 2: the first ones go
        deploy(project, src, version)
    now = sh(fresh_host, "ls /srv/djk/example/releases").split()
    assert not set(first) & set(now), (first, now)
    run = project.fab("-H", "web1", "rollback")
    assert run.code == 0, run.out + run.err
    head, body = fetch(fresh_host, "/uploads/uploads/hello.html")
    assert head.startswith("HTTP/1.1 200") and body == SCRIPT
