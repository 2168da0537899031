"""Where a site lives on a host. One place, so templates, steps and tests agree."""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import Site

ROOT = "/srv/djk"


@dataclass(frozen=True)
class SitePaths:
    base: str
    src: str
    venv: str
    static: str
    shared: str
    env: str
    db: str
    nginx_conf: str
    web_unit: str

    @classmethod
    def of(cls, site: Site) -> SitePaths:
        base = f"{ROOT}/{site.name}"
        return cls(
            base=base,
            src=f"{base}/src",
            venv=f"{base}/venv",
            static=f"{base}/static",
            shared=f"{base}/shared",
            env=f"{base}/shared/env",
            db=f"{base}/shared/db.sqlite3",
            nginx_conf=f"/etc/nginx/sites-enabled/djk-site-{site.name}.conf",
            web_unit=f"djk-{site.name}-web.service",
        )


NGINX_DEFAULT_CONF = "/etc/nginx/sites-enabled/djk-00-default.conf"
DEBIAN_DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
