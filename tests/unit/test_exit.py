"""What a `fab` process does as it ends (engine/cli.py install)."""

from __future__ import annotations

import subprocess
import sys


def test_a_run_leaves_its_objects_uncollected_at_exit():
    """The kit's exit handler freezes the heap: cyclic garbage left at exit is not walked (nor
    finalized), as it is without the kit."""
    code = (
        "import sys\n"
        "{imp}\n"
        "class Node:\n"
        "    def __del__(self): sys.stdout.write('collected\\n')\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"
        "del a, b\n"
    )
    plain = subprocess.run(
        [sys.executable, "-c", code.format(imp="import gc; gc.disable()")],
        capture_output=True,
        text=True,
        check=True,
    )
    with_kit = subprocess.run(
        [sys.executable, "-c", code.format(imp="import gc; gc.disable(); import djk.tasks")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "collected" in plain.stdout  # Python's last collection at exit finds the cycle
    assert "collected" not in with_kit.stdout
