"""After a host reboots, everything the kit runs is back by itself: the live slot (not the idle
one) on its socket, nginx serving the same release through sockets/live.sock, Celery's worker
and beat with the broker; and the next deploy finds nothing to change."""

from __future__ import annotations

import time

import pytest

from .kit import Project, curl, health, live_slot, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["source"] = str(src)
    project.site["celery"] = {"app": "exampleproject", "beat": True}
    project.write()
    for version in ("1.1.0", "1.2.0"):  # two deploys: the live slot is b, a is idle
        (src / "VERSION").write_text(version + "\n")
        run = project.fab("-H", "web1", "deploy")
        assert run.code == 0, run.out + run.err
    return project


def test_a_rebooted_host_serves_the_same_release_and_the_next_deploy_changes_nothing(
    project, fresh_host, testbed
):
    before = health(fresh_host)
    slot = live_slot(fresh_host)
    assert slot == "b"
    boot_id = sh(fresh_host, "cat /proc/sys/kernel/random/boot_id")
    host = testbed.reboot(fresh_host.name)
    assert sh(host, "cat /proc/sys/kernel/random/boot_id") != boot_id  # a new boot
    deadline = time.monotonic() + 60
    while "200 OK" not in curl(host, "/health/") and time.monotonic() < deadline:
        time.sleep(0.5)
    after = health(host)
    assert (after["release"], after["version"]) == (before["release"], "1.2.0")
    assert live_slot(host) == slot
    states = sh(
        host,
        "systemctl is-active djk-example-web-b djk-example-web-a "
        "djk-example-worker djk-example-beat || true",
    ).split()
    assert states == ["active", "inactive", "active", "active"], states
    answer = curl(host, "/tasks/add/?x=2&y=3")
    assert '"result": 5' in answer, answer
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    assert run.report["hosts"][0]["changed"] == 0, run.out
