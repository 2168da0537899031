"""Declared keys (engine/keys.py): one declaration is the validation, the generated reference
and the fuzz's cases; docs/configuration.md is what the declarations make today."""

from __future__ import annotations

from pathlib import Path

import pytest
from inventory_cases import declared_key
from site_data import one_site

from djk.tasks import Component, Key, Keys, Kind, register
from djk.tasks.engine.component import components
from djk.tasks.engine.inventory import InventoryError, parse
from djk.tasks.engine.keys import integer
from djk.tasks.engine.layout import App
from djk.tasks.engine.reference import configuration, declared, main

ROOT = Path(__file__).resolve().parents[2]


def refused(tmp_path: Path, data: dict) -> str:
    with pytest.raises(InventoryError) as info:
        parse(data, tmp_path / "hosts.toml")
    return str(info.value)


def test_the_configuration_reference_is_current() -> None:
    """docs/configuration.md is generated; edit the declarations and regenerate it."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == configuration(), (
        "docs/configuration.md is stale: .venv/bin/python -m djk.tasks.engine.reference "
        "docs/configuration.md"
    )


def test_the_check_says_when_the_reference_is_stale(tmp_path, capsys) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    assert main(["--check", str(stale)]) == 1
    assert "is stale" in capsys.readouterr().out
    assert main([str(stale)]) == 0 and main(["--check", str(stale)]) == 0


def test_an_edited_declaration_moves_validation_reference_and_fuzz(tmp_path, monkeypatch):
    app = next(c for c in components() if c.name == "app")
    assert app.keys is not None
    edited = app.keys.with_key("workers", kind=integer(1, 8), default=3)
    monkeypatch.setattr(app, "keys", edited)
    # Validation: the new default, the new range and its message.
    site = parse(one_site(tmp_path), tmp_path / "hosts.toml").sites["shop"]
    assert site.need(App).workers == 3
    assert parse(one_site(tmp_path, workers=8), tmp_path / "hosts.toml").sites["shop"]
    message = refused(tmp_path, one_site(tmp_path, workers=9))
    assert message.endswith("sites.shop.workers: 9 is not between 1 and 8")
    # The reference.
    assert "| `workers` | integer 1–8 | 3 | gunicorn workers per slot |" in configuration()
    # The fuzz: the range's ends and the values past them.
    found = declared_key(("sites", "shop", "workers"))
    assert found is not None
    assert {1, 8, 0, 9} <= set(found[1].kind.fuzz())


def test_every_core_and_component_key_is_declared_once() -> None:
    paths = declared()
    assert ("sites", "*", "celery", "concurrency") in paths
    assert ("sites", "*", "timers", "*", "schedule") in paths
    assert ("hosts", "*", "private_address") in paths
    assert ("sites", "*", "env", "*") in paths
    names = [(c.table, k.name) for c in components() if c.keys for k in c.keys.keys()]
    assert len(names) == len(set(names)), "a key declared twice in one table"


def test_a_team_kind_reaches_the_reference(memcached) -> None:
    text = configuration([memcached])
    assert "## `[sites.<name>.memcached]`" in text
    assert "| `memory` | [memory in MB](#memory-in-mb) | 64 | the cache's size |" in text
    assert "### memory in MB" in text


def test_a_team_component_with_parse_is_refused_at_registration() -> None:
    class Old(Component):
        name = "old-style"

        def parse(self, table, site):  # the protocol before declared keys
            return None

    with pytest.raises(TypeError, match="declare its keys"):
        register(Old())
    assert all(c.name != "old-style" for c in components())


def test_a_rule_runs_where_it_stands(tmp_path) -> None:
    """Keys are read, and their errors found, in declaration order: a rule after the keys it
    joins sees them read, and a key after it is not read yet."""
    seen: list[str] = []
    kind = Kind("word", str, "a word")

    def rule(r) -> None:
        seen.append(",".join(sorted(r.got)))

    from djk.tasks import Rule
    from djk.tasks.engine.schema import Table

    keys = Keys(None, (Key("a", kind), Rule(("a",), rule, "a"), Key("b", kind, "x")))
    table = Table(tmp_path / "hosts.toml", {"a": "1"}, "t")
    assert keys.read(table, None) == {"a": "1", "b": "x"}
    assert seen == ["a"]
