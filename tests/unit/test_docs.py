"""README is a way in and the docs stay true: README's size, every relative link of README and
docs/ names a file (and a heading) that exists, the component example of docs/components.md
runs, and architecture's component order is the registry's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from site_data import one_site

from djk.tasks.engine.component import unregister
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.reference import kit_components

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "HISTORY.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_a_way_in() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README has {len(lines)} lines"
    wide = [(i + 1, len(line)) for i, line in enumerate(lines) if len(line) > 100]
    assert not wide, f"README lines over 100 columns: {wide}"


def test_readmes_two_commands_are_what_ci_runs() -> None:
    """README's two commands as written: `bin/test` is CI's command (`.ci/run`); `bin/demo` runs
    in tests/e2e/test_readme.py."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Two commands\n")
    block = re.compile(r"```sh\n(.*?)```", re.S).search(text, start)
    assert block is not None
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["bin/demo", "bin/test"]
    assert "exec bin/test" in (ROOT / ".ci" / "run").read_text()


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_what_exists(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        where = (doc.parent / path).resolve() if path else doc
        if not where.exists():
            broken.append(target)
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(target)
    assert not broken, f"{doc.name}: links to nothing: {broken}"


def test_the_component_example_of_the_docs_runs(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "components.md").read_text()
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match is not None
    namespace: dict = {}
    exec(compile(match.group(1), "docs/components.md", "exec"), namespace)
    try:
        data = one_site(tmp_path, banner={"text": "Hello there"})
        site = parse(data, tmp_path / "hosts.toml").sites["shop"]
        assert site.need(namespace["Banner"]).text == "Hello there"
        data["sites"]["shop"]["banner"] = {"text": "Hello;"}
        with pytest.raises(Exception, match=r"sites\.shop\.banner\.text: 'Hello;' is not a banner"):
            parse(data, tmp_path / "hosts.toml")
    finally:
        unregister("banner")


def test_architecture_names_the_components_in_their_run_order() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text().replace("\n", " ")
    match = re.search(r"The kit's order: (.*?); a team's fabfile", text)
    assert match is not None
    named = re.findall(r"`([\w-]+)`", match.group(1))
    assert named == [c.name for c in kit_components()]


def toml_blocks() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)):
            found.append((f"{doc.relative_to(ROOT)}#{i}", block))
    return found


def leaves(data: dict, path: tuple = ()) -> list[tuple[tuple, object]]:
    found: list[tuple[tuple, object]] = []
    for name, value in data.items():
        if isinstance(value, dict):
            found += leaves(value, (*path, name))
        else:
            found.append(((*path, name), value))
    return found


@pytest.mark.parametrize("where, block", toml_blocks(), ids=[w for w, _ in toml_blocks()])
def test_every_hosts_toml_example_uses_declared_keys_and_values(where: str, block: str) -> None:
    """An example in the docs names only keys the declarations have, with values their kinds
    take: a renamed key or a changed range shows up here, not in a user's first run."""
    import tomllib

    from inventory_cases import declared_key

    data = tomllib.loads(block)
    for path, value in leaves(data):
        if path[0] == "groups":
            continue
        found = declared_key(path)
        assert found is not None, f"{where}: {'.'.join(path)} is not a declared key"
        key = found[1]
        if key.kind.check is None or key.kind.read is not None:
            continue
        for item in value if key.many and isinstance(value, list) else [value]:
            key.kind.check(item)  # ValueError: the example holds a value the kit refuses
