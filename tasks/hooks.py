"""A team's own commands around a deploy: `[sites.<name>.hooks]`.

On the hosts (as the site user, in the new release, with the site's env file, the release's
venv first on PATH):
- `before_switch`: after the migrations, before any host switches. One that fails (or runs
  past `timeout`) stops the deploy like a failed health check: no host switches, the live
  release keeps serving.
- `after_switch`: once every host has switched. One that fails marks the run failed and is
  reported; nothing switches back.
Each runs on every app host of the site, or on its first app host only (`run_on = "one"`,
like the migrations), and only when the deploy brings a new release: a deploy with nothing
new runs none.

On the control machine (in the directory of hosts.toml, with this machine's environment):
- `local_before`: before any host is touched; when it fails nothing is.
- `local_after`: after a deploy that succeeded; `local_failure`: after one that failed.
Their failure after the run is reported (and fails fab) but changes nothing on the hosts.

Every hook gets DJK_SITE, DJK_RELEASE, DJK_PREVIOUS, DJK_REVISION, DJK_HOSTS (comma-separated),
DJK_USER (who deploys: user@machine), DJK_STATUS (started, switching, switched, succeeded,
failed) and DJK_ACTION (deploy) in its environment. The table's keys: KEYS below
(docs/configuration.md).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass

from . import release
from .engine import audit, events, topology, values
from .engine.component import Component, HostRun, Phase, register
from .engine.events import RunEvent, Say
from .engine.facts import Fact
from .engine.inventory import Inventory, Site
from .engine.keys import COMMANDS, Key, Keys, choice, integer
from .engine.layout import SitePaths
from .engine.steps import Action, Context, Plan, Step
from .release import store

HOST_HOOKS = ("before_switch", "after_switch")
LOCAL_HOOKS = ("local_before", "local_after", "local_failure")
TIMED_OUT = 124  # timeout(1)'s status


@dataclass(frozen=True)
class Hooks:
    before_switch: tuple[str, ...] = ()
    after_switch: tuple[str, ...] = ()
    run_on: str = "every"
    timeout: int = 300
    local_before: tuple[str, ...] = ()
    local_after: tuple[str, ...] = ()
    local_failure: tuple[str, ...] = ()


def hook_script(site: Site, release: str, command: str, env: dict[str, str], timeout: int) -> str:
    """Shell run as root: the command as the site user in the release, with the site's env
    file, the release's venv first on PATH and the DJK_* variables; bounded by `timeout`."""
    paths = SitePaths.of(site)
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(env.items()))
    inner = (
        f"set -a; . {shlex.quote(paths.env)}; . ./.djk-release.env; set +a; "
        f'PATH="$PWD/.venv/bin:$PATH"; {exports}exec /bin/sh -c "$1"'
    )
    return (
        f"cd {shlex.quote(paths.release(release))}\n"
        f"timeout --kill-after=10 {int(timeout)} runuser -u {shlex.quote(site.user)} -- "
        f"/bin/sh -c {shlex.quote(inner)} hook {shlex.quote(command)} 2>&1\n"
        f"status=$?\n"
        f'[ $status -ne {TIMED_OUT} ] || echo "timed out after {int(timeout)} s" >&2\n'
        f"exit $status"
    )


class Hook(Step):
    """The site's before_switch or after_switch commands on this host, when the deploy brings
    a new release."""

    def __init__(self, run: HostRun, site: Site, when: str) -> None:
        self.build = run.builds[site.name]
        self.site, self.when = site, when
        self.paths = SitePaths.of(site)
        self.hooks = site.need(Hooks)
        # The site's hosts this deploy touches.
        self.hosts = tuple(h for h in run.options.targets if h in site.hosts)
        self.id = f"hook:{when}:{site.name}"
        self.name = f"hook {when} {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [*release.Latest(self.build).facts(), store.Releases(self.paths.base)]

    def plan(self, ctx: Context) -> Plan:
        live = release.live_release(ctx.facts, self.paths)
        new = self.build.release_id
        if self.when == "before_switch":
            if release.Latest(self.build).resolve(ctx.facts) == live:
                return Plan(reason="no new release to switch to")
            previous, status = live or "", "switching"
        else:
            if live != new:
                return Plan(reason="no switch in this run")
            releases = ctx.facts[store.Releases(self.paths.base)]
            olds = [r.id for r in releases if r.status == "previous"]
            previous, status = (max(olds) if olds else ""), "switched"
        env = {
            "DJK_ACTION": "deploy",
            "DJK_SITE": self.site.name,
            "DJK_RELEASE": new,
            "DJK_PREVIOUS": previous,
            "DJK_REVISION": self.build.revision,
            "DJK_HOSTS": ",".join(self.hosts),
            "DJK_USER": audit.who(),
            "DJK_STATUS": status,
        }
        return Plan(
            [
                Action(
                    f"run {values.show(command, 80)}",
                    hook_script(self.site, new, command, env, self.hooks.timeout),
                    progress=f"hook {self.when}",
                    echo=True,
                )
                for command in getattr(self.hooks, self.when)
            ]
        )


def runs_here(inventory: Inventory, site: Site, run: HostRun) -> bool:
    apps = [h.name for h in topology.hosts_with(inventory, site, "app")]
    hooks = site.need(Hooks)
    if hooks.run_on == "one":
        return bool(apps) and apps[0] == run.host.name
    return run.host.name in apps


def run_local(commands: tuple[str, ...], event: RunEvent, say: Say, timeout: int) -> str:
    """The local hooks of one kind, in the inventory's directory: "" or what failed."""
    env = {**os.environ, **event.env}
    for command in commands:
        say("...", f"hook {event.site.name}: {command}")
        try:
            done = subprocess.run(
                command,
                shell=True,
                cwd=event.inventory.path.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return f"{values.show(command, 80)} timed out after {timeout} s"
        for line in (done.stdout + done.stderr).splitlines():
            say("...", f"  {line}")
        if done.returncode != 0:
            return f"{values.show(command, 80)} exited {done.returncode}"
    return ""


KEYS = Keys(
    Hooks,
    (
        Key(
            "before_switch",
            COMMANDS,
            (),
            "on the app hosts, in the new release, after the migrations, before any host switches "
            "(one that fails stops the deploy)",
        ),
        Key("after_switch", COMMANDS, (), "on the app hosts, once every host has switched"),
        Key(
            "local_before",
            COMMANDS,
            (),
            "on the control machine before any host is touched (one that fails stops it)",
        ),
        Key("local_after", COMMANDS, (), "on the control machine after a deploy that succeeded"),
        Key("local_failure", COMMANDS, (), "on the control machine when a deploy fails"),
        Key(
            "run_on",
            choice("every", "one"),
            "every",
            "host hooks on every app host or on the site's first one",
        ),
        Key("timeout", integer(1, 86400, "seconds"), 300, "how long one hook may run"),
    ),
    help="A team's own commands around a deploy, with DJK_SITE, DJK_RELEASE, DJK_STATUS, ... in "
    "their environment.",
)


class HooksComponent(Component):
    name = "hooks"
    after = ("multidomain",)  # the team's hooks after everything else
    table = "hooks"

    keys = KEYS

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        # A deploy's (run.builds): a rollback or restore runs no hook.
        when = {Phase.MIGRATE: "before_switch", Phase.VERIFY: "after_switch"}.get(phase)
        if when is None or not run.builds:
            return []
        return [
            Hook(run, site, when)
            for site in run.sites
            if (hooks := site.part(Hooks)) is not None
            and getattr(hooks, when)
            and site.name in run.builds
            and runs_here(run.inventory, site, run)
        ]

    def on_event(self, event: RunEvent, say: Say):
        hooks = event.site.part(Hooks)
        if hooks is None or event.action != "deploy":
            return None
        kind = {
            events.STARTED: "local_before",
            events.SUCCEEDED: "local_after",
            events.FAILED: "local_failure",
        }[event.status]
        commands = getattr(hooks, kind)
        if not commands:
            return None
        failed = run_local(commands, event, say, hooks.timeout)
        if not failed:
            return None
        where = f"site {event.site.name} (sites.{event.site.name}.hooks.{kind})"
        if event.status == events.STARTED:
            raise events.Refused(f"{where}: {failed}; nothing was changed")
        say("failed", f"{where}: {failed}")
        raise events.Failed(f"{where}: {failed}")


register(HooksComponent())
