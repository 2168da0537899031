"""`python3 agent.pyz COMMAND < input.json`: run one agent command; see the package docstring."""

from __future__ import annotations

import json
import sys

from . import switch

COMMANDS = {"switch": switch.switch, "verify": switch.verify}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(f"usage: agent {{{','.join(COMMANDS)}}} < input.json", file=sys.stderr)
        return 2
    try:
        spec = json.load(sys.stdin)
    except ValueError as exc:
        print(f"agent: input is not JSON: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[argv[1]](spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
