"""Before a host switches a site with Celery to a new release: the site's broker (Redis or
RabbitMQ) answers from that host. Its own component, placed before the app (whose switch it
guards); Celery's steps come after the app's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .celery import Celery
from .engine import topology, values
from .engine.component import Component, HostRun, Phase, register
from .engine.facts import Fact, Stat
from .engine.inventory import Inventory, Site
from .engine.layout import SitePaths
from .engine.steps import Context, Plan, Step
from .rabbitmq import AMQP_PORT
from .redis import REDIS_PORT
from .release import Target, live_release

BROKER_PORTS = {"local": (REDIS_PORT, "Redis"), "rabbitmq": (AMQP_PORT, "RabbitMQ")}


@dataclass(frozen=True)
class BrokerUp(Fact[bool]):
    """Whether a TCP connection to the broker opens from this host (within 2 s)."""

    address: str
    port: int
    default: ClassVar[Any] = False

    def command(self) -> str:
        target = f"/dev/tcp/{self.address}/{self.port}"
        return f"timeout 2 bash -c ': < {target}' 2>/dev/null && echo up || echo down"

    def parse(self, rc: int, out: str) -> bool:
        return out.strip() == "up"


class BrokerCheck(Step):
    """Before this host switches a site with Celery to a new release: the site's broker
    answers from here. A broker that is down fails the deploy before the switch, naming it;
    the old release keeps serving."""

    def __init__(self, inventory: Inventory, site: Site, target: Target) -> None:
        conf = site.need(Celery)
        self.site, self.target = site, target
        self.port, self.kind = BROKER_PORTS[conf.broker]
        self.address = topology.broker_address(inventory, site)
        self.broker = topology.broker_host(inventory, site)
        self.id = f"broker-check:{site.name}"
        self.name = f"broker of {site.name}"

    @property
    def _up(self) -> BrokerUp:
        return BrokerUp(self.address, self.port)

    def facts(self, diff: bool) -> list[Fact]:
        current = Stat(SitePaths.of(self.site).current)
        return [self._up, *self.target.facts(), current]

    def plan(self, ctx: Context) -> Plan:
        where = f"{self.kind} at {values.url_host(self.address)}:{self.port}"
        if self.broker is not None and self.address != "127.0.0.1":
            where += f" on {self.broker.name}"
        try:
            wanted = self.target.resolve(ctx.facts)
        except LookupError:
            return Plan(reason="no release to switch to")
        if wanted == live_release(ctx.facts, SitePaths.of(self.site)):
            return Plan(reason=f"nothing to switch; {where}")
        if not ctx.facts[self._up]:
            return Plan(
                error=f"the broker of site {self.site.name} ({where}) does not answer from this "
                "host: nothing was switched, the live release keeps serving; start it, then "
                "deploy again"
            )
        return Plan(reason=f"{where} answers")


class BrokerCheckComponent(Component):
    """Runs before the app's switch (its own component, ordered before `app`)."""

    name = "broker-check"
    after = ("backups",)  # before the app's switch: the broker answers

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        if phase != Phase.SWITCH or run.job is None:
            return []
        roles = topology.roles(run.host)
        if not roles & {"app", "worker"}:
            return []
        return [
            BrokerCheck(run.inventory, site, run.job.target(site))
            for site in run.sites
            if (conf := site.part(Celery)) is not None and conf.broker in BROKER_PORTS
        ]


register(BrokerCheckComponent())
