"""Static files per release, with Django's ManifestStaticFilesStorage: right after a switch the
previous release's files still answer (pages rendered just before it load theirs); a rollback
serves the release it returns to, its manifest and its files byte for byte (a shared static/
would answer 500 there: the newer manifest lacks the deleted file)."""

from __future__ import annotations

import re

import pytest

from .kit import Project, curl, sh

pytestmark = pytest.mark.e2e

MANIFEST = """
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
    },
}
"""
TEMPLATE = "pages/templates/pages/index.html"
EXTRA_LINK = '  <link rel="stylesheet" href="{% static \'pages/extra.css\' %}">\n'
CSS = "pages/static/pages"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    settings = src / "exampleproject/settings.py"
    settings.write_text(settings.read_text() + MANIFEST)
    (src / CSS / "extra.css").write_text("/* v1 only */ body { margin: 1px; }\n")
    page = (src / TEMPLATE).read_text()
    (src / TEMPLATE).write_text(page.replace("</head>", EXTRA_LINK + "</head>"))
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["source"] = str(src)
    project.write()
    return project


def deploy(project) -> None:
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err


def links(page: str) -> dict[str, str]:
    """The page's stylesheets by name: {'style': '/static/pages/style.<hash>.css', ...}."""
    found = re.findall(r'href="(/static/pages/(\w+)\.[0-9a-f]{12}\.css)"', page)
    return {name: url for url, name in found}


def body(host, path: str) -> tuple[str, str]:
    """(status line, body) of a GET through nginx."""
    answer = curl(host, path).split("\n", 1)[1]  # after curl's exit=N line (newlines: \n)
    head, _, text = answer.partition("\n\n")
    return head.split("\n")[0], text


def test_files_per_release_survive_a_switch_and_a_rollback(project, fresh_host, src):
    deploy(project)
    v1_page = curl(fresh_host, "/")
    assert "200 OK" in v1_page, v1_page
    v1 = links(v1_page)
    assert set(v1) == {"style", "extra"}, v1_page
    v1_style = body(fresh_host, v1["style"])
    assert "200" in v1_style[0]

    # v2: style.css changes, extra.css is gone (file and reference).
    (src / "VERSION").write_text("2.0.0\n")
    (src / CSS / "style.css").write_text((src / CSS / "style.css").read_text() + "\n/* v2 */\n")
    (src / CSS / "extra.css").unlink()
    page = (src / TEMPLATE).read_text()
    (src / TEMPLATE).write_text(page.replace(EXTRA_LINK, ""))
    deploy(project)
    v2 = links(curl(fresh_host, "/"))
    assert set(v2) == {"style"} and v2["style"] != v1["style"]
    # Right after the switch, a page rendered by v1 still gets its files.
    for url in v1.values():
        assert "200" in body(fresh_host, url)[0], url
    # Each release has its own directory; nginx serves current, then previous.
    listing = sh(
        fresh_host,
        "ls /srv/djk/example/static; readlink /srv/djk/example/static/current"
        " /srv/djk/example/static/previous",
    )
    assert "current" in listing and "previous" in listing, listing

    run = project.fab("-H", "web1", "rollback")
    assert run.code == 0, run.out + run.err
    page = curl(fresh_host, "/")
    assert "200 OK" in page, page  # v1's manifest has extra.css: no 500
    assert links(page) == v1
    assert body(fresh_host, v1["style"])[1] == v1_style[1]  # byte for byte
    plain = body(fresh_host, "/static/pages/style.css")[1]
    assert "/* v2 */" not in plain  # the unhashed name is v1's file too
    # Only the release returned to: v2's own file is not served any more.
    assert "404" in body(fresh_host, v2["style"])[0]
