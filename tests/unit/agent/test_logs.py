"""The agent's log reader, run as shipped (the zipapp) against a fake journalctl on PATH and
real files: times read from the lines the kit's programs write (recorded samples), --since
applied to files and passed to journald, follow picking up new and rotated lines and ending
with its stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from calendar import timegm
from pathlib import Path

import pytest

from djk.tasks.agent import logs as A
from djk.tasks.engine import agent

GUNICORN_ERROR = "[2026-11-27 01:02:03 +0000] [812] [INFO] Booting worker with pid: 815"
GUNICORN_ACCESS = (
    '127.0.0.1 - - [27/Nov/2026:01:02:04 +0000] "GET /health/ HTTP/1.0" 200 54 "-" "curl/7.88.1"'
)
NGINX_ERROR = "2026/11/27 01:02:05 [error] 77#77: *1 connect() failed (111: Connection refused)"
CELERY = "[2026-11-27 01:02:06,123: INFO/MainProcess] Task shop.tasks.ping[1f] succeeded"


def utc(*fields: int) -> float:
    return float(timegm((*fields, 0, 0, 0)))


@pytest.fixture
def utc_host(monkeypatch):
    """Lines without a zone are the host's local time: UTC here, as on the test hosts."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_line_times_of_the_programs_the_kit_runs(utc_host):
    assert A.line_time(GUNICORN_ERROR) == utc(2026, 11, 27, 1, 2, 3)
    assert A.line_time(GUNICORN_ACCESS) == utc(2026, 11, 27, 1, 2, 4)
    assert A.line_time(NGINX_ERROR) == utc(2026, 11, 27, 1, 2, 5)
    assert A.line_time(CELERY) == utc(2026, 11, 27, 1, 2, 6)
    assert A.line_time("[2026-11-27 03:02:03 +0200] [1] [INFO] x") == utc(2026, 11, 27, 1, 2, 3)
    assert A.line_time('1.2.3.4 - - [27/Nov/2026:03:00:00 +0200] "GET /"') == utc(
        2026, 11, 27, 1, 0, 0
    )
    assert A.line_time("Traceback (most recent call last):") is None


def test_a_line_without_a_time_has_the_one_before():
    rows = A.timed(["Traceback (most recent call last):", GUNICORN_ERROR, '  File "x.py"'])
    assert [r[0] for r in rows] == [None, rows[1][0], rows[1][0]]


def test_tail_reads_the_last_lines_from_the_end(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(20000)))
    assert A.tail(log, 3, block=100) == ["line 19997", "line 19998", "line 19999"]
    assert A.tail(log, 0) == []
    (tmp_path / "short.log").write_text("only\n")
    assert A.tail(tmp_path / "short.log", 5) == ["only"]


class Host:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pyz = tmp / "agent.pyz"
        self.pyz.write_bytes(agent.archive())
        units = tmp / "systemd"
        units.mkdir()
        (units / "djk-shop-web-a.service").write_text("")
        self.calls = tmp / "calls"
        fake = tmp / "journalctl"
        # Prints two journald entries (a MESSAGE in bytes too) and records its arguments.
        fake.write_text(
            "#!/bin/sh\n"
            f'echo "$@" >> {self.calls}\n'
            """echo '{"__REALTIME_TIMESTAMP": "1795741323000000", "MESSAGE": "GET / 200"}'\n"""
            """echo '{"__REALTIME_TIMESTAMP": "1795741324000000", "MESSAGE": [104, 105]}'\n"""
            'case " $* " in *" --follow "*) exec sleep 60;; esac\n'
        )
        fake.chmod(0o755)
        self.env = {
            **os.environ,
            "TZ": "UTC",
            "DJK_AGENT_SYSTEMD_DIR": str(units),
            "DJK_AGENT_JOURNALCTL": str(fake),
        }

    def spec(self, sources: list[dict], **kw) -> str:
        return json.dumps({"sources": sources, "lines": 2, "since": None, "json": True, **kw})

    def run(self, spec: str) -> list[dict]:
        done = subprocess.run(
            [sys.executable, str(self.pyz), "logs", spec],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def popen(self, spec: str) -> subprocess.Popen:
        command = [sys.executable, str(self.pyz), "logs", spec]
        pipe = subprocess.PIPE
        return subprocess.Popen(command, env=self.env, stdin=pipe, stdout=pipe, text=True)


def line_of(proc: subprocess.Popen, seconds: float = 15) -> str:
    """The process's next output line; fails (rather than hangs) when none comes."""
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    assert found and found[0], f"no line within {seconds} s"
    return found[0]


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_journald_units_that_exist_newest_lines_since(host):
    web = {"unit": "web", "journal": ["djk-shop-web-a.service", "djk-shop-web-b.service"]}
    rows = host.run(host.spec([web], since=1795741000.5))
    assert rows == [
        {"unit": "web", "source": "journald", "time": 1795741323.0, "message": "GET / 200"},
        {"unit": "web", "source": "journald", "time": 1795741324.0, "message": "hi"},
    ]
    # Only the unit the host has; the instant as journald's @epoch.
    args = host.calls.read_text().split()
    assert args.count("--unit") == 1 and "djk-shop-web-a.service" in args
    assert args[args.index("--since") + 1] == "@1795741000"
    assert args[args.index("--lines") + 1] == "2"
    # A unit the host does not have is no source at all.
    assert host.run(host.spec([{"unit": "worker", "journal": ["djk-shop-worker.service"]}])) == []


def test_files_newest_lines_and_since(host, tmp_path):
    access = tmp_path / "djk-shop.access.log"
    access.write_text(
        '10.0.0.1 - - [27/Nov/2026:01:00:00 +0000] "GET /old HTTP/1.1" 200 1\n'
        '10.0.0.1 - - [27/Nov/2026:01:10:00 +0000] "GET /a HTTP/1.1" 200 1\n'
        '10.0.0.1 - - [27/Nov/2026:01:20:00 +0000] "GET /b HTTP/1.1" 200 1\n'
    )
    nginx = {"unit": "nginx", "files": [str(access), str(tmp_path / "missing.log")]}
    rows = host.run(host.spec([nginx]))
    assert [r["message"].split('"')[1] for r in rows] == ["GET /a HTTP/1.1", "GET /b HTTP/1.1"]
    assert rows[0]["source"] == str(access) and rows[0]["time"] == utc(2026, 11, 27, 1, 10, 0)
    since = host.run(host.spec([nginx], lines=10, since=utc(2026, 11, 27, 1, 5, 0)))
    assert [r["time"] for r in since] == [utc(2026, 11, 27, 1, 10, 0), utc(2026, 11, 27, 1, 20, 0)]


def test_follow_prints_new_and_rotated_lines_and_ends_with_its_stdin(host, tmp_path):
    log = tmp_path / "djk-shop-worker.log"
    log.write_text(CELERY + "\n")
    proc = host.popen(host.spec([{"unit": "worker", "files": [str(log)]}], follow=True))
    try:
        assert json.loads(line_of(proc))["message"] == CELERY
        with log.open("a") as f:
            f.write("after start\n")
        assert json.loads(line_of(proc))["message"] == "after start"
        log.rename(tmp_path / "djk-shop-worker.log.1")  # logrotate's move, then a new file
        log.write_text("in the new file\n")
        assert json.loads(line_of(proc))["message"] == "in the new file"
        proc.stdin.close()  # the run lets go
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_followed_journal_is_stopped_with_the_run(host):
    web = {"unit": "web", "journal": ["djk-shop-web-a.service"]}
    proc = host.popen(host.spec([web], follow=True))
    try:
        assert json.loads(line_of(proc))["message"] == "GET / 200"
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "--follow" in host.calls.read_text()
