"""Flower for each site that enables it: on 127.0.0.1, behind nginx at /flower/, basic auth
from the site's secrets (FLOWER_BASIC_AUTH in the env file, never on a command line)."""

from __future__ import annotations

from . import celery
from .engine.steps import UnitStatus
from .engine.tasks import run_steps, targets_task, user_error


@targets_task
def status(c, json_=False):
    """Show each site's Flower unit; exits 1 where it is not running."""

    def build(inv, host):
        sites = [s for s in inv.sites_on(host) if s.flower is not None]
        if not sites:
            raise user_error(f"no site on {host.name!r} has [sites.<name>.flower]")
        return [
            UnitStatus(unit)
            for site in sites
            for role, unit, _ in celery.units(site)
            if role == "flower"
        ]

    run_steps(c, build, json_=json_)
