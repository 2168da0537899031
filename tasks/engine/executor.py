"""A Fabric executor that runs target-aware tasks once for all hosts.

Stock Fabric runs `fab -H a,b task` as one call per host, serially, with a new connection each
time. Tasks marked by `targets_task` are called once instead, with the -H value in the config,
and the engine connects to every host once and converges them in parallel. Other tasks
(and `fab -H x -- command`) keep Fabric's behaviour. fabric.json names this class.
"""

from __future__ import annotations

import fabric
from invoke import Call, Task

from .tasks import HOSTS_KEY


class TargetExecutor(fabric.Executor):
    def expand_calls(self, calls, apply_hosts=True):
        ours, theirs = [], []
        for call in calls:
            task = call.task if isinstance(call, Call) else call
            (ours if getattr(task, "djk_targets", False) else theirs).append(call)
        if not ours:
            return super().expand_calls(calls, apply_hosts)
        host_str = self.core[0].args.hosts.value if apply_hosts else None
        setattr(self.config, HOSTS_KEY, host_str or "")
        expanded = []
        for call in calls:
            if call in ours:
                if isinstance(call, Task):
                    call = Call(task=call)
                expanded += super().expand_calls(call.pre, apply_hosts=False)
                expanded.append(call)
                expanded += super().expand_calls(call.post, apply_hosts=False)
            else:
                expanded += super().expand_calls([call], apply_hosts)
        return expanded
