"""The deploy lock: one deploy or rollback per site at a time, tied to the run's SSH connection.

A component with no hosts.toml keys: for runs that change sites (deploy, rollback) it holds
each site's lock on every host from connecting to closing (the keeper on the host is the
host agent's, agent/lock.py; engine/lock.py starts it). Tasks: see who holds it, and end a
hung holder explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .engine import agent
from .engine import lock as L
from .engine.audit import Says
from .engine.cli import load_inventory, run_plans, site_named, targets_task
from .engine.component import Component, HostRun, register
from .engine.facts import Fact
from .engine.outcome import Outcome
from .engine.remote import Remote, RemoteError, Result
from .engine.steps import Context, Plan, Run, Step
from .release.store import deployer


class LockBusy(RemoteError):
    def __init__(self, holder: L.Holder) -> None:
        self.holder = holder
        super().__init__(holder.describe())


@dataclass(frozen=True)
class DeployLock:
    """executor.Hold: the sites' flocks on a host, held by a keeper process whose stdin is the
    run's connection; waits up to `wait` seconds for another holder."""

    sites: tuple[str, ...]
    wait: float

    def acquire(self, remote: Remote, then: str | None = None) -> Result | None:
        """Takes the locks; with `then` (a script), the keeper runs it as soon as they are
        taken and its result comes back here: one command less in every run."""
        # A host not known to have this agent gets it with the keeper's own command.
        identity = remote.identity()
        carry = not agent.known_on(identity)
        keeper = L.keeper_command(
            list(self.sites),
            self.wait,
            L.command_line(),
            deployer(),
            remote.run_id,
            then=then is not None,
            carry=carry,
        )
        head = L.script_head(then) if then is not None else b""
        line, channel = remote.hold(
            keeper,
            timeout=self.wait + 60,
            head=head,
            payload=agent.carried_head() if carry else b"",
        )
        if line == agent.MISSING:
            # The keeper is agent code: this version of the agent goes up first (once).
            remote.release(channel)
            done = remote.run(agent.upload_command(), stdin=agent.archive())
            if not done.ok:
                raise RemoteError(f"could not install the host agent: {done.stderr.strip()}")
            line, channel = remote.hold(keeper, timeout=self.wait + 60, head=head)
        if carry and (line == "LOCKED" or line.startswith(("LOCKED ", "BUSY "))):
            agent.seen_on(identity)  # the keeper ran: the agent is there (known already else)
        if line == "LOCKED" and then is None:
            return None
        counts = L.parse_locked(line) if then is not None else None
        if counts is not None:
            rc, out, err = counts
            stdout, stderr = remote.read(channel, out), remote.read(channel, err)
            return Result(rc, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))
        remote.release(channel)
        if line.startswith("BUSY "):
            raise LockBusy(L.parse_busy(line))
        raise RemoteError(f"could not take the deploy lock: {line or 'no answer'}")


class LockComponent(Component):
    name = "lock"
    after = ("supervisor",)  # the deploy lock before any site's step

    def holds(self, run: HostRun) -> list:
        wait = run.options.lock_wait
        if wait is None or not run.sites:
            return []
        return [DeployLock(tuple(s.name for s in run.sites), float(wait))]


register(LockComponent())


@dataclass(frozen=True)
class LockHolders(Outcome):
    """`fab lock.status`: who holds which site's deploy lock on a host."""

    holders: tuple[dict, ...]

    def data(self) -> dict[str, Any]:
        return {"locks": list(self.holders)}


class Holders(Step):
    id = "lock-status"
    name = "deploy locks"

    def facts(self, diff: bool) -> list[Fact]:
        return [L.Locks()]

    def plan(self, ctx: Context) -> Plan:
        holders = ctx.facts[L.Locks()]
        report = (LockHolders(tuple(h.__dict__ for h in holders)),)
        if not holders:
            return Plan(reason="no site is locked", outcomes=report)
        return Plan(reason="; ".join(h.describe() for h in holders), outcomes=report)


def clear_step(site: str) -> Step:
    return Run(f"lock-clear:{site}", f"clear lock {site}", "end the holder", L.clear_command(site))


@targets_task(help={"json_": "print the report as JSON"})
def status(c, json_=False):
    """Show which sites are locked by a running deploy or rollback, by whom and for how long."""
    run_plans(c, lambda inventory, host: [Holders()], json_=json_)


@targets_task(help={"site": "the site whose lock to clear", "json_": "print the report as JSON"})
def clear(c, site, json_=False):
    """End the run holding SITE's deploy lock on the target hosts (for a hung run)."""
    inventory = load_inventory(c)
    site_named(inventory, site)
    run_plans(
        c,
        lambda inv, host: [clear_step(site)],
        json_=json_,
        inventory=inventory,
        audit=Says({site: {"lock": "cleared"}}),
    )
