"""The Django app of each site: user, directories, releases, dependencies, env file, units.

A deploy runs in three phases on every host: stage (everything up to a staged release), migrate
(once per deploy, on one host, before any switch) and switch (health-gated, see engine/switch.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from . import celery
from .engine import releases as R
from .engine import topology
from .engine.facts import Fact, file_text, path_state
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SLOTS, SitePaths
from .engine.python_env import Venv
from .engine.render import render
from .engine.steps import (
    Action,
    Context,
    Directory,
    File,
    MarkedCommand,
    Plan,
    Step,
    SystemUser,
    UnitStatus,
)
from .engine.switch import app_switch_script, live_slot, switch_script, verify_script
from .engine.tasks import run_steps, targets_task, user_error
from .engine.tree import tree_archive, tree_hash


def env_entries(
    site: Site, paths: SitePaths, broker_address: str = "127.0.0.1"
) -> list[tuple[str, str]]:
    """The env file's variables: derived ones first, then the inventory's, then the secrets."""
    origins = []
    hosts = []
    for domain in site.domains:
        hosts.append(domain[1:] if domain.startswith("*.") else domain)
        origins += [f"https://{domain}", f"http://{domain}"]
    entries = {
        "DJANGO_SETTINGS_MODULE": site.settings,
        "DJANGO_ALLOWED_HOSTS": ",".join(hosts),
        "DJANGO_CSRF_TRUSTED_ORIGINS": ",".join(origins),
        "DJANGO_STATIC_ROOT": paths.static,
        "DJANGO_DB_PATH": paths.db,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    broker = celery.broker_url(site, broker_address)
    if broker:
        entries["CELERY_BROKER_URL"] = broker
        entries["CELERY_RESULT_BACKEND"] = broker
    entries.update(site.env)
    entries.update({key: secret.reveal() for key, secret in site.secrets.items()})
    return list(entries.items())


def secret_keys(site: Site) -> tuple[str, ...]:
    """Masked in diffs: the site's secrets, and the broker URL (it may carry a password)."""
    keys = list(site.secrets)
    if site.celery is not None:
        keys += [k for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND") if k not in keys]
    return tuple(keys)


def manage(site: Site, paths: SitePaths, release_dir: str, args: str) -> str:
    """A manage.py command in a release, as the site user, with the site's env, never as root."""
    inner = (
        f"set -a; . {shlex.quote(paths.env)}; . ./.djk-release.env; set +a; "
        f"exec ./.venv/bin/python manage.py {args}"
    )
    return (
        f"cd {shlex.quote(release_dir)} && "
        f"runuser -u {shlex.quote(site.user)} -- /bin/sh -c {shlex.quote(inner)}"
    )


@dataclass(frozen=True)
class Build:
    """What this deploy wants for a site, computed once on the control machine."""

    site: Site
    release_id: str
    tree: str
    deps: str
    revision: str

    @property
    def key(self) -> str:
        return f"{self.tree[:16]}-{self.deps}"


def new_build(site: Site, now: float | None = None) -> Build:
    tree = tree_hash(site.source)
    revision = R.source_revision(site.source, tree)
    deps = Venv.key_for(site.requirements)
    return Build(site, R.new_release_id(revision, now), tree, deps, revision)


def live_release(ctx: Context, paths: SitePaths) -> str | None:
    """The release `current` points to on this host (from the facts), or None."""
    current = ctx.facts[f"stat:{paths.current}"]
    return current.target.removeprefix("releases/") if current and current.target else None


def wanted(ctx: Context, site: Site) -> str:
    return ctx.data["release"][site.name]


class Stage(Step):
    """A release directory for this deploy's source, unless the live release already has it."""

    def __init__(self, build: Build) -> None:
        self.build = build
        self.paths = SitePaths.of(build.site)
        self.id = f"stage:{build.site.name}"
        self.name = f"release {build.site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        current = self.paths.current
        return [
            path_state(current),
            file_text(f"{current}/.djk-tree"),
            path_state(f"{current}/.venv"),
        ]

    def plan(self, ctx: Context) -> Plan:
        b, paths = self.build, self.paths
        live = live_release(ctx, paths)
        live_tree = ctx.facts[f"text:{paths.current}/.djk-tree"]
        venv = ctx.facts[f"stat:{paths.current}/.venv"]
        live_deps = venv.target.rsplit("/", 1)[-1] if venv and venv.target else None
        releases = ctx.data.setdefault("release", {})
        ctx.data.setdefault("live", {})[b.site.name] = live
        if live and live_tree == b.tree and live_deps == b.deps:
            releases[b.site.name] = live
            ctx.data.setdefault("report", {}).setdefault("releases", {})[b.site.name] = live
            return Plan(reason=f"{live} is live with this source and dependency set")
        releases[b.site.name] = b.release_id
        ctx.data.setdefault("report", {}).setdefault("releases", {})[b.site.name] = b.release_id
        q = shlex.quote
        target = paths.release(b.release_id)
        new = f"{target}.djk-new"
        group = q(b.site.user)
        manifest = R.manifest(b.release_id, b.revision, b.tree, b.deps)
        script = f"""set -e
rm -rf {q(new)}
install -d -m 750 -o root -g {group} {q(new)}
tar -xzf - -C {q(new)} --no-same-owner --no-same-permissions
printf '%s\\n' {b.tree} > {q(new)}/.djk-tree
printf 'APP_RELEASE=%s\\n' {q(b.release_id)} > {q(new)}/.djk-release.env
printf '%s\\n' {q(manifest)} > {q(new)}/.djk-release.json
echo staged > {q(new)}/.djk-status
ln -sfn ../../venvs/{b.deps} {q(new)}/.venv
chown -R root:{group} {q(new)}
chmod -R u=rwX,g=rX,o= {q(new)}
mv -T {q(new)} {q(target)}
"""
        was = f"live {live}" if live else "no live release"
        return Plan(
            [
                Action(
                    f"stage {b.release_id} ({was})",
                    script,
                    stdin=lambda: tree_archive(b.site.source, b.tree),
                )
            ]
        )


class ReleaseCommand(MarkedCommand):
    """A manage.py command run in the wanted release, once per source + dependency set."""

    def __init__(
        self,
        site: Site,
        key: str,
        step_id: str,
        name: str,
        args: str,
        marker: str,
        progress: str,
        mark_failed: bool = False,
    ) -> None:
        super().__init__(step_id, name, "", marker, key, progress)
        self.site, self.args, self.mark_failed = site, args, mark_failed
        self.paths = SitePaths.of(site)

    def plan(self, ctx: Context) -> Plan:
        release_dir = self.paths.release(wanted(ctx, self.site))
        command = manage(self.site, self.paths, release_dir, self.args)
        if self.mark_failed:
            # A failed migration marks the release failed: it never goes live.
            status = shlex.quote(f"{release_dir}/.djk-status")
            command = (
                f'if ! ( {command} ); then\n  [ "$(cat {status})" = staged ] && '
                f"echo failed > {status}\n  exit 1\nfi"
            )
        self.script = command
        return super().plan(ctx)


class Switch(Step):
    """Health-gated switch to the wanted release (or a restart of the live one when its env,
    unit or dependencies changed); a no-op when the live slot runs the wanted release."""

    def __init__(
        self,
        site: Site,
        target: Callable[[Context], str] | None = None,
        mark_old: str = "previous",
        remote_bind: str | None = None,
    ) -> None:
        self.remote_bind = remote_bind  # set on app hosts whose nginx runs elsewhere
        self.site, self.paths = site, SitePaths.of(site)
        self.target = target or (lambda ctx: wanted(ctx, site))
        self.mark_old = mark_old
        self.unit_names = self.paths.web_units
        self.id = f"switch:{site.name}"
        self.name = f"switch {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        paths = self.paths
        return [
            path_state(paths.current),
            file_text(paths.upstream_conf),
            file_text(f"{paths.base}/.djk-slot"),
            *(path_state(paths.slot(slot)) for slot in SLOTS),
            Fact(
                f"releases:{self.site.name}",
                R.list_command(paths.base),
                R.parse_releases,
                default=[],
            ),
        ]

    def plan(self, ctx: Context) -> Plan:
        paths = self.paths
        live = live_release(ctx, paths)
        try:
            want = self.target(ctx)
        except LookupError as exc:  # e.g. no earlier release to roll back to
            return Plan(error=str(exc))
        ctx.data.setdefault("report", {}).setdefault("releases", {})[self.site.name] = want
        releases = ctx.facts[f"releases:{self.site.name}"]
        if self.remote_bind:
            slot = ctx.facts[f"text:{paths.base}/.djk-slot"]
            slot = slot if slot in SLOTS else None
        else:
            slot = live_slot(paths, ctx.facts[f"text:{paths.upstream_conf}"])
        restart = paths.cycle in ctx.pending
        if want == live and not restart and slot is not None:
            problems = self._drift(ctx, slot, want, releases)
            if not problems:
                unit = ctx.facts["units"][paths.web_unit(slot)]
                return Plan(reason=f"{live} is live in slot {slot} (pid {unit.main_pid})")
        else:
            problems = []
        if want != live:
            known = [r for r in releases if r.id != want]
            known.append(R.Release(want, "live"))
            if live:
                known = [r if r.id != live else R.Release(live, self.mark_old) for r in known]
            delete = R.cleanup(sorted(known, key=lambda r: r.id), want, self.site.keep_releases)
            why = f"switch {live or 'nothing'} -> {want}"
        else:
            delete = []
            reason = "env, unit or dependencies changed" if restart else "; ".join(problems)
            why = f"restart {want} ({reason or 'not running'})"
        if self.remote_bind:
            consumes = (paths.cycle, "daemon-reload")
            script = app_switch_script(
                paths,
                want,
                self.remote_bind,
                self.site.health_path,
                self.site.health_host,
                self.site.health_timeout,
                self.mark_old,
                delete,
            )
            return Plan([Action(why, script, progress=f"{why}: health check", consumes=consumes)])
        consumes = (paths.cycle, "reload:nginx.service", "daemon-reload")
        script = switch_script(
            paths,
            want,
            self.site.health_path,
            self.site.health_host,
            self.site.health_timeout,
            self.mark_old,
            delete,
            tls=self.site.tls is not None,
        )
        return Plan([Action(why, script, progress=f"{why}: health check", consumes=consumes)])

    def _drift(self, ctx: Context, slot: str, want: str, releases: list) -> list[str]:
        """What differs from "want is live in slot, alone": left by a run that was cut off."""
        paths, units = self.paths, ctx.facts["units"]
        problems = []
        link = ctx.facts[f"stat:{paths.slot(slot)}"]
        if link is None or link.target != f"../releases/{want}":
            problems.append(f"slot {slot} does not run {want}")
        unit = units.get(paths.web_unit(slot))
        if unit is None or not unit.running:
            problems.append(f"slot {slot} is not running")
        for other in SLOTS:
            state = units.get(paths.web_unit(other))
            if other != slot and state is not None and state.running:
                problems.append(f"slot {other} is still running")
        status = next((r.status for r in releases if r.id == want), None)
        if status != "live":
            problems.append(f"{want} is marked {status}")
        return problems


class Verify(Step):
    """On a web host of a site whose app runs on other hosts: after the app hosts switched,
    the wanted release answers through this nginx (then `current` here follows)."""

    def __init__(self, site: Site) -> None:
        self.site, self.paths = site, SitePaths.of(site)
        self.id = f"verify:{site.name}"
        self.name = f"verify {site.name} through nginx"

    def facts(self, diff: bool) -> list[Fact]:
        return [path_state(self.paths.current)]

    def plan(self, ctx: Context) -> Plan:
        live = live_release(ctx, self.paths)
        want = wanted(ctx, self.site)
        if want == live:
            return Plan(reason=f"{live} answers here")
        front = "https://127.0.0.1:443" if self.site.tls else "http://127.0.0.1:80"
        script = verify_script(
            self.paths,
            want,
            front,
            self.site.health_path,
            self.site.health_host,
            self.site.health_timeout,
        )
        return Plan(
            [Action(f"{want} answers through nginx", script, progress="health check through nginx")]
        )


def unit_files(
    site: Site, paths: SitePaths, bind: str = "127.0.0.1", allow: str = "127.0.0.1"
) -> list[Step]:
    return [
        File(
            f"/etc/systemd/system/{paths.web_unit(slot)}",
            render(
                "systemd/web.service.j2", site=site, paths=paths, slot=slot, bind=bind, allow=allow
            ),
            notify=("daemon-reload", paths.cycle),
            name=f"unit {paths.web_unit(slot)}",
        )
        for slot in SLOTS
    ]


def stage_steps(
    build: Build, inventory: Inventory | None = None, host: Host | None = None
) -> list[Step]:
    """Everything up to a staged release on a host, for the roles it has for the site."""
    site = build.site
    paths = SitePaths.of(site)
    cycle = (paths.cycle,)
    roles = topology.ROLES if host is None else topology.roles(host)
    broker = bind = allow = "127.0.0.1"
    if inventory is not None and host is not None:
        broker = topology.broker_address(inventory, site)
        bind = topology.bind_address(inventory, site, host)
        if topology.split(inventory, site):
            webs = topology.hosts_with(inventory, site, "web")
            allow = ",".join(h.address for h in webs) or "127.0.0.1"
    steps: list[Step] = [
        SystemUser(site.user, paths.base),
        Directory(paths.base, "root", site.user, "751"),
        Directory(paths.shared, site.user, site.user, "700"),
        Directory(paths.static, site.user, site.user, "755"),
        Directory(paths.releases, "root", site.user, "750"),
        Directory(paths.venvs, "root", site.user, "750"),
        Directory(paths.slots, "root", site.user, "750"),
        Venv(paths.venvs, site.requirements, group=site.user),
        File(
            paths.env,
            render("app/env.j2", entries=env_entries(site, paths, broker)),
            owner=site.user,
            group=site.user,
            mode="600",
            notify=(*cycle, *((celery.cycle(site),) if site.celery else ())),
            secret_keys=secret_keys(site),
            name=f"env file {paths.env}",
        ),
        Stage(build),
        ReleaseCommand(
            site,
            build.key,
            f"collectstatic:{site.name}",
            f"collectstatic {site.name}",
            "collectstatic --noinput",
            f"{paths.base}/.djk-collected",
            "collecting static files",
        ),
    ]
    if "app" in roles:
        steps += unit_files(site, paths, bind, allow)
    if "worker" in roles:
        steps += celery.unit_files(site)
    return steps


def migrate_step(build: Build) -> Step:
    site = build.site
    paths = SitePaths.of(site)
    return ReleaseCommand(
        site,
        build.key,
        f"migrate:{site.name}",
        f"migrate {site.name}",
        "migrate --noinput",
        f"{paths.shared}/.djk-migrated",
        "migrating",
        mark_failed=True,
    )


def sites_or_exit(inventory: Inventory, host: Host) -> list[Site]:
    sites = inventory.sites_on(host)
    if not sites:
        raise user_error(
            f"host {host.name!r} runs no site: add it to a site's `hosts` in "
            f"{inventory.path.name} (sites.<name>.hosts)"
        )
    return sites


def migrates_here(inventory: Inventory, site: Site, host: Host) -> bool:
    """Migrations run on the site's first app host (on every app host with "every")."""
    apps = [h.name for h in topology.hosts_with(inventory, site, "app")]
    return host.name in apps and (site.migrate_on == "every" or apps[0] == host.name)


@targets_task
def status(c, json_=False):
    """Show each site's live gunicorn slot; exits 1 where it is not running."""

    class LiveSlot(UnitStatus):
        def __init__(self, paths: SitePaths) -> None:
            super().__init__(paths.web_unit("a"))
            self.paths = paths
            self.unit_names = paths.web_units
            self.name = f"status {paths.name}"

        def facts(self, diff: bool) -> list[Fact]:
            return [file_text(self.paths.upstream_conf)]

        def plan(self, ctx: Context) -> Plan:
            slot = live_slot(self.paths, ctx.facts[f"text:{self.paths.upstream_conf}"])
            if slot is None:
                return Plan(error="not deployed")
            self.unit = self.paths.web_unit(slot)
            return super().plan(ctx)

    run_steps(
        c,
        lambda inventory, host: [
            LiveSlot(SitePaths.of(site)) for site in sites_or_exit(inventory, host)
        ],
        json_=json_,
    )
