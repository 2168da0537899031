"""Certificates from an ACME server (certbot, http-01 through the site's own nginx).

Until the first certificate exists a self-signed placeholder lets nginx load the HTTPS server;
certbot then fetches the real one through the webroot nginx serves, and its deploy hook (also
run by certbot's systemd timer on every renewal) installs it and reloads nginx.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from .engine import agent, values
from .engine.agent import AGENT_DIR, PYTHON
from .engine.component import Component, NginxPart, register
from .engine.facts import Fact, Facts, Stat
from .engine.inventory import Host, Inventory, Site
from .engine.keys import (
    BOOL,
    EMAIL,
    HTTPS_URL,
    Key,
    Keys,
    Kind,
    Reading,
    Rule,
    choice,
    read_local_path,
)
from .engine.layout import SitePaths
from .engine.render import MANAGED
from .engine.secrets import Secret
from .engine.status import StatusCheck, StatusPart, age
from .engine.steps import Action, Context, Directory, File, Plan, Step

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Tls:
    """HTTPS for a site: certificate files given (mode "files"), or from an ACME server with
    certbot over http-01 (mode "acme"), renewed by certbot's timer."""

    mode: str = "files"
    cert: str = ""  # "files": PEM text of the chain
    key: Secret | None = None  # "files": PEM text of the private key
    hsts: bool = False
    email: str = ""  # "acme": the account's contact
    server: str = LETS_ENCRYPT  # "acme": the directory URL
    ca_bundle: str = ""  # "acme": PEM the host trusts for the ACME server (test servers)
    https: ClassVar[bool] = True  # the site is served over HTTPS (health checks go that way)


HOOK = "/etc/djk/tls/install-hook"
HOOK_TEXT = f"""#!/bin/sh
# {MANAGED}
# certbot deploy hook: install a site's new certificate where its nginx server reads it.
set -e
site=${{RENEWED_LINEAGE##*/djk-}}
install -m 644 "$RENEWED_LINEAGE/fullchain.pem" "/etc/djk/tls/$site/fullchain.pem"
install -m 600 "$RENEWED_LINEAGE/privkey.pem" "/etc/djk/tls/$site/privkey.pem"
# The newest host agent reloads nginx (validated first), as every reload the kit does.
f=$(ls -t {AGENT_DIR}/agent-*.pyz | head -n 1)
exec {PYTHON} "$f" nginx-reload '{{}}'
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
        return [Stat(f"{self.paths.tls_dir}/fullchain.pem")]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[Stat(f"{self.paths.tls_dir}/fullchain.pem")] is not None:
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
        return [AcmeNames(self.site.name), AcmeInstalled(self.site.name, self.paths.tls_dir)]

    def plan(self, ctx: Context) -> Plan:
        tls = self.site.need(Tls)
        sans = ctx.facts[AcmeNames(self.site.name)]
        same = ctx.facts[AcmeInstalled(self.site.name, self.paths.tls_dir)]
        wanted = set(self.site.domains)
        if wanted <= sans and same:
            return Plan(reason=f"covers {', '.join(sorted(wanted))}")
        q = shlex.quote
        env = ""
        script = ["set -e", agent.receive()]
        if tls.ca_bundle:
            bundle = f"{self.paths.tls_dir}/acme-ca.pem"
            script.append(f"cat > {q(bundle)}")
            env = f"REQUESTS_CA_BUNDLE={q(bundle)} "
        # The server block with the challenge location must be live before certbot asks.
        script.append(agent.run("nginx-reload", {}))
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
                    stdin=agent.carried_head() + tls.ca_bundle.encode(),
                    progress="asking the ACME server",
                    consumes=("reload:nginx.service",),
                )
            ]
        )


@dataclass(frozen=True)
class AcmeNames(Fact[set]):
    """The DNS names certbot's certificate for the site covers (empty when there is none)."""

    site: str
    default: ClassVar[Any] = set()

    def from_data(self, raw: Any) -> set:
        return set(raw)

    def command(self) -> str:
        live = f"/etc/letsencrypt/live/djk-{self.site}/fullchain.pem"
        return f"openssl x509 -noout -ext subjectAltName -in {live}"

    def parse(self, rc: int, out: str) -> set[str]:
        if rc != 0:
            return set()
        return {
            part.strip()[4:]
            for part in out.replace("\n", ",").split(",")
            if part.strip().startswith("DNS:")
        }


@dataclass(frozen=True)
class AcmeInstalled(Fact[bool]):
    """Whether the certificate nginx serves is certbot's current one."""

    site: str
    tls_dir: str
    default: ClassVar[Any] = False

    def command(self) -> str:
        live = f"/etc/letsencrypt/live/djk-{self.site}/fullchain.pem"
        return f"cmp -s {live} {self.tls_dir}/fullchain.pem"

    def parse(self, rc: int, out: str) -> bool:
        return rc == 0


def files(site: Site, tls: Tls) -> list[File]:
    """Given certificate files, validated with nginx's configuration; the key never in a diff."""
    if tls.mode != "files":
        return []
    paths = SitePaths.of(site)
    return [
        File(f"{paths.tls_dir}/fullchain.pem", tls.cert, name=f"certificate {site.name}"),
        File(
            f"{paths.tls_dir}/privkey.pem",
            tls.key.reveal() if tls.key is not None else "",
            mode="600",
            name=f"private key {site.name}",
            secret_content=True,
        ),
    ]


def before_nginx(site: Site, tls: Tls) -> list[Step]:
    paths = SitePaths.of(site)
    steps: list[Step] = [
        Directory("/etc/djk"),
        Directory("/etc/djk/tls"),
        Directory(paths.tls_dir, mode="700"),
    ]
    if tls.mode == "acme":
        steps += [
            Directory("/var/lib/djk/acme"),
            Directory(paths.acme_webroot),
            Placeholder(site),
            File(HOOK, HOOK_TEXT, mode="755", name="certbot deploy hook"),
        ]
    return steps


def _read_pem(r: Reading, key: Key) -> str | Secret:
    """The PEM text of a file on the control machine; a private key as a Secret."""
    marker = "PRIVATE KEY" if key.kind is PEM_KEY else "CERTIFICATE"
    file = read_local_path(r, key)
    if file is None:
        return key.default
    text = r.table.read_text(key.name, file, limit=PEM_LIMIT)
    if f"-----BEGIN {marker}-----" not in text and f" {marker}-----" not in text:
        r.fail(key.name, f"{values.show_path(file)} holds no PEM {marker.lower()}")
    if marker != "PRIVATE KEY" and "PRIVATE KEY-----" in text:
        # It would be uploaded world-readable and shown in diffs: the key has its own setting.
        r.fail(
            key.name,
            f"{values.show_path(file)} also holds a private key: "
            f"give the key as `key`, not in `{key.name}`",
        )
    return Secret(text) if marker == "PRIVATE KEY" else text


PEM_CERT = Kind(
    "PEM certificates file",
    str,
    "a file on the control machine (relative to hosts.toml) with PEM certificates and no "
    "private key",
    samples=("cert.pem",),
    edges=("key.pem", "both.pem", "/dev/zero", "missing.pem"),
    read=_read_pem,
)
PEM_KEY = Kind(
    "PEM private key file",
    str,
    "a file on the control machine (relative to hosts.toml) with the PEM private key; never shown",
    samples=("key.pem",),
    edges=("cert.pem", "/dev/zero", "missing.pem"),
    read=_read_pem,
)


def _acme_covers_no_wildcard(r: Reading) -> None:
    if r.got["mode"] == "acme" and any(d.startswith("*.") for d in r.the_site().domains):
        r.fail("mode", "ACME over http-01 cannot cover a wildcard domain")


ACME = ("mode", "acme")
FILES = ("mode", "files")
KEYS = Keys(
    Tls,
    (
        Key(
            "mode",
            choice("files", "acme"),
            "files",
            "certificate files given here, or certificates from an ACME server (certbot)",
        ),
        Key("hsts", BOOL, False, "Strict-Transport-Security on the site's answers"),
        Rule(("mode", "domains"), _acme_covers_no_wildcard, "ACME covers no wildcard domain"),
        Key("email", EMAIL, help="the ACME account's contact", when=ACME),
        Key("server", HTTPS_URL, LETS_ENCRYPT, "the ACME directory", when=ACME),
        Key(
            "ca_bundle",
            PEM_CERT,
            "",
            "PEM the hosts trust for the ACME server (a private or test ACME server)",
            when=ACME,
        ),
        Key("cert", PEM_CERT, help="the certificate chain", when=FILES),
        Key("key", PEM_KEY, help="the private key (mode 0600 on the hosts)", when=FILES),
    ),
)


PEM_LIMIT = 256 * 1024  # a chain of a few certificates; never a device or a large file


CERT_SOON = 14 * 86400  # a certificate expiring sooner is a warning


@dataclass(frozen=True)
class CertExpiry(Fact[float]):
    """When the certificate at `path` expires (epoch seconds; 0 when there is none)."""

    path: str
    default: ClassVar[Any] = 0.0

    def command(self) -> str:
        return f"openssl x509 -enddate -noout -in {shlex.quote(self.path)} 2>/dev/null || true"

    def parse(self, rc: int, out: str) -> float:
        text = out.strip().removeprefix("notAfter=")
        try:
            found = datetime.strptime(text, "%b %d %H:%M:%S %Y %Z")
        except ValueError:
            return 0.0
        return found.replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class CertCheck:
    """`fab status`: the certificate nginx serves for the site, and when it expires."""

    path: str

    def facts(self) -> list[Fact]:
        return [CertExpiry(self.path)]

    def read(self, facts: Facts, now: float) -> StatusPart:
        expiry = facts[CertExpiry(self.path)]
        part = StatusPart("certificate_expires", expiry or None)
        if not expiry:
            part.lines.append(("certificate", "none"))
        else:
            when = time.strftime("expires %Y-%m-%d", time.gmtime(expiry))
            part.lines.append(("certificate", f"{when} (in {age(max(0, expiry - now))})"))
        if not expiry or expiry <= now:
            part.down.append("certificate missing or expired")
        elif expiry - now < CERT_SOON:
            part.warnings.append(f"certificate expires in {age(expiry - now)}")
        return part


class TlsComponent(Component):
    """`[sites.<name>.tls]`: HTTPS from given files or from an ACME server."""

    name = "tls"
    after = ("maintenance",)  # certificates before nginx uses them
    table = "tls"
    roles = ("web",)

    def status(self, inventory: Inventory, site: Site, host: Host) -> list[StatusCheck]:
        if site.part(Tls) is None or "web" not in host.role_set:
            return []
        return [CertCheck(f"{SitePaths.of(site, host).tls_dir}/fullchain.pem")]

    keys = KEYS

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        # The settings layer makes the session and CSRF cookies secure on TLS sites.
        return {"DJK_TLS": "1"} if site.part(Tls) else {}

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        sites = [s for s in inventory.sites_on(host) if (t := s.part(Tls)) and t.mode == "acme"]
        if sites and self.runs_on(host):
            # python3-cffi-backend: certbot's cryptography needs it and apt does not pull it in
            # everywhere (a virtual package).
            return ["certbot", "python3-cffi-backend"]
        return []

    def nginx(self, inventory: Inventory, site: Site) -> NginxPart:
        tls = site.part(Tls)
        if tls is None:
            return NginxPart()
        after: list[Step] = [Certificate(site)] if tls.mode == "acme" else []
        return NginxPart(files=files(site, tls), before=before_nginx(site, tls), after=after)


register(TlsComponent())


def hsts_directive(site: Site) -> str:
    """The HSTS header line for a location of the site that sets its own headers (nginx drops
    the server's add_header lines in such a location), or nothing."""
    tls = site.part(Tls)
    if tls is None or not tls.hsts:
        return ""
    return 'add_header Strict-Transport-Security "max-age=31536000" always;'
