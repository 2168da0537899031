import subprocess
from pathlib import Path

import jinja2
import pytest

from djk.tasks import app, celery, flower, nginx, release
from djk.tasks.engine import facts as F
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.layout import App, SitePaths
from djk.tasks.engine.render import MANAGED, env_quote, render
from djk.tasks.engine.steps import Context

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


@pytest.fixture
def inventory(tmp_path):
    (tmp_path / "s.env").write_text("DJANGO_SECRET_KEY='a\"b$c`d;e'\n")
    data = {
        "hosts": {"web1": {"address": "10.0.0.1"}},
        "sites": {
            "shop": {
                "domains": ["shop.test", "*.shop.test"],
                "hosts": ["web1"],
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "port": 8005,
                "workers": 3,
                "env_file": "s.env",
            }
        },
    }
    return parse(data, tmp_path / "hosts.toml")


@pytest.fixture
def site(inventory):
    return inventory.sites["shop"]


def test_strict_undefined_is_an_error():
    with pytest.raises(jinja2.UndefinedError):
        render("nginx/site.conf.j2")


def test_every_managed_file_has_the_header(inventory, site):
    paths = SitePaths.of(site)
    for text in (
        nginx.site_files(inventory, site)[0].content,
        render("nginx/default.conf.j2", tls=False),
        render(
            "systemd/web.service.j2", site=site, app=site.part(App), paths=paths, slot="a", after=""
        ),
        render("app/env.j2", entries=[("A", "1")]),
        render(
            "systemd/forward.socket.j2",
            site=site,
            paths=paths,
            bind="10.0.0.2",
            port=8005,
            allow=["10.0.0.1"],
        ),
        render("systemd/forward.service.j2", site=site, paths=paths, proxyd="/p"),
    ):
        assert text.startswith(f"# {MANAGED}")


def test_server_block_and_unit(inventory, site):
    paths = SitePaths.of(site)
    conf = nginx.site_files(inventory, site)[0].content
    assert "server_name shop.test *.shop.test;" in conf
    # The upstream is the live link itself: a switch moves the link, not nginx's config.
    assert f"server unix:{paths.live_socket};" in conf and "keepalive " not in conf
    assert f"root {paths.static};" in conf and "expires 30d;" in conf
    assert "try_files /current/$1 /next/$1 /previous/$1 =404;" in conf
    assert "client_max_body_size 20m;" in conf
    # WebSockets: Upgrade passes through (the map is in the default server), and the read
    # timeout is nginx's own until the site sets one.
    assert "proxy_set_header Connection $djk_connection_upgrade;" in conf
    assert "proxy_read_timeout 60s;" in conf
    files = {s.name: s.content for s in app.unit_files(inventory, site, inventory.hosts["web1"])}
    unit = files["unit djk-shop-web-b.service"]
    assert "--bind unix:/srv/djk/shop/sockets/b.sock " in unit
    assert "WorkingDirectory=/srv/djk/shop/slots/b" in unit
    assert "EnvironmentFile=/srv/djk/shop/slots/b/.djk-release.env" in unit
    assert "User=djk-shop" in unit
    assert "--worker-class uvicorn_worker.UvicornWorker" in unit
    assert "--workers 3" in unit and "Restart=on-failure" in unit
    assert "WantedBy=multi-user.target" in unit
    assert f"EnvironmentFile={paths.env}" in unit
    # Started after the host's broker and database, stopped before them at shutdown.
    assert "After=network.target redis-server.service rabbitmq-server.service postgresql" in unit


def test_env_file_derives_hosts_and_origins_and_holds_secrets(inventory, site):
    entries = dict(app.env_entries(inventory, site))
    assert entries["DJANGO_ALLOWED_HOSTS"] == "shop.test,.shop.test"
    assert "https://*.shop.test" in entries["DJANGO_CSRF_TRUSTED_ORIGINS"].split(",")
    assert "APP_RELEASE" not in entries  # per release, in releases/<id>/.djk-release.env
    assert entries["DJANGO_SECRET_KEY"].reveal() == 'a"b$c`d;e'


@pytest.mark.parametrize("value", ['a"b$c`d e f;{x}|<g', "a'b\\c\"d e;{x}", "", "$ {x}"])
def test_env_quote_means_the_same_to_sh(tmp_path, value):
    env = tmp_path / "env"
    env.write_text(f"X={env_quote(value)}\n")
    out = subprocess.run(
        ["sh", "-c", f'set -a; . {env}; printf %s "$X"'], capture_output=True, text=True
    )
    assert out.stdout == value


def test_planned_scripts_of_a_first_deploy_hold_no_secret(inventory, site):
    """Plan every phase of a first deploy on a fresh host (every fact at its default: nothing
    exists) and look at the scripts that would run: unique step ids, every step has work to
    do, and the secret travels only on stdin (into the 0600 env file), never in a script."""
    from djk.tasks.deploy import DEPLOY_PHASES, compose
    from djk.tasks.engine.component import HostRun
    from djk.tasks.engine.steps import plan_phase

    build = release.new_build(site)
    host = inventory.hosts["web1"]
    run = HostRun(inventory, host, (site,), release.Job.deploy({"shop": build}))
    plan = compose(run, DEPLOY_PHASES)
    steps = [step for phase in plan.phases for step in phase.steps]
    assert len({s.id for s in steps}) == len(steps)
    scripts, payloads = [], []
    for phase in plan.phases:
        facts = F.Facts({fact: fact.default for s in phase.steps for fact in s.facts(False)})
        for _step, planned in plan_phase(phase.steps, Context(facts)):
            scripts += [a.full_script() for a in planned.actions]
            payloads += [a.stdin for a in planned.actions if isinstance(a.stdin, bytes)]
    assert len(scripts) > 10 and any("migrate --noinput" in s for s in scripts)
    assert any(".pyz switch" in s for s in scripts)  # the host agent runs the switch
    assert not [p for p in payloads if b'a"b$c' in p and b'"gate"' in p]  # nor in its input
    assert not [s for s in scripts if 'a"b$c' in s]
    assert any(b"'a\"b$c" in p for p in payloads)  # the env file's content, quoted


@pytest.mark.parametrize("manager", ["systemd", "supervisor"])
def test_a_wsgi_site_runs_gunicorns_own_workers_under_either_manager(tmp_path, manager):
    (tmp_path / "s.env").write_text("DJANGO_SECRET_KEY=k\n")
    data = {
        "hosts": {"web1": {"address": "10.0.0.1", "process_manager": manager}},
        "sites": {
            "blog": {
                "domains": ["blog.test"],
                "hosts": ["web1"],
                "source": str(EXAMPLE),
                "wsgi": "exampleproject.wsgi:application",
                "threads": 8,
                "settings": "exampleproject.settings",
                "port": 8005,
                "env_file": "s.env",
            },
        },
    }
    inventory = parse(data, tmp_path / "hosts.toml")
    site, host = inventory.sites["blog"], inventory.hosts["web1"]
    files = {s.name: s.content for s in app.unit_files(inventory, site, host)}
    name = "unit djk-blog-web-a.service" if manager == "systemd" else "program djk-blog-web-a"
    text = files[name].decode() if isinstance(files[name], bytes) else files[name]
    assert "--worker-class gthread --threads 8" in text and "uvicorn" not in text
    assert " exampleproject.wsgi:application" in text
    assert app.AppComponent().python_packages(site) == list(app.SERVER)  # no uvicorn for WSGI


def test_supervisor_programs_read_the_env_file_in_the_site_users_shell(inventory, site):
    paths = SitePaths.of(site, type("H", (), {"process_manager": "supervisor"})())
    web = render("supervisor/web.conf.j2", site=site, app=site.part(App), paths=paths, slot="a")
    assert web.startswith(f"; {MANAGED}") and "[program:djk-shop-web-a]" in web
    assert f". {paths.env} &&" in web and "user=djk-shop" in web and "autostart=false" in web
    assert "k3y" not in web and "DJANGO_SECRET_KEY" not in web
    boot = render("supervisor/boot.conf.j2", site=site, paths=paths)
    assert "supervisorctl start djk-shop-web-$(basename" in boot and "%" not in boot
    celery = render(
        "supervisor/celery.conf.j2",
        site=site,
        paths=paths,
        role="worker",
        celery=type("C", (), {"app": "x"})(),
        program="w",
        stop_timeout=300,
        command="worker --hostname shop@%H",
    )
    # supervisor expands %(name)s: the host name is its own, a literal % is doubled.
    assert "--hostname shop@%(host_node_name)s" in celery and "stopwaitsecs=300" in celery
    # The warm shutdown's TERM to the main process alone: its pool's would drop their tasks.
    assert "stopasgroup=false" in celery and "killasgroup=true" in celery


@pytest.mark.parametrize("manager", ["systemd", "supervisor"])
def test_only_the_celery_worker_waits_its_stop_timeout(tmp_path, manager):
    """The worker's warm shutdown may take [sites.X.celery] stop_timeout; beat and Flower have
    no task to finish, and one that hangs must not hold a reboot for that long."""
    data = {
        "hosts": {"web1": {"address": "10.0.0.1", "process_manager": manager}},
        "sites": {
            "shop": {
                "domains": ["shop.test"],
                "hosts": ["web1"],
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "port": 8005,
                "settings": "exampleproject.settings",
                "env_file": "s.env",
                "celery": {"app": "exampleproject", "beat": True, "stop_timeout": 600},
                "flower": {"port": 5555},
            },
        },
    }
    (tmp_path / "s.env").write_text("FLOWER_BASIC_AUTH=admin:pw-1234567890\n")
    inventory = parse(data, tmp_path / "hosts.toml")
    site, host = inventory.sites["shop"], inventory.hosts["web1"]
    found = celery.units(site, host) + flower.units(site, host)
    steps = celery.unit_files(inventory, site, host, found, "c")
    files = {s.name.split()[-1]: s.content for s in steps}
    key = "TimeoutStopSec=" if manager == "systemd" else "stopwaitsecs="
    waits = {
        name.split("-")[-1].removesuffix(".service"): int(text.split(key)[1].split()[0])
        for name, text in files.items()
    }
    assert waits == {"worker": 600, "beat": 30, "flower": 30}
    if manager == "systemd":
        assert all("After=network.target redis-server.service " in t for t in files.values())
