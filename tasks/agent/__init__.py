"""The host agent: the code that runs on a host, not in f-strings.

Standard library only, for Debian's python3 (3.11+). The control machine sends the package as one
zipapp whose file name holds its content hash (engine/agent.py), only when that file is not
there yet, and runs `python3 -I -S /var/lib/djk/agent-<hash>.pyz <command>` with the command's input
as JSON on stdin. Progress goes to stdout line by line, the one-line cause of a failure to
stderr, and the exit code says how it ended (see each command).

Commands: `switch` (a site to a release, health-gated; agent/switch.py), `verify` (a release
through this host's nginx; the web host of a split site) and the deploy lock's `lock-keep`,
`lock-status`, `lock-clear` (agent/lock.py).

Everything it runs (systemctl, nginx, journalctl, ss) is looked up on PATH, so the unit tests
run it against fake programs (tests/unit/agent/).
"""
