"""The firewall's pure parts: what each role opens and to whom (split hosts: web, app, worker,
broker, db), the ruleset text, and the plan (set up by provision only, loaded again when the
loaded table is not the file's, nothing when both match)."""

from __future__ import annotations

from pathlib import Path

import pytest

from djk.tasks import firewall as FW
from djk.tasks.engine import facts as F
from djk.tasks.engine.facts import Facts
from djk.tasks.engine.inventory import InventoryError, parse
from djk.tasks.engine.steps import Context, sha256

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


@pytest.fixture
def inventory(tmp_path):
    (tmp_path / "site.env").write_text(
        "DJANGO_SECRET_KEY=k3y-value-0\nBROKER_PASSWORD=br0ker-pass\n"
    )
    site = {
        "source": str(EXAMPLE),
        "asgi": "exampleproject.asgi:application",
        "settings": "exampleproject.settings",
        "env_file": "site.env",
    }
    data = {
        "hosts": {
            "web1": {"address": "10.0.0.1", "roles": ["web"]},
            "app1": {"address": "10.0.0.2", "roles": ["app"]},
            "work1": {"address": "10.0.0.3", "roles": ["worker"]},
            "bro1": {"address": "10.0.0.4", "roles": ["broker", "db"]},
            "solo": {"address": "10.0.0.9", "port": 2222},
        },
        "sites": {
            "shop": {
                **site,
                "domains": ["shop.test"],
                "port": 8001,
                "hosts": ["web1", "app1", "work1", "bro1"],
                "celery": {"app": "exampleproject"},
                "database": {"engine": "postgresql"},
            },
            "blog": {**site, "domains": ["blog.test"], "port": 8002, "hosts": ["solo"]},
        },
    }
    return parse(data, tmp_path / "hosts.toml")


def opened(inventory, host: str) -> dict[int, tuple | None]:
    return {o.port: o.sources for o in FW.openings(inventory, inventory.hosts[host])}


def test_each_role_opens_its_ports_to_its_peers_only(inventory):
    assert opened(inventory, "web1") == {80: None, 443: None}
    assert opened(inventory, "app1") == {8001: ("10.0.0.1",)}  # the forwarder, for the web host
    assert opened(inventory, "work1") == {}
    assert opened(inventory, "bro1") == {
        6379: ("10.0.0.2", "10.0.0.3"),
        5432: ("10.0.0.2", "10.0.0.3"),
    }
    # A host with every role talks to itself over loopback: only the web ports.
    assert opened(inventory, "solo") == {80: None, 443: None}


def test_the_ruleset_drops_what_it_does_not_accept(inventory):
    text = FW.ruleset([22], FW.openings(inventory, inventory.hosts["bro1"]))
    assert "table inet djk\ndelete table inet djk\ntable inet djk {" in text
    assert "type filter hook input priority filter; policy drop;" in text
    assert 'tcp dport { 22 } accept comment "SSH"' in text
    assert 'ip saddr { 10.0.0.2, 10.0.0.3 } tcp dport 5432 accept comment "PostgreSQL"' in text
    assert 'ip saddr { 10.0.0.2, 10.0.0.3 } tcp dport 6379 accept comment "Redis"' in text
    assert "dport 80" not in text and "managed by djk" in text.lower()
    assert FW.version_of(text) and FW.version_of(text) in text
    v6 = FW.ruleset([22], [FW.Opening(8001, "shop: app", ("fd00::1", "10.1.1.1", "fd00::2"))])
    assert "ip6 saddr { fd00::1, fd00::2 } tcp dport 8001" in v6
    assert "ip saddr { 10.1.1.1 } tcp dport 8001" in v6


def plan(inventory, host: str, setup: bool, given: dict | None = None):
    step = FW.Firewall(inventory, inventory.hosts[host], setup=setup)
    facts = {fact: fact.default for fact in step.facts(False)}
    facts.update(given or {})
    return step.plan(Context(Facts(facts), frozenset()))


def test_provision_sets_it_up_with_every_sshd_port_a_deploy_only_keeps_it(inventory):
    fresh = plan(inventory, "solo", True, {FW.SshdPorts(): [22]})
    (action,) = fresh.actions
    assert action.summary.startswith("create and load (SSH 22, 2222; 80 HTTP, 443 HTTPS)")
    assert 'nft -c -f "$tmp"' in action.script and action.script.rstrip().endswith(
        "nft -f /etc/djk/firewall.nft"
    )
    assert plan(inventory, "solo", False).actions == []  # never provisioned: left alone


def test_loaded_again_when_the_table_is_not_the_files(inventory):
    text = FW.ruleset([22], FW.openings(inventory, inventory.hosts["web1"]))
    on_disk = F.PathState(kind="file", owner="root", group="root", mode="644", sha256=sha256(text))
    same = {F.Stat(FW.RULES): on_disk, FW.SshdPorts(): [22]}
    flushed = plan(inventory, "web1", False, same)
    assert [a.summary for a in flushed.actions] == [
        f"load: the loaded table is not {FW.version_of(text)}"
    ]
    ok = plan(inventory, "web1", False, {**same, FW.LoadedVersion(): FW.version_of(text)})
    assert ok.actions == [] and ok.reason.startswith("loaded (SSH 22; 80 HTTP, 443 HTTPS)")


def test_a_peer_named_by_dns_needs_its_private_address(tmp_path):
    """nftables takes a name's addresses once, when the rules load, and systemd ignores one in
    IPAddressAllow=: a peer's address is an IP address, its private_address when given."""
    (tmp_path / "site.env").write_text("DJANGO_SECRET_KEY=k3y-value-0\n")
    data = {
        "hosts": {
            "web1": {"address": "web.example", "roles": ["web"]},
            "app1": {"address": "10.0.0.2", "roles": ["app"]},
        },
        "sites": {
            "shop": {
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "env_file": "site.env",
                "domains": ["shop.test"],
                "port": 8001,
                "hosts": ["web1", "app1"],
            }
        },
    }
    with pytest.raises(InventoryError) as refused:
        parse(data, tmp_path / "hosts.toml")
    assert str(refused.value).endswith(
        "hosts.web1.address: 'web.example' is a host name, and reaching shop: app on host app1 "
        "needs an IP address there (systemd and nftables cannot use a name): give "
        "hosts.web1.private_address, the address its peers reach it at"
    )
    data["hosts"]["web1"]["private_address"] = "10.0.0.1"
    inventory = parse(data, tmp_path / "hosts.toml")
    (action,) = plan(inventory, "app1", True).actions
    assert "8001 shop: app" in action.summary
    rules = action.stdin.decode()
    assert 'ip saddr { 10.0.0.1 } tcp dport 8001 accept comment "shop: app"' in rules


def test_recorded_ss_and_nft_output():
    ss = (
        'LISTEN 0 511  127.0.0.1:6379 0.0.0.0:* users:(("redis-server",pid=53,fd=6))\n'
        'LISTEN 0 511    0.0.0.0:80   0.0.0.0:* users:(("nginx",pid=368,fd=5))\n'
        'LISTEN 0 128    0.0.0.0:22   0.0.0.0:* users:(("sshd",pid=59,fd=3))\n'
        'LISTEN 0 128       [::]:2222    [::]:* users:(("sshd",pid=59,fd=4))\n'
        'LISTEN 0 128  10.0.0.5:8022 0.0.0.0:* users:(("sshd-proxy",pid=70,fd=3))\n'
    )
    assert FW.SshdPorts().parse(0, ss) == [22, 2222]
    assert FW.SshdPorts().parse(0, "") == []
    listed = (
        "table inet djk {\n"
        '\tcomment "djk 0123456789abcdef"\n'
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy drop;\n"
        '\t\ttcp dport 22 accept comment "SSH"\n'
        "\t}\n"
        "}\n"
    )
    assert FW.LoadedVersion().parse(0, listed) == "0123456789abcdef"
    assert FW.LoadedVersion().parse(0, "") == ""
