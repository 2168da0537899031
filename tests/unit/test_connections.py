"""Many connections at once: the kit's thread pool opens one SSH connection per host, while the
main thread goes on planning; nothing those threads share may be changed under them.

Real paramiko against in-process SSH servers on loopback (tests/ssh_servers.py). Python switches
threads every 5 ms by default; the tests switch far more often, so that a window of a few
microseconds between two threads (a configuration rebuilt while another thread reads it) is met
in every run instead of one run in five on a fleet of 32.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import fabric
import paramiko
import pytest
from invoke import Context, Exit
from ssh_servers import ssh_servers

from djk.tasks.engine import cli, hostinfo
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.remote import KitError, Remote, RemoteError

HOSTS = 64
RUNS = {"quick": 4, "long": 20}  # the long run: CI's (--long)


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with ssh_servers(HOSTS, tmp_path) as servers:
        table = {
            "defaults": {"ssh_key": str(servers.key_file)},
            "hosts": {
                f"web{i}": {"address": "127.0.0.1", "port": port}
                for i, port in enumerate(servers.ports)
            },
        }
        # known_hosts beside hosts.toml: the servers' key, as `fab hosts.trust` records it.
        yield parse(table, servers.known_hosts.parent / "hosts.toml")


@pytest.fixture
def busy_switching():
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(before)


@pytest.mark.parametrize(
    "size", [pytest.param("quick"), pytest.param("long", marks=pytest.mark.long)]
)
def test_a_fleet_connects_in_every_run(fleet, busy_switching, capsys, size):
    hosts = list(fleet.hosts.values())
    failed_runs = []
    for number in range(RUNS[size]):
        if number % 2 == 0:
            # Half the runs meet hosts never seen: their profile is read from the pool's
            # threads before the plans; the other half connect early while planning.
            for host in hosts:
                hostinfo.cache_file(host.login).unlink(missing_ok=True)
        reports = []
        try:
            cli.run_plans(
                Context(config=fabric.Config()),
                lambda inventory, host: [],
                json_=True,
                inventory=fleet,
                hosts=hosts,
                recap=False,
                collect=reports,
            )
        except Exit:
            pass
        errors = sorted({r.error for r in reports if r.failed})
        if errors or len(reports) != HOSTS:
            failed_runs.append((number, errors[:3]))
    capsys.readouterr()
    assert failed_runs == []


def test_each_connection_has_a_configuration_of_its_own(fleet):
    shared = fabric.Config()
    host = next(iter(fleet.hosts.values()))
    first, second = Remote(host, shared), Remote(host, shared)
    assert first.conn.config is not shared and second.conn.config is not first.conn.config
    # Fabric writes into the configuration of a connection it makes: not into the run's.
    assert "inline_ssh_env" not in shared._modifications


def test_a_failure_of_the_kit_is_not_reported_as_a_host_that_cannot_be_reached(
    fleet, monkeypatch, capsys
):
    host = next(iter(fleet.hosts.values()))

    def broken(self):
        raise KeyError("authentication")

    monkeypatch.setattr(fabric.Connection, "open", broken)
    with pytest.raises(KitError) as raised:
        Remote(host).open()
    message = str(raised.value)
    assert message.startswith("kit error while connecting to deploy@127.0.0.1: KeyError")
    assert "cannot connect" not in message and "--debug" in message
    with pytest.raises(Exit):
        cli.run_plans(Context(), lambda i, h: [], json_=True, inventory=fleet, hosts=[host])
    (report,) = json.loads(capsys.readouterr().out)["hosts"]
    assert report["error"].startswith("kit error while connecting to deploy@127.0.0.1: KeyError")


def test_the_network_and_the_login_are_reported_as_cannot_connect(fleet, tmp_path):
    host = next(iter(fleet.hosts.values()))
    stranger = tmp_path / "other_key"
    paramiko.ECDSAKey.generate().write_private_key_file(str(stranger))
    refused = Remote(dataclasses.replace(host, ssh_key=stranger))
    with pytest.raises(RemoteError) as raised:
        refused.open()
    assert not isinstance(raised.value, KitError)
    assert str(raised.value).startswith("cannot connect to deploy@127.0.0.1: ")
