"""The database component's pure parts: SCRAM verifiers, the facts' parsers on recorded psql
output, what pg_hba and listen_addresses say for a topology, the role/database plan, the
env entries, and the inventory's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from djk.tasks import database as D
from djk.tasks.engine import facts as F
from djk.tasks.engine.inventory import InventoryError, parse
from djk.tasks.engine.secrets import Secret
from djk.tasks.engine.steps import Context, plan_phase

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


def inventory(tmp_path, db: dict | None = None, hosts=("web1",), secret: str = ""):
    (tmp_path / "s.env").write_text("DJANGO_SECRET_KEY=k-123456789\n" + secret)
    site = {
        "domains": ["shop.test"],
        "hosts": list(hosts),
        "source": str(EXAMPLE),
        "asgi": "exampleproject.asgi:application",
        "settings": "exampleproject.settings",
        "port": 8001,
        "env_file": "s.env",
    }
    if db is not None:
        site["database"] = db
    data = {
        "hosts": {
            "web1": {"address": "10.213.5.11"},
            "db1": {"address": "10.213.5.20", "roles": ["db"]},
        },
        "sites": {"shop-eu": site},
    }
    return parse(data, tmp_path / "hosts.toml")


def test_scram_verifier_is_checked_by_recomputing_it():
    made = D.scram_verifier("pa55-word", salt=b"0123456789abcdef")
    assert made.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert D.verifies(made, "pa55-word")
    assert not D.verifies(made, "pa55-wordx")
    assert not D.verifies("md5abc", "pa55-word") and not D.verifies("", "x")
    assert D.scram_verifier("x") != D.scram_verifier("x")  # a new salt each time


def test_recorded_psql_output():
    verifier = "SCRAM-SHA-256$4096:a$b:c"
    assert D.PgRole("shop").parse(0, f"role|{verifier}\n") == verifier
    assert D.PgRole("shop").parse(0, "") is None  # no such role
    assert D.PgRole("shop").parse(2, "psql: error: connection refused") is None
    assert D.PgDatabase("shop").parse(0, "shop|default\n") == ("shop", True)
    assert D.PgDatabase("shop").parse(0, "shop|{=Tc/shop,shop=CTc/shop}\n") == ("shop", True)
    assert D.PgDatabase("shop").parse(0, "shop|{shop=CTc/shop}\n") == ("shop", False)
    assert D.PgDatabase("shop").parse(0, "") is None
    online = "15 main 5432 online postgres /var/lib/postgresql/15/main /var/log/postgresql/x.log"
    assert D.PgOnline().parse(0, online + "\n") is True
    assert D.PgOnline().parse(0, online.replace("online", "down")) is False
    assert D.PgOnline().parse(127, "") is None


def test_defaults_and_refusals(tmp_path):
    inv = inventory(tmp_path, {"engine": "postgresql"}, hosts=("web1",))
    db = D.of(inv.sites["shop-eu"])
    assert (db.engine, db.name, db.user, db.keep_backups) == ("postgresql", "shop_eu", "shop_eu", 7)
    assert D.of(inventory(tmp_path, None).sites["shop-eu"]).engine == "sqlite"
    with pytest.raises(InventoryError, match="sites.shop-eu.database.name"):
        inventory(tmp_path, {"engine": "postgresql", "name": "Shop;drop"})
    with pytest.raises(InventoryError, match="sites.shop-eu.database.engine"):
        inventory(tmp_path, {"engine": "external"})  # no DATABASE_URL in the secrets
    with pytest.raises(InventoryError, match="sites.s.hosts: .*db role"):
        parse(
            {
                "hosts": {"a": {"address": "10.0.0.1", "roles": ["web", "app"]}},
                "sites": {
                    "s": {
                        "domains": ["s.test"],
                        "hosts": ["a"],
                        "source": str(EXAMPLE),
                        "asgi": "x.asgi:application",
                        "settings": "x.settings",
                        "port": 8001,
                        "database": {"engine": "postgresql"},
                    }
                },
            },
            tmp_path / "hosts.toml",
        )


def test_a_remote_db_host_listens_on_its_address_and_admits_the_app_hosts_only(tmp_path):
    inv = inventory(tmp_path, {"engine": "postgresql"}, hosts=("db1", "web1"))
    site, db1 = inv.sites["shop-eu"], inv.hosts["db1"]
    assert D.db_host(inv, site).name == "db1"
    assert D.address(inv, site) == "10.213.5.20"
    assert "listen_addresses = 'localhost,10.213.5.20'" in D.listen(inv, db1)
    hba = D.hba(inv, db1)
    assert 'host    "shop_eu" "shop_eu" 10.213.5.11/32 scram-sha-256' in hba
    assert "0.0.0.0" not in hba and "trust" not in hba
    local = inventory(tmp_path, {"engine": "postgresql"}, hosts=("web1",))
    web1 = local.hosts["web1"]
    assert D.address(local, local.sites["shop-eu"]) == "127.0.0.1"
    assert "listen_addresses = 'localhost'" in D.listen(local, web1)
    assert "shop_eu" not in D.hba(local, web1)  # loopback only: Debian's local lines do


def test_the_env_carries_the_url_and_its_parts_as_secrets(tmp_path):
    inv = inventory(
        tmp_path,
        {"engine": "postgresql"},
        hosts=("db1", "web1"),
        secret="DATABASE_PASSWORD=p@ss/w:rd\n",
    )
    env = D.DatabaseComponent().env(inv, inv.sites["shop-eu"])
    assert isinstance(env["DATABASE_URL"], Secret)
    assert (
        env["DATABASE_URL"].reveal()
        == "postgres://shop_eu:p%40ss%2Fw%3Ard@10.213.5.20:5432/shop_eu"
    )
    assert "p@ss" not in str(env) and "DATABASE_PASSWORD" not in env  # a secret of the site
    assert (env["DATABASE_HOST"], env["DATABASE_PORT"]) == ("10.213.5.20", "5432")


def plan(step, facts):
    declared = {fact: fact.default for fact in step.facts(False)}
    ((_, found),) = plan_phase([step], Context(F.Facts({**declared, **facts})))
    return found


def test_role_and_database_plan(tmp_path):
    inv = inventory(tmp_path, {"engine": "postgresql"})
    site = inv.sites["shop-eu"]
    step = D.RoleAndDatabase(site, Secret("s3cret-pw"))
    fresh = plan(step, {D.PgOnline(): True})
    (action,) = fresh.actions
    sql = action.stdin.decode()
    assert 'CREATE ROLE "shop_eu" LOGIN PASSWORD \'SCRAM-SHA-256$4096:' in sql
    assert 'CREATE DATABASE "shop_eu" OWNER "shop_eu";' in sql
    assert 'REVOKE ALL ON DATABASE "shop_eu" FROM PUBLIC;' in sql
    assert "s3cret-pw" not in sql + action.full_script() + action.summary
    done = {
        D.PgOnline(): True,
        D.PgRole("shop_eu"): D.scram_verifier("s3cret-pw"),
        D.PgDatabase("shop_eu"): ("shop_eu", False),
    }
    assert not plan(step, done).actions
    rotated = plan(step, {**done, D.PgRole("shop_eu"): D.scram_verifier("old")})
    assert [a.summary for a in rotated.actions] == ["set the role's password"]
    assert "not installed" in plan(step, {D.PgOnline(): None}).error
