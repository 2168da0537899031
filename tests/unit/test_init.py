"""`djk init` on project layouts as `django-admin startproject` and `wagtail start` leave them
(one made by the real startproject): what it finds, what it writes, that it never overwrites,
and that the inventory it writes validates once the address is filled in."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from djk.tasks import init as djk_init
from djk.tasks.engine import inventory as inv
from djk.tasks.engine.layout import app_of

MANAGE = """\
#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', '{settings}')
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)


if __name__ == '__main__':
    main()
"""


def project(
    root: Path,
    package: str = "mysite",
    asgi: bool = True,
    celery: bool = False,
    settings: str | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manage.py").write_text(MANAGE.format(settings=settings or f"{package}.settings"))
    pkg = root / package
    pkg.mkdir()
    for name in ("__init__.py", "settings.py", "urls.py", "wsgi.py"):
        (pkg / name).write_text("")
    if asgi:
        (pkg / "asgi.py").write_text("")
    if celery:
        (pkg / "celery.py").write_text("from celery import Celery\napp = Celery('mysite')\n")
    (root / "requirements.txt").write_text("Django==5.2.19\n")
    return root


def run(root: Path, *args: str) -> list[str]:
    lines: list[str] = []
    assert djk_init.init(root, *args, out=lines.append) == 0
    return lines


def test_a_startproject_layout_with_asgi(tmp_path):
    root = project(tmp_path / "My Shop")
    found = djk_init.detect(root)
    assert (found.site, found.settings, found.source) == ("my-shop", "mysite.settings", ".")
    assert found.asgi == "mysite.asgi:application" and found.wsgi == "mysite.wsgi:application"
    assert found.requirements == "requirements.txt" and found.celery is None


def test_wsgi_only_celery_and_manage_one_level_down(tmp_path):
    project(
        tmp_path / "repo" / "src",
        package="config",
        asgi=False,
        celery=True,
        settings="config.settings.production",
    )
    found = djk_init.detect(tmp_path / "repo")
    assert found.source == "src" and found.settings == "config.settings.production"
    assert found.asgi is None and found.wsgi == "config.wsgi:application"
    assert found.celery == "config"


def test_what_it_writes_validates_and_deploys_once_the_address_is_in(tmp_path):
    root = project(tmp_path / "shop", celery=True)
    lines = run(root)
    assert "wrote hosts.toml" in lines and "wrote secrets/shop.env" in lines
    env = root / "secrets" / "shop.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "secrets").stat().st_mode) == 0o700
    assert env.read_text().count("DJANGO_SECRET_KEY=") == 1
    assert (root / "secrets/.gitignore").read_text().splitlines()[-1] == "*"
    assert not (root / ".gitignore").exists()  # not a git repository: nothing to ignore
    assert "from djk.tasks import ns" in (root / "fabfile.py").read_text()
    text = (root / "hosts.toml").read_text().replace("203.0.113.10", "10.213.1.50")
    (root / "hosts.toml").write_text(text)
    loaded = inv.load(root / "hosts.toml")
    site = loaded.sites["shop"]
    assert site.secrets["DJANGO_SECRET_KEY"].reveal()
    assert site.part(__import__("djk.tasks.celery", fromlist=["Celery"]).Celery).app == "mysite"


def test_wsgi_only_project_gets_a_wsgi_site(tmp_path):
    root = project(tmp_path / "blog", asgi=False)
    run(root)
    text = (root / "hosts.toml").read_text()
    assert 'wsgi = "mysite.wsgi:application"' in text and "\nasgi =" not in text


def test_it_never_overwrites_and_a_second_run_changes_nothing(tmp_path):
    root = project(tmp_path / "shop")
    (root / "hosts.toml").write_text("# ours\n")
    run(root)
    secret = (root / "secrets/shop.env").read_text()
    lines = run(root)
    assert (root / "hosts.toml").read_text() == "# ours\n"
    assert (root / "secrets/shop.env").read_text() == secret
    assert "left hosts.toml as it is (it exists)" in lines


def test_no_django_project_is_one_line_and_exit_2(tmp_path, capsys):
    assert djk_init.main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("djk init: no single manage.py") and "\n" not in err


@pytest.mark.parametrize(
    "name, site", [("My Shop", "my-shop"), ("2fast", "fast"), ("x" * 40, "x" * 24), ("___", "site")]
)
def test_site_names_from_directory_names(name, site):
    assert djk_init.site_name(name) == site


def git(root: Path, *args: str) -> None:
    env = {"HOME": str(root), "PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env)


def test_a_project_as_startproject_makes_it_gets_requirements_health_and_gitignore(tmp_path):
    root = tmp_path / "mysite"
    root.mkdir()
    admin = Path(sys.executable).parent / "django-admin"
    subprocess.run([str(admin), "startproject", "mysite", str(root)], check=True)
    git(root, "init", "-q")
    lines = run(root)
    found = djk_init.detect(root)
    assert found.requirements is None and found.django == "5.2"
    assert found.health == "/admin/login/"  # / is a 404 with DEBUG off
    text = (root / "hosts.toml").read_text()
    assert 'requirements = ["Django>=5.2,<5.3"]' in text
    assert 'health_path = "/admin/login/"' in text
    # git would have added the README's .venv with the rest.
    assert (root / ".gitignore").read_text().splitlines()[-1] == ".venv/"
    assert "wrote .gitignore (.venv/ added: commit it)" in lines
    (root / "hosts.toml").write_text(text.replace("203.0.113.10", "10.213.1.50"))
    site = inv.load(root / "hosts.toml").sites["mysite"]
    assert app_of(site).requirements == ("Django>=5.2,<5.3",)
    assert app_of(site).health_path == "/admin/login/"
    run(root)  # a second run: git ignores .venv/ now, .gitignore is left alone
    assert (root / ".gitignore").read_text().count(".venv/") == 1


def test_the_production_module_of_a_settings_package_is_picked(tmp_path):
    # As `wagtail start` lays it out: settings/{base,dev,production}.py, manage.py naming dev.
    root = project(tmp_path / "acme", package="acmesite", settings="acmesite.settings.dev")
    package = root / "acmesite" / "settings"
    package.mkdir()
    for name in ("__init__", "base", "dev", "production"):
        (package / f"{name}.py").write_text("")
    (root / "acmesite" / "urls.py").write_text(
        'urlpatterns = [\n    path("django-admin/", admin.site.urls),\n'
        '    path("admin/", include(wagtailadmin_urls)),\n]\n'
    )
    found = djk_init.detect(root)
    assert found.settings == "acmesite.settings.production"
    assert found.others == ("base", "dev")
    assert found.health == "/django-admin/login/"
    lines = run(root)
    assert "settings: acmesite.settings.production (the package also has: base, dev)" in lines


@pytest.mark.parametrize(
    "urls, path",
    [
        ('path("health/", health)', "/health/"),
        ("path('healthz', views.ok),\npath('admin/', admin.site.urls)", "/healthz"),
        ('path("admin/", include(wagtailadmin_urls))', "/admin/login/"),
        ('path("", home)', None),
    ],
)
def test_health_path_from_the_urlconf(tmp_path, urls, path):
    (tmp_path / "urls.py").write_text(f"urlpatterns = [\n    {urls},\n]\n")
    assert djk_init.health_path(tmp_path / "urls.py") == path
