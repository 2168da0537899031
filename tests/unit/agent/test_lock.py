"""The deploy lock's keeper, run as shipped (the zipapp, in subprocesses) on a local lock
directory: a second run is told who holds the lock, the lock goes with the first run's stdin,
a keeper whose run is gone waits for that run's last commands, status and clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from djk.tasks.engine import agent
from djk.tasks.engine import lock as L


class Keepers:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pyz = tmp / "agent.pyz"
        self.pyz.write_bytes(agent.archive())
        self.env = {**os.environ, "DJK_AGENT_LOCK_DIR": str(tmp / "locks")}
        self.procs: list[subprocess.Popen] = []

    def keep(
        self,
        sites: list[str],
        wait: float = 0.0,
        run: str = "run-1",
        by: str = "alice",
        then: str | None = None,
    ) -> subprocess.Popen:
        spec = {
            "sites": sites,
            "wait": wait,
            "run": run,
            "info": {"by": by, "pid": 4242, "command": "fab deploy"},
        }
        if then is not None:
            spec["then"] = True
        proc = subprocess.Popen(
            [sys.executable, str(self.pyz), "lock-keep", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=then is None,
            env=self.env,
        )
        if then is not None:
            proc.stdin.write(L.script_head(then))
            proc.stdin.flush()
        self.procs.append(proc)
        return proc

    def run(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(self.pyz), command, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def keepers(tmp_path):
    k = Keepers(tmp_path)
    yield k
    k.close()


def test_a_second_run_is_told_who_holds_the_lock(keepers):
    first = keepers.keep(["shop"])
    assert first.stdout.readline().strip() == "LOCKED"
    second = keepers.keep(["blog", "shop"], wait=0.5, by="bob")
    line = second.stdout.readline().strip()
    assert second.wait(timeout=10) == 75
    word, site, info = line.split(" ", 2)
    assert (word, site) == ("BUSY", "shop")
    holder = json.loads(info)
    assert holder["by"] == "alice" and holder["command"] == "fab deploy"
    assert holder["keeper_pid"] == first.pid


def test_the_lock_goes_when_the_runs_stdin_closes(keepers):
    first = keepers.keep(["shop"])
    assert first.stdout.readline().strip() == "LOCKED"
    waiting = keepers.keep(["shop"], wait=20, run="run-2")
    time.sleep(0.5)
    assert waiting.poll() is None  # still waiting
    first.stdin.close()  # the run ended or its connection dropped
    assert first.wait(timeout=10) == 0
    assert waiting.stdout.readline().strip() == "LOCKED"


def test_a_keeper_waits_for_its_runs_last_commands(keepers):
    first = keepers.keep(["shop"], run="run-7")
    assert first.stdout.readline().strip() == "LOCKED"
    # A command of the run still working on the host when the connection dropped.
    straggler = subprocess.Popen(["sleep", "1.5"], env={**os.environ, "DJK_RUN": "run-7"})
    first.stdin.close()
    time.sleep(0.5)
    assert first.poll() is None  # it waits for the straggler
    status = json.loads(keepers.run("lock-status").stdout.splitlines()[0])
    assert status["site"] == "shop" and status["draining"] is True
    straggler.wait()
    assert first.wait(timeout=10) == 0
    assert keepers.run("lock-status").stdout == ""


def test_status_lists_held_locks_and_clear_ends_the_keeper(keepers):
    assert keepers.run("lock-status").stdout == ""  # no lock directory yet
    first = keepers.keep(["shop", "blog"])
    assert first.stdout.readline().strip() == "LOCKED"
    rows = [json.loads(line) for line in keepers.run("lock-status").stdout.splitlines()]
    assert sorted(r["site"] for r in rows) == ["blog", "shop"]
    assert all(r["by"] == "alice" and r["age"] >= 0 for r in rows)
    assert keepers.run("lock-clear", json.dumps({"site": "shop"})).returncode == 0
    first.wait(timeout=10)
    assert keepers.run("lock-status").stdout == ""


def test_a_keeper_runs_the_runs_first_script_once_it_holds_the_locks(keepers):
    script = (
        'echo "run=$DJK_RUN"; '
        # The lock is held while it runs: a second keeper is turned away.
        f"{sys.executable} {keepers.pyz} lock-status; "
        "echo oops >&2; exit 3"
    )
    first = keepers.keep(["shop"], run="run-9", then=script)
    counts = L.parse_locked(first.stdout.readline().decode())
    assert counts is not None, "no LOCKED line with counts"
    rc, out_size, err_size = counts
    out, err = first.stdout.read(out_size).decode(), first.stdout.read(err_size).decode()
    assert rc == 3 and err == "oops\n"
    assert out.startswith("run=run-9\n")
    assert json.loads(out.splitlines()[1])["site"] == "shop"
    # Still holding: the script's end is not the run's end.
    assert first.poll() is None
    first.stdin.close()
    assert first.wait(timeout=10) == 0


def test_the_first_script_runs_as_a_shell_would_run_it(keepers):
    # A pipeline whose reader stops early ends quietly (SIGPIPE at its default, not Python's
    # ignore), and a process the script leaves behind does not hold up the answer.
    script = "yes | head -n 2; sleep 30 & echo $!"
    first = keepers.keep(["shop"], run="run-shell", then=script)
    started = time.monotonic()
    counts = L.parse_locked(first.stdout.readline().decode())
    assert counts is not None and time.monotonic() - started < 20
    rc, out_size, err_size = counts
    out, err = first.stdout.read(out_size).decode(), first.stdout.read(err_size).decode()
    *said, left = out.splitlines()
    os.kill(int(left), 9)  # the keeper waits for the run's processes once its stdin closes
    assert (rc, said, err) == (0, ["y", "y"], "")
    first.stdin.close()
    assert first.wait(timeout=10) == 0


def test_parse_locked():
    assert L.parse_locked("LOCKED 0 12 0") == (0, 12, 0)
    assert L.parse_locked("LOCKED") is None
    assert L.parse_locked("BUSY shop {}") is None
    assert L.parse_locked("LOCKED 0 x 1") is None


def test_a_keeper_appends_the_audit_line_it_is_handed_as_the_run_lets_go(keepers, tmp_path):
    keepers.env["DJK_AGENT_AUDIT"] = str(tmp_path / "log" / "audit.jsonl")
    first = keepers.keep(["shop"])
    assert first.stdout.readline().strip() == "LOCKED"
    first.stdin.write('AUDIT {"result": "ok"}\nnot an audit line\n')
    first.stdin.close()
    # The run waits for this before closing its connection; the line is on disk by then.
    assert first.stdout.readline().strip() == "AUDITED"
    log = tmp_path / "log" / "audit.jsonl"
    assert log.read_text() == '{"result": "ok"}\n'
    assert first.wait(timeout=10) == 0
    assert oct(log.stat().st_mode & 0o777) == "0o600"
