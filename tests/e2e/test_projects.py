"""A Django project not written for the kit, from its own git repository: made with
`django-admin startproject`, given an ordinary health view (its settings as generated), set up
with `djk init` and deployed with README's commands from the project's directory, the kit
pip-installed in a venv of its own (the kit's checkout is not the working directory). Then what
gets shipped (tracked files, a build's outputs, never a venv, node_modules, media or a local
database), a dirty tree refused, v2 under load and a rollback, and the same site as WSGI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .kit import ROOT, Load, curl, sh, team_fab

pytestmark = pytest.mark.e2e
DOMAIN = "shop.example.com"

URLS = """\
from pathlib import Path

from django.contrib import admin
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

VERSION = (Path(__file__).resolve().parent.parent / "VERSION").read_text().strip()


def health(request):
    return JsonResponse({"status": "ok", "version": VERSION})


@csrf_exempt
def echo(request):
    return JsonResponse({"status": "ok", "size": len(request.body)})


urlpatterns = [
    path("", health),
    path("health/", health),
    path("echo/", echo),
    path("admin/", admin.site.urls),
]
"""


def readme_block(heading: str, lang: str) -> str:
    """The first ```lang block after a README heading: the tests run what README says."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n{heading}\n")
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {lang} block under {heading}"
    return match.group(1)


def git(root: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "dev",
        "GIT_AUTHOR_EMAIL": "dev@example.test",
        "HOME": str(root),
        "GIT_COMMITTER_NAME": "dev",
        "GIT_COMMITTER_EMAIL": "dev@example.test",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def startproject(root: Path) -> None:
    """`django-admin startproject mysite` plus what any project adds: a health view, a
    VERSION, requirements (Django only), .gitignore. Its settings stay as generated: the kit's
    settings layer sets what the servers need."""
    root.mkdir(parents=True)
    admin = Path(sys.executable).parent / "django-admin"
    subprocess.run([str(admin), "startproject", "mysite", str(root)], check=True)
    (root / "mysite" / "urls.py").write_text(URLS)
    (root / "VERSION").write_text("1\n")
    (root / "requirements.txt").write_text("Django==5.2.19\n")
    (root / ".gitignore").write_text("node_modules/\nmedia/\ndb.sqlite3\nassets/dist/\n.venv/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "startproject")


def readme_commands(venv: Path) -> list[list[str]]:
    """README's commands for a team, after the install (the venv has the kit already)."""
    found = []
    for line in readme_block("## From your own repository", "sh").splitlines():
        command = line.split("#", 1)[0].strip()
        if command.startswith(".venv/bin/") and "pip install" not in command:
            words = command.split()
            found.append([str(venv / "bin" / words[0].removeprefix(".venv/bin/")), *words[1:]])
    assert [c[0].rsplit("/", 1)[1] for c in found] == ["djk", "fab", "fab"], found
    return found


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if command[0].endswith("/fab"):
        venv = Path(command[0]).parent.parent
        return team_fab(venv, cwd, *command[1:])
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def project(tmp_path_factory, fresh_host, kit_venv):
    root = tmp_path_factory.mktemp("projects") / "shop"
    startproject(root)
    # What a developer's checkout holds beside the code, none of it tracked.
    for junk in (
        "node_modules/left-pad/index.js",
        ".venv/bin/python",
        "media/upload.png",
        "db.sqlite3",
    ):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("local only\n")
    djk, trust, fab = readme_commands(kit_venv)
    done = run(djk, root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote hosts.toml" in done.stdout
    # Filling in the address (and, for the test hosts, the key to reach them) is all.
    text = (root / "hosts.toml").read_text().replace("203.0.113.10", fresh_host.address)
    text = text.replace('user = "deploy"', f'user = "deploy"\nssh_key = "{fresh_host.key_path}"')
    (root / "hosts.toml").write_text(text)
    # hosts.trust shows the key's fingerprint; a person compares it with the server's own and
    # says yes (no terminal here: it asks for --yes instead).
    assert trust[-1] == "hosts.trust"
    shown = run(trust, root)
    assert shown.returncode == 2 and "needs --yes" in shown.stderr, shown.stdout + shown.stderr
    own = subprocess.run(
        ["ssh-keygen", "-lf", "-"],
        input=fresh_host.host_key,
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()[1]
    assert f"ssh-ed25519 {own}; not recorded yet" in shown.stdout
    assert run([*trust, "--yes"], root).returncode == 0
    deployed = run(fab, root)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return root


def health(host) -> dict:
    answer = curl(host, "/health/", host_header=DOMAIN)
    assert "200 OK" in answer, answer
    return json.loads(answer.split("\n\n", 1)[-1])


def deploy(root: Path, kit_venv: Path, *args: str) -> subprocess.CompletedProcess:
    return team_fab(kit_venv, root, "deploy", *args)


def test_a_startproject_app_deploys_with_readmes_commands(project, fresh_host):
    assert health(fresh_host) == {"status": "ok", "version": "1"}
    # The kit added the server: gunicorn with uvicorn workers (startproject has asgi.py).
    args = sh(fresh_host, "ps -eo args | grep '[g]unicorn' | head -n 1")
    assert "uvicorn_worker.UvicornWorker" in args and "mysite.asgi:application" in args


def test_only_tracked_files_and_the_builds_outputs_reach_the_host(project, fresh_host, kit_venv):
    inventory = project / "hosts.toml"
    text = inventory.read_text()
    build = (
        'build = "mkdir -p assets/dist && cat VERSION > assets/dist/app.js"\n'
        'build_outputs = ["assets/dist"]\n'
    )
    inventory.write_text(text.replace("[sites.shop]\n", "[sites.shop]\n" + build))
    done = deploy(project, kit_venv)
    assert done.returncode == 0, done.stdout + done.stderr
    shipped = sh(fresh_host, "cd /srv/djk/shop/current && find . -not -path './.venv/*' | sort")
    lines = set(shipped.split())
    for never in (
        "./node_modules",
        "./media",
        "./db.sqlite3",
        "./hosts.toml",
        "./fabfile.py",
        "./secrets",
        "./.git",
    ):
        assert never not in lines, (never, shipped)
    assert {"./manage.py", "./mysite/settings.py", "./.gitignore"} <= lines
    # .venv is the kit's link to the release's virtualenv, not the checkout's venv.
    assert sh(fresh_host, "readlink /srv/djk/shop/current/.venv").startswith("/srv/djk/.kit/venvs/")
    assert sh(fresh_host, "cat /srv/djk/shop/current/assets/dist/app.js") == "1\n"
    assert not (project / "assets" / "dist").exists()  # built in a copy, not here


def test_uncommitted_changes_are_refused_unless_allowed(project, fresh_host, kit_venv):
    releases = sh(fresh_host, "ls /srv/djk/shop/releases")
    (project / "VERSION").write_text("1-local\n")
    refused = deploy(project, kit_venv)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "uncommitted changes" in refused.stderr and "--allow-dirty" in refused.stderr
    assert sh(fresh_host, "ls /srv/djk/shop/releases") == releases  # nothing touched
    allowed = deploy(project, kit_venv, "--allow-dirty", "--json")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    release = json.loads(allowed.stdout)["hosts"][0]["extra"]["releases"]["shop"]
    assert release.endswith("-dirty") and health(fresh_host)["version"] == "1-local"
    git(project, "checkout", "VERSION")


def test_v2_switches_under_load_and_rollback_returns(project, fresh_host, kit_venv):
    (project / "VERSION").write_text("2\n")
    git(project, "commit", "-q", "-am", "v2")
    with (
        Load(fresh_host.address, DOMAIN) as load,
        Load(fresh_host.address, DOMAIN, keep_alive=True) as steady,
    ):
        time.sleep(1)
        done = deploy(project, kit_venv)
        assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(1)
    assert len(steady.results) > 30 and steady.failures == [], steady.failures[:10]
    assert len(load.results) > 30 and load.failures == [], load.failures[:10]
    assert health(fresh_host)["version"] == "2"
    back = team_fab(kit_venv, project, "rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert health(fresh_host)["version"] == "1-local"  # the release before v2: the dirty one


def test_the_same_project_as_wsgi_only(project, fresh_host, kit_venv):
    git(project, "rm", "-q", "mysite/asgi.py")
    (project / "VERSION").write_text("3\n")
    git(project, "commit", "-q", "-am", "WSGI only")
    inventory = project / "hosts.toml"
    text = re.sub(
        r'(?m)^asgi = "mysite.asgi:application".*$',
        'wsgi = "mysite.wsgi:application"',
        inventory.read_text(),
    )
    inventory.write_text(text)
    with Load(fresh_host.address, DOMAIN, keep_alive=True) as steady:
        time.sleep(1)
        done = deploy(project, kit_venv)
        assert done.returncode == 0, done.stdout + done.stderr
        assert health(fresh_host)["version"] == "3"
        time.sleep(1)
        back = team_fab(kit_venv, project, "rollback")  # the newest good one before v3
        assert back.returncode == 0, back.stdout + back.stderr
        assert health(fresh_host)["version"] == "2"
        time.sleep(1)
    assert len(steady.results) > 30 and steady.failures == [], steady.failures[:10]
    done = deploy(project, kit_venv)  # forward again: the same source as a new release
    assert done.returncode == 0 and health(fresh_host)["version"] == "3"
    args = sh(fresh_host, "ps -eo args | grep '[g]unicorn' | head -n 1")
    assert "--worker-class gthread --threads 4" in args and "mysite.wsgi:application" in args
    again = deploy(project, kit_venv, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["hosts"][0]["changed"] == 0


CHECKS = """\
import os

from django.core.checks import Error, register


@register(deploy=True)
def ready_for_production(app_configs, **kwargs):
    if os.environ.get("SHOP_NOT_READY"):
        return [Error("SHOP_NOT_READY is set", id="shop.E001")]
    return []
"""


def test_check_deploy_errors_stop_the_deploy_and_warnings_are_reported(
    project, fresh_host, kit_venv
):
    (project / "mysite" / "checks.py").write_text(CHECKS)
    (project / "mysite" / "__init__.py").write_text("from . import checks  # noqa: F401\n")
    (project / "VERSION").write_text("4\n")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "a deploy check of the project's own")
    inventory = project / "hosts.toml"
    good = inventory.read_text()
    inventory.write_text(
        good.replace("[sites.shop]\n", '[sites.shop]\nenv = { SHOP_NOT_READY = "1" }\n')
    )
    try:
        refused = deploy(project, kit_venv)
    finally:
        inventory.write_text(good)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "shop.E001" in refused.stdout and "SHOP_NOT_READY is set" in refused.stdout
    assert health(fresh_host)["version"] == "3"  # nothing switched
    listed = team_fab(kit_venv, project, "releases", "--json")
    rows = json.loads(listed.stdout)["hosts"][0]["extra"]["release_table"]["shop"]
    assert rows[-1]["status"] == "failed", rows  # refused: it never goes live
    done = deploy(project, kit_venv, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)["hosts"][0]
    warnings = {w["id"] for w in report["extra"]["check_deploy"]["shop"]}
    assert "security.W004" in warnings  # no HSTS: the kit's layer leaves that to the team
    step = next(s for s in report["steps"] if s["step"] == "prepare shop")
    assert "security.W004" in step["detail"]
    assert health(fresh_host)["version"] == "4"


def test_ref_ships_that_commit_whatever_the_working_tree_holds(project, fresh_host, kit_venv):
    (project / "VERSION").write_text("not committed\n")  # --ref reads git, not this
    try:
        done = deploy(project, kit_venv, "--ref", "HEAD~1", "--json")
    finally:
        git(project, "checkout", "VERSION")
    assert done.returncode == 0, done.stdout + done.stderr
    release = json.loads(done.stdout)["hosts"][0]["extra"]["releases"]["shop"]
    assert release.endswith(git(project, "rev-parse", "--short=8", "HEAD~1").strip())
    assert health(fresh_host)["version"] == "3"


def test_staging_and_production_from_one_repository(project, fresh_host, monkeypatch):
    """An inventory per environment beside each other (hosts.staging.toml,
    hosts.production.toml), each with its own secrets, chosen with DJK_ENV: a staging deploy
    never opens production's inventory or secrets (every file this process opens is recorded
    with an audit hook while it runs)."""
    base = (project / "hosts.toml").read_text()
    for env, address in (("staging", fresh_host.address), ("production", "10.213.1.254")):
        (project / "secrets" / env).mkdir(mode=0o700)
        secrets = project / "secrets" / env / "shop.env"
        secrets.write_text(f"DJANGO_SECRET_KEY={env}-key-{'x' * 40}\n")
        text = base.replace(fresh_host.address, address)
        text = text.replace('"secrets/shop.env"', f'"secrets/{env}/shop.env"')
        (project / f"hosts.{env}.toml").write_text(text)
    opened: list[str] = []
    recording = [True]

    def audit(event: str, args: tuple) -> None:
        if recording[0] and event == "open" and isinstance(args[0], str | Path):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    monkeypatch.chdir(project)
    monkeypatch.setenv("DJK_ENV", "staging")
    monkeypatch.delenv("DJK_INVENTORY", raising=False)
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from fabric.main import make_program

    out, err = StringIO(), StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            make_program().run(["fab", "--search-root", str(project), "deploy", "--json"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        recording[0] = False
    assert code in (0, None), out.getvalue() + err.getvalue()
    assert json.loads(out.getvalue())["hosts"][0]["host"] == "web1"
    assert any(p.endswith("secrets/staging/shop.env") for p in opened)  # the hook sees opens
    assert not [p for p in opened if "production" in p], [p for p in opened if "production" in p]
    assert health(fresh_host)["version"] == "4"


def test_a_project_locked_with_uv_deploys_the_locked_versions(project, fresh_host, kit_venv):
    """requirements.txt gives way to pyproject.toml + uv.lock (made here with `uv lock`,
    pinning Django 5.2.18, not the 5.2.19 the project had): the host's venv has the locked
    version, and the kit's server packages beside it."""
    (project / "pyproject.toml").write_text(
        '[project]\nname = "shop"\nversion = "5"\nrequires-python = ">=3.11"\n'
        'dependencies = ["Django==5.2.18"]\n'
    )
    # Locked in a directory of its own: the checkout's junk .venv is no interpreter for uv.
    lockdir = project.parent / "lock"
    lockdir.mkdir()
    (lockdir / "pyproject.toml").write_bytes((project / "pyproject.toml").read_bytes())
    uv = [str(kit_venv / "bin/uv"), "lock", "--python", "/usr/bin/python3"]
    locked = subprocess.run(
        [*uv, "--directory", str(lockdir)], capture_output=True, text=True, timeout=300
    )
    assert locked.returncode == 0, locked.stderr
    (project / "uv.lock").write_bytes((lockdir / "uv.lock").read_bytes())
    git(project, "rm", "-q", "requirements.txt")
    git(project, "add", "pyproject.toml", "uv.lock")
    git(project, "commit", "-q", "-m", "uv")
    inventory = project / "hosts.toml"
    inventory.write_text(
        re.sub(r"(?m)^requirements = .*$", 'requirements = "uv.lock"', inventory.read_text())
    )
    done = deploy(project, kit_venv)
    assert done.returncode == 0, done.stdout + done.stderr
    version = sh(
        fresh_host,
        "/srv/djk/shop/current/.venv/bin/python -c "
        "'import django, gunicorn; print(django.__version__)'",
    )
    assert version.strip() == "5.2.18"
    assert health(fresh_host)["status"] == "ok"


def login(host, scheme: str, domain: str, ca: Path | None = None) -> str:
    """Django admin's login form as a browser posts it (cookie, token, Origin, Referer)
    through nginx; returns the answer's status line and Location."""
    port = 443 if scheme == "https" else 80
    jar = Path(f"/tmp/djk-jar-{host.name}-{scheme}-{domain}")
    jar.unlink(missing_ok=True)
    base = [
        "curl",
        "-s",
        "-i",
        "--max-time",
        "10",
        "-c",
        str(jar),
        "-b",
        str(jar),
        "--resolve",
        f"{domain}:{port}:{host.address}",
    ]
    if ca is not None:
        base += ["--cacert", str(ca / "ca.pem")]
    url = f"{scheme}://{domain}/admin/login/"
    form = subprocess.run([*base, url], capture_output=True, text=True).stdout
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token, form[:500]
    posted = subprocess.run(
        [
            *base,
            "-H",
            f"Origin: {scheme}://{domain}",
            "-H",
            f"Referer: {url}",
            "--data-urlencode",
            f"csrfmiddlewaretoken={token.group(1)}",
            "--data-urlencode",
            "username=admin",
            "--data-urlencode",
            "password=Admin-pw-4471",
            "--data-urlencode",
            "next=/admin/",
            url,
        ],
        capture_output=True,
        text=True,
    ).stdout
    jar.unlink(missing_ok=True)
    status = posted.splitlines()[0] if posted else "no answer"
    location = re.search(r"(?im)^location: (\S+)", posted)
    return f"{status.strip()} {location.group(1) if location else ''}".strip()


def test_admin_login_through_nginx_over_http_and_https_for_each_domain(
    project, fresh_host, kit_venv, tmp_path
):
    """The seed tutorials' CSRF 403 trap, closed: the kit's DJANGO_CSRF_TRUSTED_ORIGINS and
    X-Forwarded-Proto let the admin's login form through on every domain, with and without
    TLS."""
    from .kit import make_certificate

    domains = ["shop.example.com", "www.shop.example.com"]
    inventory = project / "hosts.toml"
    text = re.sub(r"(?m)^domains = .*$", f"domains = {json.dumps(domains)}", inventory.read_text())
    inventory.write_text(text)
    done = deploy(project, kit_venv)
    assert done.returncode == 0, done.stdout + done.stderr
    sh(
        fresh_host,
        "cd /srv/djk/shop/current && runuser -u djk-shop -- sh -c 'set -a; "
        ". /srv/djk/shop/shared/env; . ./.djk-release.env; set +a; "
        "DJANGO_SUPERUSER_PASSWORD=Admin-pw-4471 .venv/bin/python manage.py createsuperuser "
        "--noinput --username admin --email admin@example.test'",
    )
    for domain in domains:
        assert login(fresh_host, "http", domain) == "HTTP/1.1 302 Found /admin/", domain
    make_certificate(tmp_path, "shop", ",".join(f"DNS:{d}" for d in domains), "djk test CA")
    tls = f'\n[sites.shop.tls]\ncert = "{tmp_path}/shop.pem"\nkey = "{tmp_path}/shop.key"\n'
    inventory.write_text(inventory.read_text() + tls)
    done = deploy(project, kit_venv)
    assert done.returncode == 0, done.stdout + done.stderr
    for domain in domains:
        answer = login(fresh_host, "https", domain, tmp_path)
        assert answer.split()[1] == "302" and answer.endswith(" /admin/"), (domain, answer)
