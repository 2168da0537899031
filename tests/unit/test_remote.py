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
