"""Pinned SSH host keys: the kit talks to a host only when the key it shows is known.

Fabric trusts any host key it has not seen (paramiko's AutoAddPolicy) and reads no
known_hosts file. The kit instead reads two: `known_hosts` beside the team's hosts.toml (kept in
their repository, written by `fab hosts.trust`) and the user's ~/.ssh/known_hosts. A host whose
key is in neither, or whose key differs from the one recorded, is refused during the SSH
handshake — before authentication, so nothing (no command, no secret) is ever sent to it.
"""

from __future__ import annotations

import base64
import os
import socket
import tempfile
from pathlib import Path

import paramiko

FILE_NAME = "known_hosts"  # beside hosts.toml
USER_FILE = Path("~/.ssh/known_hosts")


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"{hostname}: unknown host key {fingerprint(key)}")
        self.hostname, self.key = hostname, key


class _Refuse(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key) -> None:
        raise UnknownHostKey(hostname, key)


def fingerprint(key: paramiko.PKey) -> str:
    """As `ssh-keygen -l` prints it: SHA256:<base64, unpadded>."""
    return key.fingerprint


def entry_name(hostname: str, port: int | None) -> str:
    """How known_hosts names a host: the address, or [address]:port off port 22."""
    return hostname if not port or port == 22 else f"[{hostname}]:{port}"


def pin(client: paramiko.SSHClient, team_file: Path | None) -> None:
    """Make the client refuse any host key that is not known (read-only: the files are never
    written here)."""
    client.set_missing_host_key_policy(_Refuse())
    user_file = USER_FILE.expanduser()
    if user_file.is_file():
        client.load_system_host_keys(str(user_file))
    if team_file is not None and team_file.is_file():
        client.get_host_keys().load(str(team_file))


def refusal(exc: BaseException, host_name: str, team_file: Path | None) -> str | None:
    """The one line for a refused host key; None when `exc` is not about the host key."""
    where = f"{team_file}" if team_file is not None else FILE_NAME
    if isinstance(exc, UnknownHostKey):
        return (
            f"host {host_name} ({exc.hostname}) is not trusted: it shows key {fingerprint(exc.key)}"
            f", in neither {where} nor {USER_FILE}; check it, then `fab hosts.trust -H {host_name}`"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"host {host_name} ({exc.hostname}) shows a different key: expected "
            f"{fingerprint(exc.expected_key)}, seen {fingerprint(exc.key)} — a reinstalled host, "
            f"or someone in the middle; nothing was sent. If it was reinstalled: "
            f"`fab hosts.trust -H {host_name}`"
        )
    return None


def scan(hostname: str, port: int, timeout: float = 10) -> paramiko.PKey:
    """The key a host shows, from a handshake alone (no authentication)."""
    sock = socket.create_connection((hostname, port or 22), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def known(team_file: Path | None, name: str) -> list[paramiko.PKey]:
    """The keys recorded for `name` in the team's file and the user's."""
    found = []
    for path in (team_file, USER_FILE.expanduser()):
        if path is None or not path.is_file():
            continue
        keys = paramiko.HostKeys(str(path)).lookup(name)
        found += list(keys.values()) if keys else []
    return found


def record(team_file: Path, name: str, key: paramiko.PKey) -> None:
    """Put `name key` in the team's file in place of what it had for `name` (atomically)."""
    lines = team_file.read_text().splitlines() if team_file.is_file() else []
    kept = [ln for ln in lines if not _names(ln) or name not in _names(ln)]
    kept.append(f"{name} {key.get_name()} {base64.b64encode(key.asbytes()).decode()}")
    fd, tmp = tempfile.mkstemp(dir=team_file.parent, prefix=".known_hosts.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(kept) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, team_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _names(line: str) -> list[str]:
    text = line.strip()
    if not text or text.startswith("#"):
        return []
    return text.split()[0].split(",")
