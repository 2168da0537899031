"""The input fuzz's readers (tests/file_readers.py) held against the real programs on a test
host, so the fuzz cannot pass by agreeing with itself: an env file of hundreds of accepted
values as `. file` in sh and EnvironmentFile= in systemd read it, nginx -t on the nginx files
of fuzz-accepted inventories, systemd-analyze verify on their unit files, and the words systemd
runs for ExecStart= lines the kit quotes (timer jobs)."""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
from pathlib import Path

import inventory_cases as fuzz
import pytest
from file_readers import exec_words, nginx_structure, sh_env, systemd_env, unit_structure
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from djk.tasks import timers
from djk.tasks.engine import values

from .kit import sh

pytestmark = pytest.mark.e2e

DUMP = (
    "import json, os\n"
    "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('V_')}))\n"
)
TRICKY = [
    "",
    " ",
    "a b",
    "  lead and trail  ",
    "it's",
    'say "hi"',
    "a\\b",
    "a\\\\b",
    "trailing\\",
    "$HOME",
    "$",
    "`id`",
    "${X",
    "}{",
    "#not a comment",
    "x # y",
    "a;b",
    "a=b",
    "%n %H",
    "\t",
    "é ü 漢字",
    "'",
    '"',
    "\\'",
    '\\"',
    "*",
    "~root",
    "a\u00a0b",
]


def accepted_values(count: int) -> list[str]:
    found: list[str] = []

    @settings(
        max_examples=count * 3,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(st.text(max_size=30))
    def collect(value: str) -> None:
        try:
            values.env_value(value)
        except ValueError:
            return
        if len(found) < count:
            found.append(value)

    collect()
    return found


def put(host, path: str, content: str) -> None:
    command = f"mkdir -p {shlex.quote(str(Path(path).parent))} && cat > {shlex.quote(path)}"
    done = subprocess.run(
        host.ssh_argv(f"sudo -n sh -c {shlex.quote(command)}"),
        input=content.encode(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_env_file_readers_match_sh_and_systemd(fresh_host):
    pairs = {f"V_{i}": v for i, v in enumerate([*TRICKY, *accepted_values(300)])}
    accepted = {}
    for key, value in pairs.items():
        try:
            accepted[key] = values.env_quote(value)
        except ValueError:
            pass
    assert len(accepted) > 250
    text = "# header\n" + "".join(f"{k}={q}\n" for k, q in accepted.items())
    put(fresh_host, "/tmp/readers.env", text)
    put(fresh_host, "/tmp/dump.py", DUMP)
    wanted = {k: pairs[k] for k in accepted}
    in_sh = json.loads(
        sh(
            fresh_host,
            "env -i sh -c 'set -a; . /tmp/readers.env; exec /usr/bin/python3 /tmp/dump.py'",
        )
    )
    in_systemd = json.loads(
        sh(
            fresh_host,
            "systemd-run --wait --pipe --quiet -p EnvironmentFile=/tmp/readers.env "
            "/usr/bin/python3 /tmp/dump.py",
        )
    )
    assert in_sh == wanted
    assert in_systemd == wanted
    assert sh_env(text) == wanted and systemd_env(text) == wanted


def test_readers_see_what_sh_and_systemd_see_in_files_the_kit_never_writes(fresh_host):
    """The readers also on raw text: unquoted, escaped and oddly spaced lines."""
    text = (
        "V_A=plain\nV_B=  spaced value  \nV_C='single'\"double\"\nV_D=esc\\ aped\n"
        'V_E="multi\\\\back"\n  V_F = x\nV_G="a\\$b\\`c"\n# V_H=comment\n'
    )
    put(fresh_host, "/tmp/raw.env", text)
    put(fresh_host, "/tmp/dump.py", DUMP)
    in_systemd = json.loads(
        sh(
            fresh_host,
            "systemd-run --wait --pipe --quiet -p EnvironmentFile=/tmp/raw.env "
            "/usr/bin/python3 /tmp/dump.py",
        )
    )
    assert systemd_env(text) == in_systemd


def accepted_inventories(tmp_path: Path, count: int) -> list:
    """Inventories from the fuzz's generator that the kit accepts, without TLS (a real
    certificate would be needed for nginx -t)."""
    found = []

    @settings(
        max_examples=count * 20,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(fuzz.mutated_cases())
    def collect(pair) -> None:
        _, case = pair
        if len(found) >= count or any(
            "tls" in s for s in case.toml.get("sites", {}).values() if isinstance(s, dict)
        ):
            return
        result = fuzz.outcome(case, tmp_path / f"inv{len(found)}")
        if isinstance(result, fuzz.InventoryError):
            return
        if all(_is_ip(h.address) for h in result.hosts.values()):  # nginx -t resolves names
            found.append(result)

    collect()
    return found


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def test_accepted_inventories_pass_nginx_t_and_systemd_analyze_verify(fresh_host, tmp_path):
    inventories = accepted_inventories(tmp_path, 8)
    assert len(inventories) >= 6
    for number, inventory in enumerate(inventories):
        files, _ = fuzz.written(inventory)
        host = next(f.host for f in files if f.path.startswith("/etc/nginx/sites-enabled/"))
        web = [f for f in files if f.kind == "nginx" and f.host == host]
        sh(fresh_host, "rm -rf /etc/nginx/djk /etc/nginx/sites-enabled/*")
        for item in web:
            put(fresh_host, item.path, item.content)
            nginx_structure(item.content)  # the reader parses what nginx accepts
        done = fresh_host.ssh("sudo -n nginx -t", check=False)
        assert done.returncode == 0, f"inventory {number}: {done.stderr}"
        units = [f for f in files if f.kind == "unit"]
        paths = []
        for item in units:
            path = f"/tmp/units{number}/{Path(item.path).name}"
            put(fresh_host, path, item.content)
            paths.append(path)
            unit_structure(item.content)
            for line in item.content.split("\n"):
                if line.startswith("ExecStart="):
                    binary = line.split("=", 1)[1].split()[0]
                    sh(
                        fresh_host,
                        f"mkdir -p {Path(binary).parent} && touch {binary} && chmod +x {binary}",
                    )
        if paths:
            done = fresh_host.ssh("sudo -n systemd-analyze verify " + " ".join(paths), check=False)
            assert done.returncode == 0, f"inventory {number}: {done.stdout}{done.stderr}"


ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


def test_exec_words_match_what_systemd_runs(fresh_host):
    """Arguments as the kit quotes them into ExecStart= (timers.systemd_quote): what systemd
    passes to the program is exactly the words, and exec_words reads the line the same way."""
    words = [w for w in TRICKY if not values.has_control(w)] + accepted_values(60)
    words += ["50%", "%%", "$$", "a ;b", "#c", "\\", "100% $HOME ${X}"]
    unit = "djk-readers-argv.service"
    program = ["/usr/bin/python3", "-c", ARGV, *words]
    line = " ".join(timers.systemd_quote(w) for w in program)
    assert exec_words(line) == program
    # To a file: journald may not tie the output of a process that ended at once to its unit.
    put(
        fresh_host,
        f"/etc/systemd/system/{unit}",
        f"[Service]\nType=oneshot\nStandardOutput=truncate:/tmp/djk-argv.json\nExecStart={line}\n",
    )
    sh(fresh_host, f"systemctl daemon-reload && systemctl start {unit}")
    assert json.loads(sh(fresh_host, "cat /tmp/djk-argv.json")) == words
