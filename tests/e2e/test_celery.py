"""Celery worker and beat, the local Redis broker and Flower behind nginx, on a real host."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from .kit import Project, curl, health, main_pid, sh, wait_for

pytestmark = pytest.mark.e2e
FLOWER_PASSWORD = "flower-Pw-31c9e"
WORKER, BEAT, FLOWER = (f"djk-example-{r}.service" for r in ("worker", "beat", "flower"))


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["source"] = str(src)
    project.site["celery"] = {"app": "exampleproject", "concurrency": 2, "beat": True}
    project.site["flower"] = {"port": 5555}
    project.secrets["FLOWER_BASIC_AUTH"] = f"admin:{FLOWER_PASSWORD}"
    project.write()
    return project


@pytest.fixture(scope="module")
def deployed(project, fresh_host):
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return run


def get_json(host, path: str, auth: str = "") -> tuple[int, dict]:
    extra = f"-u {auth}" if auth else ""
    answer = curl(host, path, extra=extra)
    status = int(answer.split("\n")[1].split()[1])
    body = answer.split("\n\n", 1)[-1]
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


def test_a_task_round_trips_through_the_broker(deployed, fresh_host):
    status, body = get_json(fresh_host, "/tasks/add/?x=2&y=3")
    assert (status, body.get("result")) == (200, 5), body


def test_workers_run_the_live_release_as_the_site_user(deployed, fresh_host):
    release = health(fresh_host)["release"]
    for unit in (WORKER, BEAT, FLOWER):
        pid = main_pid(fresh_host, unit)
        assert pid > 0, unit
        assert sh(fresh_host, f"readlink /proc/{pid}/cwd").strip().endswith(release)
        assert sh(fresh_host, f"ps -o user= -p {pid}").strip() == "djk-example"
        assert sh(fresh_host, f"systemctl is-enabled {unit}").strip() == "enabled"


def test_broker_listens_on_loopback_only_and_its_url_stays_secret(deployed, project, fresh_host):
    listening = sh(fresh_host, "ss -Hltn 'sport = :6379'")
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
    assert addresses and addresses <= {"127.0.0.1", "[::1]"}
    with pytest.raises(OSError):
        socket.create_connection((fresh_host.address, 6379), timeout=3).close()
    assert "redis://" not in deployed.out
    project.site["celery"]["redis_db"] = 3
    project.write()
    try:
        check = project.fab("-H", "web1", "deploy", "--check", "--diff")
    finally:
        project.site["celery"]["redis_db"] = 0
        project.write()
    assert check.code == 0, check.out + check.err
    assert "secret values changed: CELERY_BROKER_URL" in check.out, check.out
    assert "redis://" not in check.out


def test_second_deploy_restarts_neither_worker_nor_flower(deployed, project, fresh_host):
    pids = {u: main_pid(fresh_host, u) for u in (WORKER, BEAT, FLOWER)}
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    assert run.host("web1")["changed"] == 0
    assert {u: main_pid(fresh_host, u) for u in pids} == pids


def test_running_task_finishes_across_a_deploy_and_new_code_takes_tasks(
    deployed, project, fresh_host, src
):
    status, body = get_json(fresh_host, "/tasks/slow/?x=20&y=22&seconds=6")
    assert status == 202, body
    task_id = body["task_id"]
    assert wait_for(
        lambda: get_json(fresh_host, f"/tasks/result/{task_id}/")[1].get("state") == "STARTED"
    )
    old_worker = main_pid(fresh_host, WORKER)
    (src / "VERSION").write_text("7.0.0\n")
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    release = run.host("web1")["extra"]["releases"]["example"]
    steps = {s["step"]: s for s in run.host("web1")["steps"]}
    # The old worker stopped taking tasks before the switch; the new one started after it.
    assert steps["celery workers example"]["status"] == "changed"
    assert "start djk-example-worker.service" in steps["celery example"]["detail"]
    # The warm shutdown waited for the running task; its result is there, not lost.
    status, result = get_json(fresh_host, f"/tasks/result/{task_id}/")
    assert result.get("state") == "SUCCESS" and result.get("result") == 42, result
    new_worker = main_pid(fresh_host, WORKER)
    assert new_worker != old_worker
    assert sh(fresh_host, f"readlink /proc/{new_worker}/cwd").strip().endswith(release)
    status, body = get_json(fresh_host, "/tasks/add/?x=40&y=2")
    assert (status, body.get("result")) == (200, 42), body


def test_flower_behind_nginx_with_basic_auth(deployed, fresh_host):
    auth = f"admin:{FLOWER_PASSWORD}"
    assert curl(fresh_host, "/flower/").split("\n")[1].split()[1] == "401"
    assert curl(fresh_host, "/flower/", extra=f"-u {auth}").split("\n")[1].split()[1] == "200"
    assert curl(fresh_host, "/flower/", extra="-u admin:wrong").split("\n")[1].split()[1] == "401"

    def worker_listed():
        status, workers = get_json(fresh_host, "/flower/api/workers?refresh=1", auth)
        return status == 200 and "example@web1" in workers

    assert wait_for(worker_listed)
    # Flower serves these without auth: nginx must not pass them through.
    for path in ("/flower/metrics", "/flower/healthcheck"):
        assert curl(fresh_host, path).split("\n")[1].split()[1] == "404"
    with pytest.raises(OSError):
        socket.create_connection((fresh_host.address, 5555), timeout=3).close()
    args = sh(fresh_host, "ps -eo args")
    assert FLOWER_PASSWORD not in args
    assert "flower --address=127.0.0.1" in args


def test_celery_tasks_compose_in_scripts(deployed, project, fresh_host):
    assert project.fab("-H", "web1", "celery.status").code == 0
    assert project.fab("-H", "web1", "flower.status").code == 0
    worker = main_pid(fresh_host, WORKER)
    run = project.fab("-H", "web1", "celery.restart", "--quiet")
    assert run.code == 0, run.out + run.err
    assert main_pid(fresh_host, WORKER) != worker
    sh(fresh_host, f"systemctl stop {BEAT}")
    try:
        assert project.fab("-H", "web1", "celery.status").code == 1
    finally:
        sh(fresh_host, f"systemctl start {BEAT}")


STAMP_TASK = """

@shared_task
def stamp() -> str:
    from django.conf import settings

    return settings.APP_RELEASE
"""
STAMP_VIEW = """

def task_stamp(request: HttpRequest) -> JsonResponse:
    from .tasks import stamp

    return JsonResponse({"task_id": stamp.delay().id, "release": settings.APP_RELEASE})
"""


def test_a_task_the_new_release_sends_during_the_switch_runs_on_its_own_code(
    deployed, project, fresh_host, src
):
    """The new release brings a task the old workers do not know: what its web sends while the
    old workers still run (old code) would be lost as unregistered. Sent from the moment the
    new release answers, every one is run by a worker of the new release."""
    (src / "pages/tasks.py").write_text((src / "pages/tasks.py").read_text() + STAMP_TASK)
    (src / "pages/views.py").write_text((src / "pages/views.py").read_text() + STAMP_VIEW)
    urls = src / "pages/urls.py"
    urls.write_text(
        urls.read_text().replace(
            '    path("echo/", views.echo, name="echo"),\n',
            '    path("echo/", views.echo, name="echo"),\n'
            '    path("tasks/stamp/", views.task_stamp, name="task-stamp"),\n',
        )
    )
    sent: list[tuple[str, str]] = []  # (release that answered, task id)
    done = threading.Event()

    def send() -> None:
        while not done.is_set():
            status, body = get_json(fresh_host, "/tasks/stamp/")
            if status == 200:
                sent.append((body["release"], body["task_id"]))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        run = project.fab("-H", "web1", "deploy", "--json")
    finally:
        time.sleep(1)
        done.set()
        sender.join(timeout=30)
    assert run.code == 0, run.out + run.err
    release = run.host("web1")["extra"]["releases"]["example"]
    assert sent and {r for r, _ in sent} == {release}

    def results() -> list | None:
        got = [get_json(fresh_host, f"/tasks/result/{task}/")[1] for _, task in sent]
        return got if all(r.get("state") == "SUCCESS" for r in got) else None

    found = wait_for(results, timeout=60)
    assert found, [get_json(fresh_host, f"/tasks/result/{t}/")[1] for _, t in sent[:5]]
    assert {r.get("result") for r in found} == {release}
