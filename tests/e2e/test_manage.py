"""`fab app.manage` and `fab app.shell` in the live release: the exit code passes through, the
output streams with the host's prefix, arguments keep their words, a variable given with --env
reaches the command on stdin (createsuperuser --noinput makes a user in the live database, the
password on no command line), and an interactive Django shell on a real pseudo-terminal runs a
statement in the live release."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

import pytest

from .kit import ROOT, Project, health, sh

pytestmark = pytest.mark.e2e
PASSWORD = "Adm1n-pa55 word!"


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    settings = src / "exampleproject/settings.py"  # users, for createsuperuser
    text = settings.read_text()
    apps = '    "django.contrib.contenttypes",\n'
    settings.write_text(text.replace(apps, '    "django.contrib.auth",\n' + apps))
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["source"] = str(src)
    project.write()
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return project


def test_the_exit_code_passes_through_and_lines_name_their_host(project):
    run = project.fab("app.manage", "--site", "example", "--", "migrate", "--check")
    assert run.code == 0, run.out + run.err
    run = project.fab("app.manage", "--site", "example", "--", "showmigrations", "pages")
    assert run.code == 0 and "web1     |  [X] 0001_initial" in run.out, run.out
    code = "import sys; print('two words'); sys.exit(7)"
    run = project.fab("app.manage", "--site", "example", "--", "shell", "-c", code)
    assert run.code == 7 and "web1     | two words" in run.out, run.out
    run = project.fab("app.manage", "--site", "example")
    assert run.code == 2 and "what to run?" in run.err


def test_createsuperuser_takes_its_password_from_this_machines_environment(project, fresh_host):
    os.environ["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
    try:
        run = project.fab(
            "app.manage",
            "--site",
            "example",
            "--env",
            "DJANGO_SUPERUSER_PASSWORD",
            "--",
            "createsuperuser",
            "--noinput",
            "--username",
            "admin",
            "--email",
            "admin@example.test",
        )
    finally:
        del os.environ["DJANGO_SUPERUSER_PASSWORD"]
    assert run.code == 0, run.out + run.err
    check = (
        "from django.contrib.auth import authenticate; "
        f"print('AUTH', authenticate(username='admin', password={PASSWORD!r}) is not None)"
    )
    os.environ["CHECK_CODE"] = check
    try:
        run = project.fab(
            "app.manage",
            "--site",
            "example",
            "--env",
            "CHECK_CODE",
            "--",
            "shell",
            "-c",
            "import os; exec(os.environ['CHECK_CODE'])",
        )
    finally:
        del os.environ["CHECK_CODE"]
    assert "AUTH True" in run.out, run.out
    # The password went on stdin: not in the journal (sudo logs command lines) nor in ps.
    assert PASSWORD not in sh(fresh_host, "journalctl --no-pager -o cat")


def test_an_interactive_shell_on_a_pseudo_terminal_runs_in_the_live_release(project, fresh_host):
    pid, master = pty.fork()
    if pid == 0:  # the child: fab on a terminal, as a person would run it
        os.environ["DJK_INVENTORY"] = str(project.inventory)
        os.execv(
            sys.executable,
            [
                sys.executable,
                "-m",
                "fabric",
                "--search-root",
                str(ROOT),
                "app.shell",
                "--site",
                "example",
            ],
        )
    seen = b""

    def until(needle: bytes, timeout: float = 60) -> bool:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while needle not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        return needle in seen

    try:
        assert until(b">>> "), seen
        statement = b"from django.conf import settings; print('REL=' + settings.APP_RELEASE)\n"
        os.write(master, statement)
        assert until(b"REL=2"), seen
        os.write(master, b"exit()\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    release = seen.split(b"REL=")[-1].split(b"\r")[0].strip().decode()
    assert release == health(fresh_host)["release"]
    assert os.waitstatus_to_exitcode(status) == 0
