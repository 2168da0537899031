"""The deploy lock: see who holds it, and end a hung holder explicitly."""

from __future__ import annotations

from .engine import lock as L
from .engine.facts import Fact
from .engine.steps import Context, Plan, Run, Step
from .engine.tasks import load_inventory, run_steps, targets_task, user_error


class _Holders(Step):
    id = "lock-status"
    name = "deploy locks"

    def facts(self, diff: bool) -> list[Fact]:
        return [Fact("locks", L.status_command(), L.parse_status, default=[])]

    def plan(self, ctx: Context) -> Plan:
        holders = ctx.facts["locks"]
        ctx.data.setdefault("report", {})["locks"] = [h.__dict__ for h in holders]
        if not holders:
            return Plan(reason="no site is locked")
        return Plan(reason="; ".join(h.describe() for h in holders))


@targets_task
def status(c, json_=False):
    """Show which sites are locked by a running deploy or rollback, by whom and for how long."""
    run_steps(c, lambda inventory, host: [_Holders()], json_=json_)


@targets_task
def clear(c, site, json_=False):
    """End the run holding SITE's deploy lock on the target hosts (for a hung run)."""
    if site not in load_inventory().sites:
        raise user_error(f"unknown site {site!r}")
    step = Run(f"lock-clear:{site}", f"clear lock {site}", "end the holder", L.clear_command(site))
    run_steps(c, lambda inventory, host: [step], json_=json_)
