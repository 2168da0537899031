"""nginx's view of a site's slots, as the control machine writes and reads it.

The switch itself runs on the host: agent/switch.py (started by app.Switch). What stays here is
what planning needs: the upstream file's text for a slot, the live slot read back from it, and
the static upstream of a split site (every app host's two slots).
"""

from __future__ import annotations

from ..agent import switch as agent_switch
from .layout import SLOTS, SitePaths
from .render import MANAGED
from .values import url_host


def upstream_text(port: int) -> str:
    """The upstream file a first deploy starts from (the agent writes the same at a switch)."""
    return agent_switch.upstream_text(MANAGED, port)


def live_slot(paths: SitePaths, upstream: str | None) -> str | None:
    """The slot nginx's upstream file points at (None before the first switch), read as the
    agent reads it."""
    return agent_switch.live_slot_of(upstream, {s: paths.slot_port(s) for s in SLOTS})


def static_upstream(paths: SitePaths, addresses: list[str]) -> str:
    """Every app host's two slots; a stopped slot refuses and nginx tries the next server.

    max_fails=0: a refused or reset connection must not mark a server down for a while (with
    every server marked down at once nginx answers 502 "no live upstreams"); a refusal costs one
    connection attempt on the private network.
    """
    lines = [f"# {MANAGED}"]
    for address in addresses:
        for slot in SLOTS:
            lines.append(f"server {url_host(address)}:{paths.slot_port(slot)} max_fails=0;")
    return "\n".join(lines) + "\n"
