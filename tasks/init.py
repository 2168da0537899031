"""`djk init`: a team's deploy setup, started in its own Django project.

Run in a project (or its repository), it finds what the kit needs to know — where manage.py is,
the settings module, the ASGI or WSGI application, the requirements, a Celery app — and writes

  hosts.toml          commented, prefilled; only the host's address is left to fill in
  fabfile.py          `from djk.tasks import ns`
  secrets/<site>.env  DJANGO_SECRET_KEY, generated (0600, in a 0700 directory)
  secrets/.gitignore  `*`: git ignores the secrets (the project's own files stay unchanged)

It never overwrites a file that exists (it says which it left alone) and asks nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE["']\s*,\s*["']([A-Za-z_][\w.]*)["']""")
REQUIREMENTS = (
    "requirements.txt",
    "requirements/production.txt",
    "requirements/prod.txt",
    "requirements/base.txt",
)
LOCKS = ("uv.lock", "poetry.lock")  # beside pyproject.toml (engine/locks.py exports them)
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "media", "static"}


class InitError(Exception):
    """What init cannot work out; the message is one line."""


@dataclass(frozen=True)
class Found:
    """What init found in a project."""

    source: str  # the directory holding manage.py, relative to the root ("." for the root)
    settings: str
    asgi: str | None
    wsgi: str | None
    requirements: str | None  # relative to source
    celery: str | None  # the --app of a Celery app in the settings package
    site: str


def find_manage(root: Path) -> Path:
    """manage.py at the root, else in one directory below it (e.g. src/)."""
    if (root / "manage.py").is_file():
        return root
    found = sorted(
        d
        for d in root.iterdir()
        if d.is_dir() and d.name not in SKIP_DIRS and (d / "manage.py").is_file()
    )
    if len(found) != 1:
        where = ", ".join(str(d.relative_to(root)) for d in found) or "none"
        raise InitError(f"no single manage.py at {root} or one level below (found: {where})")
    return found[0]


def detect(root: Path, site: str | None = None) -> Found:
    root = root.resolve()
    source = find_manage(root)
    manage = (source / "manage.py").read_text(errors="replace")
    match = _SETTINGS.search(manage)
    if not match:
        raise InitError(f"{source / 'manage.py'} sets no DJANGO_SETTINGS_MODULE")
    settings = match.group(1)
    package = settings.split(".")[0]
    pkg_dir = source / package
    asgi = f"{package}.asgi:application" if (pkg_dir / "asgi.py").is_file() else None
    wsgi = f"{package}.wsgi:application" if (pkg_dir / "wsgi.py").is_file() else None
    if asgi is None and wsgi is None:
        raise InitError(f"neither {package}/asgi.py nor {package}/wsgi.py in {source}")
    requirements = next((r for r in REQUIREMENTS if (source / r).is_file()), None)
    if requirements is None and (source / "pyproject.toml").is_file():
        requirements = next((lock for lock in LOCKS if (source / lock).is_file()), None)
    celery_py = pkg_dir / "celery.py"
    celery = package if celery_py.is_file() and "Celery(" in celery_py.read_text() else None
    return Found(
        source=source.relative_to(root).as_posix() or ".",
        settings=settings,
        asgi=asgi,
        wsgi=wsgi,
        requirements=requirements,
        celery=celery,
        site=site or site_name(root.name),
    )


def site_name(text: str) -> str:
    """A valid site name from a directory name: lower-case letters, digits, hyphens."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:24].rstrip("-")
    return name or "site"


def inventory(found: Found) -> str:
    """The commented hosts.toml for what was found."""
    app = (
        f'asgi = "{found.asgi}"                # ASGI: gunicorn with uvicorn workers'
        if found.asgi
        else f'wsgi = "{found.wsgi}"                # WSGI: gunicorn gthread workers'
    )
    other = ""
    if found.asgi and found.wsgi:
        other = f'\n# wsgi = "{found.wsgi}"            # instead of asgi, for a WSGI-only app'
    requirements = (
        f'requirements = "{found.requirements}"   # relative to source'
        if found.requirements
        else '# requirements = "requirements.txt"    # none found: add one (pin your versions)'
    )
    celery = ""
    if found.celery:
        celery = f"""
# Celery worker (and beat) from the project's Celery app; the broker is a Redis the kit runs
# on the host (a host with the "broker" role; one host: all roles).
[sites.{found.site}.celery]
app = "{found.celery}"
beat = false
"""
    return f"""\
# The deploy kit's inventory (djk). Reference: every key of this file is described in the
# kit's README ("hosts.toml") and docs/. Fill in the host's address, then:
#   fab -H web1 provision deploy

[defaults]
user = "deploy"        # SSH user with passwordless sudo on the hosts
target = "web1"        # what fab works on without -H

[hosts.web1]
address = "203.0.113.10"   # FILL IN: the server's address (or ssh_alias = "an ~/.ssh/config Host")
# process_manager = "supervisor"   # default: systemd

[sites.{found.site}]
domains = ["{found.site}.example.com"]   # the names nginx serves the site under
hosts = ["web1"]
source = "{found.source}"                # the Django project (manage.py), relative to this file
{requirements}
settings = "{found.settings}"
{app}{other}
port = 8001                              # unique per host; nginx on other hosts reaches it there
# health_path = "/health/"               # default: / must answer 2xx, or redirect within domains
env_file = "secrets/{found.site}.env"      # DJANGO_SECRET_KEY and other secrets: never commit it
{celery}"""


FABFILE = """\
# The deploy kit's tasks: `fab --list`. Register components of your own here.
from djk.tasks import ns  # noqa: F401
"""


def write_new(path: Path, text: str, mode: int | None = None) -> bool:
    """Write a file that does not exist yet (never replaces one); True when written."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, mode if mode is not None else 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


def init(root: Path, site: str | None = None, out=print) -> int:
    found = detect(root, site)
    written: list[str] = []
    kept: list[str] = []
    for name, text in (("hosts.toml", inventory(found)), ("fabfile.py", FABFILE)):
        (written if write_new(root / name, text) else kept).append(name)
    secrets_dir = root / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    key = secrets.token_urlsafe(50)
    env = f"secrets/{found.site}.env"
    text = f"# Secrets of site {found.site}: dotenv, read by the kit, never committed.\n"
    text += f"DJANGO_SECRET_KEY={key}\n"
    (written if write_new(root / env, text, 0o600) else kept).append(env)
    # Inside secrets/, not the project's .gitignore: git ignores the directory wherever it is
    # copied, and no tracked file changes (a deploy refuses uncommitted changes).
    ignore = "# the deploy kit's secrets (djk): never committed\n*\n"
    if write_new(secrets_dir / ".gitignore", ignore):
        written.append("secrets/.gitignore")
    kind = "ASGI" if found.asgi else "WSGI"
    out(
        f"site {found.site}: {found.settings}, {kind}, source {found.source}"
        + (f", Celery app {found.celery}" if found.celery else "")
    )
    for name in written:
        out(f"wrote {name}")
    for name in kept:
        out(f"left {name} as it is (it exists)")
    out("next: fill in the host's address in hosts.toml, then: fab -H web1 provision deploy")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="djk", description="The deploy kit's own commands.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "init", help="write hosts.toml, fabfile.py and secrets for the Django project here"
    )
    start.add_argument("directory", nargs="?", default=".", help="the project (default: here)")
    start.add_argument("--site", help="the site's name (default: from the directory's name)")
    args = parser.parse_args(argv)
    try:
        return init(Path(args.directory), args.site)
    except (InitError, OSError) as exc:
        print(f"djk init: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
