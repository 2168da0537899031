"""Real test hosts for e2e tests: Debian 12, systemd as PID 1, sshd, reached over real SSH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import Testbed

from .kit import ROOT, Project, copy_example


@pytest.fixture(scope="session")
def testbed():
    if os.geteuid() != 0:
        pytest.skip("e2e tests boot systemd-nspawn hosts and need root")
    bed = Testbed(name="e2e", subnet=1)
    bed.ensure_image()
    yield bed
    bed.down()


@pytest.fixture(scope="module")
def fresh_host(testbed):
    """One freshly booted host per test module (its own overlay: a clean disk)."""
    host = testbed.restart_fresh("web1")
    yield host


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory):
    return Project(tmp_path_factory.mktemp("project"), [fresh_host])


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A copy of the example project the module's tests may change."""
    return copy_example(tmp_path_factory)


@pytest.fixture(scope="session")
def kit_venv(tmp_path_factory) -> Path:
    """A fresh venv from Debian's python3 with the kit installed from a wheel of the checkout."""
    base = tmp_path_factory.mktemp("kitvenv")
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=base,
    )
    venv = base / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    (wheel,) = wheels.glob("djk-*.whl")
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
    )
    return venv
