"""Secrets kept on a host: a password a component makes on first use (a site's database or
broker password when the secrets file gives none) lives in a root-only file on the host that
needs it (/var/lib/djk/secrets/, 0700; files 0600), not on the control machine.

Before a run plans anything, `resolve` reads every such secret of the sites it deploys — one
command per holding host, making the missing ones there (24 random bytes) unless in check mode
— and hands back the inventory with them among each site's secrets: from then on they are
secrets like any other (masked everywhere, written only to 0600 files).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from .inventory import Host, Inventory, Site
from .remote import Remote, RemoteError
from .schema import InventoryError
from .secrets import Secret

SECRETS_DIR = "/var/lib/djk/secrets"
PENDING = "(made on the first deploy)"  # what check mode shows for one not made yet


@dataclass(frozen=True)
class Kept:
    """The site secret `key`, kept on `host` in SECRETS_DIR/<site>.<name>."""

    site: str
    key: str
    host: Host
    name: str  # file name suffix, e.g. "db-password"

    @property
    def path(self) -> str:
        return f"{SECRETS_DIR}/{self.site}.{self.name}"


def refuse_empty(inventory: Inventory, site: Site, key: str, server: str, holder: str) -> None:
    """A password the secrets file may leave out (the kit makes one on `holder`) but not give
    empty: `server`'s clients cannot log in with an empty one."""
    secret = site.secrets.get(key)
    if secret is not None and not secret.reveal():
        raise InventoryError(
            inventory.path,
            f"sites.{site.name}.env_file",
            f"{key} is empty: {server}'s clients cannot log in with an empty password "
            f"(remove the line, and the kit makes one on the {holder})",
        )


MAKE = (
    'umask 077; head -c 24 /dev/urandom | base64 | tr "+/" "-_" | tr -d "=\\n" > "$f.new"; '
    'mv "$f.new" "$f"'
)


def script(kept: list[Kept], create: bool) -> str:
    """Print each kept secret as `<key>=<value>` lines, in order (made first when missing)."""
    lines = ["set -e", f"install -d -m 700 {SECRETS_DIR}" if create else ":"]
    for item in kept:
        lines.append(f"f={shlex.quote(item.path)}")
        if create:
            lines.append(f'[ -s "$f" ] || {{ {MAKE}; }}')
        lines.append(f"printf '%s=' {shlex.quote(item.key)}; cat \"$f\" 2>/dev/null || true; echo")
    return "\n".join(lines) + "\n"


def resolve(
    inventory: Inventory,
    wanted: Iterable[Kept],
    connect: Callable[[Host], Remote],
    create: bool,
) -> Inventory:
    """The inventory with every wanted secret among its site's secrets."""
    by_host: dict[str, list[Kept]] = {}
    for item in wanted:
        site = inventory.sites[item.site]
        if item.key in site.secrets or not site.secrets_loaded:
            continue  # given in the secrets file
        by_host.setdefault(item.host.name, []).append(item)
    sites: dict[str, Site] = dict(inventory.sites)
    for items in by_host.values():
        host = items[0].host
        remote = connect(host)
        try:
            done = remote.run(script(items, create))
        finally:
            remote.close()
        if not done.ok:
            problem = done.stderr.strip()[-300:]
            raise RemoteError(f"{host.name}: could not read {SECRETS_DIR}: {problem}")
        values = done.stdout.splitlines()
        for item, line in zip(items, values, strict=False):
            value = line.partition("=")[2].strip() or PENDING
            site = sites[item.site]
            sites[item.site] = replace(site, secrets={**site.secrets, item.key: Secret(value)})
    return replace(inventory, sites=sites)
