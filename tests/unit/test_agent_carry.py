"""The host agent carried by a new host's first command (engine/agent.carried): the shell part
run by a local sh, with `cat` standing in for the agent command so what follows the zipapp on
stdin shows it reaches the command untouched."""

from __future__ import annotations

import subprocess

import pytest

from djk.tasks.engine import agent


@pytest.fixture
def agent_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "AGENT_DIR", str(tmp_path))
    target = tmp_path / "agent-test.pyz"
    monkeypatch.setattr(agent, "path", lambda: str(target))
    monkeypatch.setattr(agent, "_exec", lambda name, argument="": "exec cat")
    return target


def run(stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", agent.carried("lock-keep", "{}")],
        input=stdin,
        capture_output=True,
        check=False,
    )


def test_a_host_without_it_gets_the_zipapp_then_the_command_its_stdin(agent_dir):
    done = run(agent.carried_head() + b"12\nthe script\nlifeline")
    assert done.returncode == 0, done.stderr
    assert agent_dir.read_bytes() == agent.archive()
    assert oct(agent_dir.stat().st_mode & 0o777) == "0o644"
    assert done.stdout == b"12\nthe script\nlifeline"
    assert [p.name for p in agent_dir.parent.iterdir()] == [agent_dir.name]  # no temp left


def test_a_host_with_it_drops_the_carried_copy(agent_dir):
    agent_dir.write_bytes(b"the installed one")
    done = run(agent.carried_head() + b"rest")
    assert done.returncode == 0, done.stderr
    assert agent_dir.read_bytes() == b"the installed one"
    assert done.stdout == b"rest"


def test_a_cut_stream_installs_nothing(agent_dir):
    done = run(agent.carried_head()[:1000])
    assert done.returncode != 0
    assert not agent_dir.exists()
    assert list(agent_dir.parent.iterdir()) == []  # its temporary file removed


def test_the_control_machine_remembers_the_version_per_host_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    one, other = "deploy@10.0.0.1:22 ssh-ed25519 aa", "deploy@10.0.0.1:22 ssh-ed25519 bb"
    assert not agent.known_on(one)
    agent.seen_on(one)
    assert agent.known_on(one)
    assert not agent.known_on(other)  # reinstalled at the same address: a new host key
    monkeypatch.setattr(agent, "path", lambda: "/var/lib/djk/agent-newer.pyz")
    assert not agent.known_on(one)  # another kit version: carried again
