"""The health gate asks nothing of the app: a health view that knows nothing of releases passes;
one that answers 500, 400 or 404 is refused before the new slot gets any live request, with the
one-line cause, and the old release keeps serving; an old process squatting on the new slot's
port fails the gate although it answers 200."""

from __future__ import annotations

import itertools

import pytest

from .kit import Project, curl, sh

pytestmark = pytest.mark.e2e
VIEWS = "pages/views.py"
SETTINGS = "exampleproject/settings.py"
_versions = itertools.count(1)

PLAIN_HEALTH = """

def health(request):  # the kind of health view most apps have: no release in it
    return JsonResponse({"ok": True, "version": "v1"})
"""


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site.update(source=str(src), health_path="/health/", health_timeout=8)
    project.write()
    (src / VIEWS).write_text((src / VIEWS).read_text() + PLAIN_HEALTH)
    return project


def bump(src) -> None:
    (src / "VERSION").write_text(f"2.{next(_versions)}.0\n")


def live(host) -> str:
    return sh(host, "readlink /srv/djk/example/current").strip()


def upstream(host) -> str:
    return sh(host, "cat /etc/nginx/djk/example.upstream")


@pytest.fixture(scope="module")
def first(project, fresh_host):
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    assert "switch example" in run.out
    return live(fresh_host)


def test_an_app_whose_health_knows_nothing_of_releases_switches(first, project, fresh_host, src):
    bump(src)
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    assert live(fresh_host) != first
    assert "200 OK" in curl(fresh_host, "/health/")


@pytest.mark.parametrize(
    "change, words",
    [
        ((VIEWS, "\n\ndef health(request):\n    raise RuntimeError('db down')\n"), "HTTP 500"),
        ((SETTINGS, "\nALLOWED_HOSTS = ['somewhere-else.test']\n"), "ALLOWED_HOSTS"),
        (("health_path", "/no-such-page/"), "HTTP 404: nothing at /no-such-page/"),
    ],
    ids=["500", "400", "404"],
)
def test_a_refused_release_never_serves_and_says_why(first, project, fresh_host, src, change,
                                                     words):  # fmt: skip
    before, nginx_upstream = live(fresh_host), upstream(fresh_host)
    bump(src)
    where, text = change
    if where == "health_path":
        project.site["health_path"] = text
        project.write()
        original = None
    else:
        original = (src / where).read_text()
        (src / where).write_text(original + text)
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        if original is None:
            project.site["health_path"] = "/health/"
            project.write()
        else:
            (src / where).write_text(original)
    assert run.code == 1, run.out + run.err
    cause = next(line for line in run.out.splitlines() if "failed its health check" in line)
    assert words in cause and "still serves" in cause, cause
    # The new slot never got a live request: nginx still points where it did, same release.
    assert upstream(fresh_host) == nginx_upstream and live(fresh_host) == before
    assert "200 OK" in curl(fresh_host, "/")


def test_an_old_process_on_the_new_slots_port_fails_the_gate(first, project, fresh_host, src):
    ports = {"8001": "8002", "8002": "8001"}
    idle = ports[upstream(fresh_host).split("127.0.0.1:")[1].split(";")[0]]
    before = live(fresh_host)
    sh(fresh_host, "mkdir -p /tmp/squat/health && echo ok > /tmp/squat/health/index.html")
    sh(fresh_host, f"systemd-run --unit=djk-squatter python3 -m http.server {idle} "
       "--bind 127.0.0.1 --directory /tmp/squat")  # fmt: skip
    try:
        sh(fresh_host, f"for i in $(seq 50); do ss -Hltn 'sport = :{idle}' | grep -q . && "
           "break; sleep 0.1; done")  # fmt: skip
        bump(src)
        run = project.fab("-H", "web1", "deploy")
    finally:
        sh(fresh_host, "systemctl stop djk-squatter || true")
    assert run.code == 1, run.out + run.err
    assert f"port {idle} is held by pid" in run.out and "an old process" in run.out, run.out
    assert live(fresh_host) == before
    again = project.fab("-H", "web1", "deploy")  # with the port free the same release passes
    assert again.code == 0, again.out + again.err
