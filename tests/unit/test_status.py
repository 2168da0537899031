"""`fab status`' facts on recorded output, and its verdict from facts: up, a worker down, no
live release, a health answer that is an error, a certificate about to expire."""

from __future__ import annotations

from pathlib import Path

import pytest

from djk.tasks import status as S
from djk.tasks import timers, tls
from djk.tasks.engine import facts as F
from djk.tasks.engine.facts import Facts
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.steps import Context

EXAMPLE = Path(__file__).resolve().parents[2] / "example"
NOW = 1795744800.0  # 2026-11-27T02:00:00Z
LIVE = "20261127T010000Z-ab"


def test_health_and_certificate_and_timer_facts_on_recorded_output():
    health = S.Health("http://localhost/health/", "shop.test", socket="/s/live.sock")
    assert health.parse(0, "200 0.012345") == {"status": 200, "seconds": 0.012345}
    assert health.parse(0, "000 0.000") == {"status": 0, "seconds": 0.0}
    assert health.parse(7, "") == {"status": 0, "seconds": 0.0}
    assert "--unix-socket /s/live.sock" in health.command()
    cert = tls.CertExpiry("/etc/djk/tls/shop/fullchain.pem")
    assert cert.parse(0, "notAfter=Feb 25 02:00:00 2027 GMT\n") == 1803520800.0
    assert cert.parse(1, "") == 0.0
    recorded = (
        "Id=djk-shop-timer_tick.timer\nActiveState=active\n"
        "NextElapseUSecRealtime=Fri 2026-11-27 02:08:34 UTC\n"
        "LastTriggerUSec=Fri 2026-11-27 02:08:32 UTC\nResult=success\n\n"
        "Id=djk-shop-timer_tick.service\nActiveState=inactive\nResult=exit-code\n"
    )
    units = timers.TimerUnits(("djk-shop-timer_tick.timer",)).parse(0, recorded)
    assert units["djk-shop-timer_tick.timer"]["NextElapseUSecRealtime"].startswith("Fri 2026")
    assert units["djk-shop-timer_tick.service"]["Result"] == "exit-code"


@pytest.fixture
def inventory(tmp_path):
    (tmp_path / "site.env").write_text("DJANGO_SECRET_KEY=k3y-value-0\nFLOWER_BASIC_AUTH=a:b\n")
    data = {
        "hosts": {"web1": {"address": "10.0.0.1"}},
        "sites": {
            "shop": {
                "domains": ["shop.test"],
                "hosts": ["web1"],
                "port": 8001,
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "env_file": "site.env",
                "celery": {"app": "exampleproject"},
                "timers": {"tick": {"schedule": "daily", "command": "check"}},
            }
        },
    }
    return parse(data, tmp_path / "hosts.toml")


def verdict(inventory, **changes):
    host, site = inventory.hosts["web1"], inventory.sites["shop"]
    step = S.SiteStatus(inventory, host, site, NOW)
    given = {fact: fact.default for fact in step.facts(False)}
    units = F.Unit("djk-shop-web-a.service"), F.Unit("djk-shop-worker.service")
    up = F.UnitState("x", "loaded", "active", "enabled", 42)
    given.update(
        {
            F.Stat("/srv/djk/shop/current"): F.PathState(kind="link", target=f"releases/{LIVE}"),
            F.Stat("/srv/djk/shop/sockets/live.sock"): F.PathState(kind="link", target="a.sock"),
            units[0]: up,
            units[1]: up,
            step._health(): {"status": 200, "seconds": 0.01},
            timers.TimerUnits(("djk-shop-timer_tick.timer",)): {
                "djk-shop-timer_tick.timer": {"ActiveState": "active"},
                "djk-shop-timer_tick.service": {"Result": "success"},
            },
        }
    )
    for key, value in changes.items():
        given[
            {
                "worker": units[1],
                "current": F.Stat("/srv/djk/shop/current"),
                "health": step._health(),
            }[key]
        ] = value
    return step.plan(Context(Facts(given), frozenset()))


def test_up(inventory):
    plan = verdict(inventory)
    assert plan.error == "" and plan.reason == "up"
    (row,) = plan.as_data()["report"]["status"]
    assert row["release"] == "20261127T010000Z-ab" and row["release_age"] == 3600
    assert row["web"] == {"slot": "a", "pid": 42, "running": True}
    assert row["timers"]["tick"]["active"] and row["maintenance"] is False


def test_a_stopped_worker_no_release_or_a_failing_app_is_down(inventory):
    stopped = F.UnitState("x", "loaded", "inactive", "enabled", 0)
    assert verdict(inventory, worker=stopped).error == "djk-shop-worker.service not running"
    assert verdict(inventory, health={"status": 502, "seconds": 0.1}).error == "health answered 502"
    assert "no live release" in verdict(inventory, current=None).error
