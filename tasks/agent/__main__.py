"""`python3 agent.pyz COMMAND < input.json`: run one agent command; see the package docstring.

The lock commands take their JSON as an argument instead (`lock-keep '<json>'`): a keeper's
stdin is the run's lifeline, held open until the run ends."""

from __future__ import annotations

import importlib
import json
import sys

# command: (module, function). Imported on demand: the lock keeper is the first command of every
# run, and the switch's modules (http.client, ssl) would double its start-up.
COMMANDS = {"switch": ("switch", "switch"), "verify": ("switch", "verify")}
ARGUMENT_COMMANDS = {
    "lock-keep": ("lock", "keep"),
    "lock-status": ("lock", "status"),
    "lock-clear": ("lock", "clear"),
    "logs": ("logs", "logs"),
    "timer": ("timer", "timer"),
    "release-status": ("release", "set_status"),
    "point-current": ("release", "make_current"),
    "nginx-reload": ("system", "reload_nginx"),
}


def _function(where: tuple[str, str]):
    module, function = where
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else ""
    try:
        if name in COMMANDS and len(argv) == 2:
            return _function(COMMANDS[name])(json.load(sys.stdin))
        if name in ARGUMENT_COMMANDS and len(argv) <= 3:
            spec = json.loads(argv[2]) if len(argv) == 3 else {}
            return _function(ARGUMENT_COMMANDS[name])(spec)
    except ValueError as exc:
        print(f"agent: input is not JSON: {exc}", file=sys.stderr)
        return 2
    names = ",".join([*COMMANDS, *ARGUMENT_COMMANDS])
    print(f"usage: agent {{{names}}} [input.json]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
