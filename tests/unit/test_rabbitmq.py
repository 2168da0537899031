"""RabbitMQ's pure parts: its password hash (a published test vector), the listeners for a
topology, the env's URL, and the vhost/user step's plan from the kit's marker."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from djk.tasks import rabbitmq as Q
from djk.tasks.engine import facts as F
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.secrets import Secret
from djk.tasks.engine.steps import Context, plan_phase

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


def inventory(tmp_path, roles: dict, hosts=("web1",), secret="BROKER_PASSWORD=b-r0ker/pw\n"):
    (tmp_path / "s.env").write_text("DJANGO_SECRET_KEY=k-123456789\n" + secret)
    site = {
        "domains": ["shop.test"],
        "hosts": list(hosts),
        "source": str(EXAMPLE),
        "asgi": "exampleproject.asgi:application",
        "settings": "exampleproject.settings",
        "port": 8001,
        "env_file": "s.env",
        "celery": {"app": "exampleproject", "broker": "rabbitmq"},
    }
    hosts = {}
    for i, name in enumerate(("web1", "mq1")):
        hosts[name] = {"address": f"10.213.5.{10 + i}"}
        if name in roles:
            hosts[name]["roles"] = roles[name]
    data = {"hosts": hosts, "sites": {"shop": site}}
    return parse(data, tmp_path / "hosts.toml")


def test_the_hash_is_rabbitmqs_own():
    # RabbitMQ's docs: salt 908DC60A, password "test12".
    made = Q.rabbit_hash("test12", bytes.fromhex("908DC60A"))
    assert made == "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    assert Q.hash_matches(made, "test12") and not Q.hash_matches(made, "test13")
    assert not Q.hash_matches("not base64!", "x")
    assert len(base64.b64decode(Q.rabbit_hash("x"))) == 36


def test_listeners_on_loopback_unless_workers_are_elsewhere(tmp_path):
    alone = inventory(tmp_path, {})
    text = Q.rabbitmq_conf(alone, alone.hosts["web1"])
    assert "listeners.tcp.1 = 127.0.0.1:5672" in text and "listeners.tcp.2" not in text
    split = inventory(
        tmp_path, {"web1": ["web", "app", "worker"], "mq1": ["broker"]}, hosts=("web1", "mq1")
    )
    mq1 = split.hosts["mq1"]
    assert "listeners.tcp.2 = 10.213.5.11:5672" in Q.rabbitmq_conf(split, mq1)
    assert "inet_dist_use_interface {127,0,0,1}" in Q.ENV_TEXT
    assert "ListenStream=127.0.0.1:4369" in Q.EPMD_TEXT
    env = Q.RabbitMQComponent().env(split, split.sites["shop"])
    assert env["CELERY_BROKER_URL"].reveal() == "amqp://shop:b-r0ker%2Fpw@10.213.5.11:5672/shop"
    assert env["CELERY_RESULT_BACKEND"] == "rpc://" and "b-r0ker" not in str(env)


def test_the_vhost_step_imports_once_and_then_compares_the_hash(tmp_path):
    inv = inventory(tmp_path, {})
    site = inv.sites["shop"]
    step = Q.SiteBroker(site, Secret("pw-1"))
    marker = F.Text(Q.marker(site))

    def plan(value):
        ((_, found),) = plan_phase([step], Context(F.Facts({marker: value})))
        return found

    first = plan(None)
    (action,) = first.actions
    definitions = json.loads(action.stdin)
    assert definitions["vhosts"] == [{"name": "shop"}]
    assert definitions["permissions"][0]["user"] == "shop"
    stored = definitions["users"][0]["password_hash"]
    assert Q.hash_matches(stored, "pw-1") and "pw-1" not in action.full_script()
    assert not plan(json.dumps({"user": "shop", "hash": stored})).actions
    assert plan(json.dumps({"user": "shop", "hash": Q.rabbit_hash("old")})).actions
