"""WebSockets through nginx to the app, and across a switch: a connection open on the old slot
keeps echoing past the old slot's graceful timeout (within the drain time), a new connection
after the switch reaches the new release, and the deploy ends once the old connection closes.
A real client (the `websockets` library) on this machine, the example's /ws/echo/ on the host."""

from __future__ import annotations

import socket
import time

import pytest
from websockets.sync.client import connect

from .kit import Project, sh, spawn_fab, wait_for_line

pytestmark = pytest.mark.e2e
GRACEFUL = 20  # gunicorn --graceful-timeout in the web unit


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(src), drain_timeout=120)
    project.write()
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return project


def live(host) -> str:
    return sh(host, "readlink /srv/djk/example/current").strip().removeprefix("releases/")


def open_echo(host):
    """A WebSocket to example.test's /ws/echo/ through the host's nginx."""
    sock = socket.create_connection((host.address, 80), timeout=10)
    return connect("ws://example.test/ws/echo/", sock=sock, open_timeout=10)


def echo(ws, text: str) -> str:
    ws.send(text)
    return ws.recv(timeout=10)


def test_a_websocket_reaches_the_app_through_nginx(project, fresh_host):
    with open_echo(fresh_host) as ws:
        assert echo(ws, "hi") == f"{live(fresh_host)}: hi"


def test_an_open_websocket_outlives_the_switch_and_new_ones_reach_the_new_release(
    project, fresh_host, src
):
    old = live(fresh_host)
    with open_echo(fresh_host) as ws:  # closed when the block ends: then the old slot drains
        assert echo(ws, "before") == f"{old}: before"
        (src / "VERSION").write_text("3.0.0\n")
        deploy = spawn_fab(project.inventory, "-H", "web1", "deploy")
        wait_for_line(deploy, ": health check ...", timeout=180)  # the switch has started
        # Once `current` moves nginx points at the new slot: new connections go there.
        deadline = time.monotonic() + 120
        while live(fresh_host) == old and time.monotonic() < deadline:
            time.sleep(0.2)
        new = live(fresh_host)
        assert new != old
        with open_echo(fresh_host) as fresh:
            assert echo(fresh, "after") == f"{new}: after"
        # Past the old slot's graceful timeout the old connection still talks to the old release.
        time.sleep(GRACEFUL + 2)
        try:
            answer = echo(ws, "still there")
        except Exception as exc:
            log = sh(
                fresh_host,
                "journalctl -u 'djk-example-web-*' -o short-precise --no-pager | tail -25",
            )
            raise AssertionError(f"{exc}\n{log}") from exc
        assert answer == f"{old}: still there"
        assert deploy.poll() is None  # the deploy waits for it (drain_timeout = 120)
        assert "active" in sh(
            fresh_host, "systemctl is-active djk-example-web-a djk-example-web-b || true"
        )
    out, _ = deploy.communicate(timeout=120)
    assert deploy.returncode == 0, out
    # Both slots: only the new one is left once the old connection closed.
    states = sh(fresh_host, "systemctl is-active djk-example-web-a djk-example-web-b || true")
    assert sorted(states.split()) == ["active", "inactive"], states
