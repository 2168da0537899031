"""`fab provision` on a host whose nginx was removed: the packages come from this machine (the
closure computed from Debian's archive; the test hosts have no internet, like locked-down
servers)."""

from __future__ import annotations

import pytest

from .kit import curl, sh

pytestmark = pytest.mark.e2e


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


def test_provision_installs_from_shipped_packages_and_is_idempotent(project, bare):
    run = project.fab("-H", "web1", "provision", "--json")
    assert run.code == 0, run.out + run.err
    steps = {s["step"]: s for s in run.host("web1")["steps"]}
    changed = {name for name, s in steps.items() if s["status"] == "changed"}
    assert {"packages", "nginx base config", "sudo rules"} <= changed
    assert "install nginx (" in steps["packages"]["detail"]
    assert "from Debian bookworm/amd64" in steps["packages"]["detail"]
    assert run.host("web1")["bytes_by_kind"]["debs"] > 100_000
    assert "nginx version" in sh(bare, "nginx -v 2>&1")
    conf = sh(bare, "cat /etc/nginx/nginx.conf")
    assert "server_tokens off;" in conf and "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert sh(bare, "stat -c '%a' /etc/sudoers.d/djk-deploy").strip() == "440"
    again = project.fab("-H", "web1", "provision", "--json")
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


def test_a_package_debian_does_not_have_is_named_in_one_line(project, bare):
    from djk.tasks.engine.component import Component, register, unregister

    class Wants(Component):
        name = "wants-a-ghost"

        def packages(self, inventory, host):
            return ["djk-no-such-package"]

    register(Wants())
    try:
        run = project.fab("-H", "web1", "provision")
    finally:
        unregister("wants-a-ghost")
    assert run.code == 1
    (line,) = [ln for ln in run.out.splitlines() if "| failed" in ln]
    assert "package djk-no-such-package is not in Debian's archive" in line
    assert "for Debian bookworm/amd64" in line
