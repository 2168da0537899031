"""The maintenance page through nginx: 503 with Retry-After and the page (the message escaped)
while the health path and static files still answer; turning it on or off reloads nothing and
changes nothing the second time; it stays on across a deploy and a rollback until turned off."""

from __future__ import annotations

import pytest

from .kit import Project, curl, health, nginx_pids, sh

pytestmark = pytest.mark.e2e

PAGE = "/var/lib/djk/maintenance/example.html"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(src), health_path="/health/")
    project.write()
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return project


def status(answer: str) -> str:
    return answer.split("\n")[1].split(" ")[1]  # after curl's exit=N line


def maintenance(project, *args: str):
    run = project.fab("app.maintenance", *args, "--json")
    assert run.code == 0, run.out + run.err
    (host,) = run.report["hosts"]
    return host


def changed(host: dict) -> int:
    return sum(1 for s in host["steps"] if s["status"] == "changed")


def test_on_answers_503_with_the_page_while_health_and_static_pass(project, fresh_host):
    before = nginx_pids(fresh_host)
    host = maintenance(project, "on", "--site", "example", "--message", "Back at <b>noon</b>")
    assert changed(host) >= 1
    page = curl(fresh_host, "/")
    assert status(page) == "503", page
    assert "retry-after: 300" in page.lower()
    assert "Back at &lt;b&gt;noon&lt;/b&gt;" in page and "<b>noon" not in page
    assert status(curl(fresh_host, "/some/view/?x=1")) == "503"
    # A POST (an API client's) gets the 503 and the page too, not the static module's 405.
    posted = curl(fresh_host, "/echo/", extra="-X POST -d x=1")
    assert status(posted) == "503" and "retry-after: 300" in posted.lower(), posted
    assert health(fresh_host)["status"] == "ok"  # the health path passes (a monitor's)
    # The host's own requests pass: the kit's checks through nginx during a deploy.
    own = sh(
        fresh_host,
        "curl -s -o /dev/null -w '%{http_code}' -H 'Host: example.test' http://127.0.0.1/",
    )
    assert own.strip() == "200"
    assert status(curl(fresh_host, "/static/pages/style.css")) == "200"
    assert nginx_pids(fresh_host) == before  # no reload, no restart
    assert sh(fresh_host, f"stat -c '%a %U' {PAGE}").strip() == "644 root"
    again = maintenance(project, "on", "--site", "example", "--message", "Back at <b>noon</b>")
    assert changed(again) == 0


def test_it_survives_a_deploy_and_a_rollback_until_turned_off(project, fresh_host, src):
    (src / "VERSION").write_text("2.0.0\n")
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err  # the health gate passes through nginx
    assert health(fresh_host)["version"] == "2.0.0"
    assert status(curl(fresh_host, "/")) == "503"
    run = project.fab("-H", "web1", "rollback")
    assert run.code == 0, run.out + run.err
    assert status(curl(fresh_host, "/")) == "503"
    before = nginx_pids(fresh_host)
    host = maintenance(project, "off", "--site", "example")
    assert changed(host) == 1
    assert status(curl(fresh_host, "/")) == "200"
    assert nginx_pids(fresh_host) == before
    assert changed(maintenance(project, "off", "--site", "example")) == 0


def test_wrong_use_is_one_line_and_exit_2(project):
    run = project.fab("app.maintenance", "maybe", "--site", "example")
    assert run.code == 2 and "on` or `off" in run.err, run.err
    run = project.fab("app.maintenance", "on", "--site", "nope")
    assert run.code == 2 and "unknown site 'nope'" in run.err, run.err
