"""`python3 agent.pyz COMMAND < input.json`: run one agent command; see the package docstring.

The lock commands take their JSON as an argument instead (`lock-keep '<json>'`): a keeper's
stdin is the run's lifeline, held open until the run ends."""

from __future__ import annotations

import json
import sys

from . import lock, switch

COMMANDS = {"switch": switch.switch, "verify": switch.verify}
ARGUMENT_COMMANDS = {"lock-keep": lock.keep, "lock-status": lock.status, "lock-clear": lock.clear}


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else ""
    try:
        if name in COMMANDS and len(argv) == 2:
            return COMMANDS[name](json.load(sys.stdin))
        if name in ARGUMENT_COMMANDS and len(argv) <= 3:
            return ARGUMENT_COMMANDS[name](json.loads(argv[2]) if len(argv) == 3 else {})
    except ValueError as exc:
        print(f"agent: input is not JSON: {exc}", file=sys.stderr)
        return 2
    names = ",".join([*COMMANDS, *ARGUMENT_COMMANDS])
    print(f"usage: agent {{{names}}} [input.json]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
