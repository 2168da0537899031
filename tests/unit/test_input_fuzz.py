"""Property-based fuzz of everything a user gives the kit: hosts.toml and the secrets file.

Each case is a clean inventory (valid by construction) with up to three mutations: a value or
a TOML key made nasty (a newline, a quote, `%`, `${X}`, an escape sequence, U+2028, a huge or
empty string, another type), a secrets line written another way or unparsable, bytes spliced
into the file. The case is loaded; where it is refused, the refusal must be the one-line user
error (no traceback, no control character, nothing of a secret); where it is accepted, every
file the kit would write for every host is rendered and read back the way its reader reads it
(tests/file_readers.py), compared with the clean twin's files: the same nginx directive tree,
the same unit keys and ExecStart words, one sudo rule, one requirepass word, an env file that
systemd, sh and python-dotenv all read as exactly the intended pairs, and no secret in any
script, summary or diff.

DJK_FUZZ_EXAMPLES sets the number of generated cases of the long run (10,000 by default; the
@example seeds are the defects found by the first fuzz of issue 10 and run first); the unit loop
runs QUICK of them, and the per-key fuzz QUICK_PER_KEY per key (the long run: --long).

test_every_key_of_every_component takes two inventories that use every key of every component
(inventory_cases.LAYOUTS: one host with everything; nginx, the app under supervisor and the data
on three hosts at private addresses, passwords kept on the hosts) and mutates each key on its
own — a hosts.toml key, a secret, the secrets file as a whole — DJK_FUZZ_PER_KEY times (200 by
default), a third of them with a second key changed too. Besides the checks above: what systemd
runs for a timer's ExecStart= and the argv supervisord hands the agent are the job's words;
ListenStream= and IPAddressAllow= hold IP addresses; derived variables are the kit's; no URL
carries an empty password; a refusal quotes no more than a cut of a long value.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from inventory_cases import (
    LAYOUTS,
    PER_KEY,
    SEEDS,
    STATS,
    Case,
    Twin,
    declared_key,
    key_paths,
    mutated_cases,
    per_key_cases,
    run_case,
    seed_pair,
)

from djk.tasks.engine.reference import declared

EXAMPLES = int(os.environ.get("DJK_FUZZ_EXAMPLES", "10000"))
QUICK = 300
QUICK_PER_KEY = 4
SIZES = [pytest.param("quick", id="quick"), pytest.param("long", id="long", marks=pytest.mark.long)]


def fuzz(directory: Path, examples: int):
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated_cases())
    def property_(pair: tuple[Case, Case]) -> None:
        run_case(*pair, directory)

    for seed in SEEDS:
        property_ = example(seed_pair(seed))(property_)
    return property_


@pytest.mark.parametrize("size", SIZES)
def test_inventory_fuzz(tmp_path: Path, size: str) -> None:
    examples = EXAMPLES if size == "long" else QUICK
    STATS.update(cases=0, accepted=0, refused=0)
    fuzz(tmp_path, examples)()
    print(f"\ninventory fuzz: {STATS}")
    assert STATS["cases"] >= examples, STATS
    assert STATS["accepted"] > examples // 10 and STATS["refused"] > examples // 10, STATS


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_each_seed_is_refused_or_written_safely(tmp_path: Path, index: int) -> None:
    """The defects the first fuzz found, one by one (quick to run alone; the fuzz runs them
    first too)."""
    run_case(*seed_pair(SEEDS[index]), tmp_path)


def test_every_declared_key_is_in_a_layout(memcached) -> None:
    """The per-key fuzz reaches every key the core and the components declare, a team's
    included: a key declared without a place in a layout fails here."""
    paths = [path for layout in LAYOUTS.values() for path in key_paths(layout().toml)]
    present = {found[0] for found in map(declared_key, paths) if found is not None}
    missing = set(declared()) - present
    assert not missing, f"declared keys no layout holds: {sorted(missing)}"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_key_of_every_component(tmp_path: Path, layout: str, size: str, memcached) -> None:
    per_key = PER_KEY if size == "long" else QUICK_PER_KEY
    STATS.update(cases=0, accepted=0, refused=0)
    twin = Twin.of(LAYOUTS[layout](), tmp_path)
    drawn: Counter = Counter()
    for key, clean, case in per_key_cases(layout, per_key):
        drawn[key] += 1
        try:
            run_case(clean, case, tmp_path / "case", twin)
        except Exception as exc:
            raise AssertionError(f"{layout} {key}: {str(exc)[:2000]}\n{str(case)[:2000]}") from exc
    print(f"\nper-key fuzz {layout}: {len(drawn)} keys, {STATS}")
    assert min(drawn.values()) >= per_key
    # Both outcomes are common (each at least 1 in 20 of the cases drawn).
    enough = len(drawn) * per_key // 20
    assert STATS["accepted"] > enough and STATS["refused"] > enough, STATS
