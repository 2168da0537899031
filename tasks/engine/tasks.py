"""The glue between Invoke tasks and the engine: targets, options, exit codes.

Tasks marked with `targets_task` run once for all their hosts (see executor.py); this module turns
`-H`, the inventory and the common flags into a converge() call and its recap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from invoke import Exit, task

from .inventory import DEFAULT_INVENTORY, Host, Inventory, InventoryError, load
from .report import HostReport, Reporter
from .runner import HostPlan, Mode, batches, converge
from .steps import Step

PROJECT = Path(__file__).resolve().parents[2]
HOSTS_KEY = "djk_hosts"


def targets_task(*args, **kwargs):
    """@task for commands that act on all target hosts at once (parallel, one connection each)."""

    def mark(fn):
        made = task(fn, **kwargs)
        made.djk_targets = True
        return made

    if args and callable(args[0]):
        return mark(args[0])
    return mark


def inventory_path() -> Path:
    return Path(os.environ.get("DJK_INVENTORY") or PROJECT / DEFAULT_INVENTORY)


def load_inventory() -> Inventory:
    try:
        return load(inventory_path())
    except InventoryError as exc:
        raise Exit(f"error: {exc}", code=2) from None


def target_hosts(c, inventory: Inventory) -> list[Host]:
    try:
        hosts = inventory.resolve(c.config.get(HOSTS_KEY) or None)
    except InventoryError as exc:
        raise Exit(f"error: {exc}", code=2) from None
    if not hosts:
        raise Exit("error: no target hosts", code=2)
    return hosts


def output_mode(json_: bool, quiet: bool) -> str:
    return "json" if json_ else "quiet" if quiet else "human"


def run_steps(
    c,
    build: Callable[[Inventory, Host], list[Step] | HostPlan],
    check: bool = False,
    diff: bool = False,
    json_: bool = False,
    quiet: bool = False,
    lock_wait: float | None = None,
    batch: str | None = None,
) -> list[HostReport]:
    """Build every host's steps first (user errors end here, before any host is touched),
    then converge them in parallel and close with a recap; exit 1 if any host failed."""
    inventory = load_inventory()
    hosts = target_hosts(c, inventory)
    plans = []
    for host in hosts:
        built = build(inventory, host)
        plans.append(built if isinstance(built, HostPlan) else HostPlan(host, [built]))
    secrets = [s for site in inventory.sites.values() for s in site.secrets.values()]
    reporter = Reporter(output_mode(json_, quiet), check=check, secrets=secrets)
    try:
        batches(len(plans), batch)
    except ValueError as exc:
        raise user_error(str(exc)) from None
    mode = Mode(check=check, diff=diff, lock_wait=lock_wait, batch=batch)
    reports = converge(plans, mode, reporter, c.config)
    reporter.recap(reports)
    failed = [r.host for r in reports if r.failed]
    if failed:
        raise Exit(code=1)
    return reports


def user_error(message: str) -> Exit:
    return Exit(f"error: {message}", code=2)
