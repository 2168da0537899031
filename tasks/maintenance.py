"""The maintenance page: `fab app.maintenance on|off --site S [--message TEXT]`.

While a site's page file exists on a web host (/var/lib/djk/maintenance/<site>.html, written
by `on`, removed by `off`), nginx answers every request of the site with HTTP 503, a
`Retry-After` header and that page — except requests from the host itself (the kit's checks
through nginx: deploys and rollbacks still prove their release), the site's `health_path` (a
monitor's), ACME challenges and the static files (the page may use them).
nginx looks for the file on each request: turning it on or off reloads nothing, and deploys and
rollbacks, which never touch the file, leave the state as it is. The page comes from the
template `nginx/maintenance.html.j2` (a team's `templates/` overrides it).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from . import tls
from .engine import topology
from .engine.audit import Says
from .engine.cli import (
    load_inventory,
    run_plans,
    site_hosts,
    site_named,
    targets_task,
    user_error,
)
from .engine.component import Component, HostRun, NginxPart, Phase, register
from .engine.facts import Fact, Facts, Stat
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths, app_of
from .engine.render import render
from .engine.status import StatusCheck, StatusPart
from .engine.steps import Absent, Action, Context, Directory, File, Plan, Step
from .release import Latest, live_release

PAGES = "/var/lib/djk/maintenance"
RETRY_AFTER = 300  # seconds: what the 503's Retry-After header tells clients and crawlers
STATES = ("on", "off")


def page_path(site: Site) -> str:
    return f"{PAGES}/{site.name}.html"


# nginx `if` at server level with only `set`/`return` in it: the safe use of `if`.
SNIPPET = """\
# Maintenance (fab app.maintenance): while {page} exists, 503 and the page, except for this
# host's own requests (the kit's checks), the health path, ACME challenges and static files.
set $djk_maintenance "";
if (-f {page}) {{ set $djk_maintenance "on"; }}
if ($remote_addr ~ "^(127\\.|::1$)") {{ set $djk_maintenance ""; }}
{health}if ($uri ~ "^/(\\.well-known/acme-challenge|static)/") {{ set $djk_maintenance ""; }}
if ($uri = /.djk-maintenance.html) {{ set $djk_maintenance ""; }}
if ($djk_maintenance) {{ return 503; }}
# To a URI, not a named location: nginx makes the request a GET on the way, so a POST gets the
# page with its 503 too (the static module answers 405 to a POST).
error_page 503 /.djk-maintenance.html;
location = /.djk-maintenance.html {{
    internal;
    root {pages};
    try_files /{name}.html =503;
    add_header Retry-After {retry} always;
    add_header Cache-Control "no-store" always;
{hsts}}}
"""


@dataclass(frozen=True)
class PageCheck:
    """`fab status`: whether the maintenance page is up (engine/status.py)."""

    path: str

    def facts(self) -> list[Fact]:
        return [Stat(self.path)]

    def read(self, facts: Facts, now: float) -> StatusPart:
        on = facts[Stat(self.path)] is not None
        return StatusPart("maintenance", on, [("maintenance", "ON" if on else "off")])


class MaintenanceComponent(Component):
    """No hosts.toml keys: every site's server block can show its maintenance page."""

    name = "maintenance"
    after = ("media",)  # the maintenance page before nginx
    roles = ("web",)

    def status(self, inventory: Inventory, site: Site, host: Host) -> list[StatusCheck]:
        return [PageCheck(page_path(site))] if "web" in host.role_set else []

    def nginx(self, inventory: Inventory, site: Site) -> NginxPart:
        path = app_of(site).health_path  # None: the kit probes / (from this host: it passes)
        health = f'if ($uri = {path}) {{ set $djk_maintenance ""; }}\n' if path else ""
        return NginxPart(
            server=[
                SNIPPET.format(
                    page=page_path(site),
                    health=health,
                    pages=PAGES,
                    name=site.name,
                    retry=RETRY_AFTER,
                    hsts=f"    {hsts}\n" if (hsts := tls.hsts_directive(site)) else "",
                )
            ]
        )

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        """`deploy --maintenance`: the page of each site the deploy moves to a new release,
        from the backup phase to the last one (the kit's own checks come from the host itself
        and pass)."""
        job = run.job
        if not run.options.maintenance or job is None or "web" not in run.host.role_set:
            return []
        sites = [s for s in run.sites if s.name in job.builds]
        if phase == Phase.BACKUP:
            return [DeployPage(run.inventory, s, Latest(job.builds[s.name])) for s in sites]
        if phase == Phase.CONTRACT:
            return [DeployPageOff(s) for s in sites]
        return []


DEPLOY_MESSAGE = "Back in a few minutes: we are updating the site."


def _flag(site: Site) -> str:
    """Beside a page a deploy put up: the deploy takes it down (a page turned on with
    `fab app.maintenance on` stays)."""
    return f"{PAGES}/{site.name}.deploy"


class DeployPage(Step):
    """`deploy --maintenance`: the page up while a site moves to a new release."""

    def __init__(self, inventory: Inventory, site: Site, target: Latest) -> None:
        self.site, self.target = site, target
        self.text = page(inventory, site, DEPLOY_MESSAGE)
        self.id = f"deploy-page:{site.name}"
        self.name = f"maintenance page {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [*self.target.facts(), Stat(page_path(self.site))]

    def plan(self, ctx: Context) -> Plan:
        want = self.target.resolve(ctx.facts)
        if want == live_release(ctx.facts, SitePaths.of(self.site)):
            return Plan(reason=f"{want} is live: no page")
        if ctx.facts[Stat(page_path(self.site))] is not None:
            return Plan(reason="already on (fab app.maintenance on): left on after the deploy")
        q = shlex.quote
        path = page_path(self.site)
        script = (
            f"install -d -m 755 {PAGES}\n: > {q(_flag(self.site))}\n"
            f"printf '%s' {q(self.text)} > {q(path)}.tmp && chmod 644 {q(path)}.tmp\n"
            f"mv -f {q(path)}.tmp {q(path)}\n"
        )
        return Plan([Action("on until the new release is live (503 + Retry-After)", script)])


class DeployPageOff(Step):
    """The page a deploy put up, taken down once the deploy is done."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.id = f"deploy-page-off:{site.name}"
        self.name = f"maintenance page {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Stat(_flag(self.site))]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[Stat(_flag(self.site))] is None:
            return Plan(reason="not put up by this deploy")
        q = shlex.quote
        script = f"rm -f {q(page_path(self.site))} {q(_flag(self.site))}"
        return Plan([Action("off", script)])


register(MaintenanceComponent())


def page(inventory: Inventory, site: Site, message: str) -> str:
    return render(
        "nginx/maintenance.html.j2",
        inventory.templates,
        site=site,
        message=message,
        retry_after=RETRY_AFTER,
    )


def steps(inventory: Inventory, site: Site, state: str, message: str) -> list[Step]:
    if state == "off":
        return [Absent(page_path(site), name=f"maintenance page {site.name}")]
    return [
        Directory(PAGES, "root", "root", "755"),
        File(
            page_path(site),
            page(inventory, site, message),
            name=f"maintenance page {site.name}",
        ),
    ]


@targets_task(
    help={
        "state": "on (answer 503 with the maintenance page) or off",
        "site": "the site (sites.<name> in hosts.toml)",
        "message": "text shown on the page (default: the template's)",
        "json_": "print the report as JSON",
        "quiet": "print only changes, failures and the recap",
    }
)
def maintenance(c, state, site=None, message="", json_=False, quiet=False):
    """Turn a site's maintenance page on or off on its web hosts (no nginx reload)."""
    inventory = load_inventory(c)
    if state not in STATES:
        raise user_error(f"maintenance takes `on` or `off`, not {state!r}")
    chosen = site_named(inventory, site)
    web = site_hosts(c, inventory, topology.hosts_with(inventory, chosen, "web"))
    run_plans(
        c,
        lambda inv, host: steps(inv, chosen, state, message),
        json_=json_,
        quiet=quiet,
        inventory=inventory,
        hosts=web,
        audit=Says({chosen.name: {"maintenance": state}}),
    )
