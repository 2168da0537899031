"""The health-gated switch of a site to a release, and the check through nginx of a split site.

`switch` starts the release in the idle gunicorn slot and gates it before any live request
reaches it: it must answer the health URL (2xx; see probe.healthy) and the kit proves the
answer is the new release's without asking the app: the answering socket belongs to the unit
started for it (its main process or a child of it, restarted in this run) and that process runs
in the release's directory. An old process on the slot's port fails the gate.

Then, with nginx on this host ("local"): the upstream file points at the new slot, `current` at
the release, nginx reloads gracefully and the release must answer through it as clients reach
it; on an app host behind nginx elsewhere ("app"): `current` and `.djk-slot` move. Only then
does the old slot stop (gracefully). Exit 0; 4: the release failed its gate, the old slot still
serves; 5: it failed through nginx, everything is switched back; 1: another failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from . import probe
from .system import (
    Failed,
    connections,
    cwd,
    descends_from,
    journal_tail,
    listeners,
    nginx_reload,
    point,
    read_link,
    systemctl,
    unit_state,
    write,
)

SLOTS = ("a", "b")


def say(text: str) -> None:
    print(text, flush=True)


def live_slot_of(upstream_text: str | None, slots: dict[str, int]) -> str | None:
    """The slot nginx's upstream file points at."""
    for line in (upstream_text or "").splitlines():
        for slot, port in slots.items():
            if line.strip() == f"server 127.0.0.1:{port};":
                return slot
    return None


def upstream_text(managed: str, port: int) -> str:
    return f"# {managed}\nserver 127.0.0.1:{port};\n"


class Site:
    """One switch's input, with the paths it touches."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.base = Path(spec["base"])
        self.want = spec["release"]
        # A switch names both slots; verify (nginx only) names none.
        self.slots: dict[str, int] = {s: int(p) for s, p in spec.get("slots", {}).items()}
        self.units: dict[str, str] = spec.get("units", {})
        self.gate: dict = {**spec["gate"], "release": self.want}
        link = read_link(self.base / "current")
        self.live = link.removeprefix("releases/") if link else ""

    def release_dir(self, release: str) -> Path:
        return self.base / "releases" / release

    def mark(self, release: str, status: str) -> None:
        if release and self.release_dir(release).is_dir():
            (self.release_dir(release) / ".djk-status").write_text(status + "\n")

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


def switch(spec: dict) -> int:
    site = Site(spec)
    local = spec["mode"] == "local"
    if local:
        upstream = Path(spec["upstream"])
        text = upstream.read_text() if upstream.is_file() else None
        active = live_slot_of(text, site.slots)
    else:
        slot_file = site.base / ".djk-slot"
        active = slot_file.read_text().strip() if slot_file.is_file() else None
        active = active if active in SLOTS else None
    nxt = "b" if active == "a" else "a"
    try:
        problem = start_next(site, nxt, spec)
    except Failed as exc:
        problem = str(exc)
    if problem:
        print(journal_tail(site.units[nxt]), file=sys.stderr, end="")
        systemctl("stop", site.units[nxt], check=False)
        site.mark_failed()
        print(
            f"release {site.want} failed its health check before the switch: {problem}; "
            f"{site.live or 'nothing'} still serves",
            file=sys.stderr,
        )
        return 4
    if local:
        problem = switch_nginx(site, nxt, spec)
        if problem:
            print(
                f"release {site.want} failed its health check through nginx: {problem}; "
                f"switched back to {site.live or 'nothing'}",
                file=sys.stderr,
            )
            return 5
    else:
        point(site.base / "current", f"releases/{site.want}")
        site.point_static("current", site.want)
        write(site.base / ".djk-slot", nxt + "\n")
    finish(site, active, nxt, spec)
    return 0


def start_next(site: Site, nxt: str, spec: dict) -> str | None:
    """The release in slot `nxt`, started and gated; the cause when it fails the gate."""
    unit, port = site.units[nxt], site.slots[nxt]
    systemctl("daemon-reload")
    slots = site.base / "slots"
    slots.mkdir(mode=0o750, exist_ok=True)
    if spec.get("group") and os.geteuid() == 0:
        shutil.chown(slots, "root", spec["group"])
    point(slots / nxt, f"../releases/{site.want}")
    before = unit_state(unit)
    systemctl("restart", unit, check=False)  # one that cannot start fails the gate, with its log
    bind = spec["bind"]
    host = f"[{bind}]" if ":" in bind else bind
    say(f"started release {site.want} in slot {nxt} ({host}:{port}); waiting for its health check")
    url = f"http://{host}:{port}{site.gate['path']}"
    return gate_new(site, url, unit, port, before)


def gate_new(site: Site, url: str, unit: str, port: int, before: dict) -> str | None:
    """Wait until the new slot answers healthy and the answer is proven to be its own."""
    gate = site.gate
    deadline = time.monotonic() + float(gate["timeout"])
    answer = probe.Answer(error="no answer yet")
    proof = ""
    while True:
        answer = probe.fetch(url, gate["host"], https_forwarded=bool(gate.get("https")))
        if probe.healthy(answer, gate):
            proof, fatal = prove(site, unit, port, before)
            if not proof:
                say(f"healthy: HTTP {answer.status} from {unit}, release {site.want}")
                return None
            if fatal:
                return proof
        state = unit_state(unit)
        if state.get("ActiveState") in ("failed", "inactive") or state.get("SubState") == (
            "auto-restart"
        ):
            return (
                f"{unit} stopped while starting ({state.get('ActiveState')} "
                f"{state.get('SubState')}); last answer: {probe.cause(answer, gate)}"
            )
        if time.monotonic() >= deadline:
            last = proof or probe.cause(answer, gate)
            return f"no healthy answer from {url} (Host: {gate['host']}) within " \
                f"{gate['timeout']}s: {last}"  # fmt: skip
        time.sleep(0.25)


def prove(site: Site, unit: str, port: int, before: dict) -> tuple[str, bool]:
    """('', _) when the answer on `port` can only come from the release just started in
    `unit`; else what is wrong and whether waiting cannot help."""
    state = unit_state(unit)
    main = int(state.get("MainPID") or 0)
    if main == 0:
        return f"{unit} has no main process yet", False
    if before.get("InvocationID") and state.get("InvocationID") == before.get("InvocationID"):
        return f"{unit} was not restarted", False
    holders = listeners(port)
    if not holders:
        return f"nothing is seen listening on port {port}", False
    foreign = sorted(p for p in holders if not descends_from(p, main))
    if foreign:
        return (
            f"port {port} is held by pid {foreign[0]}, not by {unit} (pid {main}): "
            "an old process answers there",
            True,
        )
    where = cwd(main)
    release = os.path.realpath(site.release_dir(site.want))
    if where is not None and os.path.realpath(where) != release:
        return f"{unit} (pid {main}) runs in {where}, not in release {site.want}", True
    return "", False


def switch_nginx(site: Site, nxt: str, spec: dict) -> str | None:
    """Point nginx and `current` at the new slot; check through nginx; on failure put both
    back and stop the new slot. Returns the cause of a failure."""
    upstream = Path(spec["upstream"])
    previous = upstream.read_text() if upstream.is_file() else None
    # Recorded first: if this run dies between the upstream write and the reload, the next one
    # reloads.
    pending = Path(spec["pending_file"])
    pending.parent.mkdir(parents=True, exist_ok=True)
    with pending.open("a") as f:
        f.write("reload:nginx.service\n")
    write(upstream, upstream_text(spec["managed"], site.slots[nxt]))
    point(site.base / "current", f"releases/{site.want}")
    static_before = site.static_current()
    site.point_static("current", site.want)
    try:
        nginx_reload()
        problem = through_nginx(site, spec["front"])
    except Failed as exc:
        problem = str(exc)
    if not problem:
        return None
    if previous is None:
        upstream.unlink(missing_ok=True)
    else:
        write(upstream, previous)
    if site.live:
        point(site.base / "current", f"releases/{site.live}")
    site.point_static("current", static_before)
    try:
        nginx_reload()
    except Failed as exc:
        print(f"reloading nginx with the previous upstream failed too: {exc}", file=sys.stderr)
    systemctl("stop", site.units[nxt], check=False)
    site.mark_failed()
    return problem


def through_nginx(site: Site, front: str) -> str | None:
    """The release answers healthy through nginx, as clients reach it."""
    gate = site.gate
    url = f"{front}{gate['path']}"
    deadline = time.monotonic() + float(gate["timeout"])
    while True:
        answer = probe.fetch(url, gate["host"])
        if probe.healthy(answer, gate):
            say(f"healthy through nginx: HTTP {answer.status}")
            return None
        if time.monotonic() >= deadline:
            return f"{url} (Host: {gate['host']}): {probe.cause(answer, gate)}"
        time.sleep(0.25)


def finish(site: Site, active: str | None, nxt: str, spec: dict) -> None:
    """Old slot stopped gracefully, statuses, releases and venvs no longer kept."""
    systemctl("enable", "--quiet", site.units[nxt])
    if active and active != nxt:
        systemctl("disable", "--quiet", site.units[active], check=False)
        if spec["mode"] == "local":
            drain(site.slots[active], float(spec.get("drain", 0)))
        systemctl("stop", site.units[active], check=False)
    site.mark(site.want, "live")
    if site.live and site.live != site.want:
        site.mark(site.live, spec["mark_old"])
    site.static_after_switch(site.live, spec["mark_old"] == "rolled-back")
    for release in spec.get("delete", []):
        shutil.rmtree(site.release_dir(release), ignore_errors=True)
        if site.static is not None:
            shutil.rmtree(site.static / release, ignore_errors=True)
    prune_venvs(site.base)
    say(f"release {site.want} is live in slot {nxt}")


def drain(port: int, seconds: float) -> None:
    """Before the old slot stops: its connections end by themselves (nginx's old workers finish
    their requests and leave; a WebSocket open on it lives on) for up to `seconds`. Whatever
    is left then gets gunicorn's graceful stop."""
    deadline = time.monotonic() + seconds
    left = connections(port)
    if left and seconds > 0:
        say(f"draining {left} connection(s) on port {port} for up to {seconds:.0f}s")
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = connections(port)
    if left and seconds > 0:
        say(f"drain time over: stopping the old slot with {left} connection(s) open")


def prune_venvs(base: Path) -> None:
    """Remove the virtualenvs no release links to any more."""
    used = {read_link(link) for link in base.glob("releases/*/.venv")}
    for venv in sorted(base.glob("venvs/*")):
        if venv.is_dir() and f"../../venvs/{venv.name}" not in used:
            shutil.rmtree(venv, ignore_errors=True)


def verify(spec: dict) -> int:
    """On the web host of a split site: nginx reloaded (a changed server block is due), the
    release answers through it, then `current` here points at it. Exit 0, or 1 with the cause."""
    site = Site(spec)
    try:
        nginx_reload()
        problem = through_nginx(site, spec["front"])
    except Failed as exc:
        problem = str(exc)
    if problem:
        print(f"release {site.want} does not answer through nginx: {problem}", file=sys.stderr)
        return 1
    point(site.base / "current", f"releases/{site.want}")
    site.static_after_switch(site.static_current(), bool(spec.get("rolled_back")))
    return 0
