"""Fixtures the unit tests share."""

from __future__ import annotations

import memcached_component as mc
import pytest


@pytest.fixture
def memcached():
    """A team's component (tests/memcached_component.py) registered for the test."""
    mc.install()
    yield mc.MEMCACHED
    mc.uninstall()
