"""Operating a live site on a real host (systemd, Celery, Flower): `fab app.logs` with its units,
--lines, --follow, --since and --json, each site's own nginx logs rotated by logrotate."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from .kit import Project, curl, sh, spawn_fab, wait_for, wait_for_line

pytestmark = pytest.mark.e2e
FLOWER_PASSWORD = "flower-Pw-0p3r8"
FOLLOWER = "pgrep -f '[a]gent-.*pyz logs' || true"  # [a]: not this command itself


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["source"] = str(src)
    project.site["celery"] = {"app": "exampleproject", "beat": True}
    project.site["flower"] = {"port": 5555}
    project.secrets["FLOWER_BASIC_AUTH"] = f"admin:{FLOWER_PASSWORD}"
    project.write()
    return project


def fab(project, *args: str):
    run = project.fab(*args)
    assert run.code == 0, run.out + run.err
    return run


@pytest.fixture(scope="module")
def deployed(project, fresh_host):
    return fab(project, "-H", "web1", "deploy")


def probe(host) -> str:
    """A request with a path no other line has."""
    mark = f"probe-{uuid.uuid4().hex[:8]}"
    assert "200 OK" in curl(host, f"/health/?{mark}")
    return mark


def test_logs_show_the_live_slots_latest_requests(project, deployed, fresh_host):
    mark = probe(fresh_host)
    out = fab(project, "app.logs", "--site", "example", "--unit", "web", "--lines", "5").out
    lines = out.splitlines()
    # journald keeps gunicorn's access line; each line names host, site and unit.
    hit = [ln for ln in lines if mark in ln]
    assert hit and hit[0].startswith("web1     | example web    | "), out
    assert len(lines) <= 5, out  # the newest 5 of the unit (both slots are one unit)
    assert all(ln.startswith("web1 ") for ln in lines), out


def test_nginx_logs_are_the_sites_own_and_logrotate_rotates_them(project, deployed, fresh_host):
    mark = probe(fresh_host)
    own = sh(fresh_host, "cat /var/log/nginx/djk-example.access.log")
    assert mark in own
    assert mark not in sh(fresh_host, "cat /var/log/nginx/access.log 2>/dev/null || true")
    out = fab(project, "app.logs", "--site", "example", "--unit", "nginx", "--json").out
    rows = [json.loads(line) for line in out.splitlines()]
    hit = [r for r in rows if mark in r["message"]]
    assert hit and hit[0]["source"] == "/var/log/nginx/djk-example.access.log"
    assert hit[0]["host"] == "web1" and hit[0]["site"] == "example" and hit[0]["time"] > 0
    # Debian's rules for /var/log/nginx/*.log take the site's files too; nginx writes anew.
    sh(fresh_host, "logrotate -f /etc/logrotate.d/nginx")
    assert mark in sh(fresh_host, "cat /var/log/nginx/djk-example.access.log.1")
    after = wait_for(lambda: (m := probe(fresh_host)) in sh(
        fresh_host, "cat /var/log/nginx/djk-example.access.log") and m)  # fmt: skip
    assert after


def test_logs_since_leaves_out_older_lines(project, deployed, fresh_host):
    old = probe(fresh_host)
    time.sleep(2.2)
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 1))
    new = probe(fresh_host)
    for unit in ("web", "nginx"):
        out = fab(project, "app.logs", "--site", "example", "--unit", unit, "--since", start).out
        assert new in out and old not in out, (unit, out)


def test_logs_of_every_unit_and_a_bad_unit(project, deployed, fresh_host):
    out = fab(project, "app.logs", "--site", "example", "--lines", "50").out
    units = {line.split("|")[1].split()[1] for line in out.splitlines() if line.count("|") >= 2}
    assert {"web", "worker", "beat", "flower", "nginx"} <= units, out
    bad = project.fab("app.logs", "--site", "example", "--unit", "cron")
    assert bad.code == 2 and "--unit cron: one of web, worker" in bad.err


def test_logs_follow_shows_a_later_request_and_stops_with_the_run(project, deployed, fresh_host):
    proc = spawn_fab(project.inventory, "app.logs", "--site", "example", "--unit", "web",
                     "--unit", "nginx", "--follow", "--lines", "1")  # fmt: skip
    try:
        time.sleep(3)  # connected and following
        mark = probe(fresh_host)
        lines = wait_for_line(proc, mark, timeout=30)
        assert any("example web" in ln or "example nginx" in ln for ln in lines)
        assert sh(fresh_host, FOLLOWER).strip()  # the host's agent is following
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The agent that followed ended with the connection.
    gone = wait_for(lambda: not sh(fresh_host, FOLLOWER).strip(), 15)
    assert gone, sh(fresh_host, "ps -ef | grep agent")


def test_logs_need_a_known_site(project, deployed):
    run = project.fab("app.logs", "--site", "nope")
    assert run.code == 2 and "unknown site 'nope'" in run.err
