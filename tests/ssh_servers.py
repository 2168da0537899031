"""SSH servers on loopback, for tests of the kit's connections: real paramiko on both ends, real
handshakes, host keys and public-key authentication.

Each server accepts one login key and answers any command with exit status 0 and no output:
enough for a run's connections, not a shell. They run in a process of their own (this file as a
script), so that their half of every handshake does not compete with the test for its
interpreter: the test's threads are what is measured.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko


class _Server(paramiko.ServerInterface):
    def __init__(self, login: paramiko.PKey) -> None:
        self.login = login
        self.commands: list[bytes] = []
        self.exec_channels: list[paramiko.Channel] = []

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key.asbytes() == self.login.asbytes():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command: bytes) -> bool:
        self.commands.append(command)

        def answer() -> None:
            while channel.recv(65536):  # the command's stdin, to its end
                pass
            channel.send_exit_status(0)
            channel.close()

        threading.Thread(target=answer, daemon=True).start()
        return True


@dataclass
class Servers:
    """Running servers: their ports, the login key's file and a known_hosts naming them."""

    ports: list[int]
    key_file: Path
    known_hosts: Path


@contextmanager
def ssh_servers(count: int, directory: Path) -> Iterator[Servers]:
    """`count` SSH servers on 127.0.0.1, each on a port of its own, until the block ends."""
    server = subprocess.Popen(
        [sys.executable, __file__, str(count), str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ports = [int(p) for p in server.stdout.readline().split()]
        if len(ports) != count:
            raise RuntimeError("the SSH servers did not start")
        yield Servers(ports, directory / "id_ecdsa", directory / "known_hosts")
    finally:
        assert server.stdin is not None
        server.stdin.close()  # end of input: the servers stop
        server.wait(10)


def _serve(count: int, directory: Path) -> None:
    host_key = paramiko.ECDSAKey.generate()
    login = paramiko.ECDSAKey.generate()
    login.write_private_key_file(str(directory / "id_ecdsa"))

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(host_key)
            try:
                transport.start_server(server=_Server(login))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    ports, lines = [], []
    for _ in range(count):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        ports.append(port)
        lines.append(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}")
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
    (directory / "known_hosts").write_text("\n".join(lines) + "\n")
    print(" ".join(map(str, ports)), flush=True)
    sys.stdin.read()  # until the test closes our input


if __name__ == "__main__":
    _serve(int(sys.argv[1]), Path(sys.argv[2]))
