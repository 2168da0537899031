import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Test helpers shared by unit and e2e tests (file_readers) live in tests/.
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


# The long fuzz and fleet runs: CI's full run (bin/test with no arguments) passes --long; the
# unit loop a developer runs after every change (bin/test -m "not e2e") runs their quick twins.
def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="also run the tests marked long")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--long"):
        return
    import pytest

    skip = pytest.mark.skip(reason="long: CI's full run (bin/test --long)")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
