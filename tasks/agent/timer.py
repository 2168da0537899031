"""A timer on a supervisor host (supervisor has none): `timer '<json>'` runs for as long as its
program does, waits for each time the schedule names and runs the job then.

The schedule is systemd's OnCalendar syntax, read by `systemd-analyze calendar` (the host has
systemd even when supervisor runs the sites), so a schedule means the same on both kinds of
host. The job runs in the release `current` points to at that moment, as this program's user
(the site user), with the site's env file and the release's venv first on PATH; its output
goes to the program's log with a line before and after. A run missed while the program was
down is not made up (systemd's Persistent= has no equivalent here).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from calendar import timegm

ANALYZE = os.environ.get("DJK_AGENT_SYSTEMD_ANALYZE", "systemd-analyze")
# "    Next elapse: Fri 2026-11-27 02:05:05 UTC"
_NEXT = re.compile(r"Next elapse:\s+\w+ (\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) UTC")

RUN = (
    'cd "$1" && set -a && . "$2" && . ./.djk-release.env && set +a && '
    'PATH="$PWD/.venv/bin:$PATH" && shift 2 && exec "$@"'
)


def next_elapse(schedule: str) -> float | None:
    """When the schedule next elapses (epoch seconds), as systemd computes it; None when it
    never will or systemd refuses it."""
    done = subprocess.run(
        [ANALYZE, "calendar", "--iterations=1", schedule],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
    )
    found = _NEXT.search(done.stdout)
    if done.returncode != 0 or not found:
        return None
    return float(timegm((*(int(g) for g in found.groups()), 0, 0, 0)))


def _say(job: str, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    print(f"[{stamp} +0000] timer {job}: {text}", flush=True)


def run_job(spec: dict) -> int:
    job, timeout = spec["job"], spec.get("timeout")
    try:
        release = os.path.basename(os.path.realpath(spec["current"]))
    except OSError:
        release = "?"
    _say(job, f"runs in {release}")
    began = time.monotonic()
    command = ["/bin/sh", "-c", RUN, "djk-timer", spec["current"], spec["env"], *spec["argv"]]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _say(job, f"timed out after {timeout} s")
        return 124
    _say(job, f"exit {rc} after {time.monotonic() - began:.1f} s")
    return rc


def timer(spec: dict) -> int:
    job = spec["job"]

    def stop(signum, frame) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    last = 0.0
    while True:
        due = next_elapse(spec["schedule"])
        if due is None:
            _say(job, f"systemd-analyze finds no next time in {spec['schedule']!r}")
            time.sleep(300)
            continue
        if due <= last:  # the same second as the run just done: ask again after it
            time.sleep(max(0.2, last + 1 - time.time()))
            continue
        while (left := due - time.time()) > 0:
            time.sleep(min(left, 30))  # short naps: a clock that jumps is noticed
        last = due
        run_job(spec)
        sys.stdout.flush()
