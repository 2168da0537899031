"""Helpers for e2e tests: an inventory in a temp dir, `fab` run in-process, host probes."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from fabric.main import make_program

from testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example"
SECRET = "e2e-Secret-Value-7f3a9c"


@dataclass
class FabRun:
    code: int
    out: str
    err: str

    @property
    def report(self) -> dict:
        return json.loads(self.out)

    def host(self, name: str) -> dict:
        return next(h for h in self.report["hosts"] if h["host"] == name)


def fab(inventory: Path, *args: str) -> FabRun:
    """Run `fab` in this process, as a user would type it, and capture its output and code."""
    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("DJK_INVENTORY")
    os.environ["DJK_INVENTORY"] = str(inventory)
    code = 0
    argv = ["fab", "--search-root", str(ROOT), *args]
    # As from a shell: sys.argv is fab's (what follows `--` is read from it word by word).
    saved_argv, sys.argv = sys.argv, argv
    try:
        with redirect_stdout(out), redirect_stderr(err):
            make_program().run(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved_argv
        if old is None:
            os.environ.pop("DJK_INVENTORY", None)
        else:
            os.environ["DJK_INVENTORY"] = old
    return FabRun(code, out.getvalue(), err.getvalue())


def copy_example(tmp_path_factory, name: str = "src") -> Path:
    """A private copy of the example project, for tests that change its code."""
    import shutil

    path = tmp_path_factory.mktemp(name) / "example"
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return path


def _toml(value) -> str:
    """A TOML value: JSON scalars and arrays are valid TOML; tables become inline tables."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


class Project:
    """A user's project: hosts.toml and a secrets file pointing at test hosts."""

    def __init__(self, directory: Path, hosts: list) -> None:
        self.dir = directory
        self.hosts = hosts
        self.secrets = {"DJANGO_SECRET_KEY": SECRET}
        self.others: dict[str, dict] = {}  # more sites: name -> keys (sharing the env_file)
        self.host_keys: dict[str, dict] = {}  # more [hosts.<name>] keys, by host name
        self.site: dict = {
            "domains": ["example.test", "www.example.test"],
            "hosts": [h.name for h in hosts],
            "source": str(EXAMPLE),
            "asgi": "exampleproject.asgi:application",
            "settings": "exampleproject.settings",
            "port": 8001,
            "workers": 2,
            "env_file": "example.env",
        }
        self.write()

    @property
    def inventory(self) -> Path:
        return self.dir / "hosts.toml"

    def write(self) -> Path:
        lines = ["[defaults]", 'user = "deploy"', f'target = "{self.hosts[0].name}"']
        for host in self.hosts:
            lines += [
                f"[hosts.{host.name}]",
                f'address = "{host.address}"',
                f'ssh_key = "{host.key_path}"',
            ]
            lines += [f"{k} = {_toml(v)}" for k, v in self.host_keys.get(host.name, {}).items()]
        for name, site in {"example": self.site, **self.others}.items():
            lines.append(f"[sites.{name}]")
            for key, value in site.items():
                lines.append(f"{key} = {_toml(value)}")
        self.inventory.write_text("\n".join(lines) + "\n")
        # The hosts' own keys, as the testbed made them: trusted explicitly, checked on
        # every connection (engine/hostkeys.py).
        (self.dir / "known_hosts").write_text(
            "".join(h.known_hosts_line() + "\n" for h in self.hosts)
        )
        (self.dir / "example.env").write_text(
            "".join(f"{k}={v}\n" for k, v in self.secrets.items())
        )
        return self.inventory

    def fab(self, *args: str) -> FabRun:
        return fab(self.inventory, *args)


def sh(host, command: str) -> str:
    """Run a command as root on a test host over plain ssh; return its stdout."""
    done = host.ssh(f"sudo -n sh -c {shlex.quote(command)}", check=False)
    assert done.returncode == 0, f"{command!r} on {host.name}: {done.stderr}"
    return done.stdout


def main_pid(host, unit: str) -> int:
    return int(sh(host, f"systemctl show -p MainPID --value {unit}").strip())


def program_pid(host, program: str) -> int:
    """A supervisor program's pid (0 when it does not run)."""
    text = sh(host, f"supervisorctl pid {program} || true").strip()
    return int(text) if text.isdigit() else 0


def nginx_pids(host) -> tuple[int, tuple[int, ...]]:
    """nginx master and worker PIDs: a reload keeps the master and replaces the workers."""
    master = main_pid(host, "nginx.service")
    workers = tuple(sorted(int(p) for p in sh(host, f"pgrep -P {master} || true").split()))
    return master, workers


def snapshot(host) -> str:
    """Every file, directory, owner and mode the kit could touch, and the users: a fingerprint."""
    return sh(
        host,
        "cd / && find etc/nginx etc/systemd/system srv var/lib/djk -xdev 2>/dev/null "
        "-printf '%p %y %m %u %g %l\\n' | sort; "
        "find etc/nginx etc/systemd/system srv -xdev -type f -exec sha256sum {} + 2>/dev/null "
        "| sort; getent passwd | sort",
    )


def curl(host, path: str = "/", host_header: str = "example.test", extra: str = "") -> str:
    """curl from the control machine through the host's nginx; returns status, headers, body."""
    import subprocess

    done = subprocess.run(
        f"curl -s -i --max-time 10 -H {shlex.quote('Host: ' + host_header)} {extra} "
        + shlex.quote(f"http://{host.address}{path}"),
        shell=True,
        capture_output=True,
        text=True,
    )
    return f"exit={done.returncode}\n{done.stdout}"


def live_slot(host, site: str = "example") -> str:
    """The slot sockets/live.sock links to (what nginx and the forwarder connect to)."""
    target = sh(host, f"readlink /srv/djk/{site}/sockets/live.sock").strip()
    assert target in ("a.sock", "b.sock"), target
    return target[0]


def live_unit(host, site: str = "example") -> str:
    return f"djk-{site}-web-{live_slot(host, site)}.service"


def web_pid(host, site: str = "example") -> int:
    """The gunicorn master of the site's live slot."""
    return main_pid(host, live_unit(host, site))


def health(host, host_header: str = "example.test") -> dict:
    answer = curl(host, "/health/", host_header=host_header)
    body = answer.split("\n\n", 1)[-1]
    return json.loads(body)


def spawn_fab(inventory: Path, *args: str):
    """`fab` as a separate process (to kill it, or to run two at once)."""
    import signal
    import subprocess
    import sys

    env = dict(os.environ, DJK_INVENTORY=str(inventory), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "fabric", "--search-root", str(ROOT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        # As from a terminal: Ctrl-C interrupts. A test run started in the background by a
        # shell without job control inherits SIGINT ignored, and so would fab.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(predicate, timeout: float = 30, every: float = 0.5):
    """Call predicate until it returns something true or timeout seconds pass; its last value."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def wait_for_line(proc, needle: str, timeout: float = 120) -> list[str]:
    """Read the process's output until a line contains needle; return the lines read."""
    import time

    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never appeared in:\n{''.join(lines)}")


class Load:
    """Requests through nginx from the control machine, one after another, until stopped.

    By default each request opens its own connection (as a browser retrying on a fresh one
    would). With keep_alive, one connection is kept and reused, GET and POST alternate, and a
    request that fails is not retried (an API client's POST): it is counted, and the next
    request opens a new connection. The loop is bounded in count and time so it always ends.
    """

    def __init__(
        self,
        address: str,
        host_header: str,
        path: str = "/health/",
        keep_alive: bool = False,
        post_path: str = "/echo/",
    ) -> None:
        import threading

        self.address, self.host_header, self.path = address, host_header, path
        self.keep_alive, self.post_path = keep_alive, post_path
        self.results: list[tuple[str, str]] = []  # (outcome, release)
        self.posted: list[int] = []  # indexes of the POSTs' results
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        import http.client
        import time

        deadline = time.monotonic() + 600
        conn = None
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.results) < 50000:
            n += 1
            post = self.keep_alive and n % 2 == 0
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.address, 80, timeout=15)
                    conn.auto_open = 0  # a closed connection is a failure, not a silent retry
                    conn.connect()
                    self.connections += 1
                headers = {"Host": self.host_header}
                if post:
                    conn.request("POST", self.post_path, body=b"x" * 512, headers=headers)
                else:
                    conn.request("GET", self.path, headers=headers)
                answer = conn.getresponse()
                body = answer.read()
                release = json.loads(body).get("release", "") if answer.status == 200 else ""
                if post:
                    self.posted.append(len(self.results))
                self.results.append((str(answer.status), release))
                if not self.keep_alive or answer.will_close:
                    conn.close()  # the server said so: the next request opens a new one
                    conn = None
            except Exception as error:  # a failed request is the thing we count
                self.results.append((f"error: {'POST' if post else 'GET'} {error!r}", ""))
                if conn is not None:
                    conn.close()
                conn = None

    @property
    def failures(self) -> list[str]:
        return [outcome for outcome, _ in self.results if outcome != "200"]

    def mark(self) -> int:
        """The number of answers so far: what comes after a mark came after that moment."""
        return len(self.results)

    def releases_between(self, start: int, end: int | None = None) -> set[str]:
        return {release for _, release in self.results[start:end]}

    def releases_in_order(self) -> list[str]:
        seen: list[str] = []
        for _, release in self.results:
            if release and (not seen or seen[-1] != release):
                seen.append(release)
        return seen


def make_certificate(directory: Path, name: str, san: str, ca_name: str) -> None:
    """A test CA (ca.pem, ca.key) and a certificate it signs (<name>.pem, <name>.key) for the
    subjectAltName `san`, e.g. "DNS:example.test" or "IP:10.213.1.1"."""
    import subprocess

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={ca_name}",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
    )
    (directory / "san.ext").write_text(f"subjectAltName={san}\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )


def team_fab(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed `fab`, as a team member types it, with no trace of the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJK_", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(
        [str(venv / "bin/fab"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


MIGRATION = """from django.db import migrations, models


def fill(apps, schema_editor):
    Visit = apps.get_model("pages", "Visit")
    for visit in Visit.objects.all():
        visit.{field} = "filled-" + visit.path
        visit.save(update_fields=["{field}"])


class Migration(migrations.Migration):
    dependencies = [("pages", "{previous}")]
    operations = [
        migrations.AddField("visit", "{field}", models.CharField(max_length=60, default="")),
        migrations.RunPython(fill, migrations.RunPython.noop, hints={{"djk": "expand"}}),
    ]
"""


def add_migration(src: Path, number: int, field: str) -> str:
    """A migration in the example's `pages` app that adds a column to Visit and fills it (and
    the model's field): its name, e.g. pages.0002_note."""
    folder = src / "pages/migrations"
    previous = sorted(p.stem for p in folder.glob("0*.py"))[-1]
    name = f"{number:04d}_{field}"
    (folder / f"{name}.py").write_text(MIGRATION.format(field=field, previous=previous))
    models = src / "pages/models.py"
    text = models.read_text()
    anchor = "    path = models.CharField(max_length=255)\n"
    line = f'    {field} = models.CharField(max_length=60, default="")\n'
    models.write_text(text.replace(anchor, anchor + line))
    return f"pages.{name}"


def one_host(bed_name: str, subnet: int, image: str, host: str):
    """A testbed of its own with one host, for a module's fixture (`yield from`): booted from
    `image`, brought down after the module."""
    bed = Testbed(name=bed_name, subnet=subnet, image=image)
    bed.ensure_image()
    (found,) = bed.up([host])
    try:
        yield found
    finally:
        bed.down()
