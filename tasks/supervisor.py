"""Hosts whose sites run under supervisor (`process_manager = "supervisor"` in [hosts.<name>] or
[defaults]): Debian's supervisor package, supervisord running, and — on a host that changed its
process manager — the site's processes of the other manager taken away once the new ones serve.

What the programs are (both web slots, the boot program, Celery worker and beat, Flower, the
forwarder) is each component's business: engine/procs.py names them and picks the templates in
templates/supervisor/.
"""

from __future__ import annotations

from .engine import procs, topology
from .engine.component import Component, HostRun, Phase, register
from .engine.facts import Fact, Lines
from .engine.inventory import Host, Inventory
from .engine.render import MANAGED
from .engine.steps import Action, Context, Directory, File, Plan, Service, Step

PACKAGE = "supervisor"
ORDER_DROPIN = f"{procs.SYSTEMD_DIR}/{procs.SUPERVISOR_UNIT}.d/djk-order.conf"
# supervisord stops its programs one after another at shutdown, each up to its stopwaitsecs:
# with the broker already stopped, Celery beat and Flower retry it instead of exiting.


def order_text() -> str:
    return f"""# {MANAGED}
# The sites' programs use the host's broker and database: supervisord starts after them at boot
# and stops (its programs first) before them at shutdown.
[Unit]
After={procs.backing_units()}
"""


def supervised(inventory: Inventory, host: Host) -> bool:
    """Whether processes of a site run on this host under supervisor."""
    runs = any(r in topology.roles(host) for r in ("app", "worker"))
    return procs.of(host).kind == procs.SUPERVISOR and runs and bool(inventory.sites_on(host))


class Leftovers(Step):
    """A site's processes under the other process manager (left by a run before the host's
    process_manager changed): stopped and deleted, after the switch, when the new ones serve."""

    def __init__(self, site_name: str, manager: procs.Manager) -> None:
        self.site, self.manager = site_name, manager
        self.id = f"leftovers:{site_name}"
        self.name = f"{site_name}: processes of the other manager"

    @property
    def _found(self) -> Lines:
        return Lines(procs.site_processes_command(self.site))

    def facts(self, diff: bool) -> list[Fact]:
        return [self._found]

    def plan(self, ctx: Context) -> Plan:
        supervisor = self.manager.kind == procs.SUPERVISOR
        other = [n for n in ctx.facts[self._found] if procs.is_program(n) != supervisor]
        if not other:
            return Plan(reason=f"all under {self.manager.kind}")
        script = "\n".join(["set -e", *procs.stop_and_remove(other)])
        return Plan([Action(f"stop and delete {', '.join(other)}", script)])


class SupervisorComponent(Component):
    name = "supervisor"
    after = ("firewall",)  # supervisord where it runs the sites, before anything it runs

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        return [PACKAGE] if supervised(inventory, host) else []

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        host = run.host
        if not any(r in topology.roles(host) for r in ("app", "worker")):
            return []
        if phase in (Phase.PROVISION, Phase.STAGE):
            if not supervised(run.inventory, host):
                return []
            return [
                Directory(ORDER_DROPIN.rsplit("/", 1)[0]),
                File(
                    ORDER_DROPIN, order_text(), notify=("daemon-reload",), name="supervisord order"
                ),
                Service(procs.SUPERVISOR_UNIT),
            ]
        if phase == Phase.VERIFY:
            return [Leftovers(site.name, procs.of(host)) for site in run.sites]
        return []


register(SupervisorComponent())
