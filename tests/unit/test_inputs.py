"""One regression test per input defect of issue 10: what hosts.toml or a secrets file could do
to a rendered file, to a secret or to the one-line error. (The fuzz in test_input_fuzz.py looks
for more of the same; these say exactly what is expected.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from file_readers import dotenv_env, sh_env, systemd_env

from djk.tasks import app, nginx, redis
from djk.tasks.engine import facts as F
from djk.tasks.engine.cli import load_inventory
from djk.tasks.engine.inventory import InventoryError, load, parse
from djk.tasks.engine.report import HostReport, Reporter, StepResult
from djk.tasks.engine.secrets import Secret, load_env_file
from djk.tasks.engine.steps import Context, File, mask_env

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


def base(tmp_path: Path, secrets: str = "DJANGO_SECRET_KEY=s3cret-value-123\n") -> dict:
    (tmp_path / "site.env").write_text(secrets)
    return {
        "defaults": {"user": "deploy"},
        "hosts": {"web1": {"address": "10.213.0.11"}},
        "sites": {
            "shop": {
                "domains": ["shop.test"],
                "hosts": ["web1"],
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "port": 8001,
                "env_file": "site.env",
            }
        },
    }


def refused(tmp_path: Path, data: dict) -> str:
    with pytest.raises(InventoryError) as info:
        parse(data, tmp_path / "hosts.toml")
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and "\x1b" not in message
    return message


def refused_text(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "hosts.toml"
    path.write_bytes(content)
    with pytest.raises(InventoryError) as info:
        load(path)
    return str(info.value)


# -- a trailing newline ($ matches before it) ---------------------------------------------------


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda d: d["defaults"].update(user="deploy\n"), "defaults.user"),
        (lambda d: d["sites"].update({"shop\n": d["sites"].pop("shop")}), 'sites."shop\\n"'),
        (lambda d: d["sites"]["shop"].update(domains=["shop.test", "x\n.test"]), "domains[1]"),
        (lambda d: d["sites"]["shop"].update(domains=["shop.test\n"]), "domains[0]"),
        (lambda d: d["sites"]["shop"].update(asgi="exampleproject.asgi:application\n"), "asgi"),
        (lambda d: d["sites"]["shop"].update(settings="exampleproject.settings\n"), "settings"),
        (lambda d: d["sites"]["shop"].update(celery={"app": "exampleproject\n"}), "celery.app"),
        (
            lambda d: d["sites"]["shop"].update(
                celery={"app": "exampleproject", "queues": ["celery\n"]}
            ),
            "celery.queues[0]",
        ),
        (lambda d: d["sites"]["shop"].update(env={"MODE\n": "1"}), 'env."MODE\\n"'),
    ],
)
def test_a_trailing_newline_is_refused(tmp_path, change, key):
    data = base(tmp_path)
    change(data)
    assert key in refused(tmp_path, data)


def test_a_second_site_cannot_take_a_domain_with_a_newline(tmp_path):
    data = base(tmp_path)
    blog = dict(data["sites"]["shop"], domains=["shop.test\n"], port=8101)
    data["sites"]["blog"] = blog
    assert "sites.blog.domains[0]" in refused(tmp_path, data)


# -- ports ------------------------------------------------------------------------------------


def test_the_app_port_on_redis_port_is_refused(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"].update(port=6379, celery={"app": "exampleproject"})
    message = refused(tmp_path, data)
    assert "port 6379 is already used by Redis on host 'web1'" in message


def test_flower_on_the_app_port_is_refused(tmp_path):
    data = base(tmp_path, "DJANGO_SECRET_KEY=k-12345\nFLOWER_BASIC_AUTH=a:b\n")
    data["sites"]["shop"].update(celery={"app": "exampleproject"}, flower={"port": 8001})
    assert "port 8001 is already used by site 'shop' (the app's forwarder)" in refused(
        tmp_path, data
    )


def test_a_site_port_on_the_ssh_port_is_refused(tmp_path):
    data = base(tmp_path)
    data["hosts"]["web1"]["port"] = 8001
    assert "port 8001 is already used by SSH" in refused(tmp_path, data)


def test_ssh_on_redis_port_is_refused(tmp_path):
    data = base(tmp_path)
    data["hosts"]["web1"]["port"] = 6379
    data["sites"]["shop"]["celery"] = {"app": "exampleproject"}
    assert "hosts.web1.port: port 6379 is used by both SSH and Redis" in refused(tmp_path, data)


# -- the env file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["plain", "a b", "it's", 'say "hi"', "a\\b", "$HOME", "`id`", "a\\$b'", "%n", ""]
)
def test_the_env_file_reads_the_same_in_systemd_sh_and_dotenv_or_is_refused(tmp_path, value):
    data = base(tmp_path)
    data["sites"]["shop"]["env"] = {"VALUE": value}
    try:
        inventory = parse(data, tmp_path / "hosts.toml")
    except InventoryError as exc:
        assert "sites.shop.env.VALUE" in str(exc)
        assert ("'" in value or "\\" in value) and ("$" in value or "`" in value)
        return
    site = inventory.sites["shop"]
    text = app.env_file(inventory, site, inventory.hosts["web1"]).content
    for read in (systemd_env, sh_env, dotenv_env):
        assert read(text)["VALUE"] == value, read.__name__
    (tmp_path / "env").write_text(text)
    out = subprocess.run(
        ["sh", "-c", 'set -a; . "$0"; printf %s "$VALUE"', str(tmp_path / "env")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == value  # and the real sh agrees


def test_dotenv_interpolation_is_refused(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["env"] = {"VALUE": "x${HOME}y"}
    assert "python-dotenv would expand" in refused(tmp_path, data)


def test_an_unparsable_secrets_line_names_the_line_not_its_content():
    with pytest.raises(ValueError) as info:
        load_env_file("A=1\nDB_PASSWORD='unterminated-s3cret\n")
    assert "line 2" in str(info.value) and "s3cret" not in str(info.value)


def test_a_secrets_line_without_equals_is_not_echoed():
    with pytest.raises(ValueError) as info:
        load_env_file("A=1\nsecond_half_of_a_s3cret\n")
    assert "line 2: no =" in str(info.value) and "s3cret" not in str(info.value)


def test_a_secrets_key_with_a_newline_is_refused():
    with pytest.raises(ValueError) as info:
        load_env_file("'KEY\nX'=s3cret\n")
    assert "line 1" in str(info.value) and "s3cret" not in str(info.value)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_secret_with_a_line_separator_is_refused(separator):
    with pytest.raises(ValueError) as info:
        load_env_file(f"TOKEN=abc{separator}s3cret\n")
    assert "line 1" in str(info.value) and "s3cret" not in str(info.value)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_diff_against_a_host_file_with_a_line_separator_shows_no_secret(separator):
    step = File("/s/env", "A='1'\nTOKEN='new'\n", mode="600", secret_keys=("TOKEN",))
    state = F.PathState("file", "600", "root", "root", "0" * 64)
    old = f"A='1'\nTOKEN='abc{separator}s3cret'\n"
    facts = F.Facts({F.Stat("/s/env"): state, F.Content("/s/env"): old})
    (action,) = step.plan(Context(facts, diff=True)).actions
    assert "s3cret" not in action.diff and "secret values changed: TOKEN" in action.diff
    assert "s3cret" not in mask_env(old, ["TOKEN"])


@pytest.mark.parametrize(
    "secrets",
    ["", "# only a comment\n", None],  # emptied, a comment alone, no env_file at all
    ids=["emptied", "comment", "no-env-file"],
)
def test_the_hosts_env_file_is_masked_whatever_the_secrets_file_holds_now(
    tmp_path, secrets, capsys
):
    """The old secrets are on the host: a diff and the JSON report mask every value there,
    also when the inventory names no secret any more."""
    data = base(tmp_path, secrets or "")
    data["sites"]["shop"]["env"] = {"DEBUG_TOOLBAR": "off"}
    if secrets is None:
        del data["sites"]["shop"]["env_file"]
    inventory = parse(data, tmp_path / "hosts.toml")
    step = app.env_file(inventory, inventory.sites["shop"], inventory.hosts["web1"])
    on_host = (
        "DJANGO_SECRET_KEY='old-s3cret-value'\nSTRIPE_KEY='sk_live_s3cret'\n"
        "DEBUG_TOOLBAR='s3cret-before'\n"
    )
    state = F.PathState("file", "600", "shop", "shop", "0" * 64)
    facts = F.Facts({F.Stat(step.path): state, F.Content(step.path): on_host})
    (action,) = step.plan(Context(facts, diff=True)).actions
    assert "s3cret" not in action.diff
    assert "-STRIPE_KEY=********" in action.diff and "+DEBUG_TOOLBAR='off'" in action.diff
    reporter = Reporter("json", secrets=[s for s in inventory.sites["shop"].secrets.values()])
    report = HostReport("web1", [StepResult(step.name, "changed", "", action.diff)])
    reporter.recap([report])
    assert "s3cret" not in capsys.readouterr().out


def test_a_hand_edited_line_of_the_host_file_is_not_shown():
    assert "s3cret" not in mask_env("A='1'\n  continued s3cret\n", ["B"])


def test_json_report_masks_values_not_the_serialized_text():
    reporter = Reporter("json", secrets=[Secret("true"), Secret("changed")])
    report = HostReport("web1", [StepResult("env file", "changed", "true and changed")])
    data = reporter.as_data([report])
    json.loads(json.dumps(data))
    assert data["ok"] is True and data["hosts"][0]["steps"][0]["status"] == "changed"
    assert data["hosts"][0]["steps"][0]["detail"] == "******** and ********"


# -- certificates and keys --------------------------------------------------------------------


CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def with_tls(tmp_path: Path, cert: str, key: str = "key.pem") -> dict:
    data = base(tmp_path)
    (tmp_path / "key.pem").write_text(KEY)
    data["sites"]["shop"]["tls"] = {"cert": cert, "key": key}
    return data


def test_a_certificate_file_holding_a_private_key_is_refused(tmp_path):
    (tmp_path / "both.pem").write_text(CERT + KEY)
    message = refused(tmp_path, with_tls(tmp_path, "both.pem"))
    assert "sites.shop.tls.cert" in message and "also holds a private key" in message


def test_a_der_certificate_is_one_line_error(tmp_path):
    (tmp_path / "cert.der").write_bytes(b"\x30\x82\x01\x0a\xff\xfe")
    assert "not UTF-8 text" in refused(tmp_path, with_tls(tmp_path, "cert.der"))


def test_a_device_as_certificate_is_not_read(tmp_path):
    assert "not a regular file" in refused(tmp_path, with_tls(tmp_path, "/dev/zero"))


# -- errors instead of tracebacks -------------------------------------------------------------


def test_hosts_toml_that_is_not_utf8(tmp_path):
    assert "not UTF-8 text" in refused_text(tmp_path, b"[hosts]\nweb1 = '\xff'\n")


def test_deeply_nested_toml(tmp_path):
    assert "not valid TOML" in refused_text(tmp_path, b"x = " + b"[" * 1000 + b"]" * 1000)


def test_an_integer_of_4301_digits(tmp_path):
    assert "not valid TOML" in refused_text(tmp_path, b"x = " + b"9" * 4301 + b"\n")


@pytest.mark.parametrize(
    "source, words",
    [
        ("/" + "x" * 300, "too long"),
        ("~nosuchuser/x", "nosuchuser"),
        ("/tmp/\x00x", "NUL"),
    ],
)
def test_a_path_no_system_call_takes(tmp_path, source, words):
    data = base(tmp_path)
    data["sites"]["shop"]["source"] = source
    message = refused(tmp_path, data)
    assert "sites.shop.source" in message and words in message


def test_djk_inventory_pointing_at_a_directory(tmp_path, monkeypatch):
    from invoke import Exit

    monkeypatch.setenv("DJK_INVENTORY", str(tmp_path))
    with pytest.raises(Exit) as info:
        load_inventory()
    assert info.value.code == 2 and "is a directory" in str(info.value.message)


# -- error messages ---------------------------------------------------------------------------


def test_values_in_errors_are_escaped_and_shortened(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["health_path"] = "/\x1b[2J\r" + "x" * 5000
    message = refused(tmp_path, data)
    assert "\\x1b[2J\\r" in message and len(message) < 400 and "(5006 characters)" in message


def test_an_empty_key_at_the_top_has_a_key_path(tmp_path):
    data = base(tmp_path)
    data[""] = 1
    assert 'hosts.toml: "": unknown key' in refused(tmp_path, data)


def test_a_key_with_an_escape_sequence_is_shown_escaped(tmp_path):
    data = base(tmp_path)
    data["hosts"]["web1"]["\x1b[31mred"] = 1
    assert 'hosts.web1."\\u001b[31mred": unknown key' in refused(tmp_path, data)


def test_a_bad_queue_is_called_a_queue(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["celery"] = {"app": "exampleproject", "queues": ["a b"]}
    assert "is not a queue name" in refused(tmp_path, data)


# -- the broker, systemd specifiers, IPv6 -----------------------------------------------------


@pytest.mark.parametrize("password", ["two words-123", "", "'quoted'-123", "short"])
def test_a_broker_password_redis_cannot_take_is_refused(tmp_path, password):
    data = base(tmp_path, f'DJANGO_SECRET_KEY=k-12345\nBROKER_PASSWORD="{password}"\n')
    data["sites"]["shop"]["celery"] = {"app": "exampleproject"}
    message = refused(tmp_path, data)
    assert "BROKER_PASSWORD must be" in message and (not password or password not in message)


def test_an_empty_secret_is_false():
    assert not Secret("") and Secret("x")


def test_percent_in_celery_options_is_refused(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["celery"] = {"app": "exampleproject", "options": ["--logfile=%n.log"]}
    assert "sites.shop.celery.options[0]" in refused(tmp_path, data)


def test_ipv6_addresses_are_bracketed_where_a_port_follows(tmp_path):
    data = base(tmp_path, "DJANGO_SECRET_KEY=k-12345\nBROKER_PASSWORD=broker-pw-1\n")
    data["hosts"] = {
        "web1": {"address": "fd00::1", "roles": ["web"]},
        "web2": {"address": "fd00::2", "roles": ["app", "worker"]},
        "web3": {"address": "fd00::3", "roles": ["broker"]},
    }
    data["sites"]["shop"].update(hosts=["web1", "web2", "web3"], celery={"app": "exampleproject"})
    inventory = parse(data, tmp_path / "hosts.toml")
    site = inventory.sites["shop"]
    assert redis.broker_url(site, "fd00::3").startswith("redis://:broker-pw-1@[fd00::3]:6379/")
    units = app.unit_files(inventory, site, inventory.hosts["web2"])
    assert "\nListenStream=[fd00::2]:8001\n" in units[2].content
    assert nginx.upstream_servers(inventory, site) == ["[fd00::2]:8001"]


def test_an_ipv6_zone_is_refused(tmp_path):
    data = base(tmp_path)
    data["hosts"]["web1"]["address"] = "fe80::1%eth0"
    assert "hosts.web1.address" in refused(tmp_path, data)


# -- what env and the secrets may set ---------------------------------------------------------


def test_env_may_not_override_what_the_kit_derives_unless_allowed(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["env"] = {"DJANGO_ALLOWED_HOSTS": "*"}
    message = refused(tmp_path, data)
    assert "sites.shop.env.DJANGO_ALLOWED_HOSTS" in message and "env_override" in message
    data["sites"]["shop"]["env_override"] = ["DJANGO_ALLOWED_HOSTS"]
    inventory = parse(data, tmp_path / "hosts.toml")
    entries = dict(app.env_entries(inventory, inventory.sites["shop"]))
    assert entries["DJANGO_ALLOWED_HOSTS"] == "*"


def test_secrets_may_not_override_what_the_kit_derives(tmp_path):
    data = base(tmp_path, "DJANGO_SECRET_KEY=k-12345\nDJANGO_SETTINGS_MODULE=x.settings\n")
    assert "DJANGO_SETTINGS_MODULE in the secrets file" in refused(tmp_path, data)


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "IFS",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONINSPECT",
    ],
)
def test_variables_that_change_how_code_runs_are_refused(tmp_path, name):
    data = base(tmp_path)
    data["sites"]["shop"]["env"] = {name: "/tmp"}
    data["sites"]["shop"]["env_override"] = []
    assert f"{name} in env" in refused(tmp_path, data)
    data = base(tmp_path, f"DJANGO_SECRET_KEY=k-12345\n{name}=/tmp\n")
    assert f"{name} in the secrets file" in refused(tmp_path, data)


def test_requirements_must_stay_inside_source(tmp_path):
    data = base(tmp_path)
    data["sites"]["shop"]["requirements"] = "../README.md"
    assert "is outside source" in refused(tmp_path, data)


def test_a_secret_removed_from_the_secrets_file_stays_masked_in_the_diff():
    """The host's file still holds the old secret's line; the new file has no such name (or not
    as a secret): its old value must not show as a removed line."""
    step = File("/s/env", "A='1'\nNEW='x'\n", mode="600", secret_keys=("NEW",))
    state = F.PathState("file", "600", "root", "root", "0" * 64)
    old = "A='1'\nGONE='old-s3cret'\n"
    facts = F.Facts({F.Stat("/s/env"): state, F.Content("/s/env"): old})
    (action,) = step.plan(Context(facts, diff=True)).actions
    assert "old-s3cret" not in action.diff and "-GONE=********" in action.diff


# -- issue 24: every component's keys for the file they reach ----------------------------------


def _split(data: dict, web: str = "10.213.0.11", app_host: str = "10.213.0.12", **app) -> None:
    data["hosts"] = {
        "web1": {"address": web, "roles": ["web"]},
        "app1": {"address": app_host, "roles": ["app", "worker", "broker", "db"], **app},
    }
    data["sites"]["shop"]["hosts"] = ["web1", "app1"]


def _site(**keys):
    return lambda data: data["sites"]["shop"].update(keys)


POSTGRES = _site(database={"engine": "postgresql"})
RABBITMQ = _site(celery={"app": "exampleproject", "broker": "rabbitmq"})
SECRET = "DJANGO_SECRET_KEY=s3cret-value-123\n"

# (id, change to hosts.toml, secrets file, key path the error names, words it says)
REFUSED_24 = [
    (
        "timer-nul",
        _site(timers={"t": {"command": "a\x00b", "schedule": "daily"}}),
        SECRET,
        "sites.shop.timers.t.command",
        "an argument holds a control character",
    ),
    (
        "timer-newline",
        _site(timers={"t": {"command": "'a\nb'", "schedule": "daily"}}),
        SECRET,
        "sites.shop.timers.t.command",
        "an argument holds a control character",
    ),
    (
        "timer-quote",
        _site(timers={"t": {"program": "bin/x 'a", "schedule": "daily"}}),
        SECRET,
        "sites.shop.timers.t.program",
        "No closing quotation",
    ),
    (
        "app-host-by-name",
        lambda d: _split(d, app_host="app1.internal"),
        SECRET,
        "hosts.app1.address",
        "give hosts.app1.private_address",
    ),
    (
        "web-host-by-name",
        lambda d: _split(d, web="web1.internal"),
        SECRET,
        "hosts.web1.address",
        "give hosts.web1.private_address",
    ),
    (
        "private-address-a-name",
        lambda d: _split(d, private_address="app1.internal"),
        SECRET,
        "hosts.app1.private_address",
        "is not an IP address",
    ),
    (
        "database-url-kept-password",
        POSTGRES,
        SECRET + "DATABASE_URL=postgres://x@y/z\n",
        "sites.shop.env_file",
        'add "DATABASE_URL" to sites.shop.env_override',
    ),
    (
        "database-host-kept-password",
        POSTGRES,
        SECRET + "DATABASE_HOST=db.internal\n",
        "sites.shop.env_file",
        'add "DATABASE_HOST" to sites.shop.env_override',
    ),
    (
        "broker-url-kept-password",
        RABBITMQ,
        SECRET + "CELERY_BROKER_URL=amqp://x\n",
        "sites.shop.env_file",
        'add "CELERY_BROKER_URL" to sites.shop.env_override',
    ),
    (
        "empty-database-password",
        POSTGRES,
        SECRET + "DATABASE_PASSWORD=\n",
        "sites.shop.env_file",
        "DATABASE_PASSWORD is empty",
    ),
    (
        "empty-broker-password",
        RABBITMQ,
        SECRET + "BROKER_PASSWORD=\n",
        "sites.shop.env_file",
        "BROKER_PASSWORD is empty",
    ),
    (
        "ssh-on-80",
        lambda d: d["hosts"]["web1"].update(port=80),
        SECRET,
        "hosts.web1.port",
        "port 80 is used by both SSH and nginx (HTTP)",
    ),
    (
        "ssh-on-443",
        lambda d: d["hosts"]["web1"].update(port=443),
        SECRET,
        "hosts.web1.port",
        "port 443 is used by both SSH and nginx (HTTPS)",
    ),
    (
        "flower-on-redis",
        _site(celery={"app": "exampleproject"}, flower={"port": 6379}),
        SECRET + "FLOWER_BASIC_AUTH=admin:pw-123456\n",
        "sites.shop.flower.port",
        "port 6379 is already used by Redis",
    ),
    (
        "env-override-huge",
        _site(env_override=["X" * 5000]),
        SECRET,
        "sites.shop.env_override[0]",
        "... (5000 characters) is not a variable the kit derives",
    ),
    (
        "requirements-too-long",
        _site(requirements="r" * 300),
        SECRET,
        "sites.shop.requirements",
        "does not exist",
    ),
    (
        "webhook-name-huge",
        _site(notify={"url_secret": "U" * 5000}),
        SECRET,
        "sites.shop.notify.url_secret",
        "... (5000 characters) (the webhook's URL)",
    ),
]


@pytest.mark.parametrize(
    "change, secrets, key, words", [c[1:] for c in REFUSED_24], ids=[c[0] for c in REFUSED_24]
)
def test_each_value_is_checked_for_the_file_it_reaches(tmp_path, change, secrets, key, words):
    data = base(tmp_path, secrets)
    change(data)
    message = refused(tmp_path, data)
    assert f"hosts.toml: {key}: " in message and words in message, message
    assert len(message) < 400, message


def test_a_timer_argument_with_a_semicolon_reaches_the_agent_whole_under_supervisor(tmp_path):
    """supervisord takes ` ;` and ` #` for the start of a comment, inside quotes too."""
    from file_readers import supervisor_programs

    from djk.tasks import timers

    data = base(tmp_path)
    data["hosts"]["web1"]["process_manager"] = "supervisor"
    command = "report 'a ;b' 'c #d' '50%'"
    data["sites"]["shop"]["timers"] = {"t": {"command": command, "schedule": "daily"}}
    inventory = parse(data, tmp_path / "hosts.toml")
    site, host = inventory.sites["shop"], inventory.hosts["web1"]
    (job,) = timers.wanted_here(inventory, site, host)
    files = [s for s in timers.job_files(inventory, site, host, job) if isinstance(s, File)]
    (conf,) = [f for f in files if f.path.endswith(".conf")]
    (program,) = supervisor_programs(conf.content).values()
    assert json.loads(program["argv"][-1])["argv"] == timers.exec_argv(site, job)
    assert timers.exec_argv(site, job)[-3:] == ["a ;b", "c #d", "50%"]


def test_peers_reach_a_host_at_its_private_address(tmp_path):
    data = base(tmp_path)
    _split(data, web="198.51.100.1", app_host="198.51.100.2", private_address="10.0.0.2")
    data["hosts"]["web1"]["private_address"] = "10.0.0.1"
    inventory = parse(data, tmp_path / "hosts.toml")
    site, app_host = inventory.sites["shop"], inventory.hosts["app1"]
    assert app_host.connect_to == "198.51.100.2"  # SSH from the control machine
    units = {
        s.path: s.content for s in app.unit_files(inventory, site, app_host) if isinstance(s, File)
    }
    socket = units["/etc/systemd/system/djk-shop-forward.socket"]
    assert "ListenStream=10.0.0.2:8001" in socket
    assert "IPAddressAllow=10.0.0.1 10.0.0.2 127.0.0.0/8" in socket
    upstream = nginx.upstream_servers(inventory, site)
    assert upstream == ["10.0.0.2:8001"]
