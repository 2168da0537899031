"""The maintenance page's pure parts: every site's server block carries the switch (a file
test, so on/off reloads nothing), the page escapes the message, on/off are idempotent steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from djk.tasks import maintenance, nginx
from djk.tasks.engine import facts as F
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.steps import Context, PathState, plan_phase, sha256

EXAMPLE = Path(__file__).resolve().parents[2] / "example"
SITE = {
    "domains": ["shop.test"],
    "hosts": ["web1"],
    "source": str(EXAMPLE),
    "port": 8005,
    "asgi": "exampleproject.asgi:application",
    "settings": "exampleproject.settings",
}


@pytest.fixture
def inventory(tmp_path):
    data = {
        "hosts": {"web1": {"address": "10.0.0.1"}},
        "sites": {
            "shop": {**SITE, "health_path": "/up/"},
        },
    }
    return parse(data, tmp_path / "hosts.toml")


def test_every_server_block_answers_503_while_the_page_exists(inventory):
    site = inventory.sites["shop"]
    (block, *_) = nginx.site_files(inventory, site)
    text = block.content
    assert "if (-f /var/lib/djk/maintenance/shop.html)" in text
    assert 'if ($uri = /up/) { set $djk_maintenance ""; }' in text  # the health path passes
    assert "acme-challenge|static" in text
    # A URI: nginx turns a POST into a GET on the way to the page (405 otherwise).
    assert "error_page 503 /.djk-maintenance.html;" in text
    assert "add_header Retry-After 300 always;" in text
    # Before the app's location: nginx's rewrite phase runs the server-level ifs first anyway,
    # but a reader finds the switch above what it switches.
    assert text.index("location = /.djk-maintenance.html") < text.index("location / {")


def test_the_page_escapes_the_message_and_the_template_is_overridable(inventory, tmp_path):
    site = inventory.sites["shop"]
    page = maintenance.page(inventory, site, "Back at <b>noon</b> & later")
    assert "Back at &lt;b&gt;noon&lt;/b&gt; &amp; later" in page
    assert "managed by" in page.lower()
    default = maintenance.page(inventory, site, "")
    assert "try again" in default
    team_dir = tmp_path / "team"  # a team's repository: hosts.toml with templates/ beside it
    own = team_dir / "templates" / "nginx"
    own.mkdir(parents=True)
    (own / "maintenance.html.j2").write_text("<p>{{ site.name }}: {{ message | e }}</p>\n")
    team = parse(
        {"hosts": {"web1": {"address": "10.0.0.1"}}, "sites": {"shop": SITE}},
        team_dir / "hosts.toml",
    )
    assert maintenance.page(team, team.sites["shop"], "x<y") == "<p>shop: x&lt;y</p>\n"


def plan(steps, facts):
    declared = {fact: fact.default for step in steps for fact in step.facts(False)}
    return {s.name: p for s, p in plan_phase(steps, Context(F.Facts({**declared, **facts})))}


def test_on_writes_the_page_once_and_off_removes_it_once(inventory):
    site = inventory.sites["shop"]
    path = maintenance.page_path(site)
    on = maintenance.steps(inventory, site, "on", "soon")
    first = plan(on, {})
    assert [a.summary for a in first["maintenance page shop"].actions]
    content = maintenance.page(inventory, site, "soon")
    there = PathState("file", "644", "root", "root", sha256(content))
    pages = PathState("dir", "755", "root", "root")
    again = plan(on, {F.Stat(path): there, F.Stat(maintenance.PAGES): pages})
    assert all(not p.actions for p in again.values()), again
    off = maintenance.steps(inventory, site, "off", "")
    removed = plan(off, {F.Stat(path): there})["maintenance page shop"]
    assert [a.summary for a in removed.actions] == ["remove"]
    assert not plan(off, {F.Stat(path): None})["maintenance page shop"].actions
