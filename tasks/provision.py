"""Take a bare Debian 12 or 13 host to one the kit can deploy to: packages for its roles, the
deploy user's sudo rule, nginx's base configuration, services running.

Packages: by default the control machine computes the closure of what the host's roles need
for its release and architecture from Debian's archive (engine/debian.py), downloads and checks
it, and ships it over SSH — the host needs no internet (`packages_from = "control"`). With
`packages_from = "host"` the host's own apt sources are used. A fresh server reachable only as
root is brought up with `--bootstrap`: as root, sudo and the deploy user (the key the kit logs
in with, the sudo rule checked with visudo) first, then the rest as that user.
"""

from __future__ import annotations

import io
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import paramiko

from .engine import debian
from .engine.cli import run_plans, targets_task, user_error
from .engine.component import Component, HostRun, Phase, components, register
from .engine.facts import Fact, Text
from .engine.inventory import Host, Inventory
from .engine.render import MANAGED
from .engine.steps import (
    Action,
    ConfigSet,
    Context,
    Directory,
    File,
    Plan,
    Step,
    SystemUser,
)

BASE = ("sudo", "python3", "openssl", "curl", "ca-certificates")


def packages_for(inventory: Inventory, host: Host) -> list[str]:
    """The base packages and every component's for this host, each once, in order."""
    wanted = list(BASE)
    for component in components():
        wanted += [p for p in component.packages(inventory, host) if p not in wanted]
    return wanted


@dataclass(frozen=True)
class DpkgStatus(Fact[dict]):
    """Every package dpkg has installed, with its version and what it provides."""

    default: ClassVar[Any] = {}

    def from_data(self, raw: Any) -> dict:
        """A list of installed package names (each at version 1.0)."""
        return {name: debian.Installed("1.0") for name in raw}

    def command(self) -> str:
        return debian.STATUS_COMMAND

    def parse(self, rc: int, out: str) -> dict[str, debian.Installed]:
        return debian.parse_status(out)


APT = (
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
    "-o Dpkg::Options::=--force-confold"
)


class Packages(Step):
    """Every package the host's roles need is installed (nothing is upgraded or removed but
    what a new package's dependencies need)."""

    def __init__(self, names: list[str], host: Host) -> None:
        self.names, self.host = names, host
        self.id = "packages"
        self.name = "packages"

    def facts(self, diff: bool) -> list[Fact]:
        return [DpkgStatus()]

    def plan(self, ctx: Context) -> Plan:
        installed = ctx.facts[DpkgStatus()]
        missing = [n for n in self.names if n not in installed]
        if not missing:
            return Plan(reason=f"{len(self.names)} installed: {' '.join(self.names)}")
        if self.host.packages_from == "host":
            script = f"set -e\napt-get update -q\n{APT} {' '.join(missing)}\n"
            return Plan(
                [Action(f"install {' '.join(missing)}", script, progress="installing packages")]
            )
        info = self.host.platform
        try:
            archive = debian.archive(info.codename, info.arch)
            found = archive.closure(missing, installed)
            debs = archive.fetch(found.packages)
        except debian.PackageError as exc:
            return Plan(error=f'{exc} (hosts.{self.host.name}.packages_from = "control")')
        except Exception as exc:  # the archive's network or data: one line, this host fails
            return Plan(error=f"reading Debian's archive failed: {type(exc).__name__}: {exc}")
        check = " ".join(shlex.quote(n) for n in missing)
        script = f"""set -e
debs=/var/lib/djk/debs
rm -rf "$debs"; mkdir -p "$debs"
tar -xf - -C "$debs"
{APT} "$debs"/*.deb
for p in {check}; do
  dpkg-query -W -f='${{Status}}\\n' "$p" 2>/dev/null | grep -q 'install ok installed' \\
    || {{ echo "$p is not installed after installing the shipped packages" >&2; exit 1; }}
done
rm -rf "$debs"
"""
        size = sum(p.stat().st_size for p in debs)
        return Plan(
            [
                Action(
                    f"install {' '.join(missing)} ({len(debs)} packages from "
                    f"{archive.where}, {size / 1e6:.1f} MB)",
                    script,
                    stdin=lambda: _debs_archive(debs),
                    progress="installing packages",
                    kind="debs",
                )
            ]
        )


def _debs_archive(debs: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for deb in debs:
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

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        if phase != Phase.PROVISION:
            return []
        return [
            Directory("/var/lib/djk"),
            Packages(packages_for(run.inventory, run.host), run.host),
            sudo_rule(run.host.user or "deploy"),
        ]


register(ProvisionComponent())


def host_steps(inventory: Inventory, host: Host) -> list[Step]:
    run = HostRun(inventory, host, tuple(inventory.sites_on(host)))
    return [step for component in components() for step in component.steps(Phase.PROVISION, run)]


# -- bootstrap: a server reachable only as root ---------------------------------------------------


ROOT_KEYS = "/root/.ssh/authorized_keys"


class AuthorizedKeys(Step):
    """~user/.ssh/authorized_keys: the public key of the kit's ssh_key, or — without one —
    the keys root was reached with."""

    def __init__(self, user: str, keys: str | None) -> None:
        self.user, self.keys = user, keys
        self.path = f"/home/{user}/.ssh/authorized_keys"
        self.id = f"file:{self.path}"
        self.name = f"authorized keys of {user}"

    def _file(self, keys: str) -> File:
        return File(self.path, keys, self.user, self.user, "600", name=self.name)

    def facts(self, diff: bool) -> list[Fact]:
        found = self._file("").facts(diff)
        return found if self.keys is not None else [*found, Text(ROOT_KEYS)]

    def plan(self, ctx: Context) -> Plan:
        keys = self.keys
        if keys is None:
            root = ctx.facts[Text(ROOT_KEYS)]
            if not root:
                return Plan(error=f"no ssh_key in hosts.toml and no {ROOT_KEYS} to copy")
            keys = f"# {MANAGED}\n{root}\n"
        return self._file(keys).plan(ctx)


def public_key(path: Path | None) -> str | None:
    """The public half of the kit's ssh_key (the .pub beside it, or derived), or None."""
    if path is None:
        return None
    pub = path.with_name(path.name + ".pub")
    if pub.is_file():
        return f"# {MANAGED}\n{pub.read_text().strip()}\n"
    try:
        key = paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException) as exc:
        raise user_error(f"ssh_key {path}: cannot read its public key: {exc}") from None
    return f"# {MANAGED}\n{key.get_name()} {key.get_base64()}\n"


def bootstrap_steps(inventory: Inventory, host: Host, user: str) -> list[Step]:
    """As root: sudo, the deploy user with the kit's key, its sudo rule."""
    home = f"/home/{user}"
    return [
        Directory("/var/lib/djk"),
        Packages(["sudo"], host),
        SystemUser(user, home, login=True),
        Directory(f"{home}/.ssh", user, user, "700"),
        AuthorizedKeys(user, public_key(host.ssh_key)),
        sudo_rule(user),
    ]


@targets_task(
    help={
        "bootstrap": "log in as root first to create the deploy user (its key, its sudo rule)",
        "json_": "print the report as JSON",
        "quiet": "print only changes, failures and the recap",
        "check": "change nothing; report what would change",
        "diff": "show a unified diff of every file that changes (the firewall's rules too)",
    }
)
def provision(c, bootstrap=False, json_=False, quiet=False, check=False, diff=False):
    """Prepare Debian 12/13 hosts: packages, firewall, sudo rule, nginx base config.

    Packages come from the control machine (Debian's archive, shipped over SSH: hosts need no
    internet) unless the host says packages_from = "host". --bootstrap first logs in as root
    (a fresh server) to create the deploy user with the kit's key and a sudo rule.
    """
    if bootstrap:
        run_plans(
            c,
            lambda inv, host: bootstrap_steps(inv, host, _deploy_user(inv, host)),
            check=check,
            json_=json_,
            quiet=quiet,
            as_user="root",
            recap=not json_,
        )
    run_plans(c, host_steps, check=check, diff=diff, json_=json_, quiet=quiet)


def _deploy_user(inventory: Inventory, host: Host) -> str:
    """Who the run logs in as after the bootstrap (the host's user in hosts.toml)."""
    listed = inventory.hosts.get(host.name)
    user = (listed.user if listed else "") or "deploy"
    if user == "root":
        raise user_error(f"host {host.name}: --bootstrap makes a deploy user; user is root")
    return user
