"""The switch: a site's web slots on an app host moved to the target release behind a health
gate (the host agent does it, agent/switch.py), and on a web host of a split site the check of
the release through nginx after it (Verify)."""

from __future__ import annotations

import shlex

from ..engine import agent, topology, values
from ..engine.component import HostRun
from ..engine.facts import Fact, Facts, Stat, Text, Unit
from ..engine.inventory import Host, Site
from ..engine.layout import SLOTS, SitePaths, app_of
from ..engine.steps import Action, Context, Plan, Step
from . import layer, store
from .outcome import ReleaseMove
from .target import Job, Target, live_release


class Switch(Step):
    """Health-gated switch to the target release (or a restart of the live one when its env,
    unit or dependencies changed); a no-op when the live slot runs the target release."""

    def __init__(
        self,
        site: Site,
        target: Target,
        mark_old: str = "previous",
        remote_bind: str | None = None,
        host: Host | None = None,
    ) -> None:
        self.remote_bind = remote_bind  # set on app hosts whose nginx runs elsewhere
        self.site, self.paths, self.app = site, SitePaths.of(site, host), app_of(site)
        self.target, self.mark_old = target, mark_old
        self.id = f"switch:{site.name}"
        self.name = f"switch {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        paths = self.paths
        return [
            Stat(paths.current),
            Stat(paths.live_socket),
            *(Stat(paths.slot(slot)) for slot in SLOTS),
            *(Unit(unit) for unit in paths.web_units),
            store.Releases(paths.base),
            *self.target.facts(),
        ]

    def plan(self, ctx: Context) -> Plan:
        paths, facts = self.paths, ctx.facts
        live = live_release(facts, paths)
        try:
            want = self.target.resolve(facts)
        except LookupError as exc:  # e.g. no earlier release to roll back to
            return Plan(error=str(exc))
        report = (ReleaseMove(self.site.name, live, want),)
        releases = facts[store.Releases(paths.base)]
        slot = current_slot(facts, paths)
        restart = paths.cycle in ctx.pending
        problems: list[str] = []
        if want == live and not restart and slot is not None:
            problems = self._drift(facts, slot, want, releases)
            if not problems:
                unit = facts[Unit(paths.web_unit(slot))]
                return Plan(
                    reason=f"{live} is live in slot {slot} (pid {unit.main_pid})", outcomes=report
                )
        if want != live:
            delete = retired(releases, want, live, self.mark_old, self.app.keep_releases)
            why = f"switch {live or 'nothing'} -> {want}"
        else:
            delete = []
            reason = "env, unit or dependencies changed" if restart else "; ".join(problems)
            why = f"restart {want} ({reason or 'not running'})"
        # nginx is reloaded only when its configuration changed in this run (then before the
        # check through it, so the release is checked as the run leaves nginx); a code deploy
        # never reloads it.
        reload = not self.remote_bind and "reload:nginx.service" in ctx.pending
        spec = {
            "mode": "app" if self.remote_bind else "local",
            "base": paths.base,
            "release": want,
            "sockets": {slot: paths.slot_socket(slot) for slot in SLOTS},
            "live": paths.live_socket,
            "units": {slot: paths.web_unit(slot) for slot in SLOTS},
            "manager": paths.manager,
            "group": self.site.user,
            "gate": gate(self.site),
            "front": front(self.site, self.remote_bind),
            "reload": reload,
            # Only when a unit file changed in this run (it costs ~0.15 s per switch).
            "daemon_reload": "daemon-reload" in ctx.pending,
            "mark_old": self.mark_old,
            "delete": delete,
            "static": paths.static,
            "drain": self.app.drain_timeout,
        }
        consumes: tuple[str, ...] = (paths.cycle, "daemon-reload")
        if reload:
            consumes += ("reload:nginx.service",)
        action = Action(
            why,
            agent.command("switch"),
            stdin=agent.payload(spec),
            progress=f"{why}: health check",
            consumes=consumes,
            echo=True,
        )
        return Plan([action], outcomes=report)

    def _drift(self, facts: Facts, slot: str, want: str, releases: list) -> list[str]:
        """What differs from "want is live in slot, alone": left by a run that was cut off."""
        paths = self.paths
        problems = []
        link = facts[Stat(paths.slot(slot))]
        if link is None or link.target != f"../releases/{want}":
            problems.append(f"slot {slot} does not run {want}")
        unit = facts[Unit(paths.web_unit(slot))]
        if unit is None or not unit.running:
            problems.append(f"slot {slot} is not running")
        for other in SLOTS:
            state = facts[Unit(paths.web_unit(other))]
            if other != slot and state is not None and state.running:
                problems.append(f"slot {other} is still running")
        status = next((r.status for r in releases if r.id == want), None)
        if status != "live":
            problems.append(f"{want} is marked {status}")
        return problems


def retired(releases: list, want: str, live: str | None, mark_old: str, keep: int) -> list[str]:
    """The releases to delete once `want` is live and `live` is marked `mark_old`."""
    known = [r for r in releases if r.id != want]
    known.append(store.Release(want, "live"))
    if live:
        known = [r if r.id != live else store.Release(live, mark_old) for r in known]
    return store.cleanup(sorted(known, key=lambda r: r.id), want, keep)


def current_slot(facts: Facts, paths: SitePaths) -> str | None:
    """The live slot: the one sockets/live.sock links to; None before the first switch."""
    link = facts[Stat(paths.live_socket)]
    target = link.target if link is not None else None
    return next((s for s in SLOTS if target == f"{s}.sock"), None)


def _uses_tls(site: Site):
    """Whether any component serves the site over HTTPS (then checks through nginx use it)."""
    return (getattr(part, "https", False) for part in site.parts.values())


def front(site: Site, remote_bind: str | None = None) -> str:
    """Where a switched release is checked as clients reach it: this host's nginx, or on an app
    host behind nginx elsewhere the forwarder nginx there connects to."""
    if remote_bind:
        return f"http://{values.url_host(remote_bind)}:{app_of(site).port}"
    return "https://127.0.0.1:443" if any(_uses_tls(site)) else "http://127.0.0.1:80"


def gate(site: Site) -> dict:
    """The health gate of the site's releases (agent/probe.py): the health URL with the site's
    Host, and X-Forwarded-Proto: https for a TLS site (nginx sends it; without it an app with
    SECURE_SSL_REDIRECT answers 301 to the slot). Without health_path, / is probed and a
    redirect that stays on the site's domains passes too."""
    app = app_of(site)
    return {
        "path": app.health_path or "/",
        "accept_redirect": app.health_path is None,
        "host": site.health_host,
        "domains": list(site.domains),
        "timeout": app.health_timeout,
        "expect_release": app.health_expect_release,
        "https": any(_uses_tls(site)),
    }


class Verify(Step):
    """On a web host of a site whose app runs on other hosts: after the app hosts switched,
    the target release answers through this nginx; then `current` here points at it (the next
    deploy compares with it), the statuses move as on an app host (a rollback here finds the
    same release to return to) and releases no longer kept go."""

    def __init__(self, site: Site, target: Target, mark_old: str = "previous") -> None:
        self.site, self.paths, self.target = site, SitePaths.of(site), target
        self.mark_old = mark_old  # rolled-back: only the release returned to serves static files
        self.marker = f"{self.paths.base}/.djk-verified"
        self.id = f"verify:{site.name}"
        self.name = f"verify {site.name} through nginx"

    def facts(self, diff: bool) -> list[Fact]:
        return [Text(self.marker), store.Releases(self.paths.base), *self.target.facts()]

    def plan(self, ctx: Context) -> Plan:
        try:
            want = self.target.resolve(ctx.facts)
        except LookupError as exc:
            return Plan(error=str(exc))
        if ctx.facts[Text(self.marker)] == want:
            return Plan(reason=f"{want} answers here")
        live = live_release(ctx.facts, self.paths)
        releases = ctx.facts[store.Releases(self.paths.base)]
        keep = app_of(self.site).keep_releases
        delete = retired(releases, want, live, self.mark_old, keep) if want != live else []
        # A reload only for a configuration this run changed: a code deploy reloads nothing.
        reload = "reload:nginx.service" in ctx.pending
        spec = {
            "base": self.paths.base,
            "release": want,
            "gate": gate(self.site),
            "front": front(self.site),
            "reload": reload,
            "static": self.paths.static,
            "mark_old": self.mark_old,
            "delete": delete,
        }
        script = agent.command("verify")
        script += f" && printf '%s\\n' {shlex.quote(want)} > {shlex.quote(self.marker)}"
        return Plan(
            [
                Action(
                    f"{want} answers through nginx",
                    script,
                    stdin=agent.payload(spec),
                    progress="health check through nginx",
                    echo=True,
                    consumes=("reload:nginx.service",) if reload else (),
                )
            ]
        )


# systemd's TCP-to-unix-socket forwarder (merged /usr: the same path on Debian 12 and 13), and


class LayerIn(Step):
    """The settings layer in the release a site switches to: a release staged before the kit
    wrote one (a rollback to it) gets it, so the env file's DJANGO_SETTINGS_MODULE imports."""

    def __init__(self, site: Site, target: Target) -> None:
        self.site, self.target = site, target
        self.paths = SitePaths.of(site)
        self.id = f"layer:{site.name}"
        self.name = f"settings layer {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [layer.Layered(self.paths.releases), *self.target.facts()]

    def plan(self, ctx: Context) -> Plan:
        try:
            want = self.target.resolve(ctx.facts)
        except LookupError:
            return Plan(reason="no target release (the switch says why)")
        if want in ctx.facts[layer.Layered(self.paths.releases)]:
            return Plan(reason=f"in {want}")
        q = shlex.quote
        path = f"{self.paths.release(want)}/{layer.FILE}"
        script = (
            f"test -d {q(self.paths.release(want))}\n"
            f"{layer.write(f'{path}.djk-new')}\n"
            f"chown root:{q(self.site.user)} {q(path)}.djk-new && chmod 640 {q(path)}.djk-new\n"
            f"mv -f {q(path)}.djk-new {q(path)}\n"
        )
        return Plan([Action(f"written into {want} (staged before the kit wrote one)", script)])


def switch_step(run: HostRun, job: Job, site: Site) -> Switch:
    remote = topology.bind_address(run.inventory, site, run.host)
    return Switch(
        site,
        target=job.target(site),
        mark_old=job.mark_old,
        remote_bind=remote if topology.split(run.inventory, site) else None,
        host=run.host,
    )
