"""The core flow on a host whose sites run under supervisor (`process_manager = "supervisor"`):
provision starts supervisord; a deploy runs both web slots, Celery worker and beat and Flower
as supervisor programs (no djk-* systemd unit); a no-op deploy keeps every PID; a code deploy
and a rollback under keep-alive load fail no request and keep nginx's PIDs, while a running
task finishes across the deploy; after a reboot the live slot (only it) and the workers are
back, and the next deploy changes nothing."""

from __future__ import annotations

import json
import time

import pytest

from .kit import (
    SECRET,
    Load,
    Project,
    curl,
    health,
    live_slot,
    nginx_pids,
    program_pid,
    sh,
    wait_for,
)

pytestmark = pytest.mark.e2e
FLOWER_PASSWORD = "flower-Pw-8d1e0"
SITE = "djk-example"
WORKERS = tuple(f"{SITE}-{role}" for role in ("worker", "beat", "flower"))


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.host_keys[fresh_host.name] = {"process_manager": "supervisor"}
    project.site["source"] = str(src)
    project.site["celery"] = {"app": "exampleproject", "beat": True}
    project.site["flower"] = {"port": 5555}
    project.secrets["FLOWER_BASIC_AUTH"] = f"admin:{FLOWER_PASSWORD}"
    project.write()
    return project


@pytest.fixture(scope="module")
def deployed(project, fresh_host):
    # The image has the package but supervisord disabled: provision enables and starts it.
    assert sh(fresh_host, "systemctl is-active supervisor || true").strip() == "inactive"
    for task in ("provision", "deploy"):
        run = project.fab("-H", "web1", task)
        assert run.code == 0, run.out + run.err
    return run


def status(host) -> dict[str, str]:
    """`supervisorctl status`: program -> state."""
    out = sh(host, "supervisorctl status || true")
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def web(host) -> str:
    return f"{SITE}-web-{live_slot(host)}"


def pids(host) -> dict[str, int]:
    return {p: program_pid(host, p) for p in (web(host), *WORKERS)}


def get_json(host, path: str) -> dict:
    answer = curl(host, path)
    try:
        return json.loads(answer.split("\n\n", 1)[-1])
    except ValueError:
        return {}


def test_every_process_of_the_site_is_a_supervisor_program(deployed, fresh_host):
    assert sh(fresh_host, "systemctl is-enabled supervisor").strip() == "enabled"
    # The site's processes are no systemd units (the host's firewall is one: not a site's).
    units = "systemctl list-unit-files --no-legend 'djk-*' | grep -v '^djk-firewall' || true"
    assert sh(fresh_host, units).strip() == ""
    assert sh(fresh_host, "ls /etc/systemd/system | grep djk- | grep -v firewall || true") == ""
    states = status(fresh_host)
    slot = live_slot(fresh_host)
    idle = "b" if slot == "a" else "a"
    assert states[f"{SITE}-web-{slot}"] == "RUNNING", states
    assert states[f"{SITE}-web-{idle}"] == "STOPPED", states
    assert all(states[p] == "RUNNING" for p in WORKERS), states
    assert f"{SITE}-boot" in states, states
    release = health(fresh_host)["release"]
    for program in (web(fresh_host), *WORKERS):
        pid = program_pid(fresh_host, program)
        assert sh(fresh_host, f"ps -o user= -p {pid}").strip() == "djk-example", program
        assert sh(fresh_host, f"readlink /proc/{pid}/cwd").strip().endswith(release), program
    assert get_json(fresh_host, "/tasks/add/?x=2&y=3").get("result") == 5
    # Secrets reach the processes through the env file, never a command line.
    args = sh(fresh_host, "ps -eo args")
    assert FLOWER_PASSWORD not in args and SECRET not in args
    flower = curl(fresh_host, "/flower/", extra=f"-u admin:{FLOWER_PASSWORD}")
    assert flower.split("\n")[1].split()[1] == "200", flower[:300]


def test_second_deploy_changes_nothing_and_restarts_nothing(deployed, project, fresh_host):
    before = pids(fresh_host)
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    assert run.host("web1")["changed"] == 0, run.out
    assert pids(fresh_host) == before


def test_deploy_and_rollback_under_load_fail_nothing(deployed, project, fresh_host, src):
    before = health(fresh_host)["release"]
    slow = get_json(fresh_host, "/tasks/slow/?x=20&y=22&seconds=6")
    task = slow["task_id"]
    started = lambda: get_json(fresh_host, f"/tasks/result/{task}/").get("state") == "STARTED"  # noqa: E731
    assert wait_for(started, timeout=60)
    worker = program_pid(fresh_host, f"{SITE}-worker")
    nginx = nginx_pids(fresh_host)
    version = (src / "VERSION").read_text()
    (src / "VERSION").write_text("8.0.0\n")
    with (
        Load(fresh_host.address, "example.test") as load,
        Load(fresh_host.address, "example.test", keep_alive=True) as steady,
    ):
        time.sleep(1)
        run = project.fab("-H", "web1", "deploy", "--json")
        assert run.code == 0, run.out + run.err
        new = run.host("web1")["extra"]["releases"]["example"]
        # The running task finished (warm shutdown), then the worker runs the new release.
        result = get_json(fresh_host, f"/tasks/result/{task}/")
        assert (result.get("state"), result.get("result")) == ("SUCCESS", 42), result
        assert program_pid(fresh_host, f"{SITE}-worker") != worker
        time.sleep(1)
        back = project.fab("-H", "web1", "rollback", "--json")
        assert back.code == 0, back.out + back.err
        time.sleep(1)
    (src / "VERSION").write_text(version)  # the source of the release rolled back to
    assert len(load.results) > 30 and load.failures == [], load.failures[:10]
    assert len(steady.results) > 30 and steady.failures == [], steady.failures[:10]
    assert {r for _, r in steady.results} == {before, new}
    assert nginx_pids(fresh_host) == nginx
    assert health(fresh_host)["release"] == before
    states = status(fresh_host)
    assert [p for p, s in states.items() if "-web-" in p and s == "RUNNING"] == [web(fresh_host)]


def test_logs_come_from_the_programs_log_files(deployed, project, fresh_host):
    mark = f"probe-{time.time_ns()}"
    assert "200 OK" in curl(fresh_host, f"/health/?{mark}")
    out = project.fab("app.logs", "--site", "example", "--unit", "web", "--lines", "5")
    assert out.code == 0, out.err
    assert [ln for ln in out.out.splitlines() if mark in ln][0].startswith("web1     | example web")
    both = ("--unit", "worker", "--unit", "nginx")
    read = project.fab("app.logs", "--site", "example", *both, "--json")
    rows = [json.loads(ln) for ln in read.out.splitlines()]
    sources = {r["source"] for r in rows}
    assert "/var/log/supervisor/djk-example-worker.log" in sources
    assert "/var/log/nginx/djk-example.access.log" in sources
    assert any(mark in r["message"] for r in rows if r["unit"] == "nginx")


def test_a_timer_is_a_program_that_runs_its_job_on_schedule(deployed, project, fresh_host):
    job = (
        "shell -c \"import os, pathlib; pathlib.Path('/srv/djk/example/shared/timer-ran')"
        ".write_text(os.getcwd() + ' ' + os.environ['USER'])\""
    )
    project.site["timers"] = {"probe": {"schedule": "*:*:0/2", "command": job}}
    project.write()
    try:
        run = project.fab("-H", "web1", "deploy")
        assert run.code == 0, run.out + run.err
        up = wait_for(lambda: status(fresh_host).get("djk-example-timer_probe") == "RUNNING", 10)
        assert up, status(fresh_host)
        live = health(fresh_host)["release"]
        ran = wait_for(
            lambda: sh(fresh_host, "cat /srv/djk/example/shared/timer-ran 2>/dev/null || true"), 20
        )
        assert ran == f"/srv/djk/example/releases/{live} djk-example"
        assert "timer probe: exit 0" in sh(
            fresh_host, "cat /var/log/supervisor/djk-example-timer_probe.log"
        )
        assert "timer_" not in sh(fresh_host, "ls /etc/systemd/system")  # no systemd timer
    finally:
        project.site.pop("timers")
        project.write()
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    assert "djk-example-timer_probe" not in status(fresh_host)
    assert "timer_" not in sh(fresh_host, "ls /etc/supervisor/conf.d")


def test_status_reads_the_programs(deployed, project, fresh_host):
    run = project.fab("-H", "web1", "status", "--json")
    assert run.code == 0, run.out + run.err
    (row,) = run.report["hosts"][0]["extra"]["status"]
    assert row["web"]["running"] and row["web"]["pid"] == program_pid(
        fresh_host, f"{SITE}-web-{live_slot(fresh_host)}"
    )
    assert set(row["processes"]) == set(WORKERS) and row["health"]["status"] == 200
    sh(fresh_host, f"supervisorctl stop {SITE}-beat")
    try:
        down = project.fab("-H", "web1", "status")
        assert down.code == 1 and f"{SITE}-beat not running" in down.out, down.out
    finally:
        sh(fresh_host, f"supervisorctl start {SITE}-beat")


def test_a_killed_process_is_restarted_by_supervisord(deployed, fresh_host):
    for program in (web(fresh_host), f"{SITE}-worker"):
        pid = program_pid(fresh_host, program)
        sh(fresh_host, f"kill -9 {pid}")
        assert wait_for(
            lambda p=program, old=pid: program_pid(fresh_host, p) not in (0, old), timeout=60
        )
    assert wait_for(lambda: '"status": "ok"' in curl(fresh_host, "/health/"), timeout=30)
    assert wait_for(
        lambda: get_json(fresh_host, "/tasks/add/?x=2&y=2").get("result") == 4, timeout=60
    )


def test_after_a_reboot_the_live_slot_and_workers_are_back(deployed, project, fresh_host, testbed):
    before = health(fresh_host)["release"]
    slot = live_slot(fresh_host)
    host = testbed.reboot(fresh_host.name)
    assert wait_for(lambda: "200 OK" in curl(host, "/health/"), timeout=60)
    assert health(host)["release"] == before and live_slot(host) == slot
    assert wait_for(lambda: all(status(host).get(p) == "RUNNING" for p in WORKERS), timeout=60)
    states = status(host)
    idle = "b" if slot == "a" else "a"
    assert states[f"{SITE}-web-{slot}"] == "RUNNING" and states[f"{SITE}-web-{idle}"] == "STOPPED"
    assert wait_for(lambda: get_json(host, "/tasks/add/?x=1&y=1").get("result") == 2, timeout=60)
    # The shutdown stopped supervisord (its programs first) while Redis still ran: beat and
    # Flower exit on SIGTERM then, instead of retrying a broker already gone.
    units = "-u supervisor.service -u redis-server.service"
    log = sh(host, f"journalctl -b -1 -o cat {units} | grep -E '^Stopped (supervisor|redis)'")
    stopped = log.splitlines()
    assert [line.split()[1].split(".")[0] for line in stopped] == ["supervisor", "redis-server"]
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    assert run.host("web1")["changed"] == 0, run.out


def test_a_host_moved_back_to_systemd_switches_under_load_and_keeps_nothing_of_supervisor(
    deployed, project, fresh_host
):
    """Changing process_manager on a deployed host: the next deploy starts the site under the
    new manager through the same gate and switch (no failed request), then stops and deletes
    the old manager's processes; the deploy after that changes nothing."""
    before = health(fresh_host)["release"]
    project.host_keys[fresh_host.name] = {"process_manager": "systemd"}
    project.write()
    try:
        with Load(fresh_host.address, "example.test", keep_alive=True) as steady:
            time.sleep(1)
            run = project.fab("-H", "web1", "deploy", "--json")
            assert run.code == 0, run.out + run.err
            time.sleep(1)
        assert len(steady.results) > 30 and steady.failures == [], steady.failures[:10]
        assert health(fresh_host)["release"] == before  # the same release, restarted
        leftovers = next(s for s in run.host("web1")["steps"] if s["step"].startswith("example:"))
        assert leftovers["status"] == "changed" and "djk-example-web-a" in leftovers["detail"]
        assert [p for p in status(fresh_host) if p.startswith(SITE)] == []
        assert sh(fresh_host, "ls /etc/supervisor/conf.d").strip() == ""
        states = sh(fresh_host, f"systemctl is-active {SITE}-worker {SITE}-beat || true").split()
        assert states == ["active", "active"], states
        assert wait_for(
            lambda: get_json(fresh_host, "/tasks/add/?x=3&y=4").get("result") == 7, timeout=60
        )
        # Flower's new unit binds its port once the old program let go (systemd retries it).
        flower = f"systemctl is-active {SITE}-flower || true"
        assert wait_for(lambda: sh(fresh_host, flower).strip() == "active", timeout=30)
        again = project.fab("-H", "web1", "deploy", "--json")
        assert again.code == 0 and again.host("web1")["changed"] == 0, again.out
    finally:
        project.host_keys[fresh_host.name] = {"process_manager": "supervisor"}
        project.write()
