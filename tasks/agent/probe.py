"""The health gate: HTTP answers judged without asking the app to know the kit, and the one-line
cause when a release fails it."""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status: int = 0  # 0: no HTTP answer (see error)
    body: str = ""
    location: str = ""
    error: str = ""
    peer: int = 0  # over a unix socket: the pid that listen()ed on the socket that answered


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (a gunicorn slot's)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def peer(self) -> int:
        """SO_PEERCRED of a connected unix client socket: the credentials the server had when
        it called listen() (gunicorn's master), whoever accepted the connection."""
        if self.sock is None:
            return 0
        raw = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)[0]


def fetch(
    url: str,
    host: str,
    https_forwarded: bool = False,
    timeout: float = 5.0,
    unix: str | None = None,
) -> Answer:
    """GET `url` with the site's Host (and X-Forwarded-Proto: https for a TLS site probed on
    its plain slot socket, as nginx would send it); over the unix socket `unix` when given
    (then only the URL's path counts)."""
    parts = urllib.parse.urlsplit(url)
    hostname = parts.hostname or ""
    headers = {"Host": host, "User-Agent": "djk-health-check"}
    if https_forwarded:
        headers["X-Forwarded-Proto"] = "https"
    try:
        if unix:
            conn: http.client.HTTPConnection = UnixConnection(unix, timeout)
        elif parts.scheme == "https":
            # The site's own name in SNI and Host; this checks health, not the certificate.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPConnection(hostname, parts.port or 443, timeout=timeout)
            raw = socket.create_connection((hostname, parts.port or 443), timeout=timeout)
            conn.sock = context.wrap_socket(raw, server_hostname=host)
        else:
            conn = http.client.HTTPConnection(hostname, parts.port or 80, timeout=timeout)
        conn.request("GET", parts.path or "/", headers=headers)
        peer = conn.peer() if isinstance(conn, UnixConnection) else 0
        answer = conn.getresponse()
        body = answer.read(65536).decode("utf-8", "replace")
        conn.close()
        return Answer(answer.status, body, answer.getheader("Location") or "", peer=peer)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(error=str(exc) or type(exc).__name__)


# A release whose own process answers a server error this many times in a row fails its gate
# at once, without waiting for the health timeout.
FAILED_IN_A_ROW = 3
# What a starting app or something between may answer for a while: waited out.
PASSING = (502, 503, 504)


def app_failed(answer: Answer) -> bool:
    """A server error of the app's own (500, 501, 505...), not a gateway's or a busy one."""
    return answer.status >= 500 and answer.status not in PASSING


def healthy(answer: Answer, gate: dict) -> bool:
    """2xx; with `expect_release` the body must also name the release; a site without a
    health_path (probing /) may answer a redirect that stays on one of its domains."""
    if 200 <= answer.status < 300:
        return not gate.get("expect_release") or gate["release"] in answer.body
    if 300 <= answer.status < 400 and gate.get("accept_redirect"):
        target = urllib.parse.urlsplit(answer.location)
        return not target.hostname or _on_site(target.hostname, gate.get("domains", []))
    return False


def _on_site(name: str, domains: list[str]) -> bool:
    name = name.lower()
    return any(name == d or (d.startswith("*.") and name.endswith(d[1:])) for d in domains)


def cause(answer: Answer, gate: dict) -> str:
    """What the app answered, and its likely cause, in one line."""
    path = gate.get("path", "/")
    if answer.status == 0:
        return f"no HTTP answer ({answer.error})"
    said = f"HTTP {answer.status}"
    if 200 <= answer.status < 300 and gate.get("expect_release"):
        return (
            f"{said} without the release id {gate['release']} in the body "
            "(health_expect_release = true)"
        )
    if answer.status == 400:
        return f"{said}: is the site's domain in ALLOWED_HOSTS (DJANGO_ALLOWED_HOSTS)?"
    if answer.status in (301, 302, 307, 308):
        return (
            f"{said} to {answer.location or '?'}: a redirect (SECURE_SSL_REDIRECT, "
            f"APPEND_SLASH?); give a health_path that answers 2xx itself"
        )
    if answer.status == 404:
        return f"{said}: nothing at {path} (set health_path to a URL the app serves)"
    if answer.status >= 500:
        return f"{said}: the app failed (its log follows)"
    return f"{said} from {path}"
