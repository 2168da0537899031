"""A fresh server as hosting providers hand it over: Debian 12 with only systemd, sshd, sudo and
python3, reachable as root with a key, no deploy user, no route to the internet. `provision
--bootstrap` makes the deploy user, ships every Debian package the roles need from this
machine, and the site deploys."""

from __future__ import annotations

import pytest

from .kit import Project, health, one_host, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bare():
    yield from one_host("e2ebare", 4, "bare-bookworm", "b12")


@pytest.fixture(scope="module")
def project(bare, tmp_path_factory):
    project = Project(tmp_path_factory.mktemp("bare"), [bare])
    project.site["health_path"] = "/health/"
    project.site["celery"] = {"app": "exampleproject", "concurrency": 1}
    project.write()
    return project


def root(host, command: str) -> str:
    return host.ssh(command).stdout  # the bare host's only login is root


def test_the_host_is_bare_and_offline(bare):
    assert bare.user == "root"
    assert "deploy" not in root(bare, "cut -d: -f1 /etc/passwd").split()
    installed = root(bare, "dpkg-query -W -f='${Package}\\n'").split()
    assert "nginx" not in installed and "redis-server" not in installed
    assert "python3" in installed and "sudo" in installed
    # no default route: packages must come from here
    routes = [line.split()[1] for line in root(bare, "cat /proc/net/route").splitlines()[1:]]
    assert routes and "00000000" not in routes


def test_bootstrap_provision_and_deploy(bare, project):
    run = project.fab("-H", "b12", "provision", "--bootstrap")
    assert run.code == 0, run.out + run.err
    assert "user deploy: create" in run.out and "sudo rule for deploy" in run.out
    assert "packages from Debian bookworm/amd64" in run.out
    as_deploy = bare.__class__(bare.name, bare.address, "deploy", bare.port, bare.key_path)
    assert sh(as_deploy, "id -un").strip() == "root"  # sudo works for the deploy user
    installed = sh(as_deploy, "dpkg-query -W -f='${Package} ${Status}\\n'")
    for package in ("nginx", "redis-server"):
        assert f"{package} install ok installed" in installed
    assert "python3-venv" not in installed.split()  # uv makes the venvs
    deploy = project.fab("-H", "b12", "deploy", "--json")
    assert deploy.code == 0, deploy.out + deploy.err
    report = deploy.host("b12")
    assert report["bytes_by_kind"]["uv"] > 1_000_000  # uv went once, counted apart
    assert health(as_deploy)["status"] == "ok"


def test_again_changes_nothing(bare, project):
    run = project.fab("-H", "b12", "provision", "--bootstrap", "--json")
    assert run.code == 0, run.out + run.err
    assert run.host("b12")["changed"] == 0
    deploy = project.fab("-H", "b12", "deploy", "--json")
    assert deploy.code == 0 and deploy.host("b12")["changed"] == 0
    assert "uv" not in deploy.host("b12")["bytes_by_kind"]
