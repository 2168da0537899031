"""Where and when a site's migrations run: once per site on its first app host (every app
host with migrate_on = "every"), after the backup, before any switch."""

from __future__ import annotations

from .. import database
from ..engine import topology
from ..engine.inventory import Host, Inventory, Site
from ..engine.layout import SitePaths, app_of
from .build import Build
from .commands import FreshMigrate, ReleaseCommand


def migrated_marker(site: Site) -> str:
    """What the migrate step writes on a migrating host once a release migrated the database."""
    return f"{SitePaths.of(site).shared}/.djk-migrated"


def migrate_marker(build: Build, inventory: Inventory) -> tuple[str, str]:
    """The migrate step's marker on a migrating host, and what it holds once this build has
    migrated the site's current database."""
    step = migrate_step(build, inventory)
    return step.marker, step.key


def fresh_migrate(build: Build, inventory: Inventory, host: Host) -> FreshMigrate | None:
    """On the host that migrates the site's database and holds it (its SQLite file, or its
    PostgreSQL server): what a prepare needs to migrate it too while it has no tables."""
    site = build.site
    if not (migrates_here(inventory, site, host) and database.held_by(inventory, site, host)):
        return None
    marker, key = migrate_marker(build, inventory)
    return FreshMigrate(marker, key)


def migrate_step(build: Build, inventory: Inventory) -> ReleaseCommand:
    return ReleaseCommand(
        build,
        f"migrate:{build.site.name}",
        f"migrate {build.site.name}",
        "migrate --noinput",
        migrated_marker(build.site),
        "migrating",
        mark_failed=True,
        # Another database (SQLite -> PostgreSQL, another db host) is migrated anew.
        scope=database.identity(inventory, build.site),
        failure_note=f"migrations of {build.site.name} failed; the database: "
        f"{database.describe(inventory, build.site)}; nothing was switched",
    )


def migrates_here(inventory: Inventory, site: Site, host: Host) -> bool:
    """Migrations run on the site's first app host (on every app host with "every")."""
    apps = [h.name for h in topology.hosts_with(inventory, site, "app")]
    every = app_of(site).migrate_on == "every"
    return host.name in apps and (every or apps[0] == host.name)
