"""RabbitMQ as Celery's broker, provisioned from Debian's archive: a task round trip through it,
a running task finishing across a deploy (the worker's warm shutdown), the site's own vhost and
user, its ports (AMQP, epmd, Erlang distribution) on loopback only, and the broker URL in no
process list or output."""

from __future__ import annotations

import socket
import time

import pytest

from .kit import Project, main_pid, sh, wait_for
from .test_celery import get_json

pytestmark = pytest.mark.e2e
WORKER = "djk-example-worker.service"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(src), celery={"app": "exampleproject", "broker": "rabbitmq"})
    project.write()
    run = project.fab("-H", "web1", "provision")
    assert run.code == 0, run.out + run.err
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    project.first_run = run
    return project


def test_a_task_goes_through_rabbitmq_and_back(project, fresh_host):
    status, body = get_json(fresh_host, "/tasks/add/?x=2&y=3")
    assert status == 200 and body["result"] == 5, body
    vhosts = sh(fresh_host, "rabbitmqctl --quiet list_vhosts").split()
    assert "example" in vhosts
    rights = sh(fresh_host, "rabbitmqctl --quiet list_user_permissions example")
    assert rights.split()[-4:] == ["example", ".*", ".*", ".*"]
    # Only the site's user has rights on its vhost (guest has none there).
    assert "guest" not in sh(fresh_host, "rabbitmqctl --quiet list_permissions -p example")


def test_its_ports_listen_on_loopback_only(project, fresh_host):
    listening = sh(fresh_host, "ss -Hltn | awk '{print $4}'").split()
    for port in (5672, 4369, 25672):
        bound = {a.rsplit(":", 1)[0] for a in listening if a.rsplit(":", 1)[1] == str(port)}
        assert bound == {"127.0.0.1"}, (port, bound)
        with pytest.raises(OSError):
            socket.create_connection((fresh_host.address, port), timeout=3).close()


def test_the_broker_url_is_in_no_process_list_or_output(project, fresh_host):
    kept = "/var/lib/djk/secrets/example.broker-password"
    secret = sh(fresh_host, f"cat {kept}").strip()
    assert len(secret) >= 24
    assert sh(fresh_host, f"stat -c '%a %U' {kept}").split() == ["600", "root"]
    processes = sh(fresh_host, "ps auxww")
    assert secret not in processes and "amqp://" not in processes
    assert secret not in project.first_run.out + project.first_run.err


def test_a_running_task_finishes_across_a_deploy(project, fresh_host, src):
    status, body = get_json(fresh_host, "/tasks/slow/?x=20&y=22&seconds=6")
    assert status == 202, body
    task_id = body["task_id"]

    def started() -> bool:
        log = sh(fresh_host, f"journalctl -u {WORKER} --no-pager -o cat")
        return task_id in log

    assert wait_for(started, timeout=30)
    old_worker = main_pid(fresh_host, WORKER)
    (src / "VERSION").write_text("8.0.0\n")
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    # The warm shutdown waited: the old worker finished the task and said so.
    log = sh(fresh_host, f"journalctl -u {WORKER} --no-pager -o cat")
    assert f"Task pages.tasks.slow_add[{task_id}] succeeded" in log and "42" in log
    assert main_pid(fresh_host, WORKER) != old_worker
    time.sleep(1)
    status, body = get_json(fresh_host, "/tasks/add/?x=40&y=2")
    assert status == 200 and body["result"] == 42, body


def test_a_second_deploy_changes_nothing(project, fresh_host):
    worker = main_pid(fresh_host, WORKER)
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    assert run.host("web1")["changed"] == 0
    assert main_pid(fresh_host, WORKER) == worker
