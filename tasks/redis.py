"""Redis, the local broker of sites whose Celery says `broker = "local"`: a host service
(engine/service.py) on the site's broker host, bound to loopback (and the host's own address,
with the sites' BROKER_PASSWORD, when other hosts use it)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote

from .celery import Celery
from .engine import topology, values
from .engine.component import HostRun, register
from .engine.facts import Fact
from .engine.inventory import Host, Inventory, Site
from .engine.secrets import Secret
from .engine.service import HostService
from .engine.steps import Action, ApplyNow, Context, Plan, Service, Step

REDIS_CONF = "/etc/redis/redis.conf"
REDIS_UNIT = "redis-server.service"
REDIS_PORT = 6379
LOOPBACK = {"127.0.0.1", "::1", "-::1", "localhost"}


def broker_url(site: Site, address: str = "127.0.0.1") -> str | None:
    """The kit's Redis as the site's processes reach it (loopback unless on another host, then
    with the site's BROKER_PASSWORD)."""
    conf = site.part(Celery)
    if conf is None or conf.broker != "local":
        return None
    password = site.secrets.get("BROKER_PASSWORD")
    auth = f":{quote(password.reveal(), safe='')}@" if password and address != "127.0.0.1" else ""
    return f"redis://{auth}{values.url_host(address)}:{REDIS_PORT}/{conf.redis_db}"


class RedisLoopback(Step):
    """The local broker listens on loopback only (Debian's default; kept that way), plus the
    host's own address when workers or apps on other hosts use it."""

    id = "redis-bind"
    name = "redis bind"

    def __init__(self, address: str | None = None, password: Secret | None = None) -> None:
        self.address, self.password = address, password

    def facts(self, diff: bool) -> list[Fact]:
        return [RedisBind(), RedisAuth()]

    def plan(self, ctx: Context) -> Plan:
        line = ctx.facts[RedisBind()]
        if line is None:
            return Plan(error=f"{REDIS_CONF} not found: install redis-server (fab provision)")
        addresses = line.split()[1:]
        wanted = "bind 127.0.0.1 -::1" + (f" {self.address}" if self.address else "")
        auth = f"requirepass {self.password.reveal()}\n" if self.password else ""
        auth_hash = hashlib.sha256(auth.encode()).hexdigest()
        if ctx.facts[RedisAuth()] == auth_hash or (not auth and not ctx.facts[RedisAuth()]):
            if self.address is None and addresses and set(addresses) <= LOOPBACK:
                return Plan(reason=line)
            if self.address is not None and line == wanted:
                return Plan(reason=f"{line}, password set")
        script = (
            f"sed -i '/^[[:space:]]*\\(bind\\|requirepass\\)[[:space:]]/d' {REDIS_CONF}\n"
            f"cat >> {REDIS_CONF}"
        )
        return Plan(
            [
                Action(
                    f"{line or 'no bind line'} -> {wanted}" + (", password" if auth else ""),
                    script,
                    stdin=(wanted + "\n" + auth).encode(),
                    notify=(f"restart:{REDIS_UNIT}",),
                )
            ]
        )


def broker_steps(sites: list[Site], address: str | None = None) -> list[Step]:
    """On a broker host: Redis running, bound to loopback (and `address`, with the sites'
    BROKER_PASSWORD, when other hosts use it)."""
    if not any(broker_url(s) for s in sites):
        return []
    password = next(
        (s.secrets["BROKER_PASSWORD"] for s in sites if "BROKER_PASSWORD" in s.secrets), None
    )
    # A new bind or password is applied here, not after the run: the app and worker hosts'
    # broker check before the switch (BrokerCheck) must find Redis where they will reach it.
    return [
        RedisLoopback(address, password if address else None),
        Service(REDIS_UNIT),
        ApplyNow(REDIS_UNIT),
    ]


@dataclass(frozen=True)
class RedisBind(Fact[str]):
    """Redis's bind line ("" when there is none; None when the config file is missing)."""

    def command(self) -> str:
        return f"grep -E '^[[:space:]]*bind[[:space:]]' {REDIS_CONF}"

    def parse(self, rc: int, out: str) -> str | None:
        return out.strip() if rc in (0, 1) else None


@dataclass(frozen=True)
class RedisAuth(Fact[str]):
    """Only a hash of Redis's password line comes back: it is compared, never shown."""

    def command(self) -> str:
        return f"grep -E '^[[:space:]]*requirepass[[:space:]]' {REDIS_CONF} | sha256sum"

    def parse(self, rc: int, out: str) -> str:
        return out.split()[0] if out.strip() else ""


class RedisComponent(HostService):
    """Redis on the broker host of the sites with `broker = "local"`."""

    name = "redis"
    after = ("celery",)  # the broker once Celery's units are written
    roles = ("broker",)
    package = "redis-server"
    unit = REDIS_UNIT
    port = REDIS_PORT
    what = "Redis"

    def server_of(self, inventory: Inventory, site: Site) -> Host | None:
        return topology.broker_host(inventory, site) if broker_url(site) else None

    def configure(self, run: HostRun, served: list[Site]) -> list[Step]:
        brokered = [s for s in served if s in run.sites]
        if not brokered:
            return []
        remote = any(topology.broker_address(run.inventory, s) != "127.0.0.1" for s in brokered)
        return broker_steps(brokered, run.host.peer_address if remote else None)

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        url = broker_url(site, topology.broker_address(inventory, site))
        if url is None:
            return {}
        # It may carry the broker's password: a secret in diffs and reports.
        return {"CELERY_BROKER_URL": Secret(url), "CELERY_RESULT_BACKEND": Secret(url)}


register(RedisComponent())
