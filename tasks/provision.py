"""Take a bare Debian 12 host to one the kit can deploy to: packages for its roles, the deploy
user's sudo rule, nginx's base configuration, services running.

Packages come from the host's apt sources, or, for hosts without internet, from .deb files on the
control machine (`--packages-from DIR`), shipped over SSH and installed with apt.
"""

from __future__ import annotations

import io
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .engine.cli import run_plans, targets_task, user_error
from .engine.component import Component, HostRun, components, register
from .engine.facts import Fact
from .engine.inventory import Host, Inventory
from .engine.render import MANAGED
from .engine.steps import Action, ConfigSet, Context, Directory, File, Plan, Step

BASE = ("sudo", "python3", "openssl", "curl", "ca-certificates")


def packages_for(inventory: Inventory, host: Host) -> list[str]:
    """The base packages and every component's for this host, each once, in order."""
    wanted = list(BASE)
    for component in components():
        wanted += [p for p in component.packages(inventory, host) if p not in wanted]
    return wanted


@dataclass(frozen=True)
class Installed(Fact[set]):
    """Which of the named packages dpkg has installed."""

    names: tuple[str, ...]
    default: ClassVar[Any] = set()

    def command(self) -> str:
        query = " ".join(shlex.quote(n) for n in self.names)
        return f"dpkg-query -W -f='${{Package}} ${{Status}}\\n' {query}"

    def parse(self, rc: int, out: str) -> set[str]:
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
        return [Installed(tuple(self.names))]

    def plan(self, ctx: Context) -> Plan:
        missing = [n for n in self.names if n not in ctx.facts[Installed(tuple(self.names))]]
        if not missing:
            return Plan(reason=f"{len(self.names)} installed: {' '.join(self.names)}")
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


def sudo_rule(user: str) -> Step:
    sudoers = File(
        f"/etc/sudoers.d/djk-{user}",
        f"# {MANAGED}\n{user} ALL=(ALL) NOPASSWD:ALL\n",
        mode="440",
        name=f"sudo rule for {user}",
    )
    return ConfigSet("sudoers", "sudo rules", [sudoers], [], "visudo -cq", ())


class ProvisionComponent(Component):
    """The host itself: the packages every component asks for, and the deploy user's sudo rule.
    Runs first in the provision phase; the other components add their services and config."""

    name = "provision"

    def steps(self, phase: str, run: HostRun) -> list[Step]:
        if phase != "provision":
            return []
        debs = run.options.get("debs")
        return [
            Directory("/var/lib/djk"),
            Packages(packages_for(run.inventory, run.host), debs),
            sudo_rule(run.host.user or "deploy"),
        ]


register(ProvisionComponent())


def host_steps(inventory: Inventory, host: Host, debs: Path | None) -> list[Step]:
    run = HostRun(inventory, host, tuple(inventory.sites_on(host)), options={"debs": debs})
    return [step for component in components() for step in component.steps("provision", run)]


@targets_task(
    help={
        "packages_from": "install from the .deb files in this directory (hosts without internet)",
        "json_": "print the report as JSON",
        "quiet": "print only changes, failures and the recap",
        "check": "change nothing; report what would change",
    }
)
def provision(c, packages_from=None, json_=False, quiet=False, check=False):
    """Prepare Debian 12 hosts: packages for their roles, sudo rule, nginx base config.

    --packages-from DIR installs from the .deb files in DIR (shipped over SSH) for hosts without
    internet; otherwise the hosts' own apt sources are used.
    """
    debs = Path(packages_from).expanduser().resolve() if packages_from else None
    if debs is not None and not any(debs.glob("*.deb")):
        raise user_error(f"--packages-from {packages_from}: no .deb files there")
    run_plans(
        c, lambda inv, host: host_steps(inv, host, debs), check=check, json_=json_, quiet=quiet
    )
