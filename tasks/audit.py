"""`fab audit [--site S] [--json]`: each host's audit log, newest first (engine/audit.py)."""

from __future__ import annotations

from .engine.audit import AuditEntries, AuditLog
from .engine.cli import load_inventory, run_plans, site_named, targets_task
from .engine.facts import Fact
from .engine.steps import Context, Plan, Step


class ReadAudit(Step):
    id = "audit"
    name = "audit log"

    def __init__(self, site: str | None, limit: int) -> None:
        self.site, self.fact = site, AuditLog(limit)

    def facts(self, diff: bool) -> list[Fact]:
        return [self.fact]

    def plan(self, ctx: Context) -> Plan:
        entries = [
            e for e in ctx.facts[self.fact] if self.site is None or self.site in e.get("sites", {})
        ]
        entries.reverse()  # newest first
        return Plan(reason=f"{len(entries)} line(s)", outcomes=(AuditEntries(tuple(entries)),))


@targets_task(
    help={
        "site": "only the runs that touched this site",
        "lines": "how many of the newest lines per host (default 50)",
        "json_": "print the report as JSON",
    }
)
def audit(c, site=None, lines=50, json_=False):
    """Who deployed, rolled back, restored or switched what on each host, newest first."""
    inventory = load_inventory(c)
    if site is not None:
        site_named(inventory, site)
    reports = run_plans(
        c,
        lambda inv, host: [ReadAudit(site, int(lines))],
        json_=json_,
        quiet=True,
        inventory=inventory,
    )
    if json_:
        return
    for report in reports:
        print(f"\n{report.host}")
        print(f"  {'time':<21} {'result':<7} {'by':<28} {'command':<28} sites")
        for entry in (e for found in report.outcomes_of(AuditEntries) for e in found.entries):
            sites = "; ".join(
                f"{name} " + " ".join(f"{k}={v}" for k, v in what.items())
                for name, what in entry.get("sites", {}).items()
            )
            command = entry.get("command", "")[:28]
            print(
                f"  {entry.get('time', ''):<21} {entry.get('result', ''):<7} "
                f"{entry.get('by', ''):<28} {command:<28} {sites}"
            )
