"""The SSH connection's socket: small messages go out at once (no Nagle delay), and a
connection through a proxy command (no TCP socket of ours) is left as it is."""

from __future__ import annotations

import socket

from djk.tasks.engine.remote import no_delay


def test_tcp_sockets_send_small_messages_at_once():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        no_delay(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_other_transports_are_left_alone():
    class ProxyCommand:  # what paramiko hands a connection made through ProxyCommand
        pass

    no_delay(ProxyCommand())
    left, right = socket.socketpair()  # a Unix socket: no TCP options
    with left, right:
        no_delay(left)


def test_hosts_are_connected_once_in_the_background_while_plans_are_built(
    tmp_path, monkeypatch, capsys
):
    import threading

    import fabric
    import pytest
    from invoke import Context, Exit

    from djk.tasks.engine import cli, hostinfo
    from djk.tasks.engine.inventory import parse

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with socket.socket() as closed:  # a port nothing listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    (tmp_path / "s.env").write_text("DJANGO_SECRET_KEY=k-123456789\n")
    inventory = parse(
        {"hosts": {"web1": {"address": "127.0.0.1", "port": port}}}, tmp_path / "hosts.toml"
    )
    host = inventory.hosts["web1"]
    hostinfo.remember(host.login, hostinfo.HostInfo())  # seen before: no profile probe
    opened, planned = [], []
    real_open = fabric.Connection.open

    def counted(self):
        opened.append(threading.current_thread() is threading.main_thread())
        return real_open(self)

    def build(inv, h):
        planned.append(h.name)
        return []

    monkeypatch.setattr(fabric.Connection, "open", counted)
    with pytest.raises(Exit) as ended:
        cli.run_plans(Context(), build, json_=True, inventory=inventory, hosts=[host])
    assert ended.value.code == 1 and planned == ["web1"]
    assert opened == [False]  # once, not on the main thread
    assert "cannot connect to deploy@127.0.0.1" in capsys.readouterr().out
