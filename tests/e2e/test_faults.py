"""Faults on a real host, each ending with a good release serving, a clear message and the next
deploy going through untouched: files edited by hand on the host (drift), the disk filling up
while a release is staged, Redis stopped during a deploy, the host rebooted in the middle of a
deploy."""

from __future__ import annotations

import os
import time

import pytest

from .kit import Project, health, sh, spawn_fab, wait_for, wait_for_line

pytestmark = pytest.mark.e2e
UNIT = "/etc/systemd/system/djk-example-worker.service"
BLOCK = "/etc/nginx/sites-enabled/djk-site-example.conf"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["source"] = str(src)
    project.site["celery"] = {"app": "exampleproject"}
    project.write()
    return project


@pytest.fixture(scope="module")
def deployed(project):
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return run


def fab(project, *args: str):
    run = project.fab(*args)
    assert run.code == 0, run.out + run.err
    return run


def new_version(src) -> None:
    (src / "VERSION").write_text(f"{time.time_ns()}\n")


def test_files_edited_by_hand_are_drift_in_check_and_put_back(project, deployed, fresh_host):
    unit, block = sh(fresh_host, f"cat {UNIT}"), sh(fresh_host, f"cat {BLOCK}")
    sh(fresh_host, f"sed -i 's/--loglevel INFO/--loglevel DEBUG/' {UNIT}")
    sh(fresh_host, f"sed -i 's/client_max_body_size .*;/client_max_body_size 1g;/' {BLOCK}")
    check = fab(project, "-H", "web1", "deploy", "--check", "--diff", "--json")
    steps = {s["step"]: s for s in check.host("web1")["steps"] if s["status"] == "changed"}
    assert "unit djk-example-worker.service" in steps, list(steps)
    assert "--loglevel DEBUG" in steps["unit djk-example-worker.service"]["diff"]
    assert "1g" in steps["nginx config"]["diff"], steps["nginx config"]  # the whole candidate
    assert sh(fresh_host, f"cat {UNIT}") != unit  # --check changed nothing
    fab(project, "-H", "web1", "deploy")
    assert sh(fresh_host, f"cat {UNIT}") == unit and sh(fresh_host, f"cat {BLOCK}") == block
    assert "--loglevel INFO" in sh(fresh_host, "ps -eo args | grep '[c]elery.*worker'")
    again = fab(project, "-H", "web1", "deploy", "--json")
    assert again.host("web1")["changed"] == 0


def test_a_full_disk_while_staging_names_the_disk_and_the_host(project, deployed, fresh_host, src):
    live = health(fresh_host)["release"]
    # A small filesystem for the site's releases, nearly full.
    releases = "/srv/djk/example/releases"
    sh(
        fresh_host,
        f"mkdir -p /root/keep && cp -a {releases}/. /root/keep/ && "
        f"mount -t tmpfs -o size=40m tmpfs {releases} && cp -a /root/keep/. {releases}/ "
        f"&& fallocate -l 30m {releases}/.filler || dd if=/dev/zero "
        f"of={releases}/.filler bs=1M count=30",
    )
    try:
        new_version(src)
        (src / "big.bin").write_bytes(os.urandom(15 * 1024 * 1024))  # does not compress
        run = project.fab("-H", "web1", "deploy")
        assert run.code == 1
        start = run.out.rindex("\n", 0, run.out.index("| failed")) + 1
        failed = run.out[start:].split("| skipped")[0].rsplit("\n", 1)[0]
        assert failed.startswith("web1 ") and "release example" in failed, run.out
        assert "No space left on device" in failed and "disk full?" in failed, failed
        assert f"{releases} is on {releases} (tmpfs)" in failed
        assert len(failed.strip().splitlines()) <= 3, failed  # tar's complaints cut short
        assert health(fresh_host)["release"] == live  # the live release untouched
    finally:
        (src / "big.bin").unlink(missing_ok=True)
        sh(fresh_host, f"umount {releases}")
    run = fab(project, "-H", "web1", "deploy")
    assert health(fresh_host)["release"] != live


SLOW_MIGRATION = """from django.db import migrations


def wait(apps, schema_editor):
    import time

    time.sleep(8)


class Migration(migrations.Migration):
    dependencies = [("pages", "{previous}")]
    operations = [
        migrations.RunPython(wait, migrations.RunPython.noop, hints={{"djk": "expand"}})
    ]
"""


def test_redis_stopped_during_a_deploy_fails_before_the_switch_naming_it(
    project, deployed, fresh_host, src
):
    live = health(fresh_host)["release"]
    # A task waiting in the queue (no worker meanwhile) must survive Redis going away.
    sh(fresh_host, "systemctl stop djk-example-worker")
    enqueue = "from pages.tasks import add; print('task', add.delay(20, 22).id)"
    queued = fab(project, "app.manage", "--site", "example", "--", "shell", "-c", enqueue).out
    task = queued.split("task ")[-1].split()[0]
    folder = src / "pages/migrations"
    previous = sorted(p.stem for p in folder.glob("0*.py"))[-1]
    (folder / "0900_slow.py").write_text(SLOW_MIGRATION.format(previous=previous))
    proc = spawn_fab(project.inventory, "-H", "web1", "deploy")
    try:
        wait_for_line(proc, "migrating", timeout=120)  # the migration runs: Redis goes
        sh(fresh_host, "systemctl stop redis-server")
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, out
        failed = [ln for ln in out.splitlines() if "| failed" in ln]
        assert failed and "the broker of site example (Redis at 127.0.0.1:6379)" in failed[0], out
        assert health(fresh_host)["release"] == live  # the old release keeps serving
    finally:
        if proc.poll() is None:
            proc.kill()
        sh(fresh_host, "systemctl start redis-server")
    fab(project, "-H", "web1", "deploy")  # starts the worker again (it runs the new release)
    assert health(fresh_host)["release"] != live
    result = fab(
        project,
        "app.manage",
        "--site",
        "example",
        "--",
        "shell",
        "-c",
        f"from celery.result import AsyncResult; "
        f"print('result', AsyncResult('{task}').get(timeout=30))",
    ).out
    assert "result 42" in result, result


def test_a_host_rebooted_mid_deploy_comes_back_serving_and_the_next_deploy_finishes(
    project, deployed, fresh_host, src, testbed
):
    live = health(fresh_host)["release"]
    new_version(src)
    # A before-switch hook that takes its time: the reboot comes after staging and the
    # migrations, before the switch.
    project.site["hooks"] = {"before_switch": "sleep 120"}
    project.write()
    proc = spawn_fab(project.inventory, "-H", "web1", "deploy")
    try:
        wait_for_line(proc, "hook before_switch", timeout=120)
        # The line comes as the hook's command is sent: reboot once its sleep runs. A process
        # started after the shutdown's SIGTERM to the session would hold the poweroff for
        # systemd's 90 s stop timeout (CI saw it on a loaded machine).
        # (the sleep itself: the commands that start it name it in their arguments too)
        assert wait_for(lambda: "sleep 120" in sh(fresh_host, "ps -eo args=").splitlines(), 60)
        host = testbed.reboot(fresh_host.name)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, out
    finally:
        if proc.poll() is None:
            proc.kill()
        project.site.pop("hooks")
        project.write()
    assert wait_for(lambda: health(host).get("release") == live, 60)
    for unit in ("nginx", "djk-example-worker", "redis-server"):
        assert sh(host, f"systemctl is-active {unit}").strip() == "active", unit
    fab(project, "-H", "web1", "deploy")
    assert health(host)["release"] != live
    again = fab(project, "-H", "web1", "deploy", "--json")
    assert again.host("web1")["changed"] == 0
