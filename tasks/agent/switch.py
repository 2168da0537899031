"""The health-gated switch of a site to a release, and the check through nginx of a split site.

Each of a site's two gunicorn slots listens on its own unix socket (sockets/a.sock, b.sock);
sockets/live.sock links to the live one. nginx on this host ("local" mode), or the forwarder
that nginx on other hosts connects to ("app" mode), follows that link for each new connection.

`switch` starts the release in the idle slot and gates it before any live request can reach it
(nothing connects to the idle slot's socket but the probe): it must answer the health URL (2xx;
see probe.healthy) and the kit proves the answer is the new release's without asking the app:
the socket that answered was listen()ed (SO_PEERCRED) by the unit started for it (its main
process or a child of it, restarted in this run), which runs in the release's directory. An
old process still answering on the slot's socket is not taken for it.

Then live.sock, `current` and the static links move to it (renames: nginx is not reloaded), and
the release must answer as clients reach it (through nginx, or the forwarder). Only then does
the old slot drain (its connections close by themselves, up to the drain time) and stop
gracefully. Exit 0; 4: the release failed its gate, the old slot still serves; 5: it failed as
clients reach it, everything is switched back; 1: another failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from . import probe, procs, release
from .system import Failed, connections, cwd, descends_from, nginx_reload, point, read_link

SLOTS = ("a", "b")


def say(text: str) -> None:
    print(text, flush=True)


class Site:
    """One switch's input, with the paths it touches."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.base = Path(spec["base"])
        self.want = spec["release"]
        # A switch names both slots; verify (nginx only) names none.
        self.sockets: dict[str, str] = spec.get("sockets", {})
        self.units: dict[str, str] = spec.get("units", {})
        self.procs = procs.manager(spec.get("manager"))
        self.gate: dict = {**spec["gate"], "release": self.want}
        self.live = release.live(self.base)

    @property
    def live_link(self) -> Path:
        return Path(self.spec["live"])

    def live_slot(self) -> str | None:
        """The slot live.sock links to."""
        target = read_link(self.live_link)
        return next((s for s in SLOTS if target == f"{s}.sock"), None)

    def release_dir(self, release: str) -> Path:
        return self.base / "releases" / release

    def mark(self, name: str, status: str) -> None:
        release.mark(self.base, name, status)

    def mark_failed(self) -> None:
        if self.want != self.live:
            self.mark(self.want, "failed")

    # Static files: static/<release>/ per release; nginx tries static/current, then next (the
    # release being deployed), then previous (the one switched away from).

    @property
    def static(self) -> Path | None:
        return Path(self.spec["static"]) if self.spec.get("static") else None

    def static_current(self) -> str | None:
        return read_link(self.static / "current") if self.static else None

    def point_static(self, name: str, release: str | None) -> None:
        if self.static is None or not self.static.is_dir():
            return
        if release:
            point(self.static / name, release)
        else:
            (self.static / name).unlink(missing_ok=True)

    def static_after_switch(self, old: str | None, rolled_back: bool) -> None:
        """After the switch to `want` from `old`: previous is `old`, unless this was a rollback
        (then the release returned to is served alone); nothing is `next` any more."""
        self.point_static("current", self.want)
        keep = old if old and old != self.want and not rolled_back else None
        self.point_static("previous", keep)
        self.point_static("next", None)


def cause(log: str) -> str:
    """The exception of the last traceback in the app's log and where it was raised
    (`RuntimeError: broken release, in views.py line 12, in health`), gunicorn's own
    HaltServer aside: the last lines of a failed start are gunicorn shutting down, the cause
    is above them."""
    found, inside, frame = [], False, ""
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            inside, frame = True, ""
        elif inside and line.lstrip().startswith('File "'):
            frame = line.strip()
        elif inside and line.strip() and not line.startswith((" ", "\t")):
            inside = False
            if "HaltServer" not in line:
                found.append(line.strip() + _where(frame))
    return found[-1][:300] if found else ""


def _where(frame: str) -> str:
    """A traceback's `File "/srv/.../pages/views.py", line 12, in health` as the cause's tail:
    `, in views.py line 12, in health`."""
    parts = frame.split('"')
    if len(parts) < 3:
        return ""
    return f", in {os.path.basename(parts[1])}{parts[2].replace(',', '', 1)}"


def switch(spec: dict) -> int:
    site = Site(spec)
    active = site.live_slot()
    nxt = "b" if active == "a" else "a"
    try:
        problem = start_next(site, nxt, spec)
    except Failed as exc:
        problem = str(exc)
    if problem:
        log = site.procs.log_tail(site.units[nxt], 200)
        why = cause(log)
        if not why:  # the journal may take a moment to have the last lines
            time.sleep(0.5)
            log = site.procs.log_tail(site.units[nxt], 200)
            why = cause(log)
        print("".join(log.splitlines(keepends=True)[-20:]), file=sys.stderr, end="")
        site.procs.stop(site.units[nxt])
        site.mark_failed()
        # The app's own words first: what a person (or a webhook's reader) needs to know.
        said = f"the app said: {why} ({problem})" if why else problem
        print(
            f"release {site.want} failed its health check before the switch: {said}; "
            f"{site.live or 'nothing'} still serves",
            file=sys.stderr,
        )
        return 4
    problem = cut_over(site, active, nxt, spec)
    if problem:
        where = "through nginx" if spec["mode"] == "local" else "through the forwarder"
        print(
            f"release {site.want} failed its health check {where}: {problem}; "
            f"switched back to {site.live or 'nothing'}",
            file=sys.stderr,
        )
        return 5
    finish(site, active, nxt, spec)
    return 0


def start_next(site: Site, nxt: str, spec: dict) -> str | None:
    """The release in slot `nxt`, started and gated; the cause when it fails the gate."""
    unit, sock = site.units[nxt], site.sockets[nxt]
    site.procs.load(unit, spec.get("daemon_reload", True))
    slots = site.base / "slots"
    slots.mkdir(mode=0o750, exist_ok=True)
    if spec.get("group") and os.geteuid() == 0:
        shutil.chown(slots, "root", spec["group"])
    before = site.procs.state(unit)
    if before.up:
        # Left running by a run that was cut off (it may still serve WebSockets it had when it
        # was live): wait for its connections like any old slot before it is restarted.
        drain(sock, float(spec.get("drain", 0)), f"slot {nxt}, still running from an earlier run")
    point(slots / nxt, f"../releases/{site.want}")
    site.procs.restart(unit)  # one that cannot start fails the gate, with its log
    started = site.procs.state(unit)
    say(f"started release {site.want} in slot {nxt} ({sock}); waiting for its health check")
    return gate_new(site, sock, unit, before, started)


def gate_new(
    site: Site, sock: str, unit: str, before: procs.State, started: procs.State
) -> str | None:
    """Wait until the new slot answers healthy and the answer is proven to be its own."""
    gate = site.gate
    deadline = time.monotonic() + float(gate["timeout"])
    answer = probe.Answer(error="no answer yet")
    proof, told = "", set()
    errors = 0  # the new process's answers in a row that say the app itself failed
    while True:
        answer = probe.fetch(
            gate["path"], gate["host"], https_forwarded=bool(gate.get("https")), unix=sock
        )
        proof = ""
        if probe.app_failed(answer):
            # A starting app may answer 502-504 (a proxy's words), never 500: that is its code
            # raising. Three in a row from the new release itself, and waiting will not help.
            errors = errors + 1 if not prove(site, unit, sock, answer.peer, before)[0] else 0
            if errors >= probe.FAILED_IN_A_ROW:
                return (
                    f"HTTP {answer.status}: the app failed ({errors} answers in a row from "
                    f"{unit} at {gate['path']}, Host: {gate['host']}; not waited out)"
                )
        else:
            errors = 0
        if probe.healthy(answer, gate):
            proof, fatal = prove(site, unit, sock, answer.peer, before)
            if not proof:
                say(f"healthy: HTTP {answer.status} from {unit}, release {site.want}")
                return None
            if fatal:
                return proof
            if proof not in told:  # e.g. an old process still answers there: not taken
                told.add(proof)
                say(f"not yet: {proof}")
        state = site.procs.state(unit)
        # Down, or up again as another process (the manager restarted it after a crash).
        if not state.up or (started.token and state.token and state.token != started.token):
            return (
                f"{unit} stopped while starting ({state.detail}); "
                f"last answer: {proof or probe.cause(answer, gate)}"
            )
        if time.monotonic() >= deadline:
            last = proof or probe.cause(answer, gate)
            return (
                f"no healthy answer from {sock} {gate['path']} (Host: {gate['host']}) "
                f"within {gate['timeout']}s: {last}"
            )
        time.sleep(0.1)


def prove(site: Site, unit: str, sock: str, peer: int, before: procs.State) -> tuple[str, bool]:
    """('', _) when the answer can only have come from the release just started in `unit`:
    the socket that answered was listen()ed by (peer) the unit's main process or a child of
    it, the unit was restarted in this run, and it runs in the release's directory. Else what
    is wrong and whether waiting cannot help (gunicorn replaces a stale socket at its path when
    it binds, so an old process answering there is waited out until the deadline)."""
    state = site.procs.state(unit)
    main = state.pid
    if main == 0:
        return f"{unit} has no main process yet", False
    if before.token and state.token == before.token:
        return f"{unit} was not restarted", False
    if not peer or not descends_from(peer, main):
        return (
            f"{sock} is held by pid {peer or '?'}, not by {unit} (pid {main}): "
            "an old process answers there",
            False,
        )
    where = cwd(main)
    release = os.path.realpath(site.release_dir(site.want))
    if where is not None and os.path.realpath(where) != release:
        return f"{unit} (pid {main}) runs in {where}, not in release {site.want}", True
    return "", False


def cut_over(site: Site, active: str | None, nxt: str, spec: dict) -> str | None:
    """live.sock, `current` and the static files to the new slot's release; nginx reloaded
    only when this run changed its configuration; the release checked as clients reach it. On
    failure all of it goes back and the new slot stops. Returns the cause of a failure."""
    point(site.live_link, f"{nxt}.sock")
    release.point_current(site.base, site.want)
    static_before = site.static_current()
    site.point_static("current", site.want)
    try:
        if spec.get("reload"):
            nginx_reload()
        problem = through_front(site, spec["front"])
    except Failed as exc:
        problem = str(exc)
    if not problem:
        return None
    if active:
        point(site.live_link, f"{active}.sock")
    else:
        site.live_link.unlink(missing_ok=True)
    if site.live:
        release.point_current(site.base, site.live)
    site.point_static("current", static_before)
    site.procs.stop(site.units[nxt])
    site.mark_failed()
    return problem


def through_front(site: Site, front: str) -> str | None:
    """The release answers healthy as clients reach it (nginx here, or the forwarder)."""
    gate = site.gate
    url = f"{front}{gate['path']}"
    deadline = time.monotonic() + float(gate["timeout"])
    while True:
        answer = probe.fetch(url, gate["host"])
        if probe.healthy(answer, gate):
            say(f"healthy through {front}: HTTP {answer.status}")
            return None
        if time.monotonic() >= deadline:
            return f"{url} (Host: {gate['host']}): {probe.cause(answer, gate)}"
        time.sleep(0.25)


def finish(site: Site, active: str | None, nxt: str, spec: dict) -> None:
    """Old slot drained and stopped gracefully, statuses, releases and venvs no longer kept."""
    site.procs.boot(site.units[nxt], True)
    if active and active != nxt:
        site.procs.boot(site.units[active], False)
        drain(site.sockets[active], float(spec.get("drain", 0)), f"the old slot {active}")
        site.procs.stop(site.units[active])
    # The idle slot, stopped, takes its file as it is now (supervisor: it is listed from the
    # first deploy on, and a file changed while it ran is not left unread).
    idle = next(s for s in SLOTS if s != nxt)
    site.procs.load(site.units[idle], False)
    retire(site, site.live, spec)
    prune_venvs(site.base)
    say(f"release {site.want} is live in slot {nxt}")


# Connections opened through the old link just before it moved are in its socket's queue a
# moment later: the first look waits this long.
SETTLE = 0.1


def drain(sock: str, seconds: float, what: str) -> None:
    """Before a slot stops: its connections end by themselves (requests in flight finish; a
    WebSocket lives on) for up to `seconds`. Whatever is left then gets gunicorn's graceful
    stop."""
    time.sleep(SETTLE)
    deadline = time.monotonic() + seconds
    left = connections(sock)
    if left and seconds > 0:
        say(f"draining {left} connection(s) of {what} for up to {seconds:.0f}s")
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = connections(sock)
    if left:
        say(f"drain time over: {left} connection(s) still open on {what}; stopping it")


def retire(site: Site, old: str | None, spec: dict) -> None:
    """`want` marked live, `old` marked previous (or rolled-back), the static links after the
    switch, and the releases no longer kept deleted with their static files."""
    site.mark(site.want, "live")
    if old and old != site.want:
        site.mark(old, spec["mark_old"])
    for status in site.base.glob("releases/*/.djk-status"):
        # One left marked live by a run cut off before this point.
        if status.parent.name != site.want and status.read_text().strip() == "live":
            site.mark(status.parent.name, spec["mark_old"])
    site.static_after_switch(old, spec["mark_old"] == "rolled-back")
    for name in spec.get("delete", []):
        shutil.rmtree(site.release_dir(name), ignore_errors=True)
        if site.static is not None:
            shutil.rmtree(site.static / name, ignore_errors=True)


# A venv another site's deploy installed a moment ago may not be linked by a release yet (the
# deploy lock is per site): venvs younger than this are kept.
VENV_GRACE = 3600.0


def prune_venvs(base: Path) -> None:
    """Remove the virtualenvs no release links to any more: the site's own (kit versions
    before host-wide venvs) and the host's shared ones no release of any site uses."""
    used = {read_link(link) for link in base.glob("releases/*/.venv")}
    for venv in sorted(base.glob("venvs/*")):
        if venv.is_dir() and f"../../venvs/{venv.name}" not in used:
            shutil.rmtree(venv, ignore_errors=True)
    shared = base.parent / ".kit" / "venvs"
    if not shared.is_dir():
        return
    used = {read_link(link) for link in base.parent.glob("*/releases/*/.venv")}
    now = time.time()
    for venv in sorted(shared.iterdir()):
        marker = venv / ".djk-complete"
        young = marker.exists() and now - marker.stat().st_mtime < VENV_GRACE
        if venv.is_dir() and str(venv) not in used and not young:
            shutil.rmtree(venv, ignore_errors=True)


def verify(spec: dict) -> int:
    """On the web host of a split site: nginx reloaded when this run changed its configuration,
    the release answers through it, then `current` here points at it. Exit 0, or 1 with the
    cause."""
    site = Site(spec)
    try:
        if spec.get("reload"):
            nginx_reload()
        problem = through_front(site, spec["front"])
    except Failed as exc:
        problem = str(exc)
    if problem:
        print(f"release {site.want} does not answer through nginx: {problem}", file=sys.stderr)
        return 1
    release.point_current(site.base, site.want)
    retire(site, site.live, {"mark_old": "previous", **spec})
    return 0
