from pathlib import Path

import pytest

from djk.tasks import multidomain
from djk.tasks.celery import Celery
from djk.tasks.engine.inventory import InventoryError, load, parse
from djk.tasks.engine.layout import App
from djk.tasks.flower import Flower
from djk.tasks.tls import Tls

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


def base(tmp_path: Path) -> dict:
    (tmp_path / "site.env").write_text("DJANGO_SECRET_KEY=s3cret-value-123\n")
    return {
        "defaults": {"user": "deploy", "target": "web"},
        "hosts": {"web1": {"address": "10.213.0.11"}, "web2": {"address": "10.213.0.12"}},
        "groups": {"web": ["web1", "web2"]},
        "sites": {
            "shop": {
                "domains": ["shop.test", "www.shop.test"],
                "hosts": ["web"],
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "port": 8001,
                "env_file": "site.env",
                "env": {"DJANGO_DEBUG": "0"},
            }
        },
    }


def error(tmp_path: Path, data: dict) -> str:
    with pytest.raises(InventoryError) as info:
        parse(data, tmp_path / "hosts.toml")
    return str(info.value)


def test_valid_inventory_resolves_sites_groups_and_secrets(tmp_path):
    inv = parse(base(tmp_path), tmp_path / "hosts.toml")
    shop = inv.sites["shop"]
    assert shop.hosts == ("web1", "web2")
    assert shop.user == "djk-shop"
    assert shop.part(App).requirements == EXAMPLE / "requirements.txt"
    assert str(shop.secrets["DJANGO_SECRET_KEY"]) == "********"
    assert shop.secrets["DJANGO_SECRET_KEY"].reveal() == "s3cret-value-123"
    assert "s3cret" not in repr(shop)
    assert [h.name for h in inv.resolve(None)] == ["web1", "web2"]
    assert [h.name for h in inv.resolve("web2,web")] == ["web2", "web1"]


def test_resolve_accepts_address_alias_and_plain_host(tmp_path):
    data = base(tmp_path)
    data["hosts"]["web2"] = {"ssh_alias": "prod-web2"}
    inv = parse(data, tmp_path / "hosts.toml")
    assert inv.resolve("10.213.0.11")[0].name == "web1"
    assert inv.resolve("prod-web2")[0].name == "web2"
    adhoc = inv.resolve("root@192.0.2.7:2222")[0]
    assert (adhoc.name, adhoc.user, adhoc.port, adhoc.in_inventory) == (
        "192.0.2.7",
        "root",
        2222,
        False,
    )
    assert inv.sites_on(adhoc) == []


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["hosts"]["web1"].update(colour="red"), "hosts.web1.colour: unknown key"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d["hosts"]["web1"].update(port="22"), "hosts.web1.port: must be an integer"),
        (lambda d: d["hosts"]["web1"].update(port=True), "hosts.web1.port: must be an integer"),
        (lambda d: d["hosts"]["web1"].pop("address"), "hosts.web1.address: is required"),
        (lambda d: d["sites"]["shop"].pop("asgi"), "sites.shop.asgi: is required"),
        (lambda d: d["sites"]["shop"].update(hosts=["nope"]), "sites.shop.hosts[0]: unknown host"),
        (lambda d: d["groups"].update(db=["web1", "db9"]), "groups.db[1]: unknown host 'db9'"),
        (lambda d: d["groups"].update(web1=["web2"]), "groups.web1: a host is already named"),
        (lambda d: d["defaults"].update(target="prod"), "defaults.target: unknown host or group"),
        (lambda d: d["sites"]["shop"].update(port=80), "sites.shop.port: 80 is not between 1024"),
        (lambda d: d["sites"]["shop"].update(workers=0), "sites.shop.workers: 0 is not between"),
        (lambda d: d["sites"]["shop"].update(asgi="x; rm"), "sites.shop.asgi: 'x; rm' is not"),
        (lambda d: d["sites"]["shop"].update(source="nowhere"), "sites.shop.source:"),
        (lambda d: d["sites"]["shop"].update(env_file="missing.env"), "sites.shop.env_file:"),
        (lambda d: d["sites"].update({"Bad_Name": {}}), "sites.Bad_Name: site name 'Bad_Name'"),
        (lambda d: d["sites"]["shop"].update(domains=[]), "sites.shop.domains: must not be empty"),
        (
            lambda d: d["sites"]["shop"].update(domains=["a.test", "a.test"]),
            "sites.shop.domains: lists the same value twice",
        ),
        (
            lambda d: d["sites"]["shop"]["env"].update({"BAD KEY": "1"}),
            "sites.shop.env.\"BAD KEY\": 'BAD KEY' is not a valid environment variable name",
        ),
        (
            lambda d: d["sites"]["shop"]["env"].update(X="a\nInjected=1"),
            "sites.shop.env.X: contains a newline",
        ),
        (
            lambda d: d["sites"]["shop"].update(health_path="/h ealth"),
            "sites.shop.health_path:",
        ),
        (lambda d: d["sites"]["shop"].update(max_body_size="1m;"), "sites.shop.max_body_size:"),
        (lambda d: d["sites"]["shop"].update(read_timeout="1h;"), "sites.shop.read_timeout:"),
        (lambda d: d["sites"]["shop"].update(read_timeout="0"), "sites.shop.read_timeout:"),
        # Two app hosts (the base site runs on web1 and web2) would keep half the uploads each.
        (lambda d: d["sites"]["shop"].update(media={}), "sites.shop.media.path: uploads would"),
        (
            lambda d: d["sites"]["shop"].update(media={"path": "/mnt/x/../y"}),
            "sites.shop.media.path:",
        ),
        (lambda d: d["sites"]["shop"].update(media={"url": "/"}), "sites.shop.media.url:"),
        (lambda d: d["sites"]["shop"].update(media={"url": "/m"}), "sites.shop.media.url:"),
        (lambda d: d["sites"]["shop"].update(migrate_on="all"), "sites.shop.migrate_on:"),
        (lambda d: d["sites"]["shop"].update(keep_releases=0), "sites.shop.keep_releases:"),
    ],
)
def test_each_error_names_file_key_and_problem(tmp_path, mutate, expected):
    data = base(tmp_path)
    mutate(data)
    message = error(tmp_path, data)
    assert message.startswith(f"{tmp_path / 'hosts.toml'}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "domain",
    [
        "shop.test;",
        "shop.test }",
        "shop.test{",
        'shop"test',
        "shop test",
        "shop.test\nserver_name evil",
        "-shop.test",
        "shop..test",
        "a.*.test",
        "*",
        "shop.test'",
        "",
    ],
)
def test_domains_cannot_inject_directives(tmp_path, domain):
    data = base(tmp_path)
    data["sites"]["shop"]["domains"] = [domain]
    assert "sites.shop.domains[0]:" in error(tmp_path, data)


def test_wildcard_and_plain_domains_are_accepted(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["domains"] = ["*.Shop.test", "shop-1.example.co.uk", "localhost"]
    inv = parse(data, tmp_path / "hosts.toml")
    assert inv.sites["shop"].domains == ("*.shop.test", "shop-1.example.co.uk", "localhost")


def test_same_domain_or_port_twice_on_a_host_is_rejected(tmp_path):
    data = base(tmp_path)
    data["sites"]["blog"] = dict(data["sites"]["shop"], domains=["blog.test"], port=8003)
    parse(data, tmp_path / "hosts.toml")
    data["sites"]["blog"]["domains"] = ["blog.test", "www.shop.test"]
    assert "sites.blog.domains[1]: www.shop.test is already served by site 'shop'" in error(
        tmp_path, data
    )
    data["sites"]["blog"]["domains"] = ["blog.test"]
    data["sites"]["blog"]["port"] = 8001  # shop's
    assert "sites.blog.port: port 8001 is already used by site 'shop'" in error(tmp_path, data)
    data["sites"]["blog"]["port"] = 8002  # the slots use unix sockets: port + 1 is free
    parse(data, tmp_path / "hosts.toml")


def test_bad_secret_file_names_the_key(tmp_path):
    data = base(tmp_path)
    (tmp_path / "site.env").write_text('OK=1\nBAD="line1\nline2"\n')
    assert "sites.shop.env_file:" in error(tmp_path, data)
    assert "BAD" in error(tmp_path, data)


def test_toml_errors_and_duplicate_keys_are_one_line(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text('[hosts.web1]\naddress = "10.0.0.1"\n[hosts.web1]\naddress = "10.0.0.2"\n')
    with pytest.raises(InventoryError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: not valid TOML")
    with pytest.raises(InventoryError, match="file not found"):
        load(tmp_path / "absent.toml")


def test_unknown_target_is_an_error(tmp_path):
    inv = parse(base(tmp_path), tmp_path / "hosts.toml")
    with pytest.raises(InventoryError, match="not a host, group, ssh alias or address"):
        inv.resolve("web1,bad name!")


def test_repository_inventory_is_valid():
    inv = load(Path(__file__).resolve().parents[2] / "hosts.toml", read_secrets=False)
    assert inv.sites["example"].hosts == ("web1",)


def test_celery_and_flower_settings_are_validated(tmp_path):
    data = base(tmp_path)
    shop = data["sites"]["shop"]
    shop["celery"] = {"app": "exampleproject", "options": ["--max-tasks-per-child=50"]}
    shop["flower"] = {"port": 5555}
    assert "needs FLOWER_BASIC_AUTH" in error(tmp_path, data)
    (tmp_path / "site.env").write_text(
        "DJANGO_SECRET_KEY=x1234\nFLOWER_BASIC_AUTH=a:b\nBROKER_PASSWORD=pw-123456\n"
    )
    site = parse(data, tmp_path / "hosts.toml").sites["shop"]
    assert site.part(Celery).options == ("--max-tasks-per-child=50",)
    assert site.part(Flower).port == 5555
    assert [p for p, _, _ in multidomain.ports(site)] == [8001, 5555]
    shop["celery"]["options"] = ["--queues x; rm -rf /"]
    assert "sites.shop.celery.options[0]:" in error(tmp_path, data)
    shop["celery"]["options"] = []
    shop["celery"]["broker"] = "external"
    assert 'sites.shop.celery.broker: is "external": put CELERY_BROKER_URL' in error(tmp_path, data)
    shop["celery"]["broker"] = "local"
    del shop["celery"]
    assert "sites.shop.flower: needs [sites.<name>.celery]" in error(tmp_path, data)


def test_two_sites_on_one_local_redis_need_their_own_db(tmp_path):
    data = base(tmp_path)
    # Two hosts, one broker (the first): the other host reaches it with a password.
    (tmp_path / "site.env").write_text("DJANGO_SECRET_KEY=x1234\nBROKER_PASSWORD=pw-123456\n")
    celery = {"app": "exampleproject"}
    data["sites"]["shop"]["celery"] = dict(celery)
    data["sites"]["blog"] = dict(
        data["sites"]["shop"], domains=["blog.test"], port=8003, celery=dict(celery)
    )
    assert "sites.blog.celery.redis_db: redis db 0 is already used by site 'shop'" in error(
        tmp_path, data
    )
    data["sites"]["blog"]["celery"]["redis_db"] = 1
    parse(data, tmp_path / "hosts.toml")


def test_tls_files_must_hold_pem(tmp_path):
    data = base(tmp_path)
    (tmp_path / "cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    )
    (tmp_path / "key.pem").write_text("not a key")
    data["sites"]["shop"]["tls"] = {"cert": "cert.pem", "key": "key.pem"}
    assert "sites.shop.tls.key:" in error(tmp_path, data) and "no PEM" in error(tmp_path, data)
    (tmp_path / "key.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
    )
    site = parse(data, tmp_path / "hosts.toml").sites["shop"]
    assert str(site.part(Tls).key) == "********" and "MIIE" not in repr(site)
    data["sites"]["shop"]["redirect_to"] = "nope.test"
    assert "sites.shop.redirect_to: 'nope.test' must be one of the site's domains" in error(
        tmp_path, data
    )


def test_a_broker_serving_other_hosts_needs_a_password(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["celery"] = {"app": "exampleproject"}
    assert "sites.shop.env_file: the broker serves other hosts: put BROKER_PASSWORD" in error(
        tmp_path, data
    )
    data["hosts"]["web2"]["roles"] = ["web"]  # one app/worker/broker host: loopback will do
    parse(data, tmp_path / "hosts.toml")
    data["hosts"]["web2"]["roles"] = ["cache"]
    assert "hosts.web2.roles[0]: 'cache' is not one of" in error(tmp_path, data)


def test_acme_settings_are_validated(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["tls"] = {"mode": "acme", "email": "ops@shop.test"}
    site = parse(data, tmp_path / "hosts.toml").sites["shop"]
    assert site.part(Tls).server.startswith("https://acme-v02.api.letsencrypt.org")
    data["sites"]["shop"]["tls"]["email"] = "not an address"
    assert "sites.shop.tls.email:" in error(tmp_path, data)
    data["sites"]["shop"]["tls"] = {"mode": "acme", "email": "a@b.test", "server": "http://x"}
    assert "sites.shop.tls.server: 'http://x' is not an https:// URL" in error(tmp_path, data)
    data["sites"]["shop"]["tls"] = {"mode": "acme", "email": "a@b.test"}
    data["sites"]["shop"]["domains"] = ["*.shop.test"]
    assert "sites.shop.tls.mode: ACME over http-01 cannot cover a wildcard" in error(tmp_path, data)


def test_an_environment_names_its_own_inventory(tmp_path, monkeypatch):
    from invoke import Exit

    from djk.tasks.engine.cli import inventory_path

    (tmp_path / "hosts.toml").write_text("")
    (tmp_path / "hosts.staging.toml").write_text("")
    (tmp_path / "sub").mkdir()
    monkeypatch.delenv("DJK_INVENTORY", raising=False)
    monkeypatch.delenv("DJK_ENV", raising=False)
    assert inventory_path(start=tmp_path / "sub") == tmp_path / "hosts.toml"
    monkeypatch.setenv("DJK_ENV", "staging")
    assert inventory_path(start=tmp_path / "sub") == tmp_path / "hosts.staging.toml"
    monkeypatch.setenv("DJK_ENV", "production")
    with pytest.raises(Exit, match="no hosts.production.toml in"):
        inventory_path(start=tmp_path / "sub")
    monkeypatch.setenv("DJK_ENV", "../etc")
    with pytest.raises(Exit, match="an environment name is"):
        inventory_path(start=tmp_path)


def test_media_on_one_host_or_on_a_shared_path(tmp_path):
    from djk.tasks import nginx
    from djk.tasks.media import Media

    data = base(tmp_path)
    data["sites"]["shop"].update(hosts=["web1"], media={})
    inv = parse(data, tmp_path / "hosts.toml")
    shop = inv.sites["shop"]
    assert shop.part(Media) == Media("/media/", "/srv/djk/shop/media", shared=False)
    block = nginx.site_files(inv, shop)[0].content
    assert "location ^~ /media/ {" in block and "alias /srv/djk/shop/media/;" in block
    assert "add_header X-Content-Type-Options nosniff always;" in block
    assert "proxy_pass" not in block.split("location ^~ /media/ {")[1].split("}")[0]
    data = base(tmp_path)  # two app hosts: fine with a filesystem they share
    data["sites"]["shop"].update(media={"path": "/mnt/shared/shop", "url": "/files/"})
    shop = parse(data, tmp_path / "hosts.toml").sites["shop"]
    assert shop.part(Media) == Media("/files/", "/mnt/shared/shop", shared=True)
