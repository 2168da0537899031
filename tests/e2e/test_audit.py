"""The audit log on a real host: a line per deploy, no-op deploy, rollback and maintenance
switch, naming who (user, machine, the fingerprint of the key that logged in), the command, the
release before and after, the result; it survives the cleanup of old releases; `fab audit
--json` parses, newest first; a no-op deploy stays one remote command."""

from __future__ import annotations

import subprocess

import pytest

from .kit import Project, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(src), keep_releases=1)
    project.write()
    return project


def fab(project, *args: str):
    run = project.fab(*args)
    assert run.code == 0, run.out + run.err
    return run


def test_each_run_leaves_a_line_that_outlives_the_releases(project, fresh_host, src):
    first = fab(project, "-H", "web1", "deploy", "--json").host("web1")["extra"]["releases"]
    noop = fab(project, "-H", "web1", "deploy", "--json").host("web1")
    assert noop["commands"] == 1  # the keeper took the line: no command of its own
    (src / "VERSION").write_text("2.0.0\n")
    second = fab(project, "-H", "web1", "deploy", "--json").host("web1")["extra"]["releases"]
    fab(project, "-H", "web1", "rollback", "--to", first["example"])
    fab(project, "app.maintenance", "on", "--site", "example")
    fab(project, "app.maintenance", "off", "--site", "example")
    (src / "VERSION").write_text("3.0.0\n")
    fab(project, "-H", "web1", "deploy")  # keep_releases = 1: the first releases are gone
    assert first["example"] not in sh(fresh_host, "ls /srv/djk/example/releases")
    assert sh(fresh_host, "stat -c '%a %U' /var/log/djk/audit.jsonl").split() == ["600", "root"]

    report = fab(project, "-H", "web1", "audit", "--site", "example", "--json").report
    entries = report["hosts"][0]["extra"]["audit"]
    assert len(entries) == 7
    newest, *_, oldest = entries
    assert oldest["sites"]["example"] == {"before": None, "after": first["example"]}
    assert "deploy" in oldest["command"] and oldest["result"] == "ok"
    rollback = entries[3]
    assert "rollback" in rollback["command"]
    assert rollback["sites"]["example"] == {"before": second["example"], "after": first["example"]}
    assert [e["sites"]["example"].get("maintenance") for e in entries[1:3]] == ["off", "on"]
    # Who: this machine's user and name, and the key that logged in.
    key = subprocess.run(
        ["ssh-keygen", "-lf", f"{fresh_host.key_path}.pub"], capture_output=True, text=True
    ).stdout.split()[1]
    assert all(e["key"] == key and "@" in e["by"] for e in entries)
    assert newest["host"] == "web1" and newest["time"] > oldest["time"]
