"""Components: one module per concern, plugged into the inventory, the env file, nginx, provision
and the phases of a run. Adding one edits no engine module.

A component declares
- its hosts.toml keys, as data: `keys` (engine/keys.py: each key's kind, default and help,
  and the rules across them) is read from the site's table (or its own sub-table, `table`)
  into its config (`keys.config`, looked up with `site.part(config)`); the same declaration
  makes the reference (docs/configuration.md) and the input fuzz's cases; `check` states
  rules across sites and hosts;
- `roles`: the host roles it runs on (() = every host of the site);
- `packages`: the Debian packages `provision` installs for it on a host; `python_packages`:
  pinned requirements its processes need in the site's venv (unless the project pins its own);
- `ports`: the ports it listens on (unique per host, across every component); `openings`:
  which of them other machines must reach on a host, and from where (the firewall's rules);
- `env`: the entries it adds to a site's env file, and `env_notify`: the handlers due when that
  file changes;
- `nginx`: snippets for the site's server block, files validated with nginx's configuration and
  steps around it;
- `steps`: its steps for a phase of a run on one host (`Phase`), `holds`: what the run
  holds there meanwhile (the deploy lock), and `recover`: what brings back, when the run
  fails, what its steps stopped (Celery workers paused before the switch);
- `status`: its lines of a site in `fab status` (engine/status.py);
- `on_event`: what it does on the control machine as a deploy, rollback or restore starts and
  ends (engine/events.py: local hooks, notifications), and `control_secrets`: secrets it uses
  there that never go to a host (a webhook's URL).

Register one with `register(component)`, in the kit or from a team's fabfile. Components run
in registration order, except where one declares its place (`after`, `before`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future

    from ..release.build import Build
    from ..release.target import Job
    from .events import RunEvent, Say
    from .inventory import Host, Inventory, Site
    from .keys import Keys
    from .schema import Table
    from .secrets import Secret
    from .status import StatusCheck
    from .steps import File, Step


class Phase(StrEnum):
    """The phases of a run on a host, in the order a run may have them (a string enum: a
    component comparing `phase == "stage"` keeps working)."""

    PROVISION = "provision"  # packages, host-wide services (`fab provision`)
    STAGE = "stage"  # everything up to a staged release, on every host
    BACKUP = "backup"  # where a database is, before its migrations
    RESTORE = "restore"  # `fab rollback --restore-db`: where the database is, before any switch
    MIGRATE = "migrate"  # once per site, before any switch
    SWITCH = "switch"  # rolling, in batches: the health-gated switch
    VERIFY = "verify"  # after every switch: checks through nginx, timers, supervisor's boot
    CONTRACT = "contract"  # once the old release is gone: removals left for after the switch


@dataclass
class NginxPart:
    """A component's share of a site's nginx configuration on a web host."""

    server: list[str] = field(default_factory=list)  # directives inside the site's main server
    files: list[File] = field(default_factory=list)  # validated with the configuration
    before: list[Step] = field(default_factory=list)  # steps before the configuration is written
    after: list[Step] = field(default_factory=list)  # steps once nginx runs with it


@dataclass(frozen=True)
class Opening:
    """A TCP port of a host others must reach: from anywhere (sources None), or only from these
    hosts' addresses (the firewall drops the rest)."""

    port: int
    what: str
    sources: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RunOptions:
    """What the task's flags ask of a run, typed."""

    # Seconds to wait for another run's deploy lock; None: the run takes no lock (a reading).
    lock_wait: float | None = None
    # A db host reached by a deploy though not among its targets (its backups, its database).
    reached: bool = False
    targets: tuple[str, ...] = ()  # the run's target host names (hooks run once per site)
    # A rollback to a release older than migrations applied since: "" refuse, "restore" the
    # backup taken before them, "keep" today's schema.
    rollback_db: str = ""
    batch: str | None = None  # rolling switch: a host count or a percentage
    # A deploy's migrations all before the switch, behind the maintenance page (--maintenance).
    maintenance: bool = False


@dataclass(frozen=True)
class HostRun:
    """What a task asks of the components on one host: the sites, the release job (a deploy's
    or rollback's; None for other tasks) and the options."""

    inventory: Inventory
    host: Host
    sites: tuple[Site, ...]
    job: Job | None = None
    options: RunOptions = field(default_factory=RunOptions)

    @property
    def builds(self) -> Mapping[str, Build]:
        """What a deploy ships, per site name (empty for other runs)."""
        return self.job.builds if self.job is not None else {}

    @property
    def mark_old(self) -> str:
        return self.job.mark_old if self.job is not None else "previous"

    def roles(self) -> set[str]:
        return self.host.role_set


class Component:
    name: str = ""
    table: str | None = None  # the sub-table [sites.<name>.<table>] this component owns
    keys: Keys | None = None  # its hosts.toml keys (engine/keys.py); site.part(keys.config)
    roles: tuple[str, ...] = ()  # the host roles it runs on (() = every host of the site)
    adds_roles: tuple[str, ...] = ()  # roles of its own hosts.toml may name (e.g. "cache")
    # Its place in the run order: the components it runs after / before (names; one not
    # registered is ignored). Otherwise components run in registration order.
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    # Host-wide units (its servers) a site's processes start after at boot and stop before at
    # shutdown (engine/procs.backing_units).
    backing_units: tuple[str, ...] = ()

    def read(self, table: Table, site: Site) -> Any:
        """Its config for the site, from its declared keys (read from `table`: the sub-table
        when `self.table` is set, else the site's own table); None without keys."""
        return None if self.keys is None else self.keys.read(table, site)

    def check(self, inventory: Inventory) -> None:
        """Rules across sites and hosts; raise schema.InventoryError."""

    def packages(self, inventory: Inventory, host: Host) -> list[str]:
        return []

    def python_packages(self, site: Site) -> list[str]:
        """Pinned requirements the site's venv needs for what this component runs (gunicorn,
        Flower, ...), added when the project's own requirements do not name the package: a
        project needs no change for the kit."""
        return []

    def ports(self, site: Site) -> list[tuple]:
        """(port, what) the site's processes listen on, on each of its hosts; (port, what,
        key) names the key of the site's table that sets it (default: `port`)."""
        return []

    def host_ports(self, inventory: Inventory, host: Host) -> list[tuple[int, str]]:
        """(port, what) a host-wide service of this component listens on (e.g. Redis): no
        site on that host may use them."""
        return []

    def openings(self, inventory: Inventory, host: Host) -> list[Opening]:
        """The ports of this component's processes on `host` that other machines reach, and
        from which hosts' addresses (tasks/firewall.py opens those and nothing else)."""
        return []

    def kept_secrets(self, inventory: Inventory, site: Site) -> list:
        """engine.kept.Kept: site secrets this component needs that, when the secrets file
        gives none, are made on a host and kept there (a database's password)."""
        return []

    def env(self, inventory: Inventory, site: Site) -> dict[str, str | Secret]:
        return {}

    def env_names(self, inventory: Inventory, site: Site) -> set[str]:
        """The names of the variables env() derives for the site, also when their values are
        not known yet (a password kept on a host is read by the run, after the inventory is
        checked): a secrets file or env table may not set them unless env_override says so."""
        return set(self.env(inventory, site))

    def env_notify(self, site: Site, host: Host) -> tuple[str, ...]:
        """Handlers to run on `host` when the site's env file changes there (restart what reads
        it on that host; nothing where this component runs nothing)."""
        return ()

    def nginx(self, inventory: Inventory, site: Site) -> NginxPart:
        return NginxPart()

    def steps(self, phase: Phase, run: HostRun) -> list[Step]:
        return []

    def holds(self, run: HostRun) -> list:
        """What a run must hold on the host from connecting to closing (executor.Hold)."""
        return []

    def recover(self, run: HostRun) -> list[Step]:
        """Steps that bring back what a failed run left stopped on the host (planned on facts
        read at that moment, run on every host of the run once it failed)."""
        return []

    def status(self, inventory: Inventory, site: Site, host: Host) -> list[StatusCheck]:
        """Its lines of the site in `fab status` on `host` (engine/status.py)."""
        return []

    def on_event(self, event: RunEvent, say: Say) -> Future | None:
        """A run's start or end, per site (engine/events.py). Raise events.Refused at a start
        to stop the run before any host is touched; return a Future for work that may go on
        during the run (waited for before its end is announced)."""
        return None

    def control_secrets(self, site: Site) -> tuple[str, ...]:
        """Keys of the site's secrets this component uses on the control machine only: left
        out of the env file the hosts get."""
        return ()

    def runs_on(self, host: Host) -> bool:
        return not self.roles or bool(set(self.roles) & host.role_set)


_registry: dict[str, Component] = {}


@dataclass
class _Derived:
    """What is read from the registry on every plan, derived once per change of it."""

    order: list[Component]
    added_roles: tuple[str, ...]


_derived: _Derived | None = None


def _changed() -> None:
    global _derived
    _derived = None


def _from_registry() -> _Derived:
    global _derived
    if _derived is None:
        ordered = run_order(list(_registry.values()))
        added = tuple(dict.fromkeys(r for c in ordered for r in c.adds_roles))
        _derived = _Derived(ordered, added)
    return _derived


def register(component: Component) -> Component:
    """Add a component (a later one with the same name replaces it, in place)."""
    if not component.name:
        raise ValueError("a component needs a name")
    if hasattr(component, "parse"):
        # The protocol before declared keys: it would be ignored, and its keys unknown.
        raise TypeError(
            f"component {component.name}: declare its keys (`keys = Keys(...)`, "
            "docs/components.md) instead of parse()"
        )
    _registry[component.name] = component
    _changed()
    return component


def unregister(name: str) -> None:
    _registry.pop(name, None)
    _changed()


def order(names: list[str]) -> None:
    """Put the named components first, in this order, as far as their declared `after` and
    `before` allow (those always hold)."""
    ranked = {name: i for i, name in enumerate(names)}
    items = sorted(_registry.items(), key=lambda kv: ranked.get(kv[0], len(ranked)))
    _registry.clear()
    _registry.update(items)
    _changed()


def run_order(found: list[Component]) -> list[Component]:
    """`found` (registration order) with every declared `after`/`before` between registered
    components holding: each next component is the first registered one whose predecessors
    all came. A circle of declarations is a defect of the components: ValueError."""
    names = {c.name for c in found}
    before: dict[str, set[str]] = {c.name: set() for c in found}
    for c in found:
        before[c.name] |= {n for n in c.after if n in names}
        for n in c.before:
            if n in names:
                before[n].add(c.name)
    done: list[Component] = []
    left = list(found)
    while left:
        came = {c.name for c in done}
        ready = next((c for c in left if before[c.name] <= came), None)
        if ready is None:
            raise ValueError(f"components ordered in a circle: {', '.join(c.name for c in left)}")
        done.append(ready)
        left.remove(ready)
    return done


def components() -> list[Component]:
    """The registered components in their run order (their steps run in it)."""
    return list(_from_registry().order)


def added_roles() -> tuple[str, ...]:
    """The roles registered components add (Component.adds_roles), each once, in run order
    (read on every role lookup of a plan)."""
    return _from_registry().added_roles
