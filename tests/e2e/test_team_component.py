"""A team's component from outside the kit (tests/memcached_component.py, public imports only):
memcached on a host with a role of its own (`cache`), provisioned from Debian's archive, bound
where the app host reaches it and opened to that host alone, its address in the site's env
file, the site's Django cache on it, its line in `fab status`, the site's units ordered after
it, and a second deploy that changes nothing."""

from __future__ import annotations

import json

import memcached_component as mc
import pytest

from .kit import Project, sh

pytestmark = pytest.mark.e2e
ROLES = {"web1": ["web", "app"], "web2": ["cache"]}
SETTINGS = """
# The site's cache: memcached where the kit's (the team's) component says.
if os.environ.get("MEMCACHED_LOCATION"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": os.environ["MEMCACHED_LOCATION"],
        }
    }
"""


@pytest.fixture(scope="module")
def memcached():
    mc.install()  # from the team's fabfile, as README shows
    yield mc.MEMCACHED
    mc.uninstall()


@pytest.fixture(scope="module")
def hosts(testbed):
    return testbed.up(list(ROLES))


@pytest.fixture(scope="module")
def project(memcached, hosts, tmp_path_factory, src):
    with (src / "requirements.txt").open("a") as requirements:
        requirements.write("pymemcache==4.0.0\n")
    with (src / "exampleproject" / "settings.py").open("a") as settings:
        settings.write(SETTINGS)
    project = Project(tmp_path_factory.mktemp("project"), hosts)
    project.site.update(source=str(src), memcached={"memory": 32})
    project.host_keys = {name: {"roles": roles} for name, roles in ROLES.items()}
    project.write()
    for task in ("provision", "deploy"):
        run = project.fab("-H", "web1,web2", task)
        assert run.code == 0, run.out + run.err
    return project


def test_memcached_runs_on_the_cache_host_for_the_app_host_alone(project, hosts):
    web, cache = hosts
    assert sh(cache, "systemctl is-active memcached").strip() == "active"
    listening = sh(cache, "ss -Hltn 'sport = :11211'")
    assert f"{cache.address}:11211" in listening and "127.0.0.1:11211" in listening
    rules = sh(cache, "nft list table inet djk")
    assert f"ip saddr {web.address} tcp dport 11211 accept" in rules, rules
    # Not on the app host (its units name memcached.service in After=, which orders nothing
    # where no such unit is installed).
    assert (
        sh(web, "test -e /usr/bin/memcached && echo installed || echo absent").strip() == "absent"
    )


def test_the_sites_django_cache_is_that_memcached(project, hosts):
    web, cache = hosts
    env = sh(web, "cat /srv/djk/example/shared/env")
    assert f"MEMCACHED_LOCATION='{cache.address}:11211'" in env
    code = (
        "from django.conf import settings; from django.core.cache import cache; "
        "cache.set('team', 'set-on-web1', 300); "
        "print(settings.CACHES['default']['LOCATION'], cache.get('team'))"
    )
    run = project.fab("-H", "web1", "app.manage", "--site", "example", "--", "shell", "-c", code)
    assert run.code == 0, run.out + run.err
    assert f"{cache.address}:11211 set-on-web1" in run.out
    # The value is in memcached on the cache host (Django's key: ":1:team").
    read = (
        "import socket; s = socket.create_connection(('127.0.0.1', 11211)); "
        "s.sendall(b'get :1:team\\r\\n'); print(s.recv(512))"
    )
    assert "set-on-web1" in sh(cache, f'python3 -c "{read}"')


def test_the_sites_units_start_after_it(project, hosts):
    web, _ = hosts
    unit = sh(web, "systemctl show -p After --value djk-example-web-a.service")
    assert "memcached.service" in unit.split()


def test_fab_status_shows_it_on_the_cache_host(project):
    run = project.fab("-H", "web2", "status", "--json")
    assert run.code == 0, run.out + run.err
    (row,) = run.host("web2")["extra"]["status"]
    assert row["processes"]["memcached.service"]["running"] is True


def test_a_second_deploy_changes_nothing(project, hosts):
    _, cache = hosts
    pid = sh(cache, "systemctl show -p MainPID --value memcached").strip()
    run = project.fab("-H", "web1,web2", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    for host in json.loads(run.out)["hosts"]:
        changed = [s["step"] for s in host["steps"] if s["status"] == "changed"]
        assert changed == [], (host["host"], changed)
    assert sh(cache, "systemctl show -p MainPID --value memcached").strip() == pid
