"""The kit as a library: pip-installed into a fresh venv outside the checkout, used from a team's
own directory that holds only a fabfile, a hosts.toml and a secrets file, with a component of
the team's own registered from that fabfile."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from .kit import SECRET, copy_example, curl, sh, team_fab

pytestmark = pytest.mark.e2e

TEAM_FABFILE = '''
"""The team's fabfile: the kit's tasks, and a component of the team's own."""

from dataclasses import dataclass

from djk.tasks import Component, Key, Keys, Kind, NginxPart, ns, register  # noqa: F401
from djk.tasks.engine.steps import Directory, File


@dataclass(frozen=True)
class Banner:
    text: str


def banner_text(value: str) -> str:
    if not value or len(value) > 60 or not all(c.isalnum() or c in " .,!-" for c in value):
        raise ValueError(f"{value!r} is not a banner (letters, digits, spaces and .,!- only)")
    return value


BANNER = Kind("banner", str, "letters, digits, spaces and .,!-, at most 60", banner_text)


class BannerComponent(Component):
    """[sites.<name>.banner]: a text nginx answers at /banner, in the env and in a file."""

    name = "banner"
    table = "banner"
    keys = Keys(Banner, (Key("text", BANNER, help="what nginx answers at /banner"),))
    roles = ("web",)

    def packages(self, inventory, host):
        return ["curl"] if any(s.part(Banner) for s in inventory.sites_on(host)) else []

    def env(self, inventory, site):
        banner = site.part(Banner)
        return {"BANNER_TEXT": banner.text} if banner else {}

    def nginx(self, inventory, site):
        banner = site.part(Banner)
        if banner is None:
            return NginxPart()
        return NginxPart(
            server=[
                "location = /banner {\\n"
                "    default_type text/plain;\\n"
                f'    return 200 "{banner.text}\\\\n";\\n'
                "}\\n"
            ]
        )

    def steps(self, phase, run):
        if phase != "stage" or not self.runs_on(run.host):
            return []
        files = [
            File(f"/etc/djk-banner/{s.name}.txt", s.part(Banner).text + "\\n", name="banner")
            for s in run.sites
            if s.part(Banner)
        ]
        return [Directory("/etc/djk-banner"), *files] if files else []


register(BannerComponent())
'''


@pytest.fixture(scope="module")
def team(fresh_host, tmp_path_factory) -> Path:
    """The team's repository: a fabfile, hosts.toml and secrets/, nothing of the kit."""
    directory = tmp_path_factory.mktemp("team")
    source = copy_example(tmp_path_factory, "teamsrc")
    (directory / "fabfile.py").write_text(TEAM_FABFILE)
    (directory / "secrets").mkdir(mode=0o700)
    (directory / "secrets/example.env").write_text(f"DJANGO_SECRET_KEY={SECRET}\n")
    (directory / "known_hosts").write_text(fresh_host.known_hosts_line() + "\n")
    (directory / "hosts.toml").write_text(
        textwrap.dedent(
            f"""\
            [defaults]
            user = "deploy"
            target = "web1"

            [hosts.web1]
            address = "{fresh_host.address}"
            ssh_key = "{fresh_host.key_path}"

            [sites.example]
            domains = ["example.test"]
            hosts = ["web1"]
            source = "{source}"
            asgi = "exampleproject.asgi:application"
            settings = "exampleproject.settings"
            port = 8001
            env_file = "secrets/example.env"

            [sites.example.banner]
            text = "Hello from the team"
            """
        )
    )
    (directory / "docs").mkdir()
    return directory


def test_the_kit_installs_as_one_namespaced_package(kit_venv):
    site = next((kit_venv / "lib").glob("python3*/site-packages"))
    assert (site / "djk/tasks/engine/executor.py").is_file()
    assert (site / "djk/templates/nginx/site.conf.j2").is_file()
    for generic in ("tasks", "templates", "testbed", "bench", "fabfile.py"):
        assert not (site / generic).exists(), f"{generic} installed at the top of site-packages"


def test_deploy_from_a_team_directory_with_only_fabfile_inventory_and_secrets(
    kit_venv, team, fresh_host
):
    # From a subdirectory: the fabfile and hosts.toml are found above it; no fabric.json.
    done = team_fab(kit_venv, team / "docs", "deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RECAP" in done.stdout and SECRET not in done.stdout + done.stderr
    answer = curl(fresh_host, "/health/")
    assert "200 OK" in answer
    # Parallel executor in effect: one call for all targets, one connection.
    again = team_fab(kit_venv, team, "deploy", "--json")
    assert again.returncode == 0, again.stderr
    assert '"changed": 0' in again.stdout
    listing = team_fab(kit_venv, team, "--list")
    assert "deploy" in listing.stdout and "app.status" in listing.stdout


def test_a_team_component_works_with_no_kit_file_edited(kit_venv, team, fresh_host):
    # nginx snippet: served by nginx itself.
    answer = curl(fresh_host, "/banner")
    assert "200 OK" in answer and "Hello from the team" in answer
    # env entry: in the site's env file.
    assert "BANNER_TEXT='Hello from the team'" in sh(fresh_host, "cat /srv/djk/example/shared/env")
    # step: its file on the host.
    assert sh(fresh_host, "cat /etc/djk-banner/example.txt") == "Hello from the team\n"
    # package: provision asks for it (installed already in the test image: nothing to do).
    provision = team_fab(kit_venv, team, "provision", "--check", "--json")
    assert provision.returncode == 0, provision.stdout + provision.stderr
    assert " curl" in provision.stdout
    # validation: the component's own table, one line with the key path, exit 2.
    inventory = team / "hosts.toml"
    good = inventory.read_text()
    try:
        inventory.write_text(good.replace("Hello from the team", 'x\\"; return 200 \\"pwned'))
        bad = team_fab(kit_venv, team, "deploy")
        assert bad.returncode == 2, bad.stdout + bad.stderr
        assert "sites.example.banner.text:" in bad.stderr and "Traceback" not in bad.stderr
        inventory.write_text(good.replace('text = "Hello from the team"', "colour = 1"))
        bad = team_fab(kit_venv, team, "deploy")
        assert bad.returncode == 2 and "sites.example.banner.text: is required" in bad.stderr
    finally:
        inventory.write_text(good)
    # Changing the component's value changes its file, snippet and env, then is a no-op again.
    inventory.write_text(good.replace("Hello from the team", "Hello again"))
    changed = team_fab(kit_venv, team, "deploy")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "Hello again" in curl(fresh_host, "/banner")
    noop = team_fab(kit_venv, team, "deploy", "--json")
    assert '"changed": 0' in noop.stdout
