"""A split site whose hosts reach each other at private addresses the control machine is not on:
the control machine deploys over SSH to each host's `address`; nginx on the web host, the app
host's forwarder (ListenStream=, IPAddressAllow=) and the broker and database use
`private_address`, and the site serves through the web host."""

from __future__ import annotations

import pytest

from .kit import Project, curl, health, sh

pytestmark = pytest.mark.e2e
# A second network on the hosts' link that the control machine has no address on.
PRIVATE = {"web1": "10.213.201.11", "web2": "10.213.201.12"}


@pytest.fixture(scope="module")
def hosts(testbed):
    found = testbed.up(list(PRIVATE))
    for host in found:
        sh(host, f"ip addr add {PRIVATE[host.name]}/24 dev host0")
    return found


@pytest.fixture(scope="module")
def project(hosts, tmp_path_factory):
    project = Project(tmp_path_factory.mktemp("project"), hosts)
    project.host_keys = {
        "web1": {"roles": ["web"], "private_address": PRIVATE["web1"]},
        "web2": {"roles": ["app", "worker", "broker", "db"], "private_address": PRIVATE["web2"]},
    }
    project.write()
    return project


def test_a_split_site_serves_through_the_web_host_at_private_addresses(project, hosts):
    web, app = hosts
    run = project.fab("-H", "web1,web2", "deploy")
    assert run.code == 0, run.out + run.err
    assert "200 OK" in curl(web, "/") and health(web)["release"]
    # The forwarder listens at the private address only and lets in the web host's.
    listening = sh(app, "ss -Hltn 'sport = :8001'")
    assert f"{PRIVATE['web2']}:8001" in listening and app.address not in listening, listening
    socket = sh(app, "cat /etc/systemd/system/djk-example-forward.socket")
    assert f"IPAddressAllow={PRIVATE['web1']} {PRIVATE['web2']} 127.0.0.0/8" in socket
    conf = sh(web, "cat /etc/nginx/sites-enabled/djk-site-example.conf")
    assert f"server {PRIVATE['web2']}:8001" in conf
    # The firewall opens the forwarder to the web host's private address, not its public one
    # (systemd's IP filter is not available in a container: nftables is what closes it here).
    run = project.fab("provision", "-H", "web1,web2")
    assert run.code == 0, run.out + run.err
    rules = sh(app, "nft list table inet djk")
    assert f"ip saddr {PRIVATE['web1']} tcp dport 8001 accept" in rules, rules
    assert code_from(web, PRIVATE["web1"]) == "400"  # Django's answer to a bare address: reached
    assert code_from(web, web.address) == "000"  # dropped
    assert "200 OK" in curl(web, "/")


def code_from(host, source: str) -> str:
    """The HTTP status the app host's forwarder answers `host` connecting from `source`."""
    done = host.ssh(
        f"curl -s -m 3 --interface {source} -o /dev/null -w '%{{http_code}}' "
        f"http://{PRIVATE['web2']}:8001/",
        check=False,
    )
    return done.stdout.strip()
