"""`fab app.manage --site S -- ARGS…` and `fab app.shell --site S`: manage.py in the live release.

The command runs in the release `current` points to, as the site user, with the site's env file
read by the shell there (no secret on any command line), on the site's first app host (or, with
`--all-hosts`, on each of them, one after the other). Without a terminal its output streams,
each line prefixed with its host, and its exit code is fab's. With one (stdin is a terminal, or
`--tty`) it gets a real pseudo-terminal on one host, no prefix: `createsuperuser`, `shell`,
`dbshell` work as on the server. `--env NAME` passes this machine's $NAME to the command on
stdin (e.g. DJANGO_SUPERUSER_PASSWORD for `createsuperuser --noinput`).
"""

from __future__ import annotations

import base64
import os
import shlex
import sys
from functools import partial

from invoke import Exit

from .engine import topology, values
from .engine.cli import (
    load_inventory,
    remainder,
    site_hosts,
    site_named,
    targets_task,
    user_error,
)
from .engine.inventory import Host, Inventory, Site
from .engine.layout import SitePaths
from .engine.remote import Remote, RemoteError

# Variables given with --env travel on stdin (NAME=base64 lines): never on a command line.
READ_ENV = """while IFS='=' read -r name value; do
  [ -n "$name" ] || break
  export "$name=$(printf '%s' "$value" | base64 -d)"
done
"""


def _print_prefixed(prefix: str, line: str) -> None:
    print(prefix + line, flush=True)


def env_input(names: list[str], environ: dict[str, str]) -> bytes:
    """What --env NAME sends: this machine's value of each NAME, base64 on a line."""
    lines = []
    for name in names:
        try:
            values.env_key(name)
        except ValueError as exc:
            raise user_error(f"--env {exc}") from None
        if name not in environ:
            raise user_error(f"--env {name}: not set in this environment")
        lines.append(f"{name}={base64.b64encode(environ[name].encode()).decode()}\n")
    return ("".join(lines) + "\n").encode()


def command(site: Site, args: list[str], with_env: bool = False) -> str:
    """The shell run as root on the host: into the live release, as the site user, the env file
    read there, manage.py with `args` (each one quoted)."""
    paths = SitePaths.of(site)
    inner = (
        f"set -a; . {shlex.quote(paths.env)}; . ./.djk-release.env; set +a; "
        'exec ./.venv/bin/python manage.py "$@"'
    )
    words = " ".join(shlex.quote(a) for a in args)
    user = shlex.quote(site.user)
    return (
        (READ_ENV if with_env else "")
        + f'cd {shlex.quote(paths.current)} 2>/dev/null || {{ echo "no live release of '
        f'{site.name} here" >&2; exit 3; }}\n'
        f"exec runuser -u {user} -- /bin/sh -c {shlex.quote(inner)} manage {words}"
    )


def _hosts(c, inventory: Inventory, site: Site) -> list[Host]:
    found = site_hosts(c, inventory, topology.hosts_with(inventory, site, "app"))
    if not found:
        raise user_error(f"site {site.name}: no app host among the targets")
    return found


def run_manage(
    c, site_name: str | None, args: list[str], all_hosts: bool, tty: bool, env: list[str]
) -> int:
    inventory = load_inventory(c)
    site = site_named(inventory, site_name)
    if not args:
        raise user_error("what to run? fab app.manage --site S -- COMMAND [ARGS...]")
    hosts = _hosts(c, inventory, site)
    interactive = tty or sys.stdin.isatty()
    if env and interactive:
        raise user_error("--env needs the command's stdin: not with a terminal (or --tty)")
    given = env_input(env, dict(os.environ)) if env else b""
    if interactive or not all_hosts:
        hosts = hosts[:1]
    width = max(8, *(len(h.name) for h in hosts))
    code = 0
    for host in hosts:
        remote = Remote(host, c.config)
        try:
            remote.open()
            if interactive:
                rc = remote.interactive(command(site, args))
            else:
                prefix = f"{host.name:<{width}} | "
                result = remote.run(
                    command(site, args, with_env=bool(env)) + " 2>&1",
                    stdin=given,
                    on_line=partial(_print_prefixed, prefix),
                )
                if result.stdout and not result.stdout.endswith("\n"):  # a last partial line
                    print(prefix + result.stdout.rsplit("\n", 1)[-1], flush=True)
                rc = result.rc
        except RemoteError as exc:
            print(f"{host.name:<{width}} | failed  | {exc}", file=sys.stderr)
            rc = 255
        finally:
            remote.close()
        code = rc or code
    return code


@targets_task(
    iterable=["env"],
    help={
        "site": "the site (sites.<name> in hosts.toml)",
        "all_hosts": "on every app host of the site, one after the other (not with a terminal)",
        "tty": "a pseudo-terminal even when stdin is not a terminal",
        "env": "NAME: pass this machine's $NAME to the command (on stdin; repeatable)",
    },
)
def manage(c, site=None, all_hosts=False, tty=False, env=None):
    """Run manage.py ARGS (after --) in the site's live release, as the site user."""
    code = run_manage(c, site, remainder(c), all_hosts, tty, list(env or []))
    if code:
        raise Exit(code=code)


@targets_task(help={"site": "the site (sites.<name> in hosts.toml)"})
def shell(c, site=None):
    """Django's shell in the site's live release, on its first app host (a terminal)."""
    code = run_manage(c, site, ["shell"], False, True, [])
    if code:
        raise Exit(code=code)


# What the settings layer (release/djk_settings.py) set over the project's settings, as Django
# has them in the live release; secrets masked there, before anything leaves the host.
SHOW_LAYER = """
from urllib.parse import urlsplit
from django.conf import settings as s

def masked(name, value):
    if name == "SECRET_KEY":
        return "******** (DJANGO_SECRET_KEY of the secrets)"
    if name == "DATABASES":
        keep = ("ENGINE", "NAME", "HOST", "PORT", "USER", "PASSWORD")
        return {
            alias: {
                k: "********" if k == "PASSWORD" and v else str(v)
                for k, v in conf.items()
                if k in keep
            }
            for alias, conf in value.items()
        }
    if isinstance(value, str) and "://" in value:
        url = urlsplit(value)
        if url.password:
            return value.replace(":" + url.password + "@", ":********@", 1)
    return value

print("project settings:", __import__("os").environ.get("DJK_SETTINGS"))
layer = getattr(s, "DJK_LAYER", None)
if layer is None:
    print("no settings layer in this release (deployed by an older kit)")
for name in layer or []:
    print(f"{name} = {masked(name, getattr(s, name))!r}")
"""


@targets_task(help={"site": "the site (sites.<name> in hosts.toml)"})
def settings(c, site=None):
    """Show what the kit's settings layer sets over the project's settings (live release)."""
    code = run_manage(c, site, ["shell", "-c", SHOW_LAYER], False, False, [])
    if code:
        raise Exit(code=code)
