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

import atexit
import dataclasses
import gc
import os
import re
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import fabric.executor
from invoke import Call, Exit, Task, task

from . import hostinfo
from .executor import Audited, HostPlan, Mode, PhaseSteps, batches, converge
from .hostinfo import HostInfo, Profile
from .inventory import DEFAULT_INVENTORY, Host, Inventory, InventoryError, Site, load
from .remote import Remote, RemoteError, own_config
from .report import HostReport, Reporter
from .steps import Step
from .values import escape

HOSTS_KEY = "djk_hosts"
REMAINDER_KEY = "djk_remainder"
INVENTORY_ENV = "DJK_INVENTORY"
ENVIRONMENT_ENV = "DJK_ENV"  # staging -> hosts.staging.toml
_ENVIRONMENT = re.compile(r"[a-z][a-z0-9-]{0,31}")


def targets_task(*args, **kwargs):
    """@task for commands that act on all target hosts at once (parallel, one connection each)."""

    def mark(fn):
        made = task(fn, **kwargs)
        setattr(made, "djk_targets", True)  # noqa: B010  (read by the executor's extension)
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
    # What follows `--` is our task's (app.manage's arguments), not a command Fabric runs on
    # every host: kept here, word by word, and hidden from the stock expansion.
    setattr(self.config, REMAINDER_KEY, _remainder_words(self.core.remainder))
    remainder, self.core.remainder = self.core.remainder, ""
    expanded = []
    try:
        for call in calls:
            if call in ours:
                if isinstance(call, Task):
                    call = Call(task=call)
                expanded += _stock_expand_calls(self, call.pre, apply_hosts=False)
                expanded.append(call)
                expanded += _stock_expand_calls(self, call.post, apply_hosts=False)
            else:
                expanded += _stock_expand_calls(self, [call], apply_hosts)
    finally:
        self.core.remainder = remainder
    return expanded


def _remainder_words(joined: str) -> list[str]:
    """Invoke joins the words after `--` with spaces; the shell's words are in sys.argv (when
    fab runs from a shell: a word may hold spaces), else they are split again."""
    if not joined:
        return []
    if "--" in sys.argv:
        words = sys.argv[sys.argv.index("--") + 1 :]
        if " ".join(words) == joined:
            return words
    return shlex.split(joined)


def remainder(c) -> list[str]:
    """The words after `--` on the command line (for a target-aware task)."""
    return list(c.config.get(REMAINDER_KEY) or [])


def install() -> None:
    """Make Fabric's executor run target-aware tasks once for all hosts, and keep what follows
    `--` word by word; skip the garbage collection at exit (idempotent)."""
    fabric.executor.Executor.expand_calls = _expand_calls
    # What a run made lives until the process ends. Python's last collections at exit walk all
    # of it (Fabric's, paramiko's and the kit's ~40,000 objects): 60-100 ms of a 0.6 s no-op,
    # measured. Frozen, they are left to the end of the process: only that collection is
    # skipped (exit handlers still run; the kit closes its files by `with`).
    atexit.unregister(gc.freeze)  # registered once, however often installed
    atexit.register(gc.freeze)


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


def site_named(inventory: Inventory, name: str | None) -> Site:
    """The site a task's --site names; a user error when it is missing or unknown."""
    if name is None:
        raise user_error("which site? --site NAME (one of sites.<name> in hosts.toml)")
    if name not in inventory.sites:
        raise user_error(f"unknown site {name!r} (sites.{name} in {inventory.path.name})")
    return inventory.sites[name]


def site_hosts(c, inventory: Inventory, hosts: list[Host]) -> list[Host]:
    """A site's hosts for a task about that site: all of them, or those among -H when given."""
    if not c.config.get(HOSTS_KEY):
        return hosts
    chosen = target_hosts(c, inventory)
    return [h for h in hosts if h in chosen]


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
    as_user: str | None = None,
    recap: bool = True,
    hosts: list[Host] | None = None,
    audit: Audited | None = None,
    collect: list[HostReport] | None = None,
) -> list[HostReport]:
    """Build every host's plan first (user errors end here, before any host is touched), then
    converge them in parallel and close with a recap; exit 1 if any host failed.

    Plans are built for what each host is (engine/hostinfo.py): the profile remembered from the
    last run, or, for a host never seen, read now over the connection the run then goes on
    with. A host that changed since is planned again when the first round trip shows it.
    `audit` (executor.Audited): the run leaves an audit line on each host.
    `collect` gets the reports, also when the run failed (an Exit follows)."""
    inventory = inventory or load_inventory(c)
    hosts = hosts if hosts is not None else target_hosts(c, inventory)
    if not hosts:
        raise Exit("error: no target hosts", code=2)
    if as_user:  # e.g. root, to bootstrap the deploy user
        hosts = [dataclasses.replace(h, user=as_user) for h in hosts]
    remotes: dict[str, Remote] = {}
    # Copied once, before any thread starts: each connection copies this one (remote.py).
    config = own_config(c.config)
    hosts = _with_profiles(hosts, remotes, config)
    # The connections open while the plans are built: the SSH handshakes wait on the hosts,
    # the plans on this machine's CPU.
    opening = _open_early([h for h in hosts if h.name not in remotes], remotes, config)

    def plan_for(host: Host) -> HostPlan:
        problem = host.platform.problem()
        if problem:
            raise user_error(f"host {host.name} ({host.platform.describe()}) {problem}")
        built = build(inventory, host)
        plan = built if isinstance(built, HostPlan) else HostPlan(host, [PhaseSteps("", built)])
        if audit is not None and plan.audit is None:
            plan.audit = audit  # engine/audit.py: this run leaves a line on the host
        return plan

    def replan(host: Host, info: HostInfo) -> HostPlan:
        try:
            return plan_for(dataclasses.replace(host, info=info))
        except Exit as exc:
            raise ValueError(str(exc.message).removeprefix("error: ")) from None

    try:
        plans = [plan_for(host) for host in hosts]
        batches(len(plans), batch)
    except ValueError as exc:
        _close_all(remotes, opening)
        raise user_error(str(exc)) from None
    except BaseException:
        _close_all(remotes, opening)
        raise
    secrets = [s for site in inventory.sites.values() for s in site.secrets.values()]
    reporter = Reporter(output_mode(json_, quiet), check=check, secrets=secrets)

    def connect(host: Host, config) -> Remote:
        if host.name in opening:
            opening.pop(host.name).result()  # opened, or its error kept for the executor
        return remotes.pop(host.name, None) or Remote(host, config)

    reports = converge(
        plans,
        Mode(check=check, diff=diff, batch=batch),
        reporter,
        config,
        connect=connect,
        replan=replan,
    )
    for host, report in zip(hosts, reports, strict=True):
        if report.host_info is not None:
            hostinfo.remember(host.login, report.host_info)
    if collect is not None:
        collect.extend(reports)
    if recap:
        reporter.recap(reports)
    if any(r.failed for r in reports):
        raise Exit(code=1)
    return reports


def _with_profiles(hosts: list[Host], remotes: dict[str, Remote], config) -> list[Host]:
    """Each host with its profile: remembered, or read now (one command) for a host not seen
    before — over the connection the run keeps. A host that cannot be reached keeps the
    default profile; the run reports the failed connection."""
    known = {h.name: hostinfo.cached(h.login) for h in hosts}
    unseen = [h for h in hosts if known[h.name] is None]

    def probe(host: Host) -> None:
        remote = Remote(host, config)
        try:
            remote.open()
            known[host.name] = remote.gather([Profile()])[Profile()]
            remotes[host.name] = remote
        except RemoteError:
            remote.close()

    if unseen:
        with ThreadPoolExecutor(max_workers=min(16, len(unseen))) as pool:
            list(pool.map(probe, unseen))
    return [dataclasses.replace(h, info=known[h.name]) for h in hosts]


def _open_early(hosts: list[Host], remotes: dict[str, Remote], config) -> dict[str, Future]:
    """Start connecting to `hosts` in the background (each Remote goes into `remotes` now);
    a connection that fails keeps its error for the executor's open() to report."""
    if not hosts:
        return {}
    pool = ThreadPoolExecutor(max_workers=min(16, len(hosts)))
    started = {}
    for host in hosts:
        remotes[host.name] = remote = Remote(host, config)
        started[host.name] = pool.submit(remote.open_early)
    pool.shutdown(wait=False)
    return started


def _close_all(remotes: dict[str, Remote], opening: dict[str, Future] | None = None) -> None:
    for future in (opening or {}).values():
        future.result()  # not closed while it still connects
    for remote in remotes.values():
        try:
            remote.close()
        except Exception:  # closing what may never have opened fully
            pass


def confirm(question: str, yes: bool, refusal: str) -> bool:
    """Whether to go on: `--yes` given, or a person at the terminal answers y. Without a
    terminal and without --yes there is nobody to ask: a user error saying `refusal` (which
    should name the --yes it needs)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise user_error(f"{refusal} (stdin is not a terminal, nothing to ask)")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def user_error(message: str) -> Exit:
    """The one-line error of a user's mistake, exit code 2; what it quotes is escaped."""
    return Exit(f"error: {escape(message)}", code=2)
