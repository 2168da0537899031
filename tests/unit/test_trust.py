"""`fab hosts.trust` in a script: every target's fingerprint is shown before anything is
refused, and --yes records them all (real SSH handshakes with tests/ssh_servers.py)."""

from __future__ import annotations

import re

import pytest
from e2e.kit import fab
from ssh_servers import ssh_servers

from djk.tasks.engine import hostkeys


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts of the user's
    servers_dir, project_dir = tmp_path / "servers", tmp_path / "project"
    servers_dir.mkdir()
    project_dir.mkdir()
    with ssh_servers(3, servers_dir) as servers:
        hosts = "".join(
            f'[hosts.web{n}]\naddress = "127.0.0.1"\nport = {port}\n'
            for n, port in enumerate(servers.ports, start=1)
        )
        (project_dir / "hosts.toml").write_text(f"[groups]\nall = {ALL}\n{hosts}")
        yield project_dir / "hosts.toml", servers


ALL = '["web1", "web2", "web3"]'


def test_without_a_terminal_every_fingerprint_is_shown_then_it_exits_2(project):
    inventory, servers = project
    run = fab(inventory, "-H", "all", "hosts.trust")
    assert run.code == 2
    shown = re.findall(
        r"^(web\d) +\| \.\.\. +\| \[127\.0\.0\.1\]:(\d+) shows .* (SHA256:\S+);"
        r" not recorded yet$",
        run.out,
        re.M,
    )
    assert [(name, int(port)) for name, port, _ in shown] == [
        (f"web{n}", port) for n, port in enumerate(servers.ports, start=1)
    ]
    error = run.err.strip().splitlines()
    assert error == [
        "error: trusting the keys shown for web1, web2, web3 needs --yes "
        "(stdin is not a terminal, nothing to ask)"
    ]
    assert not (inventory.parent / "known_hosts").exists()


def test_yes_records_every_key_and_a_second_run_finds_them_trusted(project):
    inventory, servers = project
    run = fab(inventory, "-H", "all", "hosts.trust", "--yes")
    assert run.code == 0, run.out + run.err
    team_file = inventory.parent / "known_hosts"
    for port in servers.ports:
        assert hostkeys.known(team_file, f"[127.0.0.1]:{port}")
    again = fab(inventory, "-H", "all", "hosts.trust")
    assert again.code == 0 and again.out.count(": trusted") == 3
