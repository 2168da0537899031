"""HTTPS with given certificate files, checked with a CA the test creates; a WebSocket over
TLS through nginx, closed when idle for the site's read_timeout."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .kit import make_certificate, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca")
    make_certificate(d, "site", "DNS:example.test,DNS:www.example.test", "djk test CA")
    return d


@pytest.fixture(scope="module")
def deployed(project, fresh_host, ca):
    project.site["tls"] = {"cert": str(ca / "site.pem"), "key": str(ca / "site.key"), "hsts": True}
    project.site["read_timeout"] = "4s"
    project.write()
    run = project.fab("-H", "web1", "deploy", "--diff")
    assert run.code == 0, run.out + run.err
    return run


def https(host, ca, path="/health/", name="example.test", *extra: str):
    return subprocess.run(
        [
            "curl",
            "-s",
            "-i",
            "--max-time",
            "10",
            "--cacert",
            str(ca / "ca.pem"),
            "--resolve",
            f"{name}:443:{host.address}",
            *extra,
            f"https://{name}{path}",
        ],
        capture_output=True,
        text=True,
    )


def test_https_answers_with_the_given_certificate(deployed, fresh_host, ca):
    answer = https(fresh_host, ca)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("HTTP/2 200") or answer.stdout.startswith("HTTP/1.1 200")
    assert '"status": "ok"' in answer.stdout
    assert "strict-transport-security: max-age=31536000" in answer.stdout.lower()
    static = https(fresh_host, ca, "/static/pages/style.css")
    assert "strict-transport-security" in static.stdout.lower()


def test_http_redirects_to_https(deployed, fresh_host):
    answer = subprocess.run(
        [
            "curl",
            "-s",
            "-i",
            "--max-time",
            "10",
            "-H",
            "Host: example.test",
            f"http://{fresh_host.address}/page?x=1",
        ],
        capture_output=True,
        text=True,
    )
    assert " 301" in answer.stdout.splitlines()[0]
    assert "Location: https://example.test/page?x=1" in answer.stdout


def test_old_protocols_and_unknown_names_are_refused(deployed, fresh_host, ca):
    old = https(fresh_host, ca, "/health/", "example.test", "--tlsv1.1", "--tls-max", "1.1")
    assert old.returncode != 0
    unknown = https(fresh_host, ca, "/", "other.test", "-k")
    assert unknown.returncode != 0  # the default server rejects the handshake


def test_private_key_is_0600_and_never_shown(deployed, fresh_host, ca):
    assert sh(fresh_host, "stat -c '%a %U' /etc/djk/tls/example/privkey.pem").split() == [
        "600",
        "root",
    ]
    key = (ca / "site.key").read_text()
    body = key.strip().splitlines()[1]
    assert body not in deployed.out
    assert "privkey.pem: secret content changed (not shown)" in deployed.out


def test_an_app_redirecting_to_https_passes_the_gate(deployed, project, fresh_host, ca, src):
    """SECURE_SSL_REDIRECT = True: Django answers 301 to a request that did not come over
    HTTPS. The gate probes the new slot directly, so it sends X-Forwarded-Proto: https as nginx
    does (the app trusts it: SECURE_PROXY_SSL_HEADER), and checks through nginx over HTTPS."""
    settings = src / "exampleproject/settings.py"
    original = settings.read_text()
    settings.write_text(original + "\nSECURE_SSL_REDIRECT = True\n")
    (src / "VERSION").write_text("5.0.0\n")
    project.site.update(source=str(src), health_path="/health/")
    project.write()
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        settings.write_text(original)
    assert run.code == 0, run.out + run.err
    answer = https(fresh_host, ca)
    assert answer.stdout.startswith("HTTP/2 200") or " 200" in answer.stdout.split("\n")[0]
    assert "5.0.0" in answer.stdout


def test_a_websocket_reaches_the_app_over_tls_and_idles_out_at_read_timeout(
    deployed, fresh_host, ca
):
    """wss:// through nginx (TLS ends there, Upgrade passes on); an idle WebSocket is closed by
    nginx after the site's read_timeout (4s here), not nginx's 60s default."""
    context = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    sock = socket.create_connection((fresh_host.address, 443), timeout=10)
    with connect(
        "wss://example.test/ws/echo/",
        sock=sock,
        ssl=context,
        server_hostname="example.test",
        open_timeout=10,
        ping_interval=None,  # an idle connection: no pings from this side
    ) as ws:
        ws.send("over tls")
        assert ws.recv(timeout=10).endswith(": over tls")
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert time.monotonic() - started < 20


def test_status_shows_when_the_certificate_expires(deployed, project, fresh_host, ca):
    run = project.fab("-H", "web1", "status", "--json")
    assert run.code == 0, run.out + run.err
    (row,) = run.report["hosts"][0]["extra"]["status"]
    done = subprocess.run(
        ["openssl", "x509", "-enddate", "-noout", "-in", str(ca / "site.pem")],
        capture_output=True,
        text=True,
        check=True,
    )
    end = (
        time.mktime(
            time.strptime(done.stdout.strip().removeprefix("notAfter="), "%b %d %H:%M:%S %Y %Z")
        )
        - time.timezone
    )
    assert abs(row["certificate_expires"] - end) < 2
    assert row["health"]["status"] == 200 and row["down"] == []
    text = project.fab("-H", "web1", "status").out
    assert time.strftime("expires %Y-%m-%d", time.gmtime(end)) in text
