"""Real test hosts for e2e tests: Debian 12, systemd as PID 1, sshd, reached over real SSH."""

from __future__ import annotations

import os

import pytest

from testbed import Testbed

from .kit import Project, copy_example


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
