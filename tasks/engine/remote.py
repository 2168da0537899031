"""One SSH connection per host for the whole run; every remote command goes through here.

Commands run as `sudo -n sh -c SCRIPT` over a raw paramiko channel: payloads (file contents,
archives, secrets) travel on stdin, never in a process argument, and every call is counted so the
report can show the round trips a run cost.
"""

from __future__ import annotations

import logging
import shlex
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
from fabric import Config, Connection

from . import facts as F
from . import hostkeys
from .facts import Fact, Facts
from .inventory import Host


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


# How long a run's end waits for the lock's keeper to write its audit lines.
AUDIT_WAIT = 10.0


class RemoteError(Exception):
    pass


class KitError(RemoteError):
    """A connection that failed for a reason of the kit's own, not the network's, the host's
    key or the login's: a defect to report, with its traceback under `fab --debug`."""


# What a failed connection may honestly blame on the network, the host or the login: socket
# errors (refused, unreachable, timed out, name not found), paramiko's protocol, key and
# authentication errors, and a connection closed during the handshake.
NETWORK_ERRORS = (OSError, EOFError, paramiko.SSHException)

_log = logging.getLogger("djk")
_CLONING = threading.Lock()


def own_config(config: Config | None) -> Config:
    """A copy of `config` for one connection alone.

    Fabric's Connection writes into the configuration it is given (it sets `inline_ssh_env`,
    which it does not declare, so Invoke stores it as a config key), and Invoke rebuilds a
    configuration on every write, empty meanwhile: threads opening other connections from the
    same object found no `authentication` or `connect_kwargs` in it. Copies are made under a
    lock because Fabric's clone reads the SSH config files again into the object it copies; a
    run copies the task's configuration once (cli.run_plans) and each connection copies that."""
    with _CLONING:
        return config.clone() if config is not None else Config()


def no_delay(sock) -> None:
    """Small messages go out at once, as OpenSSH's client sends them. With Nagle's algorithm
    (paramiko leaves it on) a command's end of input waits for the host to acknowledge the
    input before it (up to its 40 ms delayed ACK): every command with stdin, and the audit
    line at a run's end, paid it."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # closed already: the next command reports the lost connection


class Remote:
    def __init__(self, host: Host, config: Config | None = None, connect_timeout: int = 15) -> None:
        self.host = host
        kwargs: dict = {}
        if host.ssh_key:
            kwargs["key_filename"] = str(host.ssh_key)
        self.conn = Connection(
            host=host.connect_to,
            # Empty user or port 0 leave the choice to ssh_config and Fabric's defaults.
            user=host.user or None,
            port=host.port or None,
            connect_timeout=connect_timeout,
            connect_kwargs=kwargs,
            config=own_config(config),
        )
        # Only hosts whose key is known: never Fabric's trust-on-first-sight.
        hostkeys.pin(self.conn.client, host.known_hosts)
        self.commands = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._held: list = []
        # Every command of this run carries it in its environment, so the lock keeper can tell
        # when the last of them has ended, even after the connection dropped.
        self.run_id = uuid.uuid4().hex
        self._failed: RemoteError | None = None

    @property
    def is_root(self) -> bool:
        return self.conn.user == "root"

    def open_early(self) -> None:
        """open(), in the background of a run building its plans: a failure is kept for the
        open() the run then calls (it does not connect again)."""
        try:
            self.open()
        except RemoteError as exc:
            self._failed = exc

    def open(self) -> None:
        if self._failed is not None:
            raise self._failed
        where = f"{self.conn.user}@{self.conn.host}"
        try:
            self.conn.open()
        except NETWORK_ERRORS as exc:
            refused = hostkeys.refusal(exc, self.host.name, self.host.known_hosts)
            if refused:
                raise RemoteError(refused) from None
            raise RemoteError(f"cannot connect to {where}: {exc}") from None
        except Exception as exc:
            _log.debug("connecting to %s failed inside the kit", where, exc_info=True)
            first = (str(exc).splitlines() or [""])[0][:200]
            raise KitError(
                f"kit error while connecting to {where}: {type(exc).__name__}: {first} "
                "(a defect of the kit, not of the host; `fab --debug` shows its traceback)"
            ) from None
        no_delay(self._transport().sock)

    def close(self, last: bytes = b"") -> None:
        """Let go of held commands (`last` is written to each one's stdin first: the audit
        line for the lock's keeper) and close the connection."""
        for channel in list(self._held):
            if last:
                try:
                    channel.sendall(last)
                    channel.shutdown_write()
                    # Wait for the keeper to say the lines are written: closing the connection
                    # at once can lose them (sshd drops input it has not passed on yet).
                    _await_line(channel, b"AUDITED", AUDIT_WAIT)
                except OSError:
                    pass
            self.release(channel)
        self.conn.close()

    def identity(self) -> str:
        """The login and the host key's fingerprint: a server reinstalled at the same address
        is another host to what the control machine remembers."""
        key = self._transport().get_remote_server_key()
        return f"{self.host.login} {key.get_name()} {key.get_fingerprint().hex()}"

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def _command(self, script: str, sudo: bool = True, tag: bool = True) -> str:
        command = "/bin/sh -c " + shlex.quote(script)
        if tag:
            command = f"env DJK_RUN={self.run_id} {command}"
        if sudo and not self.is_root:
            command = "sudo -n -- " + command
        return command

    def hold(
        self, command: str, timeout: float, head: bytes = b"", payload: bytes = b""
    ) -> tuple[str, object]:
        """Start a command that keeps running for the rest of the run (its stdin stays open
        until close(), after `payload` (counted as sent, like any upload) and `head`); return
        its first output line and its channel. The command is not tagged with the run id: it
        is the one that waits for the run's tagged commands to end."""
        with self._lock:
            self.commands += 1
            self.bytes_sent += len(payload)
        channel = self._transport().open_session()
        channel.exec_command(self._command(command, tag=False))
        if payload or head:
            channel.sendall(payload + head)
        channel.settimeout(timeout)
        line = b""
        try:
            while not line.endswith(b"\n"):
                chunk = channel.recv(1)
                if not chunk:
                    break
                line += chunk
        except TimeoutError:
            pass
        channel.settimeout(None)
        self._held.append(channel)
        return line.decode("utf-8", "replace").strip(), channel

    def read(self, channel, size: int) -> bytes:
        """Exactly `size` more bytes of a held command's output (fewer if it ended)."""
        data = b""
        while len(data) < size:
            chunk = channel.recv(min(65536, size - len(data)))
            if not chunk:
                break
            data += chunk
        return data

    def release(self, channel) -> None:
        """Close a held command's stdin and channel: it sees end of input and ends."""
        try:
            channel.shutdown_write()
            channel.close()
        except OSError:
            pass
        if channel in self._held:
            self._held.remove(channel)

    def stream(
        self, script: str, on_line: Callable[[str], None], stop: threading.Event
    ) -> int | None:
        """Run a script as root whose stdin stays open until `stop` is set (its lifeline:
        `fab app.logs --follow`), each output line to `on_line`; its exit status (None when it
        was still running as it was let go)."""
        with self._lock:
            self.commands += 1
        try:
            channel = self._transport().open_session()
            channel.exec_command(self._command(script))
        except RemoteError:
            raise
        except Exception as exc:  # paramiko: SSHException, EOFError, socket errors
            raise RemoteError(f"connection to {self.host.name} lost: {exc}") from None
        ended = threading.Event()

        def read() -> None:
            try:
                _read_stdout(channel, on_line)
            finally:
                ended.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            while not stop.is_set() and not ended.is_set():
                stop.wait(0.2)
            if not ended.is_set():
                channel.shutdown_write()  # the script sees end of input and ends
                ended.wait(5)
            return channel.recv_exit_status() if channel.exit_status_ready() else None
        except OSError:
            return None
        finally:
            channel.close()

    def interactive(self, script: str) -> int:
        """Run a shell script as root on a pseudo-terminal wired to this terminal (a person at
        the keyboard: `fab app.shell`); its exit status."""
        with self._lock:
            self.commands += 1
        try:
            done = self.conn.run(self._command(script), pty=True, warn=True, hide=False)
        except Exception as exc:  # paramiko: SSHException, EOFError, socket errors
            raise RemoteError(f"connection to {self.host.name} lost: {exc}") from None
        return done.exited

    def gather(self, facts: list[Fact], result: Result | None = None) -> Facts:
        """Every fact in one round trip (or from `result`: F.build_script(facts) run already,
        e.g. by the deploy lock's keeper)."""
        result = result or self.run(F.build_script(facts))
        if not result.ok:
            raise RemoteError(f"reading the host's state failed: {result.stderr.strip()[-500:]}")
        return F.parse_all(facts, result.stdout)

    def _transport(self):
        transport = self.conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(f"connection to {self.host.name} is closed")
        return transport

    def run(
        self,
        script: str,
        stdin: bytes = b"",
        on_line: Callable[[str], None] | None = None,
        sudo: bool = True,
    ) -> Result:
        """Run a shell script as root (via sudo -n unless we log in as root)."""
        command = self._command(script, sudo)
        with self._lock:
            self.commands += 1
            self.bytes_sent += len(stdin)
        try:
            channel = self._transport().open_session()
        except RemoteError:
            raise
        except Exception as exc:  # paramiko: SSHException, EOFError, socket errors
            raise RemoteError(f"connection to {self.host.name} lost: {exc}") from None
        try:
            channel.exec_command(command)
            writer = threading.Thread(target=_send, args=(channel, stdin), daemon=True)
            writer.start()
            err_chunks: list[bytes] = []
            reader = threading.Thread(target=_drain_stderr, args=(channel, err_chunks), daemon=True)
            reader.start()
            out = _read_stdout(channel, on_line)
            reader.join()
            writer.join()
            rc = channel.recv_exit_status()
            if rc == -1 or not self._transport().is_active():
                raise RemoteError(f"connection to {self.host.name} lost during a command")
        finally:
            channel.close()
        return Result(rc, out, b"".join(err_chunks).decode("utf-8", "replace"))


def _await_line(channel, want: bytes, seconds: float) -> bool:
    """Read a held command's output until a line `want` (True), its end or `seconds` pass."""
    channel.settimeout(seconds)
    seen = b""
    try:
        while True:
            chunk = channel.recv(4096)
            if not chunk:
                return False
            seen += chunk
            if want in seen.splitlines():
                return True
    except TimeoutError:
        return False


def _send(channel, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            sent = channel.send(view[:65536])
            view = view[sent:]
        channel.shutdown_write()
    except OSError:
        pass  # the remote side exited early; its exit status tells the story


def _drain_stderr(channel, chunks: list[bytes]) -> None:
    while True:
        chunk = channel.recv_stderr(65536)
        if not chunk:
            return
        chunks.append(chunk)


def _read_stdout(channel, on_line: Callable[[str], None] | None) -> str:
    chunks: list[bytes] = []
    pending = b""
    while True:
        chunk = channel.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if on_line is not None:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_line(line.decode("utf-8", "replace"))
    return b"".join(chunks).decode("utf-8", "replace")
