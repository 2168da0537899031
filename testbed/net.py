"""Addresses, bridge and per-host network config. Only 10.213.0.0/16 is used."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ._sys import TestbedError, run

NET_PREFIX = "10.213"
WEB_BASE = 10  # web<N> -> .10+N
WEB_MAX = 39  # keeps web hosts below the dynamic range
DYNAMIC_FIRST = 50
DYNAMIC_LAST = 254

_WEB = re.compile(r"web(\d+)")


def check_subnet(subnet: int) -> int:
    if not 0 <= subnet <= 255:
        raise TestbedError(f"subnet must be 0..255 (10.213.<subnet>.0/24), got {subnet}")
    return subnet


def bridge_name(subnet: int) -> str:
    return f"djkbr{check_subnet(subnet)}"


def gateway(subnet: int) -> str:
    return f"{NET_PREFIX}.{check_subnet(subnet)}.1"


def assign_address(subnet: int, host: str, taken: Mapping[str, str]) -> str:
    """Address for ``host``: web<N> is fixed, anything else gets the next free .50+.

    ``taken`` maps already-assigned host names to addresses; a host keeps
    the address it has there, so restarts do not renumber.
    """
    base = f"{NET_PREFIX}.{check_subnet(subnet)}"
    m = _WEB.fullmatch(host)
    if m and int(m.group(1)) <= WEB_MAX:
        return f"{base}.{WEB_BASE + int(m.group(1))}"
    if host in taken:
        return taken[host]
    used = set(taken.values())
    for last in range(DYNAMIC_FIRST, DYNAMIC_LAST + 1):
        addr = f"{base}.{last}"
        if addr not in used:
            return addr
    raise TestbedError(f"no free address left in {base}.0/24")


def render_networkd(address: str, prefix_len: int = 24) -> str:
    """systemd-networkd config for the container side of the veth (``host0``).

    Static only and no gateway: hosts reach the control machine and each
    other on the bridge, and nothing else.
    """
    return (
        "[Match]\n"
        "Name=host0\n"
        "\n"
        "[Network]\n"
        f"Address={address}/{prefix_len}\n"
        "LinkLocalAddressing=no\n"
        "IPv6AcceptRA=no\n"
    )


def render_hosts(host: str) -> str:
    # sudo resolves the own hostname on every call; without this it warns
    # and may try DNS.
    return f"127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def bridge_ports(bridge: str) -> list[str]:
    brif = Path("/sys/class/net", bridge, "brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def ensure_bridge(subnet: int) -> str:
    br = bridge_name(subnet)
    cidr = f"{gateway(subnet)}/24"
    if not link_exists(br):
        run(["ip", "link", "add", br, "type", "bridge"])
    ipv6 = Path("/proc/sys/net/ipv6/conf", br, "disable_ipv6")
    if ipv6.exists():
        ipv6.write_text("1\n")  # keep the segment quiet; tests use IPv4 only
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", br]).stdout
    if f" {cidr} " not in addrs:
        run(["ip", "addr", "add", cidr, "dev", br])
    run(["ip", "link", "set", br, "up"])
    return br


def remove_bridge(subnet: int) -> bool:
    """Delete the bridge unless something (another testbed) is still attached."""
    br = bridge_name(subnet)
    if not link_exists(br) or bridge_ports(br):
        return False
    run(["ip", "link", "del", br], check=False)
    return True
