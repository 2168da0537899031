"""Certificates from an ACME server (certbot, http-01 through the site's own nginx).

Until the first certificate exists a self-signed placeholder lets nginx load the HTTPS server;
certbot then fetches the real one through the webroot nginx serves, and its deploy hook (also
run by certbot's systemd timer on every renewal) installs it and reloads nginx.
"""

from __future__ import annotations

import shlex

from .engine.facts import Fact, path_state
from .engine.inventory import Site
from .engine.layout import SitePaths
from .engine.render import MANAGED
from .engine.steps import NGINX_RELOAD, Action, Context, Directory, File, Plan, Step

HOOK = "/etc/djk/tls/install-hook"
HOOK_TEXT = f"""#!/bin/sh
# {MANAGED}
# certbot deploy hook: install a site's new certificate where its nginx server reads it.
set -e
site=${{RENEWED_LINEAGE##*/djk-}}
install -m 644 "$RENEWED_LINEAGE/fullchain.pem" "/etc/djk/tls/$site/fullchain.pem"
install -m 600 "$RENEWED_LINEAGE/privkey.pem" "/etc/djk/tls/$site/privkey.pem"
nginx -t -q && systemctl reload nginx.service
"""


def live_dir(site: Site) -> str:
    return f"/etc/letsencrypt/live/djk-{site.name}"


class Placeholder(Step):
    """A self-signed certificate until the ACME one is installed (nginx needs some to start)."""

    def __init__(self, site: Site) -> None:
        self.site, self.paths = site, SitePaths.of(site)
        self.id = f"tls-placeholder:{site.name}"
        self.name = f"certificate placeholder {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [path_state(f"{self.paths.tls_dir}/fullchain.pem")]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[f"stat:{self.paths.tls_dir}/fullchain.pem"] is not None:
            return Plan(reason="a certificate is installed")
        d = shlex.quote(self.paths.tls_dir)
        name = shlex.quote(f"/CN={self.site.health_host}")
        script = (
            f"set -e\nopenssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj {name} "
            f"-keyout {d}/privkey.pem -out {d}/fullchain.pem 2>/dev/null\n"
            f"chmod 600 {d}/privkey.pem\n"
        )
        return Plan([Action("self-signed until ACME delivers", script)])


class Certificate(Step):
    """The ACME certificate covers every domain of the site and is the one nginx serves."""

    def __init__(self, site: Site) -> None:
        self.site, self.paths = site, SitePaths.of(site)
        self.id = f"acme:{site.name}"
        self.name = f"acme certificate {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        live = f"{live_dir(self.site)}/fullchain.pem"
        installed = f"{self.paths.tls_dir}/fullchain.pem"
        sans = f"openssl x509 -noout -ext subjectAltName -in {live}"
        return [
            Fact(f"acme-sans:{self.site.name}", sans, _parse_sans, default=set()),
            Fact(
                f"acme-same:{self.site.name}",
                f"cmp -s {live} {installed}",
                lambda rc, out: rc == 0,
                default=False,
            ),
        ]

    def plan(self, ctx: Context) -> Plan:
        tls = self.site.tls
        sans = ctx.facts[f"acme-sans:{self.site.name}"]
        same = ctx.facts[f"acme-same:{self.site.name}"]
        wanted = set(self.site.domains)
        if wanted <= sans and same:
            return Plan(reason=f"covers {', '.join(sorted(wanted))}")
        q = shlex.quote
        env = ""
        script = ["set -e"]
        if tls.ca_bundle:
            bundle = f"{self.paths.tls_dir}/acme-ca.pem"
            script.append(f"cat > {q(bundle)}")
            env = f"REQUESTS_CA_BUNDLE={q(bundle)} "
        # The server block with the challenge location must be live before certbot asks.
        script.append(f"( {NGINX_RELOAD}\n)")
        domains = " ".join(f"-d {q(d)}" for d in self.site.domains)
        script.append(
            f"{env}certbot certonly --non-interactive --agree-tos --no-eff-email "
            f"-m {q(tls.email)} --server {q(tls.server)} --webroot "
            f"-w {q(self.paths.acme_webroot)} --cert-name djk-{self.site.name} {domains} "
            f"--expand --keep-until-expiring --deploy-hook {HOOK}"
        )
        script.append(f"RENEWED_LINEAGE={q(live_dir(self.site))} {HOOK}")
        why = "request" if not sans else ("install" if wanted <= sans else "expand to new domains")
        return Plan(
            [
                Action(
                    f"{why} from {tls.server}",
                    "\n".join(script),
                    stdin=tls.ca_bundle.encode(),
                    progress="asking the ACME server",
                    consumes=("reload:nginx.service",),
                )
            ]
        )


def _parse_sans(rc: int, out: str) -> set[str]:
    if rc != 0:
        return set()
    return {
        part.strip()[4:]
        for part in out.replace("\n", ",").split(",")
        if part.strip().startswith("DNS:")
    }


def before_nginx(sites: list[Site]) -> list[Step]:
    acme = [s for s in sites if s.tls and s.tls.mode == "acme"]
    steps: list[Step] = []
    for site in acme:
        paths = SitePaths.of(site)
        steps += [Directory("/var/lib/djk/acme"), Directory(paths.acme_webroot), Placeholder(site)]
    if acme:
        steps.append(File(HOOK, HOOK_TEXT, mode="755", name="certbot deploy hook"))
    return steps


def after_nginx(sites: list[Site]) -> list[Step]:
    return [Certificate(s) for s in sites if s.tls and s.tls.mode == "acme"]
