"""`fab hosts.trust -H TARGET`: record the SSH host keys the kit may talk to.

Each target host's key is fetched with a bare SSH handshake (no login), its fingerprint shown
beside what is recorded, and — once confirmed (asked on a terminal; `--yes` in scripts) — put in
`known_hosts` beside hosts.toml, for the team's repository. Compare the fingerprint with the
host's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on its console) before saying
yes: every later run refuses a host whose key differs (engine/hostkeys.py).
"""

from __future__ import annotations

import sys

from invoke import Exit

from .engine import hostkeys
from .engine.cli import confirm, load_inventory, target_hosts, targets_task, user_error
from .engine.remote import Remote


@targets_task(help={"yes": "record without asking (needed when stdin is not a terminal)"})
def trust(c, yes=False):
    """Fetch each target host's SSH key, show its fingerprint and record it in known_hosts."""
    inventory = load_inventory(c)
    targets = target_hosts(c, inventory)
    team_file = inventory.path.parent / hostkeys.FILE_NAME
    width = max(8, *(len(h.name) for h in targets))
    failed = False
    # Every target's key is shown before anything is asked or refused: a script without a
    # terminal sees all of them at once, to check them all before it runs again with --yes.
    untrusted = []
    for host in targets:
        # Fabric's view of where the host is (an ssh_config alias resolved): what a run
        # connects to, so what known_hosts must name.
        conn = Remote(host, c.config).conn
        name = hostkeys.entry_name(conn.host, conn.port)
        try:
            key = hostkeys.scan(conn.host, conn.port)
        except Exception as exc:  # socket and paramiko errors alike
            print(f"{host.name:<{width}} | failed  | cannot reach {name}: {exc}", file=sys.stderr)
            failed = True
            continue
        seen = hostkeys.fingerprint(key)
        recorded = hostkeys.known(team_file, name)
        if any(k == key for k in recorded):
            print(f"{host.name:<{width}} | ok      | {name} {key.get_name()} {seen}: trusted")
            continue
        if recorded:
            was = ", ".join(hostkeys.fingerprint(k) for k in recorded)
            what = f"{name} shows {key.get_name()} {seen}; recorded: {was} — it CHANGED"
        else:
            what = f"{name} shows {key.get_name()} {seen}; not recorded yet"
        print(f"{host.name:<{width}} | ...     | {what}")
        untrusted.append((host, name, key))
    if untrusted and not yes and not sys.stdin.isatty():
        names = ", ".join(host.name for host, _, _ in untrusted)
        raise user_error(
            f"trusting the keys shown for {names} needs --yes "
            "(stdin is not a terminal, nothing to ask)"
        )
    for host, name, key in untrusted:
        question = f"Trust {hostkeys.fingerprint(key)} for {host.name} ({name})?"
        if not confirm(question, yes, f"host {host.name}: trusting a key needs --yes"):
            print(f"{host.name:<{width}} | skipped | not recorded")
            continue
        hostkeys.record(team_file, name, key)
        print(f"{host.name:<{width}} | changed | recorded in {team_file}")
    if failed:
        raise Exit(code=1)
