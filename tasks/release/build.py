"""What a deploy ships of a site: its source, dependency set and migrations (a `Build`), made
once on the control machine, then resolved per host for the host's Python and platform."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..engine import locks, python_env, values, wheels
from ..engine import source as shipping
from ..engine.cli import user_error
from ..engine.component import components
from ..engine.inventory import Host, Site
from ..engine.layout import App, app_of
from ..engine.wheels import DependencyError, Wheelhouse
from . import layer, store


@dataclass(frozen=True)
class Build:
    """What this deploy wants for a site, computed once on the control machine."""

    site: Site
    release_id: str
    tree: str
    deps: str
    revision: str
    archive: Callable[[], bytes] | None = None  # the source's tar (None: plan tests)
    requirements: Path | None = None  # as shipped, plus the server's pins (engine/python_env)
    # The pinned set and its wheels for one host's interpreter (for_host); `deps` is then the
    # venv key on that host.
    house: Wheelhouse | None = None

    @property
    def key(self) -> str:
        return f"{self.tree[:16]}-{self.deps}"


def new_build(
    site: Site,
    now: float | None = None,
    ref: str | None = None,
    allow_dirty: bool = False,
    memo: dict | None = None,
    inventory: Path | None = None,
) -> Build:
    """The site's source as this deploy ships it (engine/source.py: git's tracked files at the
    ref, the build's outputs) and the dependency set it installs. SourceError: nothing can be
    shipped (a dirty tree, a failed build)."""
    app = app_of(site)
    skip = deploy_files(app.source, inventory, site.env_file)
    request = shipping.Request(app.source, ref, allow_dirty, app.build, app.build_outputs, skip)
    snap = shipping.snapshot(request, memo)
    pins = [p for c in components() for p in c.python_packages(site)]
    requirements = python_env.materialize(python_env.with_server(_pinned(app, snap), pins))
    deps = python_env.deps_key(requirements, wheels.Target())
    release = store.new_release_id(snap.revision, now)
    return Build(
        site,
        release,
        layer.tree(snap.tree),
        deps,
        snap.revision,
        snap.archive,
        requirements,
    )


def _pinned(app: App, snap: shipping.Snapshot) -> bytes:
    """The project's requirements: its file (or lock) as shipped, or hosts.toml's list."""
    if isinstance(app.requirements, tuple):
        return "".join(f"{line}\n" for line in app.requirements).encode()
    rel = app.requirements.relative_to(app.source).as_posix()
    files = {f.path: f.data for f in snap.files}
    if rel not in files:
        raise shipping.SourceError(
            f"{rel} is not among the files shipped from {values.show_path(app.source)} "
            "(not tracked by git, or left out by .djkignore?)"
        )
    return locks.pinned(files, rel)


def for_host(build: Build, host: Host) -> Build:
    """The build as one host installs it: its dependency set resolved for the host's Python
    and platform (cached), and the venv key that goes with them. A user error, before any host
    is touched, when the site needs another Python or a package cannot be had for the host."""
    site, info = build.site, host.platform
    wanted = app_of(site).python
    where = f"site {site.name} on host {host.name}"
    if wanted and wanted != info.python_minor:
        raise user_error(
            f"{where}: the site needs Python {wanted} (sites.{site.name}.python), the host has "
            f"{info.python or 'none'} ({info.release})"
        )
    if build.requirements is None:
        return build  # plan tests give their wheelhouse
    target = wheels.Target.of(info)
    try:
        house = python_env.wheelhouse_for(build.requirements, target)
    except DependencyError as exc:
        raise user_error(f"{where} ({info.release}, Python {info.python}): {exc}") from None
    return replace(build, deps=python_env.deps_key(build.requirements, target), house=house)


def deploy_files(source: Path, inventory: Path | None, env_file: Path | None) -> tuple[str, ...]:
    """The deploy's own files inside a site's source (a team's hosts.toml beside manage.py):
    the inventories, the fabfile and the secrets beside them, and the site's env_file."""
    found: list[Path] = []
    if inventory is not None:
        here = inventory.resolve().parent
        found += [*here.glob("hosts*.toml"), here / "fabfile.py", here / "secrets"]
    if env_file is not None:
        found.append(env_file.resolve())
    root = source.resolve()
    return tuple(
        sorted({p.relative_to(root).as_posix() for p in found if p.is_relative_to(root)} - {"."})
    )
