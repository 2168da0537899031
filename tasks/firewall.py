"""The host firewall and security updates, set up by `provision` on every host.

**Firewall** (`firewall = true`, the default; `[hosts.<name>]` or `[defaults]`): nftables, in a
table of the kit's own (`inet djk`; other tables — Docker's, a team's — are left alone) whose
input chain drops what it does not accept:
- replies to connections the host made, loopback, ICMP (ping, path MTU, IPv6 neighbour
  discovery), DHCP replies;
- SSH on every port sshd listens on (read from the host, so the run's own connection and any
  other way in stay open) and `port` from hosts.toml;
- what each component says other machines must reach (`Component.openings`): 80 and 443 on web
  hosts for everyone; a split site's app port for its web hosts only; Redis and RabbitMQ for the
  app and worker hosts of the sites using that broker; PostgreSQL for the site's app and worker
  hosts elsewhere. A port of one site is closed to every host that is not its peer.

The ruleset is /etc/djk/firewall.nft: checked whole with `nft -c` before it is put in place,
then loaded in one transaction (the table deleted and made again atomically: there is no moment
without rules, and established connections — the run's own — are accepted throughout). A
oneshot unit loads it at boot, before the network comes up and after Debian's nftables.service
(whose /etc/nftables.conf flushes everything). The table carries the file's hash as a comment:
a ruleset changed or flushed by hand is seen and loaded again; `--diff` shows the file. A
deploy keeps an existing firewall up to date (a new split site opens its port); only
`provision` sets one up.

**Security updates** (`unattended_upgrades`, default: on for hosts with `packages_from =
"host"` — hosts without a route to Debian's mirrors get nothing from it): Debian's
unattended-upgrades, enabled by /etc/apt/apt.conf.d/20auto-upgrades (its stock configuration
takes the security archive only).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from .engine import procs, values
from .engine.component import Component, HostRun, Opening, Phase, components, register
from .engine.facts import Fact, Stat
from .engine.inventory import Host, Inventory
from .engine.render import MANAGED
from .engine.schema import InventoryError
from .engine.steps import Action, Context, File, Plan, Service, Step, upload_script

RULES = "/etc/djk/firewall.nft"
UNIT = "djk-firewall.service"
TABLE = "inet djk"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
NFT = "/usr/sbin/nft"

UNIT_TEXT = f"""# {MANAGED}
# The kit's firewall (tasks/firewall.py), loaded before the network comes up; after Debian's
# nftables.service, whose /etc/nftables.conf begins with `flush ruleset`.
[Unit]
Description=djk firewall (nftables table {TABLE})
DefaultDependencies=no
Before=network-pre.target shutdown.target
Wants=network-pre.target
After=nftables.service local-fs.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={NFT} -f {RULES}
ExecReload={NFT} -f {RULES}

[Install]
WantedBy=sysinit.target
"""

AUTO_UPGRADES_TEXT = f"""// {MANAGED}
// Debian's unattended-upgrades, daily, with its stock origins (the security archive).
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
"""


@dataclass(frozen=True)
class SshdPorts(Fact[list]):
    """The TCP ports sshd listens on."""

    default: ClassVar[Any] = []

    def command(self) -> str:
        # Filtered here, not by grep and awk there: two processes less on every run.
        return "ss -Htlnp 2>/dev/null || true"

    def parse(self, rc: int, out: str) -> list[int]:
        found = set()
        for line in out.splitlines():
            words = line.split()
            if '"sshd"' not in line or len(words) < 4:
                continue
            port = words[3].rsplit(":", 1)[-1]
            if port.isdigit():
                found.add(int(port))
        return sorted(found)


@dataclass(frozen=True)
class LoadedVersion(Fact[str]):
    """The hash the loaded `inet djk` table carries ("" when there is none)."""

    default: ClassVar[Any] = ""

    def command(self) -> str:
        return f"{NFT} list table {TABLE} 2>/dev/null || true"

    def parse(self, rc: int, out: str) -> str:
        return version_of(out)


def openings(inventory: Inventory, host: Host) -> list[Opening]:
    return [o for c in components() for o in c.openings(inventory, host)]


def ruleset(ssh_ports: list[int], opened: list[Opening]) -> str:
    """The file: the table made anew in one transaction, its hash in its comment. Sources are
    IP addresses (check_peer_addresses refuses a name in hosts.toml)."""
    rules = [
        "ct state established,related accept",
        "ct state invalid drop",
        'iif "lo" accept',
        # By number: a minimal host has no /etc/protocols to name them (1 icmp, 58 ipv6-icmp).
        'meta l4proto 1 accept comment "ICMP: ping, errors, path MTU"',
        'meta l4proto 58 accept comment "ICMPv6: ping, errors, neighbour discovery"',
        'udp dport 68 accept comment "DHCP replies"',
        'udp dport 546 accept comment "DHCPv6 replies"',
        f'tcp dport {{ {", ".join(map(str, sorted(set(ssh_ports))))} }} accept comment "SSH"',
    ]
    for o in sorted(opened, key=lambda o: (o.port, o.what)):
        if o.sources is None:
            rules.append(f'tcp dport {o.port} accept comment "{o.what}"')
            continue
        addresses = list(o.sources)
        v4 = sorted({a for a in addresses if ipaddress.ip_address(a).version == 4})
        v6 = sorted({a for a in addresses if ipaddress.ip_address(a).version == 6})
        if v4:
            rules.append(
                f'ip saddr {{ {", ".join(v4)} }} tcp dport {o.port} accept comment "{o.what}"'
            )
        if v6:
            rules.append(
                f'ip6 saddr {{ {", ".join(v6)} }} tcp dport {o.port} accept comment "{o.what}"'
            )
    body = "\n".join(f"        {r}" for r in rules)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return (
        f"#!{NFT} -f\n# {MANAGED}\n# Loaded by {UNIT}; see tasks/firewall.py.\n"
        f"table {TABLE}\ndelete table {TABLE}\n"
        f"table {TABLE} {{\n"
        f'    comment "djk {digest}"\n'
        "    chain input {\n"
        "        type filter hook input priority filter; policy drop;\n"
        f"{body}\n"
        "    }\n"
        "}\n"
    )


def version_of(text: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith('comment "djk '):
            return line.strip().split()[2].rstrip('"')
    return ""


class Firewall(Step):
    """The ruleset file, checked whole before it replaces the old one, and loaded."""

    def __init__(self, inventory: Inventory, host: Host, setup: bool) -> None:
        self.host, self.setup = host, setup
        self.opened = openings(inventory, host)
        self.id = "firewall"
        self.name = "firewall"

    def facts(self, diff: bool) -> list[Fact]:
        return [*File(RULES, "").facts(diff), SshdPorts(), LoadedVersion()]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[Stat(RULES)] is None and not self.setup:
            return Plan(reason="not set up here (fab provision does)")
        ssh = sorted({*ctx.facts[SshdPorts()], self.host.port or 22})
        content = ruleset(ssh, self.opened)
        planned = File(RULES, content, mode="644").plan(ctx)
        version = version_of(content)
        what = f"SSH {', '.join(map(str, ssh))}; " + (
            ", ".join(f"{o.port} {o.what}" for o in self.opened) or "nothing else"
        )
        written = [a for a in planned.actions if a.summary in ("create", "update content")]
        if written:
            action = written[0]
            # Checked as a whole candidate before it replaces the file, then loaded at once.
            check = upload_script(RULES, "root", "root", "644").replace(
                'mv -f "$tmp"', f'{NFT} -c -f "$tmp"\nmv -f "$tmp"'
            )
            action.script = f"install -d -m 755 /etc/djk\n{check}{NFT} -f {RULES}\n"
            action.summary += f" and load ({what})"
            return planned
        if ctx.facts[LoadedVersion()] != version:
            load = Action(f"load: the loaded table is not {version}", f"{NFT} -f {RULES}")
            return Plan([*planned.actions, load])
        return Plan(planned.actions, reason=f"loaded ({what})")


def wants_upgrades(host: Host) -> bool:
    if host.unattended_upgrades is not None:
        return host.unattended_upgrades
    return host.packages_from == "host"


def check_peer_addresses(inventory: Inventory) -> None:
    """Every address traffic between hosts uses is an IP address: the host an opening is on
    (its services bind there: the forwarder's ListenStream=, Redis's bind, RabbitMQ's
    listener, PostgreSQL's listen_addresses) and each host it is opened for (IPAddressAllow=,
    nftables, pg_hba). systemd refuses a name in ListenStream= and ignores one in
    IPAddressAllow=; nftables takes a name's addresses once, when the rules load."""
    by_address = {h.peer_address: h for h in inventory.hosts.values()}

    def need(host: Host, what: str) -> None:
        if not values.is_ip(host.peer_address):
            raise InventoryError(
                inventory.path,
                f"hosts.{host.name}.address",
                f"{values.show(host.address)} is a host name, and {what} needs an IP address "
                f"there (systemd and nftables cannot use a name): give hosts.{host.name}"
                ".private_address, the address its peers reach it at",
            )

    for host in inventory.hosts.values():
        for component in components():
            for opening in component.openings(inventory, host):
                if opening.sources is None:
                    continue  # open to everyone: nothing names an address
                need(host, f"{opening.what} (port {opening.port}) on host {host.name}")
                for source in opening.sources:
                    if source in by_address:
                        need(by_address[source], f"reaching {opening.what} on host {host.name}")


class FirewallComponent(Component):
    name = "firewall"
    after = ("provision",)  # provision's packages first (nftables among them)

    def check(self, inventory: Inventory) -> None:
        check_peer_addresses(inventory)

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        found = ["nftables"] if host.firewall else []
        return found + (["unattended-upgrades"] if wants_upgrades(host) else [])

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        host = run.host
        if phase == Phase.PROVISION:
            found: list[Step] = []
            if host.firewall:
                found += [
                    Firewall(run.inventory, host, setup=True),
                    File(
                        f"{procs.SYSTEMD_DIR}/{UNIT}",
                        UNIT_TEXT,
                        notify=("daemon-reload",),
                        name=f"unit {UNIT}",
                    ),
                    Service(UNIT),
                ]
            if wants_upgrades(host):
                # Off: the host's own setting is left as it is.
                found.append(File(AUTO_UPGRADES, AUTO_UPGRADES_TEXT, name="unattended upgrades"))
            return found
        if phase == Phase.STAGE and host.firewall:
            return [Firewall(run.inventory, host, setup=False)]
        return []


register(FirewallComponent())
