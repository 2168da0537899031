"""The host agent as the control machine ships it: the `agent` package as one zipapp whose name
holds its content hash, uploaded only when that file is not on the host yet, and called with
JSON on stdin. A deploy's lock keeper is its first command: when the file is missing it says so
and the kit uploads it (one more command, once per agent version); elsewhere a File step puts
it in place (its Stat is read with every other fact, so an unchanged agent costs no command)."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import zipfile
from functools import lru_cache
from pathlib import Path

from .hostinfo import cache_file, write_cache
from .steps import File

AGENT_SOURCE = Path(__file__).resolve().parents[1] / "agent"
AGENT_DIR = "/var/lib/djk"


@lru_cache(maxsize=1)
def archive() -> bytes:
    """The zipapp, byte for byte the same for the same sources (fixed dates, sorted names)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for source in sorted(AGENT_SOURCE.glob("*.py")):
            info = zipfile.ZipInfo(f"agent/{source.name}", date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, source.read_bytes())
        main = zipfile.ZipInfo("__main__.py", date_time=(2020, 1, 1, 0, 0, 0))
        main.external_attr = 0o644 << 16
        # Not runpy: its imports cost the keeper's start-up on every host of every run.
        z.writestr(main, "import sys\nfrom agent.__main__ import main\nsys.exit(main(sys.argv))\n")
    return buffer.getvalue()


@lru_cache(maxsize=1)
def digest() -> str:
    return hashlib.sha256(archive()).hexdigest()


@lru_cache(maxsize=1)
def path() -> str:
    return f"{AGENT_DIR}/agent-{digest()[:16]}.pyz"


def installed() -> File:
    """The step that puts this agent on the host (root-owned, read-only for others)."""
    return File(path(), archive(), mode="644", name="host agent")


MISSING = "AGENT-MISSING"


def upload_command() -> str:
    """Puts the zipapp sent on stdin in place atomically (root-owned, 0644)."""
    target = shlex.quote(path())
    return (
        f"set -e; install -d -m 755 {AGENT_DIR}; tmp=$(mktemp {AGENT_DIR}/.agent.XXXXXX); "
        f'cat > "$tmp"; chmod 644 "$tmp"; mv -f "$tmp" {target}'
    )


# The agent is standard library only: isolated (no PYTHON* variables, no user or current
# directory on its path) and without the site module (its .pth scan is start-up time on
# every host of every run).
PYTHON = "python3 -I -S"


def _exec(name: str, argument: str = "") -> str:
    arg = f" {shlex.quote(argument)}" if argument else ""
    return f"exec {PYTHON} {shlex.quote(path())} {shlex.quote(name)}{arg}"


def if_installed(name: str, argument: str = "", otherwise: str | None = None) -> str:
    """Runs an agent command taking its input as an argument, or prints MISSING (or runs
    `otherwise`) when this agent version is not on the host."""
    quoted = shlex.quote(path())
    fallback = otherwise if otherwise is not None else f"echo {MISSING}"
    return f"if [ -f {quoted} ]; then {_exec(name, argument)}; fi; {fallback}"


def receive() -> str:
    """Shell that takes the zipapp from the head of stdin (carried_head()) and puts it in
    place when this version is not on the host (else reads and drops it); what follows on
    stdin is left for the rest of the script."""
    quoted = shlex.quote(path())
    # `read` takes the size line byte by byte and `head -c` reads no further than the zipapp
    # (coreutils), so the command's own stdin follows untouched. A stream cut short leaves
    # nothing (the digest is checked before the file takes the agent's name).
    return (
        f'read n || exit 1; if [ -f {quoted} ]; then head -c "$n" > /dev/null; else '
        f"install -d -m 755 {AGENT_DIR} && t=$(mktemp {AGENT_DIR}/.agent.XXXXXX) && "
        f'head -c "$n" > "$t" && [ "$(sha256sum < "$t")" = "{digest()}  -" ] && '
        f'chmod 644 "$t" && mv -f "$t" {quoted} || {{ rm -f "$t"; exit 1; }}; fi'
    )


def carried(name: str, argument: str = "") -> str:
    """Runs an agent command whose stdin starts with carried_head(): the zipapp it carries is
    put in place first when this version is not on the host (else read and dropped). For a
    host the kit has not seen yet: no MISSING answer, no upload command and no second start."""
    return f"{receive()}; {_exec(name, argument)}"


def run(name: str, spec: dict) -> str:
    """Shell running an agent command that takes its JSON as the argument, in a script that
    goes on after it (the agent is on the host: the run's lock keeper put it there, or
    receive() earlier in the script)."""
    argument = json.dumps(spec, sort_keys=True)
    return f"{PYTHON} {shlex.quote(path())} {shlex.quote(name)} {shlex.quote(argument)}"


def carried_head() -> bytes:
    data = archive()
    return f"{len(data)}\n".encode() + data


# The control machine remembers which agent it last found on each host (by Remote.identity():
# login and host key): a host not seen with this version gets it carried by its first command.


def _seen_file(identity: str) -> Path:
    return cache_file(identity, ".agent")


def known_on(identity: str) -> bool:
    try:
        return _seen_file(identity).read_text().strip() == path()
    except OSError:
        return False


def seen_on(identity: str) -> None:
    if known_on(identity):
        return
    write_cache(_seen_file(identity), path() + "\n")


def any_installed(name: str, argument: str = "") -> str:
    """Runs an agent command with this version, or else the newest agent on the host (a lock
    taken by a run of another kit version is read by that version's agent); nothing when the
    host has none."""
    arg = f" {shlex.quote(argument)}" if argument else ""
    newest = (
        f"f=$(ls -t {AGENT_DIR}/agent-*.pyz 2>/dev/null | head -n 1); "
        f'[ -z "$f" ] || exec {PYTHON} "$f" {shlex.quote(name)}{arg}'
    )
    return if_installed(name, argument, otherwise=newest)


def command(name: str) -> str:
    """The shell command that runs an agent command (its input goes on stdin)."""
    return f"{PYTHON} {shlex.quote(path())} {shlex.quote(name)}"


def payload(spec: dict) -> bytes:
    return json.dumps(spec, sort_keys=True).encode()
