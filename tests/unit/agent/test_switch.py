"""The host agent's switch, run as shipped (the zipapp, in a subprocess) against fake
systemctl, ss, journalctl and nginx on PATH (fakes/fakes.py) and fake gunicorns that are real
processes (fakes/fake_server.py: listening, in the release directory), so the gate's proofs
read a real /proc. One test per path: first switch, a switch, a restart, an app that knows
nothing of releases, each kind of refused release, an old process on the new slot's socket, a
failure through nginx, the app-host mode, drains, a run cut off mid-switch, and verify."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from djk.tasks.agent import probe
from djk.tasks.engine import agent

FAKES = Path(__file__).resolve().parent / "fakes"
SITE = "shop"


class Front(http.server.ThreadingHTTPServer):
    """nginx (or the forwarder), as far as the switch sees it: each request goes to the socket
    live.sock links to at that moment (or is answered `broken` when set)."""

    def __init__(self, live: Path) -> None:
        self.live, self.broken, self.requests = live, 0, 0

        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                front.requests += 1
                status, body = front.broken, b"broken"
                if not status:
                    try:
                        conn = probe.UnixConnection(str(front.live), timeout=5)
                        conn.request("GET", "/")
                        answer = conn.getresponse()
                        status, body = answer.status, answer.read()
                        conn.close()
                    except OSError:
                        status, body = 502, b"bad gateway"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Host:
    """A site's directory, the fakes' state, and the agent to run against them."""

    def __init__(self, tmp: Path, manager: str = "systemd") -> None:
        self.tmp, self.manager = tmp, manager
        self.base = tmp / "srv" / SITE
        (self.base / "releases").mkdir(parents=True)
        (self.base / "venvs").mkdir()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name in ("systemctl", "supervisorctl", "ss", "journalctl", "nginx"):
            wrapper = self.bin / name
            fake = f'"{sys.executable}" "{FAKES}/fakes.py" {name}'
            wrapper.write_text(f'#!/bin/sh\nexec {fake} "$@"\n')
            wrapper.chmod(0o755)
        # Short: a unix socket's path has room for 107 bytes.
        self.sockets_dir = Path(tempfile.mkdtemp(prefix="djk-"))
        self.sockets = {s: str(self.sockets_dir / f"{s}.sock") for s in "ab"}
        self.live = self.sockets_dir / "live.sock"
        suffix = ".service" if manager == "systemd" else ""
        self.units = {s: f"djk-{SITE}-web-{s}{suffix}" for s in "ab"}
        self.state_file = tmp / "state.json"
        self.save(
            {
                "units": {},
                "sockets": {self.units[s]: self.sockets[s] for s in "ab"},
                "slot_dirs": {self.units[s]: str(self.base / "slots" / s) for s in "ab"},
                "serve": {},
            }
        )
        self.front = Front(self.live)
        self.pyz = tmp / "agent.pyz"
        self.pyz.write_bytes(agent.archive())

    def release(self, name: str, status: int = 200, body: str = '{"ok": true}') -> None:
        (self.base / "releases" / name).mkdir()
        (self.base / "releases" / name / ".djk-status").write_text("staged\n")
        state = self.state()
        state["serve"][name] = [status, body]
        self.save(state)

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def save(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state))

    def spec(self, release: str, **extra) -> dict:
        gate = {
            "path": "/health/",
            "host": "shop.test",
            "timeout": 1.5,
            "domains": ["shop.test"],
            "expect_release": False,
            "https": False,
            "accept_redirect": False,
        }
        gate.update(extra.pop("gate", {}))
        return {
            "mode": "local",
            "base": str(self.base),
            "release": release,
            "sockets": self.sockets,
            "live": str(self.live),
            "units": self.units,
            "manager": self.manager,
            "group": "",
            "gate": gate,
            "front": f"http://127.0.0.1:{self.front.server_address[1]}",
            "reload": False,
            "mark_old": "previous",
            "delete": [],
            **extra,
        }

    def run(self, command: str, spec: dict | str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "FAKE_STATE": str(self.state_file),
        }
        return subprocess.run(
            [sys.executable, str(self.pyz), command],
            input=spec if isinstance(spec, str) else json.dumps(spec),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    def squat(self, slot: str) -> subprocess.Popen:
        """An old process listening at a slot's socket path (started, and waited for)."""
        squatter = subprocess.Popen(
            [sys.executable, str(FAKES / "fake_server.py"), self.sockets[slot], "200", "old"],
            start_new_session=True,
        )
        for _ in range(200):
            with socket.socket(socket.AF_UNIX) as s:
                if s.connect_ex(self.sockets[slot]) == 0:
                    break
            time.sleep(0.02)
        return squatter

    def status(self, release: str) -> str:
        return (self.base / "releases" / release / ".djk-status").read_text().strip()

    def current(self) -> str | None:
        link = self.base / "current"
        return os.readlink(link) if link.is_symlink() else None

    def live_slot(self) -> str | None:
        return os.readlink(self.live) if self.live.is_symlink() else None

    def running(self, slot: str) -> bool:
        return self.state()["units"].get(self.units[slot], {}).get("ActiveState") == "active"

    def close(self) -> None:
        self.front.shutdown()
        shutil.rmtree(self.sockets_dir, ignore_errors=True)
        for pid in self.state().get("spawned", []):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    yield h
    h.close()


def switched(host: Host, release: str, **extra) -> subprocess.CompletedProcess[str]:
    done = host.run("switch", host.spec(release, **extra))
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_first_switch_starts_slot_a_and_points_live_and_current(host):
    host.release("R1")
    done = switched(host, "R1")
    assert "healthy: HTTP 200" in done.stdout and "release R1 is live in slot a" in done.stdout
    assert host.live_slot() == "a.sock"
    assert host.current() == "releases/R1" and host.status("R1") == "live"
    assert host.running("a") and not host.running("b")
    assert not [c for c in host.state()["calls"] if c[0] == "nginx"]  # nothing reloaded


def test_a_switch_starts_the_other_slot_and_stops_the_old_one_after(host):
    host.release("R1")
    switched(host, "R1")
    host.release("R2")
    (host.base / "venvs" / "unused").mkdir()
    switched(host, "R2", delete=[])
    assert host.live_slot() == "b.sock"
    assert host.running("b") and not host.running("a")
    assert host.status("R2") == "live" and host.status("R1") == "previous"
    assert not (host.base / "venvs" / "unused").exists()  # no release links to it
    calls = [
        c for c in host.state()["calls"] if c[0] == "systemctl" and c[1] in ("stop", "restart")
    ]
    # The old slot stops only after the new one started and passed.
    assert calls.index(["systemctl", "restart", host.units["b"]]) < calls.index(
        ["systemctl", "stop", host.units["a"]]
    )
    assert not [c for c in host.state()["calls"] if c[0] == "nginx"]  # a code deploy


def test_systemd_reloads_only_when_a_unit_file_changed(host):
    host.release("R1")
    switched(host, "R1", daemon_reload=False)
    calls = [c for c in host.state()["calls"] if c[0] == "systemctl"]
    assert ["systemctl", "daemon-reload"] not in calls
    assert ["systemctl", "enable", "--quiet", "--no-reload", host.units["a"]] in calls
    host.release("R2")
    switched(host, "R2", daemon_reload=True)
    assert ["systemctl", "daemon-reload"] in host.state()["calls"]


def test_a_pending_nginx_configuration_is_reloaded_before_the_check_through_it(host):
    host.release("R1")
    switched(host, "R1", reload=True)
    nginx = [c for c in host.state()["calls"] if c[0] == "nginx"]
    assert nginx == [["nginx", "-t", "-q"]]  # validated; the fake master is not running


def test_an_app_that_knows_nothing_of_releases_passes(host):
    host.release("R1", body='{"ok": true, "version": "v1"}')
    switched(host, "R1")


def test_expect_release_keeps_the_body_check(host):
    host.release("R1", body='{"ok": true}')
    done = host.run("switch", host.spec("R1", gate={"expect_release": True}))
    assert done.returncode == 4 and "without the release id R1" in done.stderr


@pytest.mark.parametrize(
    "status, words",
    [
        (500, "HTTP 500: the app failed"),
        (400, "ALLOWED_HOSTS"),
        (404, "nothing at /health/"),
        (301, "a redirect (SECURE_SSL_REDIRECT"),
    ],
)
def test_a_refused_release_never_gets_a_live_request_and_says_why(host, status, words):
    host.release("R1")
    switched(host, "R1")
    host.release("R2", status=status)
    host.front.requests = 0
    done = host.run("switch", host.spec("R2"))
    assert done.returncode == 4, done.stdout + done.stderr
    cause = done.stderr.strip().splitlines()[-1]
    assert words in cause and "R1 still serves" in cause, cause
    assert "log of djk-shop-web-b.service" in done.stderr  # its log tail comes with it
    assert host.live_slot() == "a.sock" and host.front.requests == 0  # no live request
    assert host.current() == "releases/R1" and host.status("R2") == "failed"
    assert host.running("a") and not host.running("b")


def test_a_release_answering_500_fails_at_once_and_503_is_waited_out(host):
    host.release("R1")
    switched(host, "R1")
    host.release("R2", status=500)
    done = host.run("switch", host.spec("R2", gate={"timeout": 600}))
    assert done.returncode == 4, done.stdout + done.stderr
    cause = done.stderr.strip().splitlines()[-1]
    assert "HTTP 500: the app failed (3 answers in a row from djk-shop-web-b.service" in cause
    assert "within" not in cause and "R1 still serves" in cause
    # A starting app (or a proxy) may answer 503 for a while: the gate waits for it.
    host.release("R3", status=503)
    done = host.run("switch", host.spec("R3", gate={"timeout": 1.5}))
    assert done.returncode == 4
    assert "within 1.5s: HTTP 503" in done.stderr.strip().splitlines()[-1]
    assert host.live_slot() == "a.sock" and host.current() == "releases/R1"


def test_without_health_path_a_redirect_on_the_sites_domain_passes(host):
    host.release("R1", status=301)
    switched(host, "R1", gate={"path": "/", "accept_redirect": True})


def test_an_old_process_answering_on_the_new_slots_socket_fails_the_gate(host):
    """An old process listens at slot a's path and the new gunicorn never binds: its healthy
    answer is not taken for the release's (SO_PEERCRED names the pid that listens)."""
    host.release("R1")
    state = host.state()
    state["serve"]["R1"] = ["nobind", ""]
    host.save(state)
    squatter = host.squat("a")
    try:
        done = host.run("switch", host.spec("R1"))
    finally:
        squatter.terminate()
    assert done.returncode == 4
    assert f"held by pid {squatter.pid}" in done.stderr and "an old process" in done.stderr
    assert host.status("R1") == "failed" and host.current() is None
    assert host.live_slot() is None


def test_a_failure_through_nginx_switches_everything_back(host):
    host.release("R1")
    switched(host, "R1")
    host.release("R2")
    host.front.broken = 502
    done = host.run("switch", host.spec("R2"))
    assert done.returncode == 5
    assert "failed its health check through nginx" in done.stderr and "switched back to R1" in (
        done.stderr
    )
    assert host.live_slot() == "a.sock" and host.current() == "releases/R1"
    assert host.status("R2") == "failed" and host.running("a") and not host.running("b")


def test_an_invalid_nginx_configuration_switches_back(host):
    host.release("R1")
    switched(host, "R1")
    host.release("R2")
    state = host.state()
    state["nginx_invalid"] = True
    host.save(state)
    done = host.run("switch", host.spec("R2", reload=True))
    assert done.returncode == 5 and "invalid configuration" in done.stderr
    assert host.current() == "releases/R1" and host.live_slot() == "a.sock"


def test_app_mode_checks_through_the_forwarder_and_never_touches_nginx(host):
    host.release("R1")
    done = switched(host, "R1", mode="app")
    assert host.live_slot() == "a.sock" and host.current() == "releases/R1"
    host.release("R2")
    switched(host, "R2", mode="app")
    assert host.live_slot() == "b.sock" and not host.running("a")
    assert not [c for c in host.state()["calls"] if c[0] == "nginx"]
    assert "release R1 is live" in done.stdout
    host.release("R3")
    host.front.broken = 502
    done = host.run("switch", host.spec("R3", mode="app"))
    assert done.returncode == 5 and "through the forwarder" in done.stderr
    assert host.live_slot() == "b.sock"


def test_a_run_cut_off_mid_switch_is_finished_by_the_next(host):
    """Killed after the new slot started and live.sock moved, before the old slot stopped: both
    slots run. The next run sees live.sock and the marks, drains the old slot and stops it."""
    host.release("R1")
    switched(host, "R1")
    host.release("R2")
    state = host.state()
    state["kill_agent_on"] = ["enable"]  # the first call after the cut-over
    host.save(state)
    assert host.run("switch", host.spec("R2")).returncode == -9
    assert host.live_slot() == "b.sock" and host.running("a") and host.running("b")
    assert host.status("R2") == "staged"  # not marked live: the run did not finish
    # What the control side plans then: R2 is the target but not marked live -> a restart of
    # R2, which starts it in the idle slot a (still running: drained first) and stops b.
    state = host.state()
    state["established"] = {host.sockets["a"]: 2}
    host.save(state)
    done = switched(host, "R2", drain=30)
    assert "draining 2 connection(s) of slot a, still running from an earlier run" in done.stdout
    assert host.live_slot() == "a.sock" and host.running("a") and not host.running("b")
    assert host.status("R2") == "live" and host.status("R1") == "previous"


def test_verify_checks_through_nginx_then_points_current(host):
    host.release("R1")
    switched(host, "R1")
    (host.base / "current").unlink()
    done = host.run("verify", host.spec("R1"))
    assert done.returncode == 0, done.stderr
    assert host.current() == "releases/R1"
    host.front.broken = 500
    done = host.run("verify", host.spec("R1"))
    assert done.returncode == 1 and "HTTP 500" in done.stderr


def test_verify_on_a_web_host_moves_the_statuses_as_a_switch_does(host):
    """A web-only host of a split site keeps releases too (their static files): verify marks
    them as the app hosts' switch does, so a rollback there finds the same release."""
    for release in ("R1", "R2"):
        host.release(release)
    host.run("switch", host.spec("R1"))
    (host.base / "releases" / "R3").mkdir()
    (host.base / "releases" / "R3" / ".djk-status").write_text("staged\n")
    assert host.run("verify", host.spec("R2", delete=["R3"])).returncode == 0
    assert host.status("R2") == "live" and host.status("R1") == "previous"
    assert not (host.base / "releases" / "R3").exists()
    assert host.run("verify", host.spec("R1", mark_old="rolled-back")).returncode == 0
    assert host.status("R1") == "live" and host.status("R2") == "rolled-back"


def test_bad_input_is_exit_2(host):
    assert host.run("switch", "not json").returncode == 2
    assert host.run("nosuchcommand", {}).returncode == 2


def test_static_files_follow_the_switch_and_a_rollback_serves_its_release_alone(host):
    static = host.base / "static"
    static.mkdir()
    for release in ("R1", "R2"):
        host.release(release)
        (static / release).mkdir()
    (static / "next").symlink_to("R1")  # staged
    switched(host, "R1", static=str(static))
    assert os.readlink(static / "current") == "R1"
    assert not (static / "next").is_symlink() and not (static / "previous").is_symlink()
    (static / "next").symlink_to("R2")
    switched(host, "R2", static=str(static))
    assert os.readlink(static / "current") == "R2" and os.readlink(static / "previous") == "R1"
    switched(host, "R1", static=str(static), mark_old="rolled-back", delete=["R2"])
    assert os.readlink(static / "current") == "R1"
    assert not (static / "previous").is_symlink()  # only the release returned to
    assert not (static / "R2").exists() and not (host.base / "releases" / "R2").exists()


def test_a_failed_switch_leaves_static_files_as_they_were(host):
    static = host.base / "static"
    static.mkdir()
    host.release("R1")
    switched(host, "R1", static=str(static))
    host.release("R2")
    host.front.broken = 502
    assert host.run("switch", host.spec("R2", static=str(static))).returncode == 5
    assert os.readlink(static / "current") == "R1"


def test_the_old_slot_drains_its_connections_before_it_stops(host):
    host.release("R1")
    switched(host, "R1")
    host.release("R2")
    state = host.state()
    state["established"] = {host.sockets["a"]: 3}  # e.g. WebSockets on the old slot
    host.save(state)
    done = switched(host, "R2", drain=30)
    assert "draining 3 connection(s) of the old slot a" in done.stdout
    assert "drain time over" not in done.stdout  # they closed first
    calls = host.state()["calls"]
    looks = [i for i, c in enumerate(calls) if c[0] == "ss" and host.sockets["a"] in c]
    assert len(looks) >= 4 and looks[-1] < calls.index(["systemctl", "stop", host.units["a"]])


def test_drain_time_over_stops_the_old_slot_anyway(host):
    host.release("R1")
    switched(host, "R1")
    host.release("R2")
    state = host.state()
    state["established"] = {host.sockets["a"]: 10_000}
    host.save(state)
    done = switched(host, "R2", drain=0.5)
    assert "connection(s) still open on the old slot a; stopping it" in done.stdout
    assert not host.running("a")


# -- the same switch under supervisor (a fake supervisorctl instead of systemctl) -------------
# Each program is updated (supervisord rereads its file) before it starts; nothing is enabled or
# disabled (the boot program starts the live slot); the gate's proofs and failures hold.


@pytest.fixture
def sup(tmp_path):
    h = Host(tmp_path, manager="supervisor")
    yield h
    h.close()


def calls(host: Host) -> list[list[str]]:
    return [c for c in host.state()["calls"] if c[0] in ("supervisorctl", "systemctl")]


def test_a_switch_updates_and_starts_the_new_program_and_stops_the_old_one_after(sup):
    host = sup
    host.release("R1")
    switched(host, "R1")
    assert host.live_slot() == "a.sock" and host.running("a")
    host.release("R2")
    first = len(calls(host))
    done = switched(host, "R2")
    assert "healthy: HTTP 200 from djk-shop-web-b, release R2" in done.stdout
    assert host.live_slot() == "b.sock" and host.current() == "releases/R2"
    assert host.running("b") and not host.running("a")
    assert host.status("R2") == "live" and host.status("R1") == "previous"
    seen = calls(host)[first:]
    assert not [c for c in seen if c[0] == "systemctl"]  # no unit, no enable/disable
    update = seen.index(["supervisorctl", "update", "djk-shop-web-b"])
    start = seen.index(["supervisorctl", "start", "djk-shop-web-b"])
    stop_old = seen.index(["supervisorctl", "stop", "djk-shop-web-a"])
    assert update < start < stop_old


def test_a_release_that_fails_its_gate_is_stopped_with_its_log_and_the_old_serves(sup):
    host = sup
    host.release("R1")
    switched(host, "R1")
    host.release("R2", status=500)
    host.front.requests = 0
    done = host.run("switch", host.spec("R2"))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "HTTP 500: the app failed" in done.stderr and "R1 still serves" in done.stderr
    assert "log of djk-shop-web-b" in done.stderr  # supervisorctl tail
    assert host.live_slot() == "a.sock" and host.front.requests == 0
    assert host.running("a") and not host.running("b")


def test_a_program_that_dies_while_starting_fails_the_gate_at_once(sup):
    host = sup
    host.release("R1")
    switched(host, "R1")
    host.release("R2", status="exit")
    done = host.run("switch", host.spec("R2", gate={"timeout": 30}))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "djk-shop-web-b stopped while starting" in done.stderr, done.stderr
    assert host.running("a") and host.live_slot() == "a.sock"


def test_an_old_process_on_the_new_slots_socket_is_not_taken_for_it(sup):
    host = sup
    host.release("R1")
    switched(host, "R1")
    host.release("R2", status="nobind")
    squatter = host.squat("b")
    try:
        done = host.run("switch", host.spec("R2"))
    finally:
        squatter.terminate()
    assert done.returncode == 4, done.stdout + done.stderr
    assert "an old process answers there" in done.stderr
    assert host.live_slot() == "a.sock"


def test_host_venvs_go_when_no_release_of_any_site_links_them(tmp_path):
    import os
    import time

    from djk.tasks.agent import switch as S

    root = tmp_path / "srv"
    shared = root / ".kit" / "venvs"
    for key in ("used", "other-site", "old", "young"):
        (shared / key).mkdir(parents=True)
        (shared / key / ".djk-complete").write_text(key + "\n")
    old = time.time() - 2 * S.VENV_GRACE
    for key in ("used", "other-site", "old"):
        os.utime(shared / key / ".djk-complete", (old, old))
    for site, key in (("shop", "used"), ("blog", "other-site")):
        release = root / site / "releases" / "R1"
        release.mkdir(parents=True)
        (release / ".venv").symlink_to(shared / key)
    (root / "shop" / "venvs" / "legacy").mkdir(parents=True)  # a kit before host venvs
    S.prune_venvs(root / "shop")
    # another site's venv stays; one installed a moment ago for a deploy not yet staged too
    assert sorted(p.name for p in shared.iterdir()) == ["other-site", "used", "young"]
    assert not (root / "shop" / "venvs" / "legacy").exists()


def test_the_cause_of_a_failed_start_is_named_from_the_log():
    from djk.tasks.agent.switch import cause

    log = """[INFO] Booting worker with pid: 41
Traceback (most recent call last):
  File "/srv/djk/example/releases/R2/exampleproject/asgi.py", line 20, in <module>
    raise RuntimeError('broken release')
RuntimeError: broken release
[INFO] Worker exiting (pid: 41)
Traceback (most recent call last):
  File "/srv/djk/.kit/venvs/k/lib/python3.11/site-packages/gunicorn/arbiter.py", line 683
    raise HaltServer(reason, self.WORKER_BOOT_ERROR)
gunicorn.errors.HaltServer: <HaltServer 'Worker failed to boot.' 3>
"""
    assert cause(log) == "RuntimeError: broken release, in asgi.py line 20, in <module>"
    django = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "django.core.exceptions.ImproperlyConfigured: DATABASES is wrong\n[INFO] exiting\n"
    )
    assert cause(django) == (
        "django.core.exceptions.ImproperlyConfigured: DATABASES is wrong, in x.py line 1"
    )
    request = """ERROR django.request: Internal Server Error: /health/
Traceback (most recent call last):
  File "/srv/djk/shop/releases/R2/.venv/lib/python3.11/site-packages/django/core/handlers/exception.py", line 55, in inner
    response = get_response(request)
  File "/srv/djk/shop/releases/R2/pages/views.py", line 12, in health
    raise RuntimeError("health is broken")
RuntimeError: health is broken
- - [07/Dec/2026:11:00:00 +0000] "GET /health/ HTTP/1.1" 500 145
"""  # noqa: E501 (a traceback's line as Python writes it)
    assert cause(request) == "RuntimeError: health is broken, in views.py line 12, in health"
    assert cause("RuntimeError: not in a traceback\nall fine\n") == ""


# -- the one writer of statuses, `current` and nginx's reload (agent/release.py, system.py) ----


def command(host: Host, name: str, spec: dict) -> subprocess.CompletedProcess[str]:
    """An agent command that takes its JSON as the argument (engine/agent.run)."""
    env = {
        **os.environ,
        "PATH": f"{host.bin}:{os.environ['PATH']}",
        "FAKE_STATE": str(host.state_file),
    }
    return subprocess.run(
        [sys.executable, str(host.pyz), name, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_point_current_marks_the_release_live_and_the_one_before_previous(host):
    host.release("R1")
    host.release("R2")
    base = str(host.base)
    assert command(host, "point-current", {"base": base, "release": "R1"}).returncode == 0
    assert host.current() == "releases/R1" and host.status("R1") == "live"
    assert command(host, "point-current", {"base": base, "release": "R2"}).returncode == 0
    assert host.current() == "releases/R2"
    assert (host.status("R1"), host.status("R2")) == ("previous", "live")
    missing = command(host, "point-current", {"base": base, "release": "R9"})
    assert missing.returncode == 1 and "no release R9" in missing.stderr
    assert host.current() == "releases/R2"


def test_a_failed_migration_marks_only_a_staged_release_failed(host):
    host.release("R1")
    (host.base / "releases" / "R2").mkdir()  # as the stage step leaves it: no status yet
    base = str(host.base)
    command(host, "point-current", {"base": base, "release": "R1"})
    failed = {"status": "failed", "only_from": "staged"}
    for name in ("R1", "R2"):
        done = command(host, "release-status", {"base": base, "release": name, **failed})
        assert done.returncode == 0, done.stderr
    assert (host.status("R1"), host.status("R2")) == ("live", "failed")


def test_nginx_reload_validates_the_whole_configuration_first(host):
    done = command(host, "nginx-reload", {})
    assert done.returncode == 0, done.stderr
    calls = host.state()["calls"]
    assert calls[0] == ["nginx", "-t", "-q"]
    assert ["systemctl", "start", "nginx.service"] in calls  # the fake master is not running
    state = host.state()
    state["nginx_invalid"] = True
    host.save(state)
    refused = command(host, "nginx-reload", {})
    assert refused.returncode == 1 and "[emerg] invalid configuration" in refused.stderr
