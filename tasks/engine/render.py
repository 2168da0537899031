"""Strict template rendering: an undefined name is an error, never an empty string.

The kit's templates live in `templates/` beside `tasks/` (in the checkout and in the installed
package alike); a team's `templates/` beside its hosts.toml shadows a kit file of the same name.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from . import values
from .secrets import MASK, Secret

if TYPE_CHECKING:
    import jinja2

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
MANAGED = "Managed by djk (the deploy kit); local changes are overwritten on the next deploy."


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    import jinja2

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    directory = Path(base) / "djk" / "jinja"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # no cache: the templates compile each run
    return jinja2.FileSystemBytecodeCache(str(directory))


@lru_cache(maxsize=8)
def environment(overrides: Path | None = None) -> jinja2.Environment:
    # Imported here: `fab --list` and `--help` need no templates (jinja2 is a fifth of the
    # kit's import time).
    import jinja2

    loaders: list[jinja2.BaseLoader] = []
    if overrides is not None and overrides.is_dir():
        loaders.append(jinja2.FileSystemLoader(str(overrides)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        # Compiling the templates is a tenth of a no-op deploy's time: keep the compiled code
        # (keyed by each template's source, so an override or a new kit version compiles anew).
        bytecode_cache=_bytecode_cache(),
    )
    env.filters["env_quote"] = env_quote
    return env


def render(name: str, overrides: Path | None = None, **values: object) -> str:
    return environment(overrides).get_template(name).render(managed=MANAGED, **values)


def env_quote(value: str | Secret) -> str:
    """One value of the env file, quoted so systemd, python-dotenv and sh read it alike (the
    inventory refused at load any value that cannot be; see values.env_quote). A Secret not
    revealed renders as the mask: that is the rendering a diff shows."""
    if isinstance(value, Secret):
        return MASK
    return values.env_quote(value)
