"""docs/configuration.md, made from the declared keys (engine/keys.py) of the core tables and of
every component: `python -m djk.tasks.engine.reference docs/configuration.md` writes it,
`--check` says whether it is current (the unit tests fail when it is not)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import keys
from .component import Component, components

HEADER = """\
# Configuration reference: `hosts.toml`

Generated from the keys the kit's components declare (`tasks/engine/keys.py`); do not edit:
`.venv/bin/python -m djk.tasks.engine.reference docs/configuration.md` writes it, and a unit
test fails when it is stale. Every value is checked for the file it reaches as that file's
reader reads it; a refused one ends the run before any host is touched, with one line naming
the file, the key path and what is allowed. A key no table declares is refused too.

A type links to its entry under [Types](#types). A default in words is computed: from the site,
from `[defaults]`, or from keys read before it. Rules join keys no single type can hold.
"""

GROUPS = """\
## `[groups]`

Names for lists of hosts: `prod = ["web1", "web2"]`. A group may stand wherever a host does:
`-H prod`, a site's `hosts`, `[defaults] target`. A group may not take a host's name; every
member must be a host of `[hosts]`.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _anchor(kind: keys.Kind) -> str:
    keep = "".join(c if c.isalnum() or c in " -" else "" for c in kind.name.lower())
    return keep.strip().replace(" ", "-")


def _link(kind: keys.Kind) -> str:
    return kind.name if kind.inline else f"[{kind.name}](#{_anchor(kind)})"


def _type(key: keys.Key) -> str:
    return f"list of {_link(key.kind)}" if key.many else _link(key.kind)


def _table(title: str, help: str, declared: keys.Keys, what: str = "") -> list[str]:
    rows = [item for item in declared.items if isinstance(item, keys.Key | keys.Map)]
    lines = [f"## `{title}`" + (f": {what}" if what else ""), ""] if rows else []
    if help and rows:
        lines += [help, ""]
    if rows:
        lines += ["| key | type | default | what it sets |", "|---|---|---|---|"]
    for item in rows:
        if isinstance(item, keys.Map):
            kind = f"table of {_link(item.name)} = {_link(item.value)}"
            lines.append(f"| `{item.key}` | {kind} | — | {_cell(item.help)} |")
            continue
        what = item.help
        if item.when is not None:
            what += f' (with {item.when[0]} = "{item.when[1]}")'
        lines.append(
            f"| `{item.name}` | {_type(item)} | {_cell(item.doc_default())} | {_cell(what)} |"
        )
    rules = [item for item in declared.items if isinstance(item, keys.Rule)]
    if rules:
        lines += ["", "Rules:", ""] + [f"- {rule.help}" for rule in rules]
    lines.append("")
    for each in declared.items:
        if isinstance(each, keys.Each):
            name = f"{title[:-1]}.<{each.name.name.split()[0]}>]"
            lines += _table(name, f"{help} {each.help} Its name: {_link(each.name)}.", each.keys)
    return lines


def _component_help(component: Component) -> str:
    declared = component.keys
    if declared is not None and declared.help:
        return declared.help
    doc = (type(component).__doc__ or "").strip()
    doc = doc.split("\n\n")[0].replace("\n", " ")
    doc = doc.split(": ", 1)[1] if doc.startswith("`[") else doc
    return doc[:1].upper() + doc[1:]


def kit_components() -> list[Component]:
    """The kit's own components (a team's, registered from its fabfile, have their own docs)."""
    return [c for c in components() if type(c).__module__.startswith(("djk.tasks.", "tasks."))]


def configuration(found: list[Component] | None = None) -> str:
    from .inventory import DEFAULTS, HOST, SITE

    found = kit_components() if found is None else found
    lines = [HEADER]
    lines += _table("[defaults]", DEFAULTS.help, DEFAULTS)
    lines += _table("[hosts.<name>]", HOST.help, HOST)
    lines += [GROUPS]
    lines += _table("[sites.<name>]", SITE.help, SITE)
    kinds: dict[str, keys.Kind] = {}
    for declared in (DEFAULTS, HOST, SITE):
        kinds.update(_kinds(declared))
    for component in found:
        if component.keys is None:
            continue
        if component.table:
            where, what = f"[sites.<name>.{component.table}]", ""
        else:
            where, what = "[sites.<name>]", component.name
        help = f"{_component_help(component)} (component `{component.name}`)".strip()
        lines += _table(where, help, component.keys, what)
        kinds.update(_kinds(component.keys))
    lines += ["## Types", ""]
    for name in sorted(kinds, key=str.lower):
        kind = kinds[name]
        if kind.inline:
            continue
        text = kind.help[0].upper() + kind.help[1:]
        lines += [f"### {name}", "", text if text.endswith(".") else f"{text}.", ""]
        if kind.samples:
            shown = ", ".join(f"`{_sample(v)}`" for v in kind.samples)
            lines += [f"For example: {shown}.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _sample(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_sample(v) for v in value) + "]"
    return str(value)


def _kinds(declared: keys.Keys) -> dict[str, keys.Kind]:
    found: dict[str, keys.Kind] = {}
    for item in declared.items:
        if isinstance(item, keys.Key):
            found[item.kind.name] = item.kind
        elif isinstance(item, keys.Map):
            found[item.name.name] = item.name
            found[item.value.name] = item.value
        elif isinstance(item, keys.Each):
            found[item.name.name] = item.name
            found.update(_kinds(item.keys))
    return found


def _paths(prefix: tuple[str, ...], declared: keys.Keys) -> dict[tuple[str, ...], keys.Key]:
    found: dict[tuple[str, ...], keys.Key] = {}
    for item in declared.items:
        if isinstance(item, keys.Key):
            found[(*prefix, item.name)] = item
        elif isinstance(item, keys.Map):
            # Its values, as a key of the map's value kind.
            found[(*prefix, item.key, "*")] = keys.Key("*", item.value, help=item.help)
        elif isinstance(item, keys.Each):
            found.update(_paths((*prefix, "*"), item.keys))
    return found


def declared(found: list[Component] | None = None) -> dict[tuple[str, ...], keys.Key]:
    """Every key hosts.toml may hold, by its path ("*" where a name of the user's stands): the
    core tables' and those of `found` (default: every registered component)."""
    from .inventory import DEFAULTS, HOST, SITE

    paths = {**_paths(("defaults",), DEFAULTS), **_paths(("hosts", "*"), HOST)}
    paths.update(_paths(("sites", "*"), SITE))
    for component in components() if found is None else found:
        if component.keys is not None:
            table = ("sites", "*", component.table) if component.table else ("sites", "*")
            paths.update(_paths(table, component.keys))
    return paths


def main(argv: list[str]) -> int:
    from .. import app  # noqa: F401  (the package's import registers the kit's components)

    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    path = Path(paths[0] if paths else "docs/configuration.md")
    text = configuration()
    if check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} is stale: run python -m djk.tasks.engine.reference {path}")
            return 1
        return 0
    path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
