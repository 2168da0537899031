"""Several hosts: parallel deploys with one release id, rolling batches under load, and a
failing batch that sends the already switched hosts back."""

from __future__ import annotations

import time

import pytest

from .kit import Load, Project, health, sh, wait_for

pytestmark = pytest.mark.e2e
NAMES = ["web1", "web2", "web3"]


@pytest.fixture(scope="module")
def hosts(testbed):
    return testbed.up(NAMES)


@pytest.fixture(scope="module")
def project(hosts, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), hosts)
    project.site["source"] = str(src)
    project.site["migrate_on"] = "every"  # sqlite: one database per host
    project.site["hosts"] = ["prod"]
    write(project)
    return project


def write(project) -> None:
    project.write()
    text = project.inventory.read_text().replace(
        "[sites.example]", '[groups]\nprod = ["web1", "web2", "web3"]\n[sites.example]'
    )
    project.inventory.write_text(text)


def releases(run) -> dict[str, str]:
    return {h["host"]: h["extra"]["releases"]["example"] for h in run.report["hosts"]}


def test_parallel_deploy_one_release_id_on_every_host(project, hosts):
    run = project.fab("-H", "prod", "deploy")
    assert run.code == 0, run.out + run.err
    for name in NAMES:
        assert any(line.startswith(f"{name} ") for line in run.out.splitlines()), name
    ids = {health(h)["release"] for h in hosts}
    assert len(ids) == 1


def test_rolling_deploy_under_load(project, hosts, src):
    before = health(hosts[0])["release"]
    (src / "VERSION").write_text("2.0.0\n")
    with Load(hosts[0].address, "example.test") as load:
        run = project.fab("-H", "prod", "deploy", "--batch", "1", "--json")
    assert run.code == 0, run.out + run.err
    new = set(releases(run).values())
    assert len(new) == 1 and before not in new
    assert load.failures == [] and len(load.results) > 20
    assert {health(h)["release"] for h in hosts} == new


def test_failed_batch_stops_and_switched_hosts_go_back(project, hosts, src):
    good = health(hosts[0])["release"]
    asgi = (src / "exampleproject/asgi.py").read_text()
    (src / "VERSION").write_text("3.0.0\n")
    (src / "exampleproject/asgi.py").write_text(
        asgi + "\nimport socket\nif socket.gethostname() == 'web2':\n"
        "    raise RuntimeError('broken on web2')\n"
    )
    try:
        with Load(hosts[0].address, "example.test") as load:
            run = project.fab("-H", "prod", "deploy", "--batch", "1")
    finally:
        (src / "exampleproject/asgi.py").write_text(asgi)
    assert run.code == 1
    assert "switch batch 2/3" in run.out and "broken on web2" in run.out
    web1_lines = [line for line in run.out.splitlines() if line.startswith("web1 ")]
    assert any("switch example" in line and "changed" in line for line in web1_lines)
    assert any(f"-> {good}" in line for line in web1_lines)  # web1 went back
    web3_switch = [
        line
        for line in run.out.splitlines()
        if line.startswith("web3 ") and "switch example" in line
    ]
    assert web3_switch and "skipped" in web3_switch[0]
    recap = run.out.split("RECAP", 1)[1]
    assert "web2" in recap and "failed=1" in recap
    assert {health(h)["release"] for h in hosts} == {good}  # one release everywhere
    assert load.failures == []
    fixed = project.fab("-H", "prod", "deploy", "--batch", "50%")
    assert fixed.code == 0, fixed.out + fixed.err
    assert len({health(h)["release"] for h in hosts}) == 1
    assert health(hosts[1])["version"] == "3.0.0"


def test_a_timer_runs_on_one_host_of_the_site_or_on_every_one(project, hosts):
    job = "shell -c \"open('/srv/djk/example/shared/timer-ran', 'a').write('x')\""
    ran = "cat /srv/djk/example/shared/timer-ran 2>/dev/null || true"
    for run_on, expected in (("one", [True, False, False]), ("every", [True, True, True])):
        for h in hosts:
            sh(h, "rm -f /srv/djk/example/shared/timer-ran 2>/dev/null || true")
        project.site["timers"] = {"tick": {"schedule": "*:*:0/2", "command": job, "run_on": run_on}}
        write(project)
        run = project.fab("-H", "prod", "deploy")
        assert run.code == 0, run.out + run.err
        assert wait_for(lambda: sh(hosts[0], ran), 20)
        time.sleep(5)  # others would have fired by now
        assert [bool(sh(h, ran)) for h in hosts] == expected, run_on
        units = [sh(h, "ls /etc/systemd/system | grep -c timer_ || true").strip() for h in hosts]
        assert units == [("2" if e else "0") for e in expected]
    project.site.pop("timers")
    write(project)
    assert project.fab("-H", "prod", "deploy").code == 0
    assert [sh(h, "ls /etc/systemd/system | grep -c timer_ || true").strip() for h in hosts] == [
        "0",
        "0",
        "0",
    ]
