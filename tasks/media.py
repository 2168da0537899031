"""User uploads: `[sites.<name>.media]`.

The site's MEDIA_ROOT is /srv/djk/<site>/media (or `path`, a filesystem the site's hosts share):
outside every release, so deploys, rollbacks and release cleanup never touch it. The site user
owns it and alone writes there; its group is www-data, read-only, so nginx serves `url` (default
/media/) straight from it — files only, nothing there reaches the app or runs — with
`X-Content-Type-Options: nosniff`. Other sites' users cannot enter it (mode 2750: the setgid
bit gives every file and directory the app creates there the www-data group). The app learns
both from DJANGO_MEDIA_ROOT and DJANGO_MEDIA_URL in its env file.

One host writing and serving is the default; when several would (more than one app host, or
web hosts apart from the app), `path` must name a shared filesystem mounted on all of them —
else two hosts would each keep half of the uploads. Its keys: KEYS below
(docs/configuration.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import tls
from .engine import topology, values
from .engine.component import Component, HostRun, NginxPart, Phase, register
from .engine.inventory import Inventory, Site
from .engine.keys import HOST_PATH, Derived, Key, Keys, Kind
from .engine.layout import SitePaths
from .engine.schema import InventoryError
from .engine.secrets import Secret
from .engine.steps import Directory, Step


@dataclass(frozen=True)
class Media:
    url: str  # ends with /
    path: str  # MEDIA_ROOT on every host of the site
    shared: bool  # `path` was given: a filesystem the hosts share


LOCATION = """\
# Uploads: files nginx serves itself from MEDIA_ROOT; nothing here goes to the app.
location ^~ {url} {{
    alias {path}/;
    add_header X-Content-Type-Options nosniff always;
{hsts}}}
"""


def _media_url(value: str) -> str:
    values.url_path(value)
    if not value.endswith("/") or value == "/" or value.startswith("/static/"):
        raise ValueError(f"{values.show(value)} must end with / (not / nor under /static/)")
    return value


MEDIA_URL = Kind(
    "media URL",
    str,
    "a URL path ending with /, not / itself nor under /static/",
    _media_url,
    samples=("/media/", "/uploads/"),
    edges=("/media", "/", "/static/media/", "media/"),
)
KEYS = Keys(
    Media,
    (
        Key("url", MEDIA_URL, "/media/", "MEDIA_URL: where nginx serves the uploads"),
        Key(
            "path",
            HOST_PATH,
            Derived(lambda r: f"{SitePaths.of(r.the_site()).base}/media", "/srv/djk/<site>/media"),
            "MEDIA_ROOT on every host of the site; with several hosts, a filesystem they share",
        ),
    ),
    derive={"shared": lambda r: "path" in r.given},
    help="Uploads: MEDIA_ROOT and MEDIA_URL, served by nginx; the table alone turns it on.",
)


class MediaComponent(Component):
    name = "media"
    after = ("timers",)  # media before nginx serves it
    table = "media"
    roles = ("app", "web")

    keys = KEYS

    def check(self, inventory: Inventory) -> None:
        for site in inventory.sites.values():
            media = site.part(Media)
            if media is None or media.shared:
                continue
            app = [h.name for h in topology.hosts_with(inventory, site, "app")]
            web = [h.name for h in topology.hosts_with(inventory, site, "web")]
            if len(app) > 1 or set(web) - set(app):
                raise InventoryError(
                    inventory.path,
                    f"sites.{site.name}.media.path",
                    f"uploads would be written or served on several hosts (app: "
                    f"{', '.join(app)}; web: {', '.join(web)}): set `path` to a filesystem "
                    "they all mount",
                )

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        media = site.part(Media)
        if media is None:
            return {}
        return {"DJANGO_MEDIA_ROOT": media.path, "DJANGO_MEDIA_URL": media.url}

    def nginx(self, inventory: Inventory, site: Site) -> NginxPart:
        media = site.part(Media)
        if media is None:
            return NginxPart()
        hsts = tls.hsts_directive(site)
        hsts = f"    {hsts}\n" if hsts else ""
        block = LOCATION.format(url=media.url, path=media.path, hsts=hsts)
        return NginxPart(server=[block])

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        if phase != Phase.STAGE or not self.runs_on(run.host):
            return []
        return [
            # The site user writes; www-data (nginx) reads; nobody else enters.
            Directory(media.path, site.user, "www-data", "2750")
            for site in run.sites
            if (media := site.part(Media)) is not None
        ]


register(MediaComponent())
