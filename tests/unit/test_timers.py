"""Timers' pure parts: the table and its refusals, ExecStart's quoting, which host runs a job,
the files for systemd and supervisor hosts, what is removed; and the agent's loop parts (the
next elapse as systemd-analyze prints it, a job run in `current` with the env file, a job past
its timeout)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from djk.tasks import timers as T
from djk.tasks.agent import timer as A
from djk.tasks.engine import procs
from djk.tasks.engine.facts import Facts, Lines
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.schema import InventoryError
from djk.tasks.engine.steps import Context

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


def inventory_with(tmp_path: Path, timers: dict, hosts=("web1", "web2"), **host_keys):
    (tmp_path / "site.env").write_text("DJANGO_SECRET_KEY=k3y-value-0\n")
    data = {
        "hosts": {h: {"address": f"10.0.0.{i + 1}", **host_keys} for i, h in enumerate(hosts)},
        "sites": {
            "shop": {
                "domains": ["shop.test"],
                "hosts": list(hosts),
                "port": 8001,
                "source": str(EXAMPLE),
                "asgi": "exampleproject.asgi:application",
                "settings": "exampleproject.settings",
                "env_file": "site.env",
                "migrate_on": "every",
                "timers": timers,
            }
        },
    }
    return parse(data, tmp_path / "hosts.toml")


def test_a_job_is_a_manage_command_or_a_program(tmp_path):
    inv = inventory_with(
        tmp_path,
        {
            "clear": {"schedule": "*-*-* 03:00:00", "command": "clearsessions --verbosity 0"},
            "report": {
                "schedule": "Mon *-*-* 06:00",
                "program": "bin/report 'a b'",
                "run_on": "every",
                "timeout": 600,
            },
        },
    )
    clear, report = inv.sites["shop"].part(T.Timers).jobs
    assert clear == T.Job(
        "clear", "*-*-* 03:00:00", ("manage.py", "clearsessions", "--verbosity", "0"), manage=True
    )
    assert report.argv == ("bin/report", "a b") and not report.manage
    assert (report.run_on, report.timeout) == ("every", 600)


@pytest.mark.parametrize(
    "job, message",
    [
        ({"schedule": "daily"}, "give a manage.py `command` or a `program`, one"),
        ({"schedule": "daily", "command": "x", "program": "y"}, "`command` or a `program`, one"),
        ({"schedule": "daily;reboot", "command": "x"}, "is not an OnCalendar schedule"),
        ({"command": "x"}, "schedule: is required"),
        ({"schedule": "daily", "program": "/usr/bin/x"}, "(a path in the release)"),
        ({"schedule": "daily", "command": "'open"}, "No closing quotation"),
        ({"schedule": "daily", "command": "x", "run_on": "two"}, "is not one of"),
        ({"schedule": "daily", "command": "x", "when": 1}, "unknown key"),
    ],
)
def test_refused_jobs_name_their_key(tmp_path, job, message):
    with pytest.raises(InventoryError, match="sites.shop.timers.j") as refused:
        inventory_with(tmp_path, {"j": job})
    assert message in str(refused.value)


def test_a_job_name_is_plain(tmp_path):
    with pytest.raises(InventoryError, match="is not a job name"):
        inventory_with(tmp_path, {"Nightly_Job": {"schedule": "daily", "command": "x"}})


def test_execstart_words_keep_what_systemd_would_expand():
    assert T.systemd_quote("plain") == '"plain"'
    assert T.systemd_quote('it\'s "q" \\ 100% $HOME') == '"it\'s \\"q\\" \\\\ 100%% $$HOME"'


def test_run_on_one_is_the_first_app_host_every_is_each(tmp_path):
    inv = inventory_with(
        tmp_path,
        {
            "a": {"schedule": "daily", "command": "x"},
            "b": {"schedule": "daily", "command": "y", "run_on": "every"},
        },
    )
    site = inv.sites["shop"]
    assert [j.name for j in T.wanted_here(inv, site, inv.hosts["web1"])] == ["a", "b"]
    assert [j.name for j in T.wanted_here(inv, site, inv.hosts["web2"])] == ["b"]


def test_systemd_files_run_the_job_in_current_as_the_site_user(tmp_path):
    inv = inventory_with(
        tmp_path, {"clear": {"schedule": "*:0/15", "command": "shell -c 'x%1'", "timeout": 60}}
    )
    site, host = inv.sites["shop"], inv.hosts["web1"]
    (job,) = site.part(T.Timers).jobs
    service, timer, running = T.job_files(inv, site, host, job)
    assert service.path == "/etc/systemd/system/djk-shop-timer_clear.service"
    text = service.content
    python = '"/srv/djk/shop/current/.venv/bin/python"'
    assert f'ExecStart={python} "manage.py" "shell" "-c" "x%%1"' in text
    for line in (
        "Type=oneshot",
        "User=djk-shop",
        "WorkingDirectory=/srv/djk/shop/current",
        "EnvironmentFile=/srv/djk/shop/shared/env",
        "TimeoutStartSec=60",
    ):
        assert line in text.splitlines(), line
    assert "managed by" in text.lower()
    assert "OnCalendar=*:0/15" in timer.content and "Persistent=true" in timer.content
    assert "Unit=djk-shop-timer_clear.service" in timer.content
    assert timer.notify == ("daemon-reload", "restart:djk-shop-timer_clear.timer")
    assert running.unit == "djk-shop-timer_clear.timer"


def test_supervisor_hosts_get_a_program_running_the_agents_loop(tmp_path):
    inv = inventory_with(
        tmp_path,
        {"clear": {"schedule": "daily", "program": "bin/x 50%"}},
        process_manager="supervisor",
    )
    site, host = inv.sites["shop"], inv.hosts["web1"]
    (job,) = site.part(T.Timers).jobs
    _agent, conf, running = T.job_files(inv, site, host, job)
    assert conf.path == "/etc/supervisor/conf.d/djk-shop-timer_clear.conf"
    command = next(ln for ln in conf.content.splitlines() if ln.startswith("command="))
    assert " timer " in command and "50%%" in command and '"/srv/djk/shop/current/bin/x"' in command
    assert "user=djk-shop" in conf.content.splitlines()
    assert running.unit == "djk-shop-timer_clear"


def test_unwanted_timers_go_timer_first_and_other_sites_are_left(tmp_path):
    inv = inventory_with(tmp_path, {})
    site, host = inv.sites["shop"], inv.hosts["web1"]
    step = T.Unwanted(site, host, ["djk-shop-timer_keep.service", "djk-shop-timer_keep.timer"])
    found = Lines(procs.site_processes_command("shop"))
    listing = [
        "djk-shop-web-a.service",
        "djk-shop-timer_old.service",
        "djk-shop-timer_old.timer",
        "djk-shop-timer_keep.service",
        "djk-shop-timer_keep.timer",
    ]
    plan = step.plan(Context(Facts({found: listing}), frozenset()))
    (action,) = plan.actions
    assert action.summary == "stop and delete djk-shop-timer_old.timer, djk-shop-timer_old.service"
    assert "web-a" not in action.script
    none = step.plan(Context(Facts({found: listing[:1] + listing[3:]}), frozenset()))
    assert none.actions == [] and "2 wanted here" in none.reason
    # The host's listing names the timers of this site only (shop-eu's start with djk-shop-).
    assert "djk-shop-timer_*" in procs.site_processes_command("shop")


def fake_analyze(tmp_path: Path, out: str, rc: int = 0) -> str:
    fake = tmp_path / "systemd-analyze"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{out}\nEOF\nexit {rc}\n")
    fake.chmod(0o755)
    return str(fake)


def test_next_elapse_as_systemd_analyze_prints_it(tmp_path, monkeypatch):
    recorded = (
        "  Original form: *:*:0/5\nNormalized form: *-*-* *:*:00/5\n"
        "    Next elapse: Fri 2026-11-27 01:58:50 UTC\n       From now: 287ms left"
    )
    monkeypatch.setattr(A, "ANALYZE", fake_analyze(tmp_path, recorded))
    assert A.next_elapse("*:*:0/5") == 1795744730.0
    monkeypatch.setattr(A, "ANALYZE", fake_analyze(tmp_path, "Failed to parse", rc=1))
    assert A.next_elapse("bogus") is None


@pytest.fixture
def release(tmp_path):
    """A `current` with a release env and a venv bin, and the site's env file."""
    rel = tmp_path / "releases" / "R7"
    (rel / ".venv" / "bin").mkdir(parents=True)
    (rel / ".djk-release.env").write_text("APP_RELEASE=R7\n")
    tool = rel / ".venv" / "bin" / "venv-tool"
    tool.write_text("#!/bin/sh\necho from-venv\n")
    tool.chmod(0o755)
    (tmp_path / "current").symlink_to(rel)
    (tmp_path / "env").write_text("SECRET_THING=s3\n")
    return tmp_path


def test_a_job_runs_in_current_with_the_env_file_and_the_venv_on_path(release, capfd):
    out = release / "out.txt"
    argv = ["/bin/sh", "-c", f'echo "$APP_RELEASE $SECRET_THING $(pwd -P) $(venv-tool)" > {out}']
    spec = {
        "job": "j",
        "current": str(release / "current"),
        "env": str(release / "env"),
        "argv": argv,
        "timeout": None,
    }
    assert A.run_job(spec) == 0
    assert out.read_text() == f"R7 s3 {release / 'releases' / 'R7'} from-venv\n"
    logged = capfd.readouterr().out
    assert "timer j: runs in R7" in logged and "timer j: exit 0" in logged


def test_a_job_past_its_timeout_is_ended(release, capfd):
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    spec = {
        "job": "slow",
        "current": str(release / "current"),
        "env": str(release / "env"),
        "argv": sleeper,
        "timeout": 1,
    }
    began = time.monotonic()
    assert A.run_job(spec) == 124
    assert time.monotonic() - began < 15
    assert "timed out after 1 s" in capfd.readouterr().out
    assert os.path.exists(spec["current"])
