"""`fab provision` on a host whose nginx was removed, with packages shipped from this machine
(the test hosts have no internet, like locked-down servers)."""

from __future__ import annotations

import subprocess

import pytest

from .kit import curl, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """nginx's packages, downloaded here from the Debian mirror this machine uses."""
    d = tmp_path_factory.mktemp("debs")
    subprocess.run(
        ["apt-get", "download", "-q", "nginx", "nginx-common"],
        cwd=d,
        check=True,
        capture_output=True,
    )
    return d


@pytest.fixture(scope="module")
def bare(fresh_host):
    sh(
        fresh_host,
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q nginx nginx-common >/dev/null 2>&1",
    )
    assert "nginx" not in sh(
        fresh_host, "dpkg-query -W -f='${Package} ${Status}\\n' nginx 2>/dev/null || true"
    ).replace("not-installed", "")
    return fresh_host


def test_provision_installs_from_shipped_packages_and_is_idempotent(project, bare, debs):
    run = project.fab("-H", "web1", "provision", "--packages-from", str(debs), "--json")
    assert run.code == 0, run.out + run.err
    changed = {s["step"] for s in run.host("web1")["steps"] if s["status"] == "changed"}
    assert {"packages", "nginx base config", "sudo rules"} <= changed
    assert "nginx version" in sh(bare, "nginx -v 2>&1")
    conf = sh(bare, "cat /etc/nginx/nginx.conf")
    assert "server_tokens off;" in conf and "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert sh(bare, "stat -c '%a' /etc/sudoers.d/djk-deploy").strip() == "440"
    again = project.fab("-H", "web1", "provision", "--packages-from", str(debs), "--json")
    assert again.code == 0 and again.host("web1")["changed"] == 0


def test_a_provisioned_host_deploys_and_serves_with_the_base_config(project, bare):
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    page = curl(bare, "/")
    assert "HTTP/1.1 200" in page and "Server: nginx\n" in page  # no version number
    static = curl(
        bare, "/static/pages/style.css", extra="-H 'Accept-Encoding: gzip' -o /dev/null -D -"
    )
    assert "Content-Encoding: gzip" in static


def test_bad_package_dir_is_a_user_error(project, tmp_path):
    run = project.fab("-H", "web1", "provision", "--packages-from", str(tmp_path))
    assert run.code == 2 and "no .deb files" in run.err
