"""The glue between Fabric/Invoke and the engine: target-aware tasks, the inventory, exit codes.

Stock Fabric runs `fab -H a,b task` as one call per host, serially, with a new connection each
time. Tasks marked by `targets_task` are called once instead, with the -H value in the config,
and the executor connects to every host once and converges them in parallel. Other tasks (and
`fab -H x -- command`) keep Fabric's behaviour.

Invoke picks its executor class before it loads any collection configuration, so a team's
fabfile could only select ours with a `fabric.json` beside it. Instead, importing the kit extends
Fabric's own executor with that one rule (`install`), which leaves every unmarked task alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import fabric.executor
from invoke import Call, Exit, Task, task

from .executor import HostPlan, Mode, Phase, batches, converge
from .inventory import DEFAULT_INVENTORY, Host, Inventory, InventoryError, load
from .report import HostReport, Reporter
from .steps import Step
from .values import escape

HOSTS_KEY = "djk_hosts"
INVENTORY_ENV = "DJK_INVENTORY"
ENVIRONMENT_ENV = "DJK_ENV"  # staging -> hosts.staging.toml
_ENVIRONMENT = re.compile(r"[a-z][a-z0-9-]{0,31}")


def targets_task(*args, **kwargs):
    """@task for commands that act on all target hosts at once (parallel, one connection each)."""

    def mark(fn):
        made = task(fn, **kwargs)
        made.djk_targets = True
        return made

    if args and callable(args[0]):
        return mark(args[0])
    return mark


_stock_expand_calls = fabric.executor.Executor.expand_calls


def _expand_calls(self, calls, apply_hosts=True):
    ours = [c for c in calls if getattr(c.task if isinstance(c, Call) else c, "djk_targets", 0)]
    if not ours:
        return _stock_expand_calls(self, calls, apply_hosts)
    host_str = self.core[0].args.hosts.value if apply_hosts else None
    setattr(self.config, HOSTS_KEY, host_str or "")
    expanded = []
    for call in calls:
        if call in ours:
            if isinstance(call, Task):
                call = Call(task=call)
            expanded += _stock_expand_calls(self, call.pre, apply_hosts=False)
            expanded.append(call)
            expanded += _stock_expand_calls(self, call.post, apply_hosts=False)
        else:
            expanded += _stock_expand_calls(self, [call], apply_hosts)
    return expanded


def install() -> None:
    """Make Fabric's executor run target-aware tasks once for all hosts (idempotent)."""
    fabric.executor.Executor.expand_calls = _expand_calls


# -- the inventory -------------------------------------------------------------------------------


def inventory_path(c=None, start: Path | None = None) -> Path:
    """$DJK_INVENTORY, else the config key `djk.inventory` (relative to the fabfile's directory),
    else the first hosts.toml in the current directory or above it — with DJK_ENV=NAME (an
    environment: staging, production) the first hosts.NAME.toml instead."""
    environment = os.environ.get(ENVIRONMENT_ENV, "")
    wanted = DEFAULT_INVENTORY
    if environment:
        if not _ENVIRONMENT.fullmatch(environment):
            raise Exit(
                f"error: {ENVIRONMENT_ENV}={escape(environment)}: an environment name is "
                "lower-case letters, digits and hyphens",
                code=2,
            )
        wanted = f"hosts.{environment}.toml"
    named = os.environ.get(INVENTORY_ENV)
    if not named and c is not None:
        named = (c.config.get("djk") or {}).get("inventory")
        prefix = getattr(c.config, "_project_prefix", None)
        if named and prefix and not Path(named).is_absolute():
            named = str(Path(prefix) / named)
    if named:
        return Path(named).expanduser()
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / wanted
        if candidate.is_file():
            return candidate
    raise Exit(
        f"error: no {wanted} in {here} or above it "
        f"(set {INVENTORY_ENV}=path/to/hosts.toml, or djk.inventory in the fabfile's config)",
        code=2,
    )


def load_inventory(c=None) -> Inventory:
    path = inventory_path(c)
    try:
        return load(path)
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


def run_plans(
    c,
    build: Callable[[Inventory, Host], list[Step] | HostPlan],
    check: bool = False,
    diff: bool = False,
    json_: bool = False,
    quiet: bool = False,
    batch: str | None = None,
    inventory: Inventory | None = None,
) -> list[HostReport]:
    """Build every host's plan first (user errors end here, before any host is touched), then
    converge them in parallel and close with a recap; exit 1 if any host failed."""
    inventory = inventory or load_inventory(c)
    hosts = target_hosts(c, inventory)
    plans = []
    for host in hosts:
        built = build(inventory, host)
        plans.append(built if isinstance(built, HostPlan) else HostPlan(host, [Phase("", built)]))
    secrets = [s for site in inventory.sites.values() for s in site.secrets.values()]
    reporter = Reporter(output_mode(json_, quiet), check=check, secrets=secrets)
    try:
        batches(len(plans), batch)
    except ValueError as exc:
        raise user_error(str(exc)) from None
    reports = converge(plans, Mode(check=check, diff=diff, batch=batch), reporter, c.config)
    reporter.recap(reports)
    if any(r.failed for r in reports):
        raise Exit(code=1)
    return reports


def user_error(message: str) -> Exit:
    """The one-line error of a user's mistake, exit code 2; what it quotes is escaped."""
    return Exit(f"error: {escape(message)}", code=2)
