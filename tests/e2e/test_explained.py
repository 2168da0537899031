"""Failures that explain themselves and secrets that stay secret, on real hosts: a release whose
health view raises fails its gate at once with the exception quoted (the traceback in the
journal without the project configuring LOGGING), the old release serving and the webhook told
the cause first; an emptied secrets file does not make --diff or --json show the old secrets
the host's env file still holds."""

from __future__ import annotations

import json

import pytest

from testbed import net

from .kit import Project, curl, health, sh
from .test_operating import Webhook

pytestmark = pytest.mark.e2e
VIEWS = "pages/views.py"
OLD_SECRET = "sk_live_0ld-s3cret-only-on-the-host"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(src), health_path="/health/")  # health_timeout: 60 s
    project.secrets["STRIPE_KEY"] = OLD_SECRET
    project.write()
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return project


def test_a_release_whose_health_raises_fails_at_once_and_says_why(
    project, fresh_host, src, testbed
):
    before = health(fresh_host)["release"]
    hook = Webhook(net.gateway(testbed.subnet))
    project.site["notify"] = {"url_secret": "HOOK_URL", "timeout": 10}
    project.secrets["HOOK_URL"] = hook.url
    project.write()
    views = (src / VIEWS).read_text()
    (src / VIEWS).write_text(
        views + "\n\ndef health(request):\n    raise RuntimeError('health is broken')\n"
    )
    (src / "VERSION").write_text("2.0.0\n")
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        (src / VIEWS).write_text(views)
        hook.close()
        del project.site["notify"], project.secrets["HOOK_URL"]
        project.write()
    assert run.code == 1, run.out + run.err
    line = next(ln for ln in run.out.splitlines() if "failed its health check" in ln)
    # Not waited out (health_timeout is 60 s): three answers of HTTP 500 from the new process.
    assert "the app said: RuntimeError: health is broken, in views.py line" in line, line
    assert "3 answers in a row" in line and f"{before} still serves" in line, line
    print(f"\n{line}")
    # The traceback reached the journal: the project configures no LOGGING, DEBUG is off.
    journal = sh(fresh_host, "journalctl -u 'djk-example-web-*' -o cat --no-pager | tail -n 80")
    assert "Traceback (most recent call last):" in journal
    assert "RuntimeError: health is broken" in journal
    # The old release keeps serving.
    assert health(fresh_host)["release"] == before and "200 OK" in curl(fresh_host, "/")
    (failed,) = [m for m in hook.received if m["status"] == "failed"]
    error, said = failed["error"], "before the switch: the app said: RuntimeError: health is broken"
    assert error.startswith("web1: switch example: release ") and said in error[:200], error


@pytest.mark.parametrize("emptied", ["", "# no secrets any more\n"], ids=["empty", "comment"])
def test_an_emptied_secrets_file_shows_none_of_the_hosts_old_secrets(project, emptied):
    saved = (project.dir / "example.env").read_text()
    (project.dir / "example.env").write_text(emptied)
    try:
        diff = project.fab("-H", "web1", "deploy", "--check", "--diff")
        report = project.fab("-H", "web1", "deploy", "--check", "--diff", "--json")
    finally:
        (project.dir / "example.env").write_text(saved)
    for run in (diff, report):
        text = run.out + run.err
        assert OLD_SECRET not in text and project.secrets["DJANGO_SECRET_KEY"] not in text
    assert "-STRIPE_KEY=********" in diff.out, diff.out
    steps = [s for h in report.report["hosts"] for s in h["steps"]]
    env_diff = next(s["diff"] for s in steps if s["step"].startswith("env file"))
    assert "-STRIPE_KEY=********" in env_diff and OLD_SECRET not in json.dumps(report.report)
