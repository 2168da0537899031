"""The slots' gunicorn --config (templates/app/gunicorn.conf.py.j2), loaded as gunicorn loads a
config file: the project's own gunicorn.conf.py is read first and its post_worker_init still
runs; with Django's default logging (DEBUG off) a request's unhandled error gets a handler that
writes it to stderr, and none is added when the project's logging already writes it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from djk.tasks.engine.inventory import Site
from djk.tasks.engine.render import render

PROBE = textwrap.dedent(
    """
    import logging, runpy, sys
    import django
    from django.conf import settings
    settings.configure(DEBUG=False, LOGGING=LOGGING)
    django.setup()
    conf = runpy.run_path(sys.argv[1])
    class Worker:
        pass
    worker = Worker()
    conf["post_worker_init"](worker)
    print("workers", conf.get("workers"), "theirs", getattr(worker, "theirs", False))
    try:
        raise RuntimeError("health is broken")
    except RuntimeError:
        logging.getLogger("django.request").error("Internal Server Error: /health/", exc_info=True)
    """
)


def run(tmp_path, logging_config: str, theirs: str = "") -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "djk-gunicorn.conf.py"
    conf.write_text(render("app/gunicorn.conf.py.j2", site=Site("shop", ("shop.test",), ())))
    release = tmp_path / "release"
    release.mkdir()
    if theirs:
        (release / "gunicorn.conf.py").write_text(theirs)
    script = f"LOGGING = {logging_config}\n" + PROBE
    return subprocess.run(
        [sys.executable, "-c", script, str(conf)],
        cwd=release,
        capture_output=True,
        text=True,
        check=True,
    )


def test_django_default_logging_gets_the_traceback_written(tmp_path):
    done = run(tmp_path, "{}")
    assert "ERROR django.request: Internal Server Error: /health/" in done.stderr
    assert "Traceback (most recent call last):" in done.stderr
    assert "RuntimeError: health is broken" in done.stderr
    assert done.stdout.strip() == "workers None theirs False"


def test_the_projects_own_config_and_hook_come_first(tmp_path):
    theirs = "workers = 7\ndef post_worker_init(worker):\n    worker.theirs = True\n"
    done = run(tmp_path, "{}", theirs)
    assert done.stdout.strip() == "workers 7 theirs True"
    assert done.stderr.count("RuntimeError: health is broken") == 1


def test_a_project_that_logs_its_errors_gets_no_second_copy(tmp_path):
    own = (
        '{"version": 1, "disable_existing_loggers": False, "handlers": {"out": '
        '{"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}}, '
        '"loggers": {"django.request": {"handlers": ["out"], "level": "ERROR"}}}'
    )
    done = run(tmp_path, own)
    assert done.stderr.count("RuntimeError: health is broken") == 1
    assert "ERROR django.request:" not in done.stderr  # the kit's format: its handler not added
