"""The core flow on a Debian 13 host (systemd 257, Python 3.13, nginx 1.26) with a Django 6
variant of the example: provision, deploy, a no-op with the same PIDs, a switch under load with
no failed request, a rollback, a Celery task across a deploy. And the same site refused, in one
line, for a Debian 12 host (Python 3.11)."""

from __future__ import annotations

import pytest

from .kit import (
    Load,
    Project,
    copy_example,
    health,
    live_unit,
    main_pid,
    nginx_pids,
    one_host,
    sh,
    wait_for,
)
from .test_celery import get_json

pytestmark = pytest.mark.e2e
DJANGO = "Django==6.1.3"
UNITS = [f"djk-example-{r}.service" for r in ("worker", "beat")]


@pytest.fixture(scope="module")
def trixie():
    yield from one_host("e2e13", 3, "trixie", "d13")


@pytest.fixture(scope="module")
def src6(tmp_path_factory):
    """The example, with Django 6 (it needs Python >= 3.12)."""
    src = copy_example(tmp_path_factory, "src6")
    lines = (src / "requirements.txt").read_text().splitlines()
    pinned = [DJANGO if ln.lower().startswith("django==") else ln for ln in lines]
    (src / "requirements.txt").write_text("\n".join(pinned) + "\n")
    return src


@pytest.fixture(scope="module")
def project(trixie, tmp_path_factory, src6):
    project = Project(tmp_path_factory.mktemp("project13"), [trixie])
    project.site["source"] = str(src6)
    project.site["python"] = "3.13"
    project.site["health_path"] = "/health/"
    project.site["celery"] = {"app": "exampleproject", "concurrency": 2, "beat": True}
    project.write()
    return project


@pytest.fixture(scope="module")
def deployed(project, trixie):
    run = project.fab("-H", "d13", "provision")
    assert run.code == 0, run.out + run.err
    run = project.fab("-H", "d13", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    return run


def test_deploys_django_6_on_python_3_13(deployed, trixie):
    assert "13" in sh(trixie, ". /etc/os-release; echo $VERSION_ID")
    answer = health(trixie)
    assert answer["status"] == "ok" and answer["db"] is True
    venv = "/srv/djk/example/current/.venv/bin/python"
    assert (
        sh(
            trixie,
            f"{venv} -c 'import django, sys; print(django.__version__, sys.version_info[:2])'",
        ).strip()
        == "6.1.3 (3, 13)"
    )
    steps = {s["step"]: s for s in deployed.host("d13")["steps"]}
    venv_step = next(s for name, s in steps.items() if name.startswith("virtualenv "))
    assert "with uv" in venv_step["detail"]
    assert deployed.host("d13")["host_info"]["codename"] == "trixie"
    # nginx 1.26 speaks `http2 on;`: the configuration it got has no deprecated form
    assert "deprecated" not in sh(trixie, "nginx -t 2>&1")


def test_second_deploy_changes_nothing_and_keeps_the_processes(deployed, project, trixie):
    pids = {u: main_pid(trixie, u) for u in [*UNITS, live_unit(trixie)]}
    nginx = nginx_pids(trixie)
    run = project.fab("-H", "d13", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    host = run.host("d13")
    assert host["changed"] == 0, [s for s in host["steps"] if s["status"] == "changed"]
    assert host["commands"] <= 2
    assert {u: main_pid(trixie, u) for u in pids} == pids
    assert nginx_pids(trixie) == nginx


def test_switch_under_load_then_rollback(deployed, project, trixie, src6):
    before = health(trixie)["release"]
    nginx = nginx_pids(trixie)
    (src6 / "VERSION").write_text("13.1.0\n")
    with Load(trixie.address, "example.test", keep_alive=True) as load:
        run = project.fab("-H", "d13", "deploy")
        wait_for(lambda: len(load.results) > 20, timeout=10)
    assert run.code == 0, run.out + run.err
    assert load.failures == [], load.failures[:5]
    assert nginx_pids(trixie) == nginx
    after = health(trixie)
    assert after["release"] != before and after["version"] == "13.1.0"
    assert {r for _, r in load.results} >= {before, after["release"]}
    back = project.fab("-H", "d13", "rollback")
    assert back.code == 0, back.out + back.err
    assert health(trixie)["release"] == before
    assert health(trixie)["version"] != "13.1.0"


def test_a_task_running_across_a_deploy_finishes(deployed, project, trixie, src6):
    status, body = get_json(trixie, "/tasks/slow/?x=20&y=22&seconds=6")
    assert status == 202, body
    task = body["task_id"]
    assert wait_for(lambda: get_json(trixie, f"/tasks/result/{task}/")[1].get("state") == "STARTED")
    (src6 / "VERSION").write_text("13.2.0\n")
    run = project.fab("-H", "d13", "deploy")
    assert run.code == 0, run.out + run.err
    status, result = get_json(trixie, f"/tasks/result/{task}/")
    assert result.get("state") == "SUCCESS" and result.get("result") == 42, result
    status, body = get_json(trixie, "/tasks/add/?x=40&y=2")
    assert (status, body.get("result")) == (200, 42), body


def test_the_django_6_site_is_refused_for_a_debian_12_host(testbed, tmp_path, src6):
    (old,) = testbed.up(["old12"])
    try:
        project = Project(tmp_path, [old])
        project.site["source"] = str(src6)
        project.write()
        run = project.fab("-H", "old12", "deploy")
        assert run.code == 2, run.out + run.err
        lines = run.err.strip().splitlines()
        assert len(lines) == 1, run.err
        assert "site example on host old12" in lines[0]
        assert "Python 3.11.2" in lines[0] and "django" in lines[0].lower()
        assert "needs Python>=3.12" in lines[0]
        # nothing reached the host
        assert sh(old, "test -e /srv/djk/example && echo there || echo none").strip() == "none"
        # `python = "3.13"` alone says it at once
        project.site["python"] = "3.13"
        project.write()
        run = project.fab("-H", "old12", "deploy")
        assert run.code == 2 and "needs Python 3.13 (sites.example.python)" in run.err, run.err
    finally:
        testbed.down(["old12"])


def test_one_more_package_sends_only_its_wheel(deployed, project, trixie, src6):
    requirements = src6 / "requirements.txt"
    before = requirements.read_text()
    have = int(sh(trixie, "ls /srv/djk/.kit/wheels | wc -l"))
    requirements.write_text(before + "idna==3.10\n")
    try:
        run = project.fab("-H", "d13", "deploy", "--json")
    finally:
        requirements.write_text(before)
    assert run.code == 0, run.out + run.err
    steps = {s["step"]: s for s in run.host("d13")["steps"]}
    assert steps["wheels"]["detail"].startswith(f"send 1 of {have + 1} ")
    assert run.host("d13")["bytes_by_kind"]["wheels"] < 200_000  # idna's wheel alone
    assert "uv" not in run.host("d13")["bytes_by_kind"]
    assert health(trixie)["status"] == "ok"
