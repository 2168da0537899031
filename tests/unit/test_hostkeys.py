"""Host keys without a host: the team's known_hosts written and read back (another host's line
kept, a port off 22 in brackets), the one-line refusals naming both fingerprints, and a
client that refuses a key it does not know — checked against a real local SSH handshake."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import paramiko
import pytest

from djk.tasks.engine import hostkeys as K


def make_key(tmp_path: Path, name: str) -> paramiko.PKey:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.Ed25519Key(filename=str(path))


def test_record_replaces_the_hosts_line_and_keeps_the_others(tmp_path):
    team = tmp_path / "known_hosts"
    a, b, c = (make_key(tmp_path, n) for n in "abc")
    K.record(team, "10.0.0.1", a)
    K.record(team, "[10.0.0.2]:2222", b)
    assert [k.asbytes() for k in K.known(team, "10.0.0.1")] == [a.asbytes()]
    K.record(team, "10.0.0.1", c)
    lines = team.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[10.0.0.2]:2222 ssh-ed25519 ")
    assert [k.asbytes() for k in K.known(team, "10.0.0.1")] == [c.asbytes()]
    assert K.known(team, "10.0.0.3") == []
    assert oct(team.stat().st_mode & 0o777) == "0o644"
    assert K.entry_name("h", 22) == "h" and K.entry_name("h", 2222) == "[h]:2222"


def test_fingerprints_are_ssh_keygens(tmp_path):
    key = make_key(tmp_path, "k")
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = listed.stdout.split()[1]
    assert K.fingerprint(key) == printed


def test_refusals_are_one_line_with_both_fingerprints(tmp_path):
    old, new = make_key(tmp_path, "old"), make_key(tmp_path, "new")
    changed = K.refusal(paramiko.BadHostKeyException("10.0.0.1", new, old), "web1", None)
    assert changed.startswith("host web1 (10.0.0.1) shows a different key: expected ")
    assert K.fingerprint(old) in changed and K.fingerprint(new) in changed
    assert "\n" not in changed and "fab hosts.trust -H web1" in changed
    unknown = K.refusal(K.UnknownHostKey("10.0.0.1", new), "web1", tmp_path / "known_hosts")
    assert f"shows key {K.fingerprint(new)}" in unknown and str(tmp_path) in unknown
    assert K.refusal(OSError("refused"), "web1", None) is None


class Server(paramiko.ServerInterface):
    pass


def serve_handshakes(host_key: paramiko.PKey) -> int:
    """A local SSH server that only does handshakes with `host_key`: its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            try:
                transport.start_server(server=Server())
            except (paramiko.SSHException, EOFError, OSError):
                pass

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def test_a_pinned_client_refuses_unknown_and_changed_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(K, "USER_FILE", tmp_path / "no-such-user-file")
    real, other = make_key(tmp_path, "real"), make_key(tmp_path, "other")
    port = serve_handshakes(real)
    name = K.entry_name("127.0.0.1", port)
    assert K.scan("127.0.0.1", port).asbytes() == real.asbytes()
    team = tmp_path / "known_hosts"

    def connect() -> Exception:
        client = paramiko.SSHClient()
        K.pin(client, team)
        with pytest.raises(Exception) as caught:
            client.connect(
                "127.0.0.1",
                port,
                username="x",
                password="y",
                timeout=5,
                allow_agent=False,
                look_for_keys=False,
            )
        client.close()
        return caught.value

    assert isinstance(connect(), K.UnknownHostKey)
    K.record(team, name, other)
    assert isinstance(connect(), paramiko.BadHostKeyException)
    K.record(team, name, real)
    # Known and the same: the handshake passes; what fails is the login this server refuses.
    assert isinstance(connect(), paramiko.AuthenticationException)
