"""The main job: converge every target host to its whole stack."""

from __future__ import annotations

from . import multidomain
from .engine.tasks import run_steps, targets_task


@targets_task(default=False)
def deploy(c, check=False, diff=False, json_=False, quiet=False):
    """Deploy every site of the target hosts (-H host, group, alias or address).

    --check changes nothing and reports what would change; --diff shows file diffs with secrets
    masked; --json prints the report as JSON; --quiet prints only changes, failures and the recap.
    """
    run_steps(c, multidomain.host_steps, check=check, diff=diff, json_=json_, quiet=quiet)
