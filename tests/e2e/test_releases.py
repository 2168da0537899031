"""Releases, health-gated switch, rollback, zero downtime and the deploy lock, on a real host.

The tests share one fresh host and a copy of the example project they change between deploys;
each test leaves the site deployed and healthy for the next.
"""

from __future__ import annotations

import signal
import time

import pytest

from .kit import (
    Load,
    Project,
    health,
    nginx_pids,
    sh,
    spawn_fab,
    wait_for_line,
    web_pid,
)

pytestmark = pytest.mark.e2e
ASGI = "exampleproject/asgi.py"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["source"] = str(src)
    project.site["keep_releases"] = 3
    project.site["health_timeout"] = 20
    project.write()
    return project


_counter = iter(range(100, 10_000))


def bump(src) -> str:
    """A code-only change: a new VERSION."""
    version = f"1.0.{next(_counter)}"
    (src / "VERSION").write_text(version + "\n")
    return version


def deploy_ok(project) -> dict:
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    return run.host("web1")


def releases(project) -> list[dict]:
    run = project.fab("-H", "web1", "releases", "--json")
    assert run.code == 0, run.out + run.err
    return run.host("web1")["extra"]["release_table"]["example"]


def status_of(project) -> dict[str, str]:
    return {r["id"]: r["status"] for r in releases(project)}


def live_id(host) -> str:
    return sh(host, "readlink /srv/djk/example/current").strip().removeprefix("releases/")


@pytest.fixture(scope="module")
def first(project, fresh_host):
    report = deploy_ok(project)
    return report["extra"]["releases"]["example"]


def test_first_deploy_records_a_live_release_with_its_manifest(first, project, fresh_host):
    assert live_id(fresh_host) == first
    assert health(fresh_host)["release"] == first
    (row,) = releases(project)
    assert row["id"] == first and row["status"] == "live"
    assert row["revision"] and first.endswith("-" + row["revision"])
    assert "@" in row["deployed_by"] and row["deployed_at"].endswith("Z")
    # `current` is a link, replaced by rename (never rm + ln): it is never missing.
    assert sh(fresh_host, "stat -c %F /srv/djk/example/current").strip() == "symbolic link"


def test_code_only_deploy_reuses_the_venv_and_serves_new_code(first, project, fresh_host, src):
    version = bump(src)
    report = deploy_ok(project)
    new = report["extra"]["releases"]["example"]
    assert new != first
    steps = {s["step"]: s for s in report["steps"]}
    venv = next(s for name, s in steps.items() if name.startswith("virtualenv"))
    assert venv["status"] == "ok"  # same dependency set: nothing reinstalled
    answer = health(fresh_host)
    assert (answer["release"], answer["version"]) == (new, version)
    statuses = status_of(project)
    assert statuses[new] == "live" and statuses[first] == "previous"
    assert sh(fresh_host, "ls /srv/djk/.kit/venvs | wc -l").strip() == "1"


def test_zero_downtime_under_load_through_deploy_and_rollback(first, project, fresh_host, src):
    before = live_id(fresh_host)
    bump(src)
    pids = nginx_pids(fresh_host)
    with (
        Load(fresh_host.address, "example.test") as load,
        Load(fresh_host.address, "example.test", keep_alive=True) as steady,
    ):
        time.sleep(1)
        deploy_start = load.mark()
        new = deploy_ok(project)["extra"]["releases"]["example"]
        deployed = load.mark()
        time.sleep(1)
        rollback_start = load.mark()
        back = project.fab("-H", "web1", "rollback", "--json")
        assert back.code == 0, back.out + back.err
        rolled_back = load.mark()
        time.sleep(1)
    assert len(load.results) > 30, load.results[:5]
    assert load.failures == [], load.failures[:10]
    # A client that keeps its connection and never retries, GET and POST: nothing failed, and
    # its connection really was kept (nginx ends one after 1,000 requests).
    assert len(steady.results) > 30 and steady.failures == [], steady.failures[:10]
    assert steady.connections <= len(steady.results) // 900 + 1, steady.connections
    assert {r for _, r in steady.results} == {before, new}
    # No reload: the code deploy and the rollback kept nginx's master and workers.
    assert nginx_pids(fresh_host) == pids
    # Before the deploy only the old release answers, once it returned only the new one; while
    # the old slot drains, answers may come from either, never neither.
    assert load.releases_between(0, deploy_start) == {before}
    assert load.releases_between(deploy_start, deployed) <= {before, new}
    assert load.releases_between(deployed, rollback_start) == {new}
    assert load.releases_between(rollback_start, rolled_back) <= {before, new}
    assert load.releases_between(rolled_back) == {before}
    statuses = status_of(project)
    assert statuses[before] == "live" and statuses[new] == "rolled-back"
    # Rolled back: redeploying the same source brings it forward again as a new release.
    again = deploy_ok(project)["extra"]["releases"]["example"]
    assert health(fresh_host)["release"] == again


def test_rollback_to_a_named_release_and_refusals(first, project, fresh_host):
    live = live_id(fresh_host)
    run = project.fab("-H", "web1", "rollback", "--to", "no-such-release")
    assert run.code == 1 and "no-such-release does not exist" in run.out
    assert live_id(fresh_host) == live
    good = [r["id"] for r in releases(project) if r["status"] in ("previous", "rolled-back")]
    target = good[0]
    run = project.fab("-H", "web1", "rollback", "--to", target, "--json")
    assert run.code == 0, run.out + run.err
    assert health(fresh_host)["release"] == target
    # Back to the newest again for the next tests.
    run = project.fab("-H", "web1", "rollback", "--to", live)
    assert run.code == 0, run.out + run.err
    assert health(fresh_host)["release"] == live


def test_cleanup_keeps_the_configured_number_of_releases(first, project, fresh_host, src):
    for _ in range(3):
        bump(src)
        deploy_ok(project)
    rows = releases(project)
    good = [r for r in rows if r["status"] != "failed"]
    assert len(good) == 3  # keep_releases = 3
    assert [r for r in rows if r["status"] == "live"][0]["id"] == live_id(fresh_host)


def test_new_code_failing_its_health_check_is_switched_back(first, project, fresh_host, src):
    good = live_id(fresh_host)
    gunicorn = web_pid(fresh_host)
    asgi = (src / ASGI).read_text()
    bump(src)
    (src / ASGI).write_text(asgi + "\nraise RuntimeError('broken release')\n")
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        (src / ASGI).write_text(asgi)
    assert run.code == 1, run.out + run.err
    assert "failed its health check" in run.out and "broken release" in run.out, run.out
    assert health(fresh_host)["release"] == good
    assert web_pid(fresh_host) == gunicorn  # the old slot never stopped serving
    failed = [r for r in releases(project) if r["status"] == "failed"]
    assert failed and failed[-1]["id"] > good
    fixed = deploy_ok(project)["extra"]["releases"]["example"]
    assert health(fresh_host)["release"] == fixed


def test_failing_migration_means_no_switch(first, project, fresh_host, src):
    good = live_id(fresh_host)
    bump(src)
    migration = src / "pages/migrations/0002_broken.py"
    migration.write_text(
        "from django.db import migrations\n\n\n"
        "def fail(apps, schema_editor):\n    raise RuntimeError('migration exploded')\n\n\n"
        "class Migration(migrations.Migration):\n"
        "    dependencies = [('pages', '0001_initial')]\n"
        "    operations = [migrations.RunPython(fail, hints={'djk': 'expand'})]\n"
    )
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        migration.unlink()
    assert run.code == 1
    assert "migrate example" in run.out and "migration exploded" in run.out
    assert "switch example" in run.out and "skipped" in run.out
    assert health(fresh_host)["release"] == good
    assert releases(project)[-1]["status"] == "failed"
    deploy_ok(project)
    assert health(fresh_host)["release"] != good


def test_a_directory_left_under_the_new_release_id_is_replaced(first, project, fresh_host, src):
    """A release id is the deploy's second and its revision: a deploy of the same revision in
    the same second as one that stopped before its switch (a failed check, a refused
    migration) meets that deploy's release directory. Made certain here: a copy of the live
    release with a stray file under each id of the next minute."""
    live = live_id(fresh_host)
    bump(src)
    check = project.fab("-H", "web1", "deploy", "--check", "--json")
    assert check.code == 0, check.out + check.err
    revision = check.host("web1")["extra"]["releases"]["example"].split("-", 1)[1]
    now = time.time()
    stamps = [time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + k)) for k in range(60)]
    ids = " ".join(f"{stamp}-{revision}" for stamp in stamps)
    base = "/srv/djk/example/releases"
    sh(fresh_host, f"cd {base} && for d in {ids}; do cp -a {live} $d && touch $d/LEFTOVER; done")
    try:
        new = deploy_ok(project)["extra"]["releases"]["example"]
    finally:
        left = " ".join(i for i in ids.split() if i != live_id(fresh_host))
        sh(fresh_host, f"cd {base} && rm -rf {left}")
    assert new in ids.split() and health(fresh_host)["release"] == new
    assert sh(fresh_host, f"ls -A {base}/{new}").split().count("LEFTOVER") == 0


def _converged(project, fresh_host) -> None:
    """The next deploy succeeds with no manual cleanup and leaves exactly one slot running."""
    report = deploy_ok(project)
    want = report["extra"]["releases"]["example"]
    assert health(fresh_host)["release"] == want
    running = sh(
        fresh_host, "systemctl list-units --state=active --no-legend 'djk-example-web-*' | wc -l"
    ).strip()
    assert running == "1"
    assert deploy_ok(project)["changed"] == 0


def test_killed_fab_mid_deploy(first, project, fresh_host, src):
    good = live_id(fresh_host)
    bump(src)
    proc = spawn_fab(project.inventory, "-H", "web1", "deploy")
    wait_for_line(proc, "health check ...")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    answer = health(fresh_host)
    assert answer["status"] == "ok" and answer["release"] >= good
    _converged(project, fresh_host)


def test_ssh_connection_dropped_mid_deploy(first, project, fresh_host, src):
    bump(src)
    proc = spawn_fab(project.inventory, "-H", "web1", "deploy")
    wait_for_line(proc, "health check ...")
    # Every SSH session of the deploy user ends at once: the connection is gone.
    fresh_host.ssh("sudo -n pkill -KILL -f '^sshd: deploy'", check=False)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "connection" in out and "Traceback" not in out
    assert health(fresh_host)["status"] == "ok"
    _converged(project, fresh_host)


def test_two_deploys_at_once_and_the_lock(first, project, fresh_host, src):
    bump(src)
    holder = spawn_fab(project.inventory, "-H", "web1", "deploy")
    try:
        wait_for_line(holder, "release example: stage")
        started = time.monotonic()
        second = project.fab("-H", "web1", "deploy")
        assert second.code == 1
        assert time.monotonic() - started < 10  # fails fast
        assert "site example is locked by" in second.out
        assert f"pid {holder.pid}" in second.out and "deploy" in second.out
        waited = project.fab("-H", "web1", "deploy", "--wait", "120", "--json")
        assert waited.code == 0, waited.out + waited.err
    finally:
        holder.wait(timeout=120)
    assert holder.returncode == 0
    _converged(project, fresh_host)


def test_hung_holder_is_reported_with_its_age_and_cleared_explicitly(
    first, project, fresh_host, src
):
    bump(src)
    hung = spawn_fab(project.inventory, "-H", "web1", "deploy")
    try:
        wait_for_line(hung, "release example: stage")
        hung.send_signal(signal.SIGSTOP)  # alive, connected, holding the lock, doing nothing
        time.sleep(2)
        status = project.fab("-H", "web1", "lock.status", "--json")
        (lock,) = status.host("web1")["extra"]["locks"]
        assert lock["site"] == "example" and lock["pid"] == hung.pid and lock["age"] >= 2
        assert project.fab("-H", "web1", "deploy").code == 1
        cleared = project.fab("-H", "web1", "lock.clear", "--site", "example")
        assert cleared.code == 0, cleared.out + cleared.err
        _converged(project, fresh_host)
    finally:
        hung.kill()
        hung.wait(timeout=10)
