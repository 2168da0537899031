"""Take a bare Debian 12 host to one the kit can deploy to: packages for its roles, the deploy
user's sudo rule, nginx's base configuration, services running.

Packages come from the host's apt sources, or, for hosts without internet, from .deb files on the
control machine (`--packages-from DIR`), shipped over SSH and installed with apt.
"""

from __future__ import annotations

import io
import shlex
import tarfile
from pathlib import Path

from .engine import topology
from .engine.facts import Fact
from .engine.inventory import Host, Inventory
from .engine.render import MANAGED, render
from .engine.steps import Action, ConfigSet, Context, Directory, File, Plan, Service, Step
from .engine.tasks import run_steps, targets_task, user_error

BASE = ("sudo", "python3", "python3-venv", "openssl", "curl", "ca-certificates")


def packages_for(inventory: Inventory, host: Host) -> list[str]:
    roles = topology.roles(host)
    sites = inventory.sites_on(host)
    wanted = list(BASE)
    if "web" in roles:
        wanted.append("nginx")
        if any(s.tls and s.tls.mode == "acme" for s in sites):
            wanted += ["certbot", "python3-cffi-backend"]
    if "broker" in roles and any(s.celery and s.celery.broker == "local" for s in sites):
        wanted.append("redis-server")
    return wanted


def _parse_installed(rc: int, out: str) -> set[str]:
    return {
        line.split()[0]
        for line in out.splitlines()
        if line.strip().endswith("install ok installed")
    }


class Packages(Step):
    """Every package the host's roles need is installed (nothing is upgraded or removed)."""

    def __init__(self, names: list[str], debs: Path | None) -> None:
        self.names, self.debs = names, debs
        self.id = "packages"
        self.name = "packages"

    def facts(self, diff: bool) -> list[Fact]:
        query = " ".join(shlex.quote(n) for n in self.names)
        return [
            Fact(
                "packages",
                f"dpkg-query -W -f='${{Package}} ${{Status}}\\n' {query}",
                _parse_installed,
                default=set(),
            )
        ]

    def plan(self, ctx: Context) -> Plan:
        missing = [n for n in self.names if n not in ctx.facts["packages"]]
        if not missing:
            return Plan(reason=f"{len(self.names)} installed")
        apt = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends"
        if self.debs is None:
            script = f"set -e\napt-get update -q\n{apt} {' '.join(missing)}\n"
            return Plan(
                [Action(f"install {' '.join(missing)}", script, progress="installing packages")]
            )
        check = " ".join(shlex.quote(n) for n in missing)
        script = f"""set -e
debs=/var/lib/djk/debs
rm -rf "$debs"; mkdir -p "$debs"
tar -xf - -C "$debs"
{apt} "$debs"/*.deb
for p in {check}; do
  dpkg-query -W -f='${{Status}}\\n' "$p" 2>/dev/null | grep -q 'install ok installed' \\
    || {{ echo "$p is not in the shipped packages and not installed" >&2; exit 1; }}
done
rm -rf "$debs"
"""
        return Plan(
            [
                Action(
                    f"install {' '.join(missing)} from {self.debs}",
                    script,
                    stdin=lambda: _debs_archive(self.debs),
                    progress="installing packages",
                )
            ]
        )


def _debs_archive(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for deb in sorted(directory.glob("*.deb")):
            tar.add(deb, arcname=deb.name)
    return buffer.getvalue()


def host_steps(inventory: Inventory, host: Host, debs: Path | None) -> list[Step]:
    roles = topology.roles(host)
    user = host.user or "deploy"
    sudoers = File(
        f"/etc/sudoers.d/djk-{user}",
        f"# {MANAGED}\n{user} ALL=(ALL) NOPASSWD:ALL\n",
        mode="440",
        name=f"sudo rule for {user}",
    )
    steps: list[Step] = [
        Directory("/var/lib/djk"),
        Packages(packages_for(inventory, host), debs),
        ConfigSet("sudoers", "sudo rules", [sudoers], [], "visudo -cq", ()),
    ]
    if "web" in roles:
        conf = File(
            "/etc/nginx/nginx.conf", render("nginx/nginx.conf.j2"), name="nginx base configuration"
        )
        steps += [
            ConfigSet(
                "nginx-base", "nginx base config", [conf], [], "nginx -t", ("reload:nginx.service",)
            ),
            Service("nginx.service"),
        ]
    if "redis-server" in packages_for(inventory, host):
        steps.append(Service("redis-server.service"))
    return steps


@targets_task
def provision(c, packages_from=None, json_=False, quiet=False, check=False):
    """Prepare bare Debian 12 hosts: packages for their roles, sudo rule, nginx base config.

    --packages-from DIR installs from the .deb files in DIR (shipped over SSH) for hosts without
    internet; otherwise the hosts' own apt sources are used.
    """
    debs = Path(packages_from).expanduser().resolve() if packages_from else None
    if debs is not None and not any(debs.glob("*.deb")):
        raise user_error(f"--packages-from {packages_from}: no .deb files there")
    run_steps(
        c, lambda inv, host: host_steps(inv, host, debs), check=check, json_=json_, quiet=quiet
    )
