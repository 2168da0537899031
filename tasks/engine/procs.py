"""Process managers: what runs a site's long-lived processes on a host (both gunicorn slots,
Celery worker and beat, Flower, the forwarder). systemd by default; Debian's supervisor where
the host says `process_manager = "supervisor"` (system services — nginx, Redis, supervisord
itself — stay systemd units either way).

A process is named as its manager knows it: a systemd unit carries its type suffix
(`djk-shop-web-a.service`), a supervisor program has none (`djk-shop-web-a`; site names hold
no dots). Facts, handlers and steps tell the two apart by that alone, so a handler name such as
`restart:djk-shop-worker` means the same on every run.

Supervisor has no "enable": a program with autostart runs whenever supervisord does. The web
slots do not autostart (only the live one may run after a boot); a one-shot boot program starts
the slot sockets/live.sock links to. A changed program file takes effect with `supervisorctl
update NAME`, which restarts the program if it runs — so the kit updates a program only when it
is about to (re)start it anyway.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

SYSTEMD = "systemd"
SUPERVISOR = "supervisor"
MANAGERS = (SYSTEMD, SUPERVISOR)

SYSTEMD_DIR = "/etc/systemd/system"
SUPERVISOR_DIR = "/etc/supervisor/conf.d"
SUPERVISOR_UNIT = "supervisor.service"  # Debian's supervisord
SUPERVISORCTL = "supervisorctl"
_SUFFIXES = {SYSTEMD: ".service", SUPERVISOR: ".conf"}


def backing_units() -> str:
    """The host's servers a site's processes talk to (each component's `backing_units`), as an
    After= value. The site's units (and supervisord) are ordered after them: started once they
    are up at boot, stopped while they still run at shutdown, so a worker's warm shutdown can
    still ack its tasks and a process that reconnects forever to a broker already gone does not
    hold the reboot. After= on a unit not installed is ignored, so the value is the same on
    every host. Sorted (reversed: the order the kit's units files have always had)."""
    from .component import components  # here: component imports procs for nothing, but later

    found = {u for c in components() for u in c.backing_units}
    return " ".join(sorted(found, reverse=True))


def is_program(name: str) -> bool:
    """A supervisor program's name (a systemd unit's has its type suffix)."""
    return "." not in name


def _q(value: str) -> str:
    return shlex.quote(value)


@dataclass(frozen=True)
class Manager:
    kind: str

    def name(self, base: str) -> str:
        """The process `djk-<site>-<role>` as this manager knows it."""
        return base if self.kind == SUPERVISOR else f"{base}.service"

    def config_path(self, name: str) -> str:
        if self.kind == SUPERVISOR:
            return f"{SUPERVISOR_DIR}/{name}.conf"
        return f"{SYSTEMD_DIR}/{name}"

    def template(self, what: str) -> str:
        """The template of a process's file: web, celery, forward, boot."""
        return f"{self.kind}/{what}{_SUFFIXES[self.kind]}.j2"

    def changed(self, name: str) -> tuple[str, ...]:
        """Handlers a changed file of `name` notifies besides its restart: systemd must reload
        its unit files; supervisor's program is updated by whatever restarts it."""
        return ("daemon-reload",) if self.kind == SYSTEMD else ()

    def boot_program(self, site_name: str) -> str | None:
        """Supervisor: the one-shot program that starts the live slot when supervisord starts."""
        return f"djk-{site_name}-boot" if self.kind == SUPERVISOR else None


def of(host) -> Manager:
    return Manager(getattr(host, "process_manager", SYSTEMD))


# -- shell, for steps and handlers -----------------------------------------------------------


def enable(name: str) -> list[str]:
    """Started at boot (supervisor: the program's autostart does it)."""
    return [] if is_program(name) else [f"systemctl enable --quiet {_q(name)}"]


def start(name: str) -> list[str]:
    if is_program(name):
        # update: a program added or changed since supervisord last read its files (a program
        # that runs is not changed here: callers start what does not run).
        return [
            f"{SUPERVISORCTL} update {_q(name)} >/dev/null",
            f"{SUPERVISORCTL} start {_q(name)}",
        ]
    return [f"systemctl start {_q(name)}"]


def stop(name: str) -> list[str]:
    """Stop (gracefully: Celery's warm shutdown); its file stays."""
    if is_program(name):
        return [f"{SUPERVISORCTL} stop {_q(name)} >/dev/null"]
    return [f"systemctl stop {_q(name)}"]


def restart(name: str) -> list[str]:
    """Stop (gracefully: Celery's warm shutdown) and start with its current file."""
    if is_program(name):
        # Stopped first: `update` of a changed program that runs would restart it once more.
        return [*stop(name), *start(name)]
    return [f"systemctl restart {_q(name)}"]


def stop_and_remove(names: list[str]) -> list[str]:
    """Stop each process, delete its file, make the manager forget it."""
    script: list[str] = []
    units = [n for n in names if not is_program(n)]
    programs = [n for n in names if is_program(n)]
    for unit in units:
        script += [f"systemctl disable --now {_q(unit)} || true", f"rm -f {SYSTEMD_DIR}/{_q(unit)}"]
    if units:
        script.append("systemctl daemon-reload")
    for program in programs:
        script += [
            f"{SUPERVISORCTL} stop {_q(program)} >/dev/null 2>&1 || true",
            f"rm -f {SUPERVISOR_DIR}/{_q(program)}.conf",
        ]
    if programs:
        # Only these names: a bare `update` would also apply (restarting) other programs'
        # changed files, such as another site's idle web slot.
        listed = " ".join(_q(p) for p in programs)
        script.append(f"{SUPERVISORCTL} update {listed} >/dev/null")
    return script


# Every process the kit gives a site (its names end in these; another site's name may start
# with this one's: shop and shop-eu).
SITE_ROLES = ("web-a", "web-b", "worker", "beat", "flower", "forward", "boot")


def site_processes_command(site_name: str) -> str:
    """Shell listing the site's units and programs that exist on the host, one per line: the
    files the kit writes for them (tests of the shell's own: no systemctl round trip to PID 1
    in every run's reading of the host)."""
    base = f"djk-{site_name}-"
    units = " ".join([f"{base}{r}.service" for r in SITE_ROLES] + [f"{base}forward.socket"])
    programs = " ".join(f"{base}{r}" for r in SITE_ROLES)
    # Timers (tasks/timers.py): djk-<site>-timer_<job>; no site name holds "_".
    timers = f"{base}timer_*"
    return (
        f'for u in {units}; do [ ! -f {SYSTEMD_DIR}/"$u" ] || echo "$u"; done; '
        f'for p in {programs}; do [ ! -f {SUPERVISOR_DIR}/"$p".conf ] || echo "$p"; done; '
        f"for f in {SYSTEMD_DIR}/{timers}.timer {SYSTEMD_DIR}/{timers}.service; do "
        '[ ! -f "$f" ] || echo "${f##*/}"; done; '
        f'for f in {SUPERVISOR_DIR}/{timers}.conf; do [ ! -f "$f" ] || basename "$f" .conf; done'
    )


def main_pid_command(name: str) -> str:
    """Shell printing the main process's pid (0 or nothing when none)."""
    if is_program(name):
        return f"{SUPERVISORCTL} pid {_q(name)}"
    return f"systemctl show -p MainPID --value {_q(name)}"
