"""The production stack on a Debian 13 host: PostgreSQL 17 and RabbitMQ 4 from Debian's
archive (provisioned with no internet on the host), a Django 6 site on them, a Celery task
through RabbitMQ, every server port on loopback, and a second deploy that changes nothing."""

from __future__ import annotations

import pytest

from .kit import Project, health, one_host, sh
from .test_celery import get_json
from .test_debian13 import src6  # noqa: F401  (the Django 6 example)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trixie():
    yield from one_host("e2e13s", 5, "trixie", "s13")


@pytest.fixture(scope="module")
def project(trixie, tmp_path_factory, src6):  # noqa: F811
    project = Project(tmp_path_factory.mktemp("stack13"), [trixie])
    project.site.update(
        source=str(src6),
        python="3.13",
        health_path="/health/",
        database={"engine": "postgresql"},
        celery={"app": "exampleproject", "broker": "rabbitmq"},
    )
    project.write()
    run = project.fab("-H", trixie.name, "provision")
    assert run.code == 0, run.out + run.err
    run = project.fab("-H", trixie.name, "deploy")
    assert run.code == 0, run.out + run.err
    return project


def test_postgresql_17_and_rabbitmq_4_serve_a_django_6_site(project, trixie):
    assert sh(trixie, "pg_lsclusters -h").split()[:4] == ["17", "main", "5432", "online"]
    assert health(trixie)["db"] is True
    tables = sh(
        trixie,
        'runuser -u postgres -- psql -XAtq -d example -c "select count(*) from django_migrations"',
    )
    assert int(tables) > 0
    status, body = get_json(trixie, "/tasks/add/?x=2&y=3")
    assert status == 200 and body["result"] == 5, body
    assert sh(trixie, "dpkg-query -W -f '${Version}' rabbitmq-server").startswith("4.")


def test_every_server_port_is_on_loopback(project, trixie):
    listening = sh(trixie, "ss -Hltn | awk '{print $4}'").split()
    for port in (5432, 5672, 4369, 25672):
        bound = {a.rsplit(":", 1)[0] for a in listening if a.rsplit(":", 1)[1] == str(port)}
        assert bound and bound <= {"127.0.0.1", "[::1]"}, (port, bound)


def test_a_second_deploy_changes_nothing(project, trixie):
    run = project.fab("-H", trixie.name, "deploy", "--json")
    assert run.code == 0, run.out + run.err
    assert run.host(trixie.name)["changed"] == 0
