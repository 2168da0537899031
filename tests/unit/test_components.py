"""The component protocol: the run order derived from what components declare, and a team's
component (tests/memcached_component.py, public imports only) reaching every place the kit's
own components reach — run order, roles, packages, firewall, env file, boot order of the
site's units, `fab status` and the plan."""

from __future__ import annotations

import random
from pathlib import Path

import memcached_component as mc
import pytest

from djk.tasks import Component, components, firewall, status
from djk.tasks.deploy import deploy_plan
from djk.tasks.engine import component as C
from djk.tasks.engine import facts as F
from djk.tasks.engine import procs
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.schema import InventoryError
from djk.tasks.engine.steps import Context, File
from djk.tasks.provision import host_steps
from djk.tasks.release import Build

EXAMPLE = Path(__file__).resolve().parents[2] / "example"
# The order the kit's components ran in when a central list held it.
KIT_ORDER = [
    "provision",
    "firewall",
    "supervisor",
    "lock",
    "database",
    "backups",
    "broker-check",
    "app",
    "celery",
    "redis",
    "rabbitmq",
    "flower",
    "timers",
    "media",
    "maintenance",
    "tls",
    "nginx",
    "multidomain",
    "hooks",
    "notify",
]


def test_the_run_order_derived_from_declarations_is_the_kits():
    assert [c.name for c in components()] == KIT_ORDER


@pytest.mark.parametrize("seed", range(20))
def test_registration_order_does_not_decide_the_run_order(seed):
    shuffled = components()
    random.Random(seed).shuffle(shuffled)
    assert [c.name for c in C.run_order(shuffled)] == KIT_ORDER


def test_a_circle_of_declarations_is_a_defect_named():
    class A(Component):
        name, after = "a", ("b",)

    class B(Component):
        name, after = "b", ("a",)

    with pytest.raises(ValueError, match="circle: a, b"):
        C.run_order([A(), B()])


def inventory(tmp_path, cache_roles=("cache",)):
    (tmp_path / "site.env").write_text("DJANGO_SECRET_KEY=k3y-value-0\n")
    data = {
        "hosts": {
            "web1": {"address": "10.0.0.1", "roles": ["web", "app"]},
            "cache1": {
                "address": "10.0.0.5",
                **({"roles": list(cache_roles)} if cache_roles else {}),
            },
        },
        "sites": {
            "shop": {
                "domains": ["shop.test"],
                "hosts": ["web1", "cache1"],
                "port": 8001,
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "env_file": "site.env",
                "memcached": {"memory": 128},
            }
        },
    }
    return parse(data, tmp_path / "hosts.toml")


def test_a_team_component_takes_its_declared_place(memcached):
    names = [c.name for c in components()]
    assert names.index("memcached") < names.index("app")
    assert [n for n in names if n != "memcached"] == KIT_ORDER


def test_a_team_component_adds_a_role_hosts_toml_may_name(memcached, tmp_path):
    inv = inventory(tmp_path)
    assert inv.hosts["cache1"].role_set == {"cache"}
    assert "cache" not in inv.hosts["web1"].role_set  # roles of its own
    everything = inventory(tmp_path, cache_roles=())  # a host without roles has them all
    assert "cache" in everything.hosts["cache1"].role_set
    mc.uninstall()
    try:
        with pytest.raises(InventoryError, match="roles"):
            inventory(tmp_path)
    finally:
        mc.install()


def test_a_team_component_gets_package_port_opening_and_env(memcached, tmp_path):
    inv = inventory(tmp_path)
    cache, web = inv.hosts["cache1"], inv.hosts["web1"]
    assert memcached.packages(inv, cache) == ["memcached"]
    assert memcached.packages(inv, web) == []
    (opening,) = [o for o in firewall.openings(inv, cache) if o.port == mc.PORT]
    assert opening.sources == ("10.0.0.1",)
    assert memcached.env(inv, inv.sites["shop"]) == {"MEMCACHED_LOCATION": "10.0.0.5:11211"}
    provision = [s.name for s in host_steps(inv, cache)]
    assert "service memcached.service" in provision


def test_the_sites_units_start_after_a_team_service(memcached, tmp_path):
    assert "memcached.service" in procs.backing_units().split()
    inv = inventory(tmp_path)
    web = inv.hosts["web1"]
    build = Build(inv.sites["shop"], "R1", "t1", "d1", "rev")
    plan = deploy_plan(inv, web, {"shop": build})
    units = [
        s
        for phase in plan.phases
        for s in phase.steps
        if isinstance(s, File) and s.path.endswith("-web-a.service")
    ]
    (unit,) = units
    assert "memcached.service" in next(
        line for line in unit.content.splitlines() if line.startswith("After=")
    )


def test_fab_status_shows_a_team_service(memcached, tmp_path):
    inv = inventory(tmp_path)
    cache, site = inv.hosts["cache1"], inv.sites["shop"]
    step = status.SiteStatus(inv, cache, site, 0.0)
    given = {fact: fact.default for fact in step.facts(False)}
    given[F.Unit("memcached.service")] = F.UnitState("x", "loaded", "inactive", "enabled", 0)
    plan = step.plan(Context(F.Facts(given)))
    (row,) = plan.as_data()["report"]["status"]
    assert row["processes"] == {"memcached.service": {"running": False, "pid": 0}}
    assert "memcached.service not running" in plan.error
    given[F.Unit("memcached.service")] = F.UnitState("x", "loaded", "active", "enabled", 7)
    (found,) = status.SiteStatus(inv, cache, site, 0.0).plan(Context(F.Facts(given))).outcomes
    assert ("memcached.service", "pid 7, running") in found.lines
