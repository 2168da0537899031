"""Several Django sites on one host: isolation, routing, redirects, and adding, changing and
removing one site without touching the others."""

from __future__ import annotations

import pytest

from .kit import Load, Project, copy_example, curl, health, sh, web_pid

pytestmark = pytest.mark.e2e


def site(name: str, port: int, source) -> dict:
    return {
        "domains": [f"{name}.test"],
        "hosts": ["web1"],
        "source": str(source),
        "asgi": "exampleproject.asgi:application",
        "settings": "exampleproject.settings",
        "port": port,
        "workers": 1,
        "env_file": "example.env",
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return {name: copy_example(tmp_path_factory, name) for name in ("beta", "gamma", "delta")}


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, sources):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["domains"] = ["example.test", "www.example.test"]
    project.site["redirect_to"] = "example.test"
    project.others = {
        "beta": site("beta", 8011, sources["beta"]),
        "gamma": site("gamma", 8021, sources["gamma"]),
    }
    project.write()
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return project


def status_line(answer: str) -> str:
    return answer.split("\n")[1].strip()


def test_each_domain_reaches_its_own_site(project, fresh_host):
    for name, domain in (
        ("example", "example.test"),
        ("beta", "beta.test"),
        ("gamma", "gamma.test"),
    ):
        before = sh(
            fresh_host, f"journalctl -u 'djk-{name}-web-*' -o cat | grep -c 'GET /health/' || true"
        ).strip()
        assert health(fresh_host, domain)["status"] == "ok"
        after = sh(
            fresh_host, f"journalctl -u 'djk-{name}-web-*' -o cat | grep -c 'GET /health/' || true"
        ).strip()
        assert int(after) == int(before) + 1, name
    assert curl(fresh_host, "/", host_header="nobody.test").startswith("exit=52")


def test_redirect_to_the_canonical_domain(project, fresh_host):
    answer = curl(fresh_host, "/some/page?x=1", host_header="www.example.test")
    assert "301" in status_line(answer)
    assert "Location: http://example.test/some/page?x=1" in answer


def test_a_site_cannot_read_another_sites_secrets_or_source(project, fresh_host):
    beta = "djk-beta"
    for path in (
        "/srv/djk/example/shared/env",
        "/srv/djk/example/current/manage.py",
        "/srv/djk/example/shared/db.sqlite3",
    ):
        done = fresh_host.ssh(f"sudo -n runuser -u {beta} -- cat {path}", check=False)
        assert done.returncode != 0 and "Permission denied" in done.stderr, path
    listing = fresh_host.ssh(f"sudo -n runuser -u {beta} -- ls /srv/djk/example", check=False)
    assert listing.returncode != 0
    # Its own files it can read; nginx (www-data) reads every site's static files.
    assert (
        fresh_host.ssh(
            f"sudo -n runuser -u {beta} -- cat /srv/djk/beta/shared/env", check=False
        ).returncode
        == 0
    )
    assert "HTTP/1.1 200" in curl(fresh_host, "/static/pages/style.css", host_header="beta.test")
    users = {
        sh(fresh_host, f"ps -o user= -p {web_pid(fresh_host, n)}").strip()
        for n in ("example", "beta", "gamma")
    }
    assert users == {"djk-example", "djk-beta", "djk-gamma"}


def test_changing_adding_and_removing_one_site_leaves_the_others_alone(
    project, fresh_host, sources
):
    others = {n: web_pid(fresh_host, n) for n in ("example", "gamma")}
    with (
        Load(fresh_host.address, "example.test") as load_a,
        Load(fresh_host.address, "gamma.test") as load_g,
    ):
        # Change one site: a new release of beta only.
        (sources["beta"] / "VERSION").write_text("2.0.0\n")
        run = project.fab("-H", "web1", "deploy", "--json")
        assert run.code == 0, run.out + run.err
        assert health(fresh_host, "beta.test")["version"] == "2.0.0"
        # Add a site.
        project.others["delta"] = site("delta", 8031, sources["delta"])
        project.write()
        run = project.fab("-H", "web1", "deploy", "--json")
        assert run.code == 0, run.out + run.err
        assert health(fresh_host, "delta.test")["status"] == "ok"
        # Remove it from hosts.toml: the next deploy only reports it, nothing is removed.
        del project.others["delta"]
        project.write()
        run = project.fab("-H", "web1", "deploy")
        assert run.code == 0, run.out + run.err
        assert "delta still deployed" in run.out and "multidomain.remove --site delta" in run.out
        assert health(fresh_host, "delta.test")["status"] == "ok"
        # The explicit command takes it away.
        run = project.fab("-H", "web1", "multidomain.remove", "--site", "delta")
        assert run.code == 0, run.out + run.err
    assert load_a.failures == [] and load_g.failures == []
    assert len(load_a.results) > 20 and len(load_g.results) > 20
    assert {n: web_pid(fresh_host, n) for n in others} == others
    assert curl(fresh_host, "/", host_header="delta.test").startswith("exit=52")
    assert (
        sh(fresh_host, "systemctl list-units --all --no-legend 'djk-delta-*' | wc -l").strip()
        == "0"
    )
    assert sh(fresh_host, "ls /etc/nginx/sites-enabled").split() == [
        "djk-00-default.conf",
        "djk-site-beta.conf",
        "djk-site-example.conf",
        "djk-site-gamma.conf",
    ]
    # Its data stays unless --purge.
    assert sh(fresh_host, "test -d /srv/djk/delta && echo kept").strip() == "kept"
    refused = project.fab("-H", "web1", "multidomain.remove", "--site", "beta")
    assert refused.code == 2 and "still in hosts.toml" in refused.err
    purged = project.fab("-H", "web1", "multidomain.remove", "--site", "delta", "--purge")
    assert purged.code == 0, purged.out + purged.err
    assert sh(fresh_host, "test -d /srv/djk/delta || echo gone").strip() == "gone"
