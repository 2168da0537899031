"""A run's events on the control machine: local hooks (with the DJK_* variables, a refused start,
a failed end reported), notifications to a real local HTTP server (JSON and Slack bodies, one
that fails, one that never answers — bounded by the timeout), the webhook's URL kept off the
hosts' env file and out of every message."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from djk.tasks import app, notify
from djk.tasks.engine import events
from djk.tasks.engine.audit import AuditLine
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.report import HostReport, StepResult
from djk.tasks.engine.schema import InventoryError

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


class Hooked:
    """An HTTP server that records what it is sent and answers `status`, or never answers."""

    def __init__(self, status: int = 200, hang: bool = False) -> None:
        self.received: list[dict] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers["Content-Length"])
                outer.received.append(json.loads(self.rfile.read(size)))
                if hang:
                    outer.release.wait(30)
                    return
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/t0ken-s3cret"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def inventory_with(tmp_path: Path, site_keys: dict, secrets: str):
    (tmp_path / "site.env").write_text("DJANGO_SECRET_KEY=k3y-value-0\n" + secrets)
    data = {
        "hosts": {"web1": {"address": "10.0.0.1"}},
        "sites": {
            "shop": {
                "domains": ["shop.test"],
                "hosts": ["web1"],
                "port": 8001,
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "env_file": "site.env",
                **site_keys,
            }
        },
    }
    return parse(data, tmp_path / "hosts.toml")


def announcer(inventory, lines: list) -> events.Announcer:
    site = inventory.sites["shop"]
    return events.Announcer(
        "deploy",
        inventory,
        [site],
        {"shop": ("web1",)},
        releases={"shop": "R2"},
        revisions={"shop": "abc123"},
        say=lambda status, text: lines.append((status, text)),
    )


def report(before: str, after: str, failed: bool = False) -> HostReport:
    line = {"sites": {"shop": {"before": before, "after": after}}}
    found = HostReport("web1", outcomes=[AuditLine(line)])
    if failed:
        found.steps.append(StepResult("switch shop", "failed", "health check: 502"))
    return found


def test_local_hooks_get_the_variables_in_the_inventorys_directory(tmp_path):
    keys = {
        "hooks": {
            "local_before": "env | grep ^DJK_ | sort > before.txt; pwd >> before.txt",
            "local_after": "env | grep ^DJK_ | sort > after.txt",
        }
    }
    lines: list = []
    run = announcer(inventory_with(tmp_path, keys, ""), lines)
    run.start()
    before = (tmp_path / "before.txt").read_text().splitlines()
    assert "DJK_SITE=shop" in before and "DJK_RELEASE=R2" in before
    assert "DJK_STATUS=started" in before and "DJK_PREVIOUS=" in before
    assert "DJK_REVISION=abc123" in before and "DJK_HOSTS=web1" in before
    assert any(ln.startswith("DJK_USER=") and "@" in ln for ln in before)
    assert before[-1] == str(tmp_path)
    assert run.finish([report("R1", "R2")]) == []
    after = (tmp_path / "after.txt").read_text().splitlines()
    assert "DJK_STATUS=succeeded" in after and "DJK_PREVIOUS=R1" in after
    assert "DJK_RELEASE=R2" in after


def test_a_failing_local_before_hook_refuses_the_run(tmp_path):
    keys = {"hooks": {"local_before": "echo not today; exit 3"}}
    lines: list = []
    run = announcer(inventory_with(tmp_path, keys, ""), lines)
    expected = r"\(sites.shop.hooks.local_before\): 'echo not today; exit 3' exited 3; nothing"
    with pytest.raises(events.Refused, match=expected):
        run.start()
    assert ("...", "  not today") in lines


def test_local_failure_hook_runs_after_a_failed_run_and_its_own_failure_is_reported(tmp_path):
    keys = {
        "hooks": {
            "local_failure": 'echo "$DJK_STATUS $DJK_RELEASE" > failure.txt; exit 1',
            "local_after": "touch after.txt",
        }
    }
    lines: list = []
    run = announcer(inventory_with(tmp_path, keys, ""), lines)
    run.start()
    problems = run.finish([report("R1", "R1", failed=True)])
    assert (tmp_path / "failure.txt").read_text() == "failed R2\n"  # the release it tried
    assert not (tmp_path / "after.txt").exists()
    assert problems and "hooks.local_failure" in problems[0]


@pytest.fixture
def hook():
    servers: list[Hooked] = []

    def make(**kw) -> Hooked:
        servers.append(Hooked(**kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_a_webhook_hears_the_start_and_the_end_as_json(tmp_path, hook):
    server = hook()
    inventory = inventory_with(tmp_path, {"notify": {}}, f"DEPLOY_WEBHOOK_URL={server.url}\n")
    lines: list = []
    run = announcer(inventory, lines)
    run.start()
    run.finish([report("R1", "R2")])
    started, ended = server.received
    assert started["status"] == "started" and started["release"] == "R2"
    assert ended["status"] == "succeeded" and ended["previous"] == "R1"
    assert ended["changed"] is True and ended["hosts"] == ["web1"]
    assert ended["revision"] == "abc123" and "@" in ended["by"] and ended["action"] == "deploy"
    assert ended["seconds"] >= 0 and ended["error"] == ""
    assert [s for s, _ in lines] == ["ok", "ok"]


def test_a_failed_deploy_and_the_slack_body(tmp_path, hook):
    server = hook()
    keys = {"notify": {"format": "slack", "url_secret": "TEAM_HOOK"}}
    inventory = inventory_with(tmp_path, keys, f"TEAM_HOOK={server.url}\n")
    run = announcer(inventory, [])
    run.start()
    run.finish([report("R1", "R1", failed=True)])
    text = server.received[-1]["text"]
    assert text.startswith("deploy of shop on web1 by ") and " failed: R2 (was R1)" in text
    assert "switch shop: health check: 502" in text


def test_a_webhook_that_never_answers_costs_at_most_its_timeout(tmp_path, hook):
    server = hook(hang=True)
    keys = {"notify": {"timeout": 1}}
    inventory = inventory_with(tmp_path, keys, f"DEPLOY_WEBHOOK_URL={server.url}\n")
    lines: list = []
    run = announcer(inventory, lines)
    began = time.monotonic()
    run.start()
    assert time.monotonic() - began < 0.5  # the start's request goes on in the background
    assert run.finish([report("R1", "R2")]) == []  # never a failure of the run
    assert time.monotonic() - began < 5
    failed = [text for status, text in lines if status == "failed"]
    assert len(failed) == 2 and all("no answer within 1 s" in t for t in failed)
    assert "goes on regardless" in failed[0]


def test_refused_and_erroring_webhooks_are_one_line_without_the_url(tmp_path, hook):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/t0ken-s3cret"
    for url, expected in ((closed, "unreachable"), (hook(status=500).url, "answered HTTP 500")):
        lines: list = []
        inventory = inventory_with(tmp_path, {"notify": {}}, f"DEPLOY_WEBHOOK_URL={url}\n")
        run = announcer(inventory, lines)
        run.start()
        assert run.finish([report("R1", "R2")]) == []
        failed = [text for status, text in lines if status == "failed"]
        assert len(failed) == 2 and expected in failed[1], failed
        assert all("t0ken-s3cret" not in text for _, text in lines)


def test_the_webhook_url_is_a_secret_that_stays_on_the_control_machine(tmp_path):
    url = "https://hooks.example.com/t0ken-s3cret"
    inventory = inventory_with(tmp_path, {"notify": {}}, f"DEPLOY_WEBHOOK_URL={url}\n")
    names = [name for name, _ in app.env_entries(inventory, inventory.sites["shop"])]
    assert "DEPLOY_WEBHOOK_URL" not in names and "DJANGO_SECRET_KEY" in names
    with pytest.raises(InventoryError, match="put DEPLOY_WEBHOOK_URL"):
        inventory_with(tmp_path, {"notify": {}}, "")
    with pytest.raises(InventoryError) as bad:
        inventory_with(tmp_path, {"notify": {}}, "DEPLOY_WEBHOOK_URL=ftp://t0ken-s3cret\n")
    assert "is not an http:// or https:// URL" in str(bad.value)
    assert "t0ken-s3cret" not in str(bad.value)


def test_the_body_of_a_restore_names_its_backup():
    class Site:
        name = "shop"

    event = events.RunEvent(
        "restore", "succeeded", Site(), None, ("db1",), detail="B1", by="alice@laptop", seconds=3.2
    )
    data = json.loads(notify.body(event, "json"))
    assert data["action"] == "restore" and data["detail"] == "B1" and data["kit"] == "djk"
    slack = json.loads(notify.body(event, "slack"))["text"]
    assert slack == "restore of shop from B1 on db1 by alice@laptop succeeded in 3 s"


def test_a_failure_reaches_the_webhook_led_by_its_cause_and_bounded():
    """The health gate's failure: twenty lines of the app's log, then the sentence naming the
    cause. The notification's error leads with that sentence, bounded."""
    log = "".join(f'10.0.0.1 - - "GET /health/ HTTP/1.1" 500 145 line {i}\n' for i in range(20))
    said = (
        "release R2 failed its health check before the switch: the app said: RuntimeError: "
        "health is broken, in views.py line 12, in health (HTTP 500: the app failed (3 answers "
        "in a row from djk-shop-web-b.service at /health/, Host: shop.test; not waited out)); "
        "R1 still serves"
    )
    detail = f"switch shop to R2: exit 4: {log}{said}"
    failed = [
        HostReport(f"web{n}", [StepResult("switch shop", "failed", detail)]) for n in range(1, 9)
    ]
    error = events._errors(failed)
    assert error.startswith(
        "web1: switch shop: release R2 failed its health check before the switch: the app said: "
        "RuntimeError: health is broken, in views.py line 12, in health (HTTP 500"
    )
    assert len(error) <= events.ERRORS_LIMIT and error.endswith("…")
    lost = [HostReport("web1", [], error="cannot connect to deploy@10.0.0.1: timed out")]
    assert events._errors(lost) == "web1: cannot connect to deploy@10.0.0.1: timed out"
