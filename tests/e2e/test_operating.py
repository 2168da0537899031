"""Operating a live site on a real host (systemd, Celery, Flower): `fab app.logs` with its units,
--lines, --follow, --since and --json, each site's own nginx logs rotated by logrotate; hooks on
the host and on the control machine; a webhook that hears deploys succeed and fail, and one that
never answers."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testbed import net

from .kit import (
    Project,
    curl,
    health,
    live_slot,
    live_unit,
    sh,
    snapshot,
    spawn_fab,
    wait_for,
    wait_for_line,
)

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
    after = wait_for(
        lambda: (
            (m := probe(fresh_host)) in sh(fresh_host, "cat /var/log/nginx/djk-example.access.log")
            and m
        )
    )
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
    proc = spawn_fab(
        project.inventory,
        "app.logs",
        "--site",
        "example",
        "--unit",
        "web",
        "--unit",
        "nginx",
        "--follow",
        "--lines",
        "1",
    )
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


# -- hooks and notifications ---------------------------------------------------------------------


class Webhook:
    """An HTTP server on the control machine's side of the test network, recording what it is
    sent; `hang`: it accepts and never answers."""

    def __init__(self, address: str, hang: bool = False) -> None:
        self.received: list[dict] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.received.append(
                    json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                )
                if hang:
                    outer.release.wait(60)
                    return
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{address}:{self.server.server_port}/hooks/s3cret-t0ken"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def configured(project, src):
    """Change the site's hooks.toml keys and secrets for one test; put them back after."""
    saved_site, saved_secrets = dict(project.site), dict(project.secrets)

    def configure(**keys) -> None:
        project.site.update(keys)
        project.write()

    yield configure
    project.site.clear()
    project.site.update(saved_site)
    project.secrets.clear()
    project.secrets.update(saved_secrets)
    project.write()


def new_version(src) -> str:
    version = uuid.uuid4().hex[:6]
    (src / "VERSION").write_text(version + "\n")
    return version


def test_a_failing_before_switch_hook_stops_the_deploy(
    project, deployed, fresh_host, src, configured
):
    live = health(fresh_host)["release"]
    configured(hooks={"before_switch": ["echo checking $DJK_RELEASE", "exit 1"]})
    new_version(src)
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 1, run.out
    assert "hook before_switch example" in run.out and "checking 2" in run.out
    assert health(fresh_host)["release"] == live  # nothing switched
    assert "switch example" not in [
        ln.split("|")[2].strip()
        for ln in run.out.splitlines()
        if ln.count("|") >= 2 and "changed" in ln
    ]


def test_host_hooks_run_as_the_site_user_in_the_new_release(
    project, deployed, fresh_host, src, configured
):
    before = health(fresh_host)["release"]
    record = (
        "env | grep ^DJK_ | sort > /tmp/hook-{0}.txt; id -un >> /tmp/hook-{0}.txt; "
        "pwd >> /tmp/hook-{0}.txt; command -v python >> /tmp/hook-{0}.txt"
    )
    configured(
        hooks={
            "before_switch": record.format("before"),
            "after_switch": [record.format("after"), "echo after failed; exit 4"],
        }
    )
    new_version(src)
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 1  # the after-switch hook failed: reported, the release stays
    now = health(fresh_host)["release"]
    assert now != before
    failed = [s for s in run.host("web1")["steps"] if s["status"] == "failed"]
    assert [s["step"] for s in failed] == ["hook after_switch example"], failed
    for when, status in (("before", "switching"), ("after", "switched")):
        lines = sh(fresh_host, f"cat /tmp/hook-{when}.txt").splitlines()
        assert f"DJK_RELEASE={now}" in lines and f"DJK_PREVIOUS={before}" in lines
        assert f"DJK_STATUS={status}" in lines and "DJK_SITE=example" in lines
        assert "DJK_HOSTS=web1" in lines and any(ln.startswith("DJK_REVISION=") for ln in lines)
        assert lines[-3:] == [
            "djk-example",
            f"/srv/djk/example/releases/{now}",
            f"/srv/djk/example/releases/{now}/.venv/bin/python",
        ]
    # Nothing new: no hook runs, nothing changes.
    again = project.fab("-H", "web1", "deploy", "--json")
    assert again.code == 0 and again.host("web1")["changed"] == 0


def test_local_hooks_see_the_documented_variables(project, deployed, fresh_host, src, configured):
    record = "env | grep ^DJK_ | sort > local-{0}.txt"
    configured(
        hooks={
            "local_before": record.format("before"),
            "local_after": record.format("after"),
            "local_failure": record.format("failure"),
        }
    )
    before = health(fresh_host)["release"]
    new_version(src)
    run = fab(project, "-H", "web1", "deploy")
    now = health(fresh_host)["release"]
    start = (project.dir / "local-before.txt").read_text().splitlines()
    assert f"DJK_RELEASE={now}" in start and "DJK_STATUS=started" in start
    end = (project.dir / "local-after.txt").read_text().splitlines()
    assert f"DJK_PREVIOUS={before}" in end and "DJK_STATUS=succeeded" in end
    assert "DJK_HOSTS=web1" in end and "DJK_ACTION=deploy" in end
    assert any(ln.startswith("DJK_USER=") and "@" in ln for ln in end)
    assert not (project.dir / "local-failure.txt").exists()
    assert "local    | ..." in run.out
    # A local before-hook that fails: nothing is touched.
    configured(hooks={"local_before": "exit 9"})
    marker = snapshot(fresh_host)
    new_version(src)
    refused = project.fab("-H", "web1", "deploy")
    assert refused.code == 1 and "exited 9; nothing was changed" in refused.err
    assert snapshot(fresh_host) == marker and health(fresh_host)["release"] == now


def test_a_webhook_hears_deploys_that_succeed_and_fail(
    project, deployed, fresh_host, src, configured, testbed
):
    hook = Webhook(net.gateway(testbed.subnet))
    try:
        project.secrets["DEPLOY_WEBHOOK_URL"] = hook.url
        configured(notify={})
        new_version(src)
        run = fab(project, "-H", "web1", "deploy")
        now = health(fresh_host)["release"]
        assert [m["status"] for m in hook.received] == ["started", "succeeded"]
        done = hook.received[1]
        assert done["release"] == now and done["site"] == "example" and done["hosts"] == ["web1"]
        assert done["action"] == "deploy" and "@" in done["by"] and done["changed"] is True
        assert "delivered" in run.out and "s3cret-t0ken" not in run.out
        # The URL stays on this machine: not in the host's env file.
        assert "s3cret-t0ken" not in sh(fresh_host, "cat /srv/djk/example/shared/env")
        configured(notify={}, hooks={"before_switch": "exit 1"})
        new_version(src)
        assert project.fab("-H", "web1", "deploy").code == 1
        failed = hook.received[-1]
        assert failed["status"] == "failed" and "hook before_switch example" in failed["error"]
    finally:
        hook.close()


def test_a_webhook_that_never_answers_does_not_fail_the_deploy(
    project, deployed, fresh_host, src, configured, testbed
):
    hook = Webhook(net.gateway(testbed.subnet), hang=True)
    try:
        project.secrets["DEPLOY_WEBHOOK_URL"] = hook.url
        configured(notify={"timeout": 2})
        new_version(src)
        began = time.monotonic()
        run = project.fab("-H", "web1", "deploy")
        assert run.code == 0, run.out + run.err
        lines = [ln for ln in run.out.splitlines() if "webhook" in ln]
        assert len(lines) == 2 and all("no answer within 2 s" in ln for ln in lines), lines
        assert time.monotonic() - began < 60
        assert len(hook.received) == 2
    finally:
        hook.close()


# -- timers --------------------------------------------------------------------------------------

# The job proves where and as whom it ran; `%` and `$` reach Python as typed (systemd's own
# specifiers and variables are escaped).
PROBE_JOB = (
    "shell -c \"import os, pathlib; pathlib.Path('/srv/djk/example/shared/timer-ran')"
    ".write_text('%s %d $HOME' % (os.getcwd(), os.getuid()))\""
)


def test_a_timer_fires_in_the_live_release_as_the_site_user_and_goes_when_dropped(
    project, deployed, fresh_host, configured
):
    configured(timers={"probe": {"schedule": "*:*:0/2", "command": PROBE_JOB}})
    run = fab(project, "-H", "web1", "deploy", "--json")
    names = [s["step"] for s in run.host("web1")["steps"] if s["status"] == "changed"]
    assert "unit djk-example-timer_probe.timer" in names, names
    live = health(fresh_host)["release"]
    ran = wait_for(
        lambda: sh(fresh_host, "cat /srv/djk/example/shared/timer-ran 2>/dev/null || true"), 20
    )
    uid = sh(fresh_host, "id -u djk-example").strip()
    assert ran == f"/srv/djk/example/releases/{live} {uid} $HOME", ran
    assert sh(fresh_host, "systemctl is-enabled djk-example-timer_probe.timer").strip() == "enabled"
    # Nothing new: nothing changes.
    again = fab(project, "-H", "web1", "deploy", "--json").host("web1")
    assert again["changed"] == 0, [s for s in again["steps"] if s["status"] == "changed"]
    # A schedule systemd does not read stops before any file changes.
    configured(timers={"probe": {"schedule": "every tuesday", "command": PROBE_JOB}})
    bad = project.fab("-H", "web1", "deploy")
    assert bad.code == 1 and "timers.probe.schedule: systemd on this host does not read" in bad.out
    # Taken out of hosts.toml: stopped and deleted.
    configured(timers={})
    project.site.pop("timers")
    project.write()
    fab(project, "-H", "web1", "deploy")
    left = sh(
        fresh_host,
        "ls /etc/systemd/system | grep timer_ || true; systemctl list-timers "
        "--all --no-legend | grep djk-example || true",
    )
    assert left.strip() == ""


# -- fab status ----------------------------------------------------------------------------------


def status_table(out: str) -> dict[str, str]:
    """`fab status`' lines for one host and site: label -> text."""
    found = {}
    for line in out.splitlines():
        match = re.match(r"^  (\S.*?)\s{2,}(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_status_shows_each_part_and_fails_when_a_worker_is_down(
    project, deployed, fresh_host, configured
):
    configured(timers={"tick": {"schedule": "*:*:0/2", "command": "check"}})
    fab(project, "-H", "web1", "deploy")
    live = health(fresh_host)["release"]
    wait_for(lambda: "timer_tick" in sh(fresh_host, "systemctl list-timers --all --no-legend"))
    time.sleep(3)  # the timer ran once
    out = fab(project, "-H", "web1", "status").out
    table = status_table(out)
    assert table["release"].startswith(live), out
    assert table["health"].startswith("200 in ") and table["health"].endswith(" s (/)")
    pid = int(sh(fresh_host, f"systemctl show -p MainPID --value {live_unit(fresh_host)}"))
    assert table["web"] == f"slot {live_slot(fresh_host)}, pid {pid}, running"
    for unit in (
        "djk-example-worker.service",
        "djk-example-beat.service",
        "djk-example-flower.service",
    ):
        assert table[unit].endswith(", running"), out
    assert table["timer tick"].startswith("*:*:0/2: active, next ")
    assert table["maintenance"] == "off"
    assert "by " in table["last deploy"] and table["last deploy"].endswith(f"ok -> {live}")
    data = fab(project, "-H", "web1", "status", "--json").report
    (row,) = data["hosts"][0]["extra"]["status"]
    assert row["release"] == live and row["health"]["status"] == 200 and row["down"] == []
    assert row["web"]["pid"] == pid and row["processes"]["djk-example-worker.service"]["running"]
    assert row["timers"]["tick"]["active"] and row["timers"]["tick"]["last_result"] == "success"
    assert row["maintenance"] is False and row["last_deploy"]["release"] == live
    sh(fresh_host, "systemctl stop djk-example-worker.service")
    try:
        down = project.fab("-H", "web1", "status")
        assert down.code == 1
        assert status_table(down.out)["DOWN"] == "djk-example-worker.service not running"
    finally:
        sh(fresh_host, "systemctl start djk-example-worker.service")
    assert project.fab("-H", "web1", "status").code == 0
