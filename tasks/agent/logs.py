"""A site's logs as the host has them: journald for systemd units, files for supervisor programs
and nginx. `logs '<json>'` prints one line per log line — `<unit>\\t<epoch or ->\\t<text>`, or
with "json" an object: unit, source ("journald" or the file), time, message — the newest
`lines` of each source that exists on the host, those at or after `since`. With `follow` it
goes on printing new lines until its stdin closes (the run's lifeline, as for the lock keeper):
the control machine's Ctrl-C or a dropped connection ends it.

A source is {"unit": "web", "journal": [unit names]} or {"unit": "nginx", "files": [paths]}.
File lines carry their time in their text, in the formats of the programs the kit runs
(gunicorn, Celery, nginx); a line without one (a traceback's) has the time of the line before.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from calendar import timegm
from pathlib import Path

SYSTEMD_DIR = Path(os.environ.get("DJK_AGENT_SYSTEMD_DIR", "/etc/systemd/system"))
JOURNALCTL = os.environ.get("DJK_AGENT_JOURNALCTL", "journalctl")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}

# [2026-11-27 01:02:03 +0000] (gunicorn), [2026-11-27 01:02:03,123: (Celery, local time)
_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,]\d+)?(?: ?([+-]\d\d):?(\d\d))?"
)
# [27/Nov/2026:01:02:03 +0000] (nginx and gunicorn access logs)
_CLF = re.compile(r"\[(\d\d)/(\w{3})/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\]")
# 2026/11/27 01:02:03 [error] (nginx's error log, local time)
_NGINX_ERROR = re.compile(r"^(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) ")


def line_time(text: str) -> float | None:
    """The time a log line states near its start (epoch seconds), or None."""
    head = text[:120]
    found = _CLF.search(head)
    if found:
        day, month, year, hh, mm, ss, sign, oh, om = found.groups()
        if month not in _MONTHS:
            return None
        offset = (int(oh) * 3600 + int(om) * 60) * (1 if sign == "+" else -1)
        fields = (int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss))
        return timegm((*fields, 0, 0, 0)) - offset
    found = _NGINX_ERROR.match(head) or _ISO.search(head)
    if not found:
        return None
    parts = found.groups()
    numbers = tuple(int(p) for p in parts[:6])
    if len(parts) > 6 and parts[6] is not None:
        sign = -1 if parts[6].startswith("-") else 1
        offset = sign * (abs(int(parts[6])) * 3600 + int(parts[7]) * 60)
        return timegm((*numbers, 0, 0, 0)) - offset
    year, month, day, hour, minute, second = numbers
    return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))


def timed(lines: list[str]) -> list[tuple[float | None, str]]:
    """Each line with its time (a line without one has the time of the line before)."""
    found, last = [], None
    for text in lines:
        last = line_time(text) or last
        found.append((last, text))
    return found


def tail(path: Path, count: int, block: int = 65536, end: int | None = None) -> list[str]:
    """The last `count` lines of a file (of its first `end` bytes), read from the end."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        position = f.tell() if end is None else min(end, f.tell())
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:] if count else []


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.lock = threading.Lock()

    def emit(self, unit: str, when: float | None, text: str, source: str = "journald") -> None:
        if self.as_json:
            row = json.dumps({"unit": unit, "source": source, "time": when, "message": text})
        else:
            stamp = "-" if when is None else f"{when:.6f}"
            row = f"{unit}\t{stamp}\t{text}"
        with self.lock:
            sys.stdout.write(row + "\n")
            sys.stdout.flush()


def _journal_units(names: list[str]) -> list[str]:
    return [n for n in names if (SYSTEMD_DIR / n).exists()]


def _journal_args(units: list[str], lines: int, since: float | None, follow: bool) -> list[str]:
    args = [JOURNALCTL, "--no-pager", "--output=json", "--lines", str(lines)]
    for unit in units:
        args += ["--unit", unit]
    if since is not None:
        args += ["--since", f"@{int(since)}"]
    if follow:
        args.append("--follow")
    return args


def _journal_entry(raw: str) -> tuple[float | None, str]:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None, raw
    message = entry.get("MESSAGE", "")
    if isinstance(message, list):  # journald gives bytes that are not UTF-8 as a list
        message = bytes(message).decode("utf-8", "replace")
    stamp = entry.get("__REALTIME_TIMESTAMP")
    return (int(stamp) / 1e6 if stamp else None), str(message)


def read_journal(source: dict, spec: dict, out: Output, procs: list) -> None:
    units = _journal_units(source["journal"])
    if not units:
        return
    args = _journal_args(units, int(spec["lines"]), spec.get("since"), bool(spec.get("follow")))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(proc)
    assert proc.stdout is not None  # stdout=PIPE
    for raw in proc.stdout:
        when, text = _journal_entry(raw.rstrip("\n"))
        out.emit(source["unit"], when, text)
    proc.wait()


def read_file(source: dict, path: Path, spec: dict, out: Output, stop: threading.Event) -> None:
    if not path.is_file():
        return
    since = spec.get("since")
    # Where the newest lines end and following begins: a line written meanwhile is followed.
    end = path.stat().st_size
    rows = timed(tail(path, int(spec["lines"]) if since is None else 100000, end=end))
    if since is not None:
        rows = [r for r in rows if r[0] is not None and r[0] >= since][-int(spec["lines"]) :]
    for when, text in rows:
        out.emit(source["unit"], when, text, str(path))
    if spec.get("follow"):
        _follow_file(source["unit"], path, out, stop, rows[-1][0] if rows else None, end)


def _follow_file(
    unit: str, path: Path, out: Output, stop: threading.Event, last, start: int
) -> None:
    """New lines as they are written after `start`; a file rotated away (a new inode, or
    truncated) is read again from its start."""
    f = path.open("rb")
    f.seek(min(start, os.fstat(f.fileno()).st_size))
    inode, pending = os.fstat(f.fileno()).st_ino, b""
    try:
        while not stop.is_set():
            chunk = f.read()
            if chunk:
                pending += chunk
                *done, pending = pending.split(b"\n")
                for raw in done:
                    text = raw.decode("utf-8", "replace")
                    last = line_time(text) or last
                    out.emit(unit, last, text, str(path))
                continue
            try:
                now = os.stat(path)
            except OSError:
                now = None
            if now is not None and (now.st_ino != inode or now.st_size < f.tell()):
                f.close()
                f = path.open("rb")
                inode = os.fstat(f.fileno()).st_ino
                continue
            stop.wait(0.25)
    finally:
        f.close()


def logs(spec: dict) -> int:
    out = Output(bool(spec.get("json")))
    stop = threading.Event()
    procs: list = []
    threads = []
    for source in spec["sources"]:
        if "journal" in source:
            threads.append(threading.Thread(target=read_journal, args=(source, spec, out, procs)))
        for path in source.get("files", []):
            reader = threading.Thread(target=read_file, args=(source, Path(path), spec, out, stop))
            threads.append(reader)
    if not spec.get("follow"):
        # One source after the other: each one's lines together, in the order asked.
        for thread in threads:
            thread.start()
            thread.join()
        return 0
    for thread in threads:
        thread.daemon = True
        thread.start()
    sys.stdin.buffer.read()  # until the run lets go
    stop.set()
    for proc in procs:
        proc.terminate()
    return 0
