"""README's first command as README writes it: `bin/demo`, from the checkout, as root (the
second, `bin/test`, is what CI runs: tests/unit/test_docs.py holds README and .ci/run to it)."""

from __future__ import annotations

import os
import subprocess

import pytest

from testbed import Testbed

from .kit import ROOT

pytestmark = pytest.mark.e2e


def test_the_demo_deploys_the_example_site_readme_shows() -> None:
    if os.geteuid() != 0:
        pytest.skip("bin/demo boots a test host and needs root")
    demo = Testbed(name="demo")  # what `python -m testbed up web1` in bin/demo boots
    running = any(row["running"] for row in demo.status())
    try:
        done = subprocess.run(
            [str(ROOT / "bin" / "demo")], cwd=ROOT, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "The example site is deployed on test host web1 (10.213.0.11)" in done.stdout
        # README: "prints how to reach the site"; that command answers.
        curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
        answer = subprocess.run(
            [*curl, "-H", "Host: example.test", "http://10.213.0.11/"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert answer.stdout == "200", answer
    finally:
        if not running:  # a developer's own demo host stays up
            demo.down()
