"""The health gate asks nothing of the app: a health view that knows nothing of releases passes;
one that answers 500, 400 or 404 is refused before the new slot gets any live request, with the
one-line cause, and the old release keeps serving; an old process answering 200 on the new
slot's socket is not taken for the release."""

from __future__ import annotations

import itertools
import shlex

import pytest

from .kit import Project, curl, live_slot, sh

pytestmark = pytest.mark.e2e
VIEWS = "pages/views.py"
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
    """What nginx connects to: the site's upstream block and the live link. (The rest of the
    server block may follow hosts.toml: a changed health_path is in the maintenance rule.)"""
    return sh(
        host,
        "sed -n '/^upstream /,/^}/p' /etc/nginx/sites-enabled/djk-site-example.conf; "
        "readlink /srv/djk/example/sockets/live.sock",
    )


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
        # The settings layer sets ALLOWED_HOSTS from the domains: only an override misses.
        (
            (
                "site",
                {
                    "env": {"DJANGO_ALLOWED_HOSTS": "somewhere-else.test"},
                    "env_override": ["DJANGO_ALLOWED_HOSTS"],
                },
            ),
            "ALLOWED_HOSTS",
        ),
        (("site", {"health_path": "/no-such-page/"}), "HTTP 404: nothing at /no-such-page/"),
    ],
    ids=["500", "400", "404"],
)
def test_a_refused_release_never_serves_and_says_why(
    first, project, fresh_host, src, change, words
):
    before, nginx_upstream = live(fresh_host), upstream(fresh_host)
    bump(src)
    where, text = change
    kept = dict(project.site)
    original = None
    if where == "site":
        project.site.update(text)
        project.write()
    else:
        original = (src / where).read_text()
        (src / where).write_text(original + text)
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        if original is None:
            project.site.clear()
            project.site.update(kept)
            project.write()
        else:
            (src / where).write_text(original)
    assert run.code == 1, run.out + run.err
    cause = next(line for line in run.out.splitlines() if "failed its health check" in line)
    assert words in cause and "still serves" in cause, cause
    # The new slot never got a live request: nginx still points where it did, same release.
    assert upstream(fresh_host) == nginx_upstream and live(fresh_host) == before
    assert "200 OK" in curl(fresh_host, "/")


SQUATTER = """
import http.server, os, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"ok": true}')
    def address_string(self): return "unix"
class S(socketserver.UnixStreamServer):
    def get_request(self):
        return super().get_request()[0], ("unix", 0)
if os.path.exists(sys.argv[1]): os.unlink(sys.argv[1])
S(sys.argv[1], H).serve_forever()
"""


def test_an_old_process_on_the_new_slots_socket_is_not_taken_for_the_release(
    first, project, fresh_host, src
):
    """An old process listens at the idle slot's socket and the new gunicorn binds only 3 s
    after its start: the gate's probe reaches the old process first, and its healthy answer is
    not taken for the release's (the socket was not listen()ed by the slot's unit). gunicorn
    then replaces the stale socket and the release passes."""
    idle = {"a": "b", "b": "a"}[live_slot(fresh_host)]
    unit, sock = f"djk-example-web-{idle}", f"/srv/djk/example/sockets/{idle}.sock"
    script = shlex.quote(SQUATTER)
    dropin = f"/etc/systemd/system/{unit}.service.d"
    sh(
        fresh_host,
        f"""set -e
mkdir -p /tmp/squat && printf '%s' {script} > /tmp/squat/old.py
systemd-run --unit=djk-squatter --uid=djk-example python3 /tmp/squat/old.py {sock}
for i in $(seq 50); do [ -S {sock} ] && break; sleep 0.1; done
mkdir -p {dropin}
start=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/{unit}.service)
printf '[Service]\nExecStart=\nExecStart=/bin/sh -c "sleep 3; exec %s"\n' "$start" \
  > {dropin}/slow.conf
""",
    )
    squatter = int(sh(fresh_host, "systemctl show -p MainPID --value djk-squatter").strip())
    try:
        bump(src)
        run = project.fab("-H", "web1", "deploy")
    finally:
        sh(
            fresh_host,
            f"systemctl stop djk-squatter || true; rm -rf {dropin}; systemctl daemon-reload",
        )
    assert run.code == 0, run.out + run.err
    assert f"not yet: {sock} is held by pid {squatter}" in run.out, run.out
    assert "an old process answers there" in run.out
    assert live_slot(fresh_host) == idle
    assert "200 OK" in curl(fresh_host, "/health/")
