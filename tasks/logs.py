"""`fab app.logs`: a site's logs from its hosts — its processes (journald on systemd hosts,
supervisor's log files on supervisor hosts) and its own nginx access and error logs.

Each host reads its part with the agent (agent/logs.py), all hosts at once; every line is
printed with its host, site and unit. `--follow` keeps printing new lines until Ctrl-C; the
agent ends when the connection does (its stdin is the lifeline). `--since` takes an absolute
time (`2026-11-27 14:00`, `14:00`, `today`, `yesterday`) or an age (`90m`, `2h`, `1 day ago`),
turned into one instant on this machine and applied alike to journald and to the files.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from invoke import Exit

from .engine import agent, procs
from .engine.cli import load_inventory, site_hosts, site_named, targets_task, user_error
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths
from .engine.remote import Remote, RemoteError

UNITS = ("web", "worker", "beat", "flower", "nginx")
# The kit's processes behind each unit name.
ROLES = {"web": ("web-a", "web-b"), "worker": ("worker",), "beat": ("beat",), "flower": ("flower",)}
SUPERVISOR_LOGS = "/var/log/supervisor"

_AGE = re.compile(
    r"^-?\s*(\d+)\s*(s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?|w|weeks?)(?:\s+ago)?$"
)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def since_epoch(text: str, now: datetime) -> float:
    """--since as an instant (epoch seconds): ISO date [time] or HH:MM (this machine's local
    time, or UTC with a trailing Z), today, yesterday, or an age. ValueError otherwise."""
    value = text.strip().lower()
    if value == "now":
        return now.timestamp()
    if value in ("today", "yesterday"):
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return (day - timedelta(days=value == "yesterday")).timestamp()
    age = _AGE.match(value)
    if age:
        unit = age.group(2)
        unit = "m" if unit.startswith("mi") or unit == "m" else unit[0]
        return now.timestamp() - int(age.group(1)) * _SECONDS[unit]
    if re.fullmatch(r"\d{1,2}:\d\d(:\d\d)?", value):
        parts = [int(p) for p in value.split(":")] + [0]
        return now.replace(
            hour=parts[0], minute=parts[1], second=parts[2], microsecond=0
        ).timestamp()
    try:
        found = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: not a time (2026-11-27 14:00, 14:00, today, 90m, 2h, 1 day ago)"
        ) from None
    return found.timestamp()  # naive: this machine's local time


def sources(site: Site, host: Host, units: tuple[str, ...]) -> list[dict]:
    """What the host's agent reads for the site's `units` (those the host lacks it skips)."""
    paths = SitePaths.of(site, host)
    found = []
    for unit in units:
        if unit == "nginx":
            found.append(
                {"unit": "nginx", "files": [paths.nginx_access_log, paths.nginx_error_log]}
            )
            continue
        names = [paths.process(role) for role in ROLES[unit]]
        if procs.of(host).kind == procs.SUPERVISOR:
            found.append({"unit": unit, "files": [f"{SUPERVISOR_LOGS}/{n}.log" for n in names]})
        else:
            found.append({"unit": unit, "journal": names})
    return found


def _stamp(when: float | None) -> str:
    if when is None:
        return ""
    return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S") + " "


class Printer:
    """Whole lines, one at a time, from several hosts' threads."""

    def __init__(self, as_json: bool, width: int) -> None:
        self.as_json, self.width = as_json, width
        self.lock = threading.Lock()

    def line(self, host: str, site: str, raw: str) -> None:
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = {"unit": "?", "time": None, "message": raw}
        if self.as_json:
            text = json.dumps({"host": host, "site": site, **entry})
        else:
            # Journald's lines get their time here; a file's line states its own.
            when = entry.get("time") if entry.get("source") == "journald" else None
            where = f"{host:<{self.width}} | {site} {entry['unit']:<6}"
            text = f"{where} | {_stamp(when)}{entry['message']}"
        with self.lock:
            print(text, flush=True)


def _spec(site: Site, host: Host, units, lines: int, since, follow: bool) -> str:
    return json.dumps(
        {
            "sources": sources(site, host, units),
            "lines": lines,
            "since": since,
            "follow": follow,
            "json": True,
        }
    )


def _read(
    remote: Remote, site: Site, spec: str, printer: Printer, follow: bool, stop: threading.Event
) -> None:
    """The agent's lines for one site on one host (the agent put in place first when this
    version of it is not there)."""
    host = remote.host.name
    script = agent.if_installed("logs", spec)
    seen: list[str] = []

    def on_line(raw: str) -> None:
        if not seen and raw == agent.MISSING:
            seen.append(raw)
            return
        seen.append(raw)
        printer.line(host, site.name, raw)

    for _ in range(2):
        seen.clear()
        if follow:
            remote.stream(script, on_line, stop)
        else:
            done = remote.run(script, on_line=on_line)
            if not done.ok:
                raise RemoteError(done.stderr.strip()[-300:] or f"exit {done.rc}")
        if seen[:1] != [agent.MISSING]:
            return
        uploaded = remote.run(agent.upload_command(), stdin=agent.archive())
        if not uploaded.ok:
            raise RemoteError(f"cannot put the host agent in place: {uploaded.stderr.strip()}")


def _targets(c, inventory: Inventory, site_name: str | None) -> list[tuple[Host, list[Site]]]:
    if site_name is not None:
        site = site_named(inventory, site_name)
        hosts = site_hosts(c, inventory, [inventory.hosts[h] for h in site.hosts])
        return [(h, [site]) for h in hosts]
    from .engine.cli import target_hosts

    return [(h, list(inventory.sites_on(h))) for h in target_hosts(c, inventory)]


@targets_task(
    help={
        "site": "only this site (sites.<name> in hosts.toml); default: every site of the targets",
        "unit": "web, worker, beat, flower or nginx (repeatable; default: all of them)",
        "follow": "keep printing new lines until Ctrl-C",
        "lines": "the newest N lines of each unit (default 100)",
        "since": "lines at or after this time: 2026-11-27 14:00, 14:00, today, 90m, 2h ago",
        "json_": "one JSON object per line: host, site, unit, time, message",
    },
    iterable=["unit"],
)
def logs(c, site=None, unit=None, follow=False, lines=100, since=None, json_=False):
    """Show a site's logs (processes and nginx) from its hosts, each line naming its host."""
    units = tuple(unit or UNITS)
    bad = [u for u in units if u not in UNITS]
    if bad:
        raise user_error(f"--unit {bad[0]}: one of {', '.join(UNITS)}")
    try:
        count = int(lines)
        if count < 0:
            raise ValueError
    except ValueError:
        raise user_error(f"--lines {lines}: a number of lines") from None
    try:
        start = since_epoch(since, datetime.now()) if since else None
    except ValueError as exc:
        raise user_error(str(exc)) from None
    inventory = load_inventory(c)
    targets = [(h, sites) for h, sites in _targets(c, inventory, site) if sites]
    if not targets:
        raise user_error("no host of the site among the targets")
    printer = Printer(json_, max(8, *(len(h.name) for h, _ in targets)))
    stop = threading.Event()
    failed: list[str] = []

    def failure(host: Host, error: object) -> None:
        failed.append(host.name)
        print(f"{host.name:<{printer.width}} | failed  | {error}", file=sys.stderr, flush=True)

    def one(target: tuple[Host, list[Site]]) -> None:
        host, sites = target
        remote = Remote(host, c.config)
        try:
            remote.open()
            if not follow:
                for s in sites:
                    _read(
                        remote, s, _spec(s, host, units, count, start, False), printer, False, stop
                    )
                return
            # Following: each site's stream at once, until Ctrl-C (or the host goes away).
            with ThreadPoolExecutor(max_workers=len(sites)) as streams:
                ends = [
                    streams.submit(
                        _read,
                        remote,
                        s,
                        _spec(s, host, units, count, start, True),
                        printer,
                        True,
                        stop,
                    )
                    for s in sites
                ]
                for end in ends:
                    end.result()
        except RemoteError as exc:
            failure(host, exc)
        finally:
            remote.close()

    if not follow:
        for target in targets:  # host after host: each one's lines together
            one(target)
    else:
        pool = ThreadPoolExecutor(max_workers=len(targets))
        futures = [pool.submit(one, t) for t in targets]
        try:
            while not all(f.done() for f in futures):
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            pool.shutdown(wait=True)
    if failed:
        raise Exit(code=1)
