"""HTTPS from an ACME server: certbot on the host, http-01 through the site's nginx, against a
local Pebble (Debian's test ACME server) on the control machine's end of the test network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from .kit import make_certificate, sh

pytestmark = pytest.mark.e2e


def _wait_port(address: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{address}:{port} never opened")


@pytest.fixture(scope="module")
def pebble(fresh_host, tmp_path_factory):
    d = tmp_path_factory.mktemp("pebble")
    gateway = fresh_host.address.rsplit(".", 1)[0] + ".1"  # this machine on the test network
    make_certificate(d, "pebble", f"IP:{gateway},IP:127.0.0.1", "djk pebble CA")
    (d / "pebble.json").write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"{gateway}:14000",
                    "managementListenAddress": "127.0.0.1:15000",
                    "certificate": str(d / "pebble.pem"),
                    "privateKey": str(d / "pebble.key"),
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    # Every name resolves to the test host: Pebble validates http-01 there, through its nginx.
    dns = subprocess.Popen(
        [
            "pebble-challtestsrv",
            "-dns01",
            "127.0.0.1:8053",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            "127.0.0.1:8055",
            "-defaultIPv4",
            fresh_host.address,
            "-defaultIPv6",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
    server = subprocess.Popen(
        ["pebble", "-config", str(d / "pebble.json"), "-dnsserver", "127.0.0.1:8053"],
        stdout=open(d / "pebble.log", "w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        _wait_port(gateway, 14000)
        yield {"dir": d, "url": f"https://{gateway}:14000/dir", "ca": d / "ca.pem"}
    finally:
        server.terminate()
        dns.terminate()
        server.wait(timeout=10)
        dns.wait(timeout=10)


@pytest.fixture(scope="module")
def deployed(project, fresh_host, pebble):
    project.site["tls"] = {
        "mode": "acme",
        "email": "ops@example.test",
        "server": pebble["url"],
        "ca_bundle": str(pebble["ca"]),
    }
    project.write()
    run = project.fab("-H", "web1", "deploy")
    log = (pebble["dir"] / "pebble.log").read_text()[-3000:]
    assert run.code == 0, run.out + run.err + log
    return run


def pebble_roots(pebble) -> str:
    """Pebble makes a new root at start; its management API hands out the chain's root."""
    out = subprocess.run(
        ["curl", "-sk", "https://127.0.0.1:15000/roots/0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = pebble["dir"] / "roots.pem"
    path.write_text(out)
    return str(path)


def https(host, ca: str, path: str = "/health/") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "curl",
            "-s",
            "-i",
            "--max-time",
            "10",
            "--cacert",
            ca,
            "--resolve",
            f"example.test:443:{host.address}",
            f"https://example.test{path}",
        ],
        capture_output=True,
        text=True,
    )


def serial(host) -> str:
    return sh(host, "openssl x509 -noout -serial -in /etc/djk/tls/example/fullchain.pem").strip()


def test_certificate_from_the_acme_server_verifies(deployed, fresh_host, pebble):
    answer = https(fresh_host, pebble_roots(pebble))
    assert answer.returncode == 0, answer.stderr
    assert '"status": "ok"' in answer.stdout
    plain = subprocess.run(
        ["curl", "-s", "-i", "-H", "Host: example.test", f"http://{fresh_host.address}/health/"],
        capture_output=True,
        text=True,
    ).stdout
    assert "301" in plain.splitlines()[0] and "Location: https://example.test/health/" in plain


def test_second_deploy_asks_the_acme_server_nothing(deployed, project, fresh_host):
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    assert run.host("web1")["changed"] == 0
    step = next(s for s in run.host("web1")["steps"] if s["step"] == "acme certificate example")
    assert step["status"] == "ok" and "example.test" in step["detail"]


def test_renewal_installs_the_new_certificate_and_reloads_nginx(deployed, fresh_host, pebble):
    assert sh(fresh_host, "systemctl is-enabled certbot.timer").strip() == "enabled"
    before = serial(fresh_host)
    sh(
        fresh_host,
        "REQUESTS_CA_BUNDLE=/etc/djk/tls/example/acme-ca.pem "
        "certbot renew --force-renewal --no-random-sleep-on-renew -q",
    )
    after = serial(fresh_host)
    assert after != before
    served = subprocess.run(
        f"echo | openssl s_client -connect {fresh_host.address}:443 -servername example.test "
        "2>/dev/null | openssl x509 -noout -serial",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert served == after
