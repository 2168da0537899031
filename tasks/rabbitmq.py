"""RabbitMQ as a site's Celery broker: `[sites.<name>.celery] broker = "rabbitmq"`.

Debian's rabbitmq-server on the site's broker host (its first host with the `broker` role),
installed by `provision`. Each site gets its own vhost and user (both named after the site) with
all rights on that vhost only; the password is BROKER_PASSWORD from the site's secrets, or one
made on the broker host on the first deploy and kept there root-only (engine/kept.py). The
server gets only RabbitMQ's salted hash of it, in a definitions file it imports (never on a
command line; readable by the rabbitmq user alone, removed after); the kit keeps that hash in
a root-only marker and compares a wanted password by recomputing it.

Listening: AMQP on 127.0.0.1:5672, plus the broker host's own address only when the site's
workers or app hosts are elsewhere; the Erlang distribution port (25672) and epmd (4369) on
loopback only — one node (rabbit@localhost), nothing to cluster with. The kit owns the broker
host's RabbitMQ: the node is renamed on the first deploy (a node's data is per name). The app
gets CELERY_BROKER_URL (`amqp://site:password@host:5672/site`, a secret) and
CELERY_RESULT_BACKEND (`rpc://`: results come back to the caller over the broker).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shlex
from dataclasses import dataclass
from urllib.parse import quote

from . import celery
from .engine import kept, topology, values
from .engine.component import HostRun, register
from .engine.facts import Fact, Text
from .engine.inventory import Host, Inventory, Site
from .engine.kept import Kept
from .engine.render import MANAGED
from .engine.schema import InventoryError
from .engine.secrets import Secret
from .engine.service import HostService
from .engine.steps import Action, ApplyNow, Context, Directory, File, Plan, Service, Step

UNIT = "rabbitmq-server.service"
AMQP_PORT = 5672
EPMD_PORT = 4369
DIST_PORT = 25672
CONF = "/etc/rabbitmq/rabbitmq.conf"
ENV_CONF = "/etc/rabbitmq/rabbitmq-env.conf"
# systemd's socket for epmd (Debian's erlang-base): loopback only.
EPMD_DROPIN = "/etc/systemd/system/epmd.socket.d/djk.conf"
MARKERS = "/var/lib/djk/rabbitmq"


def uses(site: Site) -> bool:
    conf = site.part(celery.Celery)
    return conf is not None and conf.broker == "rabbitmq"


def broker_host(inventory: Inventory, site: Site) -> Host | None:
    return topology.broker_host(inventory, site) if uses(site) else None


def password(site: Site) -> Secret | None:
    return site.secrets.get("BROKER_PASSWORD")


# -- RabbitMQ's password hash (rabbit_password_hashing_sha256) --------------------------------


def rabbit_hash(secret: str, salt: bytes | None = None) -> str:
    """base64(salt + sha256(salt + password)), a 4-byte salt: what RabbitMQ stores."""
    salt = salt if salt is not None else os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + secret.encode()).digest()).decode()


def hash_matches(stored: str, secret: str) -> bool:
    try:
        raw = base64.b64decode(stored, validate=True)
    except ValueError:
        return False
    return len(raw) == 36 and hmac.compare_digest(rabbit_hash(secret, raw[:4]), stored)


# -- server configuration ---------------------------------------------------------------------


def remote(inventory: Inventory, host: Host) -> bool:
    return any(
        topology.broker_address(inventory, s) != "127.0.0.1"
        for s in RABBITMQ.served(inventory, host)
    )


def rabbitmq_conf(inventory: Inventory, host: Host) -> str:
    lines = [f"# {MANAGED}", f"listeners.tcp.1 = 127.0.0.1:{AMQP_PORT}"]
    if remote(inventory, host):
        lines.append(f"listeners.tcp.2 = {values.url_host(host.peer_address)}:{AMQP_PORT}")
    lines += [
        "# The guest user, from loopback only (RabbitMQ's default, said here).",
        "loopback_users.guest = true",
    ]
    return "\n".join(lines) + "\n"


ENV_TEXT = f"""# {MANAGED}
# One node, named after loopback (the host's name may resolve to any address, e.g. Debian's
# 127.0.1.1, where epmd does not listen): the distribution port on loopback only.
NODENAME=rabbit@localhost
DIST_PORT={DIST_PORT}
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {{127,0,0,1}}"
"""

EPMD_TEXT = f"""# {MANAGED}
[Socket]
ListenStream=
ListenStream=127.0.0.1:{EPMD_PORT}
"""


@dataclass(frozen=True)
class Listening(Fact[str]):
    """The addresses RabbitMQ's ports listen on (ss), to check the binding took."""

    def command(self) -> str:
        ports = "|".join(str(p) for p in (AMQP_PORT, EPMD_PORT, DIST_PORT))
        return f"ss -Hltn | awk '{{print $4}}' | grep -E ':({ports})$' | sort"

    def parse(self, rc: int, out: str) -> str:
        return out.strip()


class Rebind(Step):
    """epmd's socket bound anew (systemd holds it: the socket, its service and RabbitMQ, which
    registers there, stop and start again), now rather than after the run's steps."""

    id = "epmd-rebind"
    name = "epmd rebind"

    def plan(self, ctx: Context) -> Plan:
        if "restart:epmd.socket" not in ctx.pending:
            return Plan(reason="no change to apply")
        script = (
            "set -e\nsystemctl daemon-reload\n"
            f"systemctl stop {UNIT} epmd.service epmd.socket\n"
            f"systemctl start epmd.socket {UNIT}\n"
        )
        consumed = ("restart:epmd.socket", f"restart:{UNIT}", "daemon-reload")
        return Plan([Action("stop, bind 127.0.0.1:4369, start", script, consumes=consumed)])


def server_steps(inventory: Inventory, host: Host) -> list[Step]:
    restart = (f"restart:{UNIT}",)
    return [
        Directory(EPMD_DROPIN.rsplit("/", 1)[0]),
        File(
            EPMD_DROPIN,
            EPMD_TEXT,
            notify=("daemon-reload", "restart:epmd.socket"),
            name="epmd on loopback",
        ),
        File(ENV_CONF, ENV_TEXT, notify=restart, name="rabbitmq distribution on loopback"),
        File(CONF, rabbitmq_conf(inventory, host), notify=restart, name="rabbitmq listeners"),
        Service(UNIT),
        # Now, not after the run: the workers restarted in this run connect to it.
        Rebind(),
        ApplyNow(UNIT),
    ]


# -- one vhost and user per site --------------------------------------------------------------


def marker(site: Site) -> str:
    return f"{MARKERS}/{site.name}.json"


class SiteBroker(Step):
    """The site's vhost and user, with all rights on that vhost only; the password's hash
    imported with rabbitmqctl (a definitions file, root-only, removed after)."""

    def __init__(self, site: Site, secret: Secret) -> None:
        self.site, self.secret = site, secret
        self.id = f"rabbitmq-site:{site.name}"
        self.name = f"broker vhost {site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Text(marker(self.site))]

    def plan(self, ctx: Context) -> Plan:
        name = self.site.name
        done = ctx.facts[Text(marker(self.site))]
        try:
            stored = json.loads(done) if done else {}
        except ValueError:
            stored = {}
        if stored.get("user") == name and hash_matches(
            stored.get("hash", ""), self.secret.reveal()
        ):
            return Plan(reason=f"vhost {name}, user {name} with its password")
        digest = rabbit_hash(self.secret.reveal())
        definitions = {
            "users": [
                {
                    "name": name,
                    "password_hash": digest,
                    "tags": [],
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                }
            ],
            "vhosts": [{"name": name}],
            "permissions": [
                {"user": name, "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}
            ],
        }
        q = shlex.quote
        # rabbitmqctl runs as the rabbitmq user (Debian's wrapper), and RabbitMQ 4's does not
        # read stdin: the definitions (the hash, never the password) go to a file only that user
        # and root can read, removed after. Bounded: a node that does not answer fails the step.
        tmp = f"/var/lib/rabbitmq/.djk-{name}-definitions.json"
        script = f"""set -e
umask 077
install -d -m 700 {MARKERS}
trap 'rm -f {q(tmp)}' EXIT
install -m 600 -o rabbitmq -g rabbitmq /dev/stdin {q(tmp)}
timeout 120 rabbitmqctl --quiet import_definitions {q(tmp)} >/dev/null
printf '%s\\n' {q(json.dumps({"user": name, "hash": digest}))} > {q(marker(self.site))}
"""
        summary = "create vhost and user" if not stored else "set the user's password"
        return Plan([Action(summary, script, stdin=json.dumps(definitions).encode())])


class RabbitMQComponent(HostService):
    """`broker = "rabbitmq"` in [sites.<name>.celery]: RabbitMQ on the broker host."""

    name = "rabbitmq"
    after = ("redis",)  # the broker's users once Celery's units are written
    roles = ("broker",)
    package = "rabbitmq-server"
    unit = UNIT
    port = AMQP_PORT
    what = "RabbitMQ"
    listens = ((AMQP_PORT, "RabbitMQ"), (EPMD_PORT, "epmd"), (DIST_PORT, "Erlang distribution"))

    def server_of(self, inventory: Inventory, site: Site) -> Host | None:
        return broker_host(inventory, site)

    def check(self, inventory: Inventory) -> None:
        for site in inventory.sites.values():
            if uses(site) and broker_host(inventory, site) is None:
                raise InventoryError(
                    inventory.path,
                    f"sites.{site.name}.hosts",
                    'celery broker = "rabbitmq" needs a host with the broker role',
                )
            if uses(site):
                kept.refuse_empty(inventory, site, "BROKER_PASSWORD", "RabbitMQ", "broker host")

    def env_names(self, inventory: Inventory, site: Site) -> set[str]:
        return {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"} if uses(site) else set()

    def kept_secrets(self, inventory: Inventory, site: Site) -> list[Kept]:
        host = broker_host(inventory, site)
        return [Kept(site.name, "BROKER_PASSWORD", host, "broker-password")] if host else []

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        secret = password(site)
        if not uses(site) or secret is None:
            return {}
        where = values.url_host(topology.broker_address(inventory, site))
        name = quote(site.name, safe="")
        url = f"amqp://{name}:{quote(secret.reveal(), safe='')}@{where}:{AMQP_PORT}/{name}"
        return {"CELERY_BROKER_URL": Secret(url), "CELERY_RESULT_BACKEND": "rpc://"}

    def configure(self, run: HostRun, served: list[Site]) -> list[Step]:
        steps = server_steps(run.inventory, run.host)
        steps += [SiteBroker(s, p) for s in served if s in run.sites and (p := password(s))]
        return steps


RABBITMQ = RabbitMQComponent()
register(RABBITMQ)
