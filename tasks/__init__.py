"""djk: Fabric tasks that take Debian hosts to a production Django stack and keep them there.

Importing this package registers the kit's components (engine/component.py), in the order
their steps run, and extends Fabric's executor so target-aware tasks run once for all hosts.
A team's fabfile needs only `from djk.tasks import ns` (and `register(...)` for its own
components).
"""

from invoke import Collection

from . import (  # noqa: F401  (importing registers each component)
    app,
    audit,
    broker_check,
    celery,
    database,
    db,
    firewall,
    flower,
    hooks,
    hosts,
    lock,
    logs,
    maintenance,
    manage,
    media,
    multidomain,
    nginx,
    notify,
    rabbitmq,
    redis,
    status,
    supervisor,
    timers,
    tls,
)
from . import provision as _provision
from .deploy import deploy, releases, rollback  # noqa: E402
from .engine import cli
from .engine.component import (
    Component,
    HostRun,
    NginxPart,
    Opening,
    Phase,
    RunOptions,
    components,
    register,
    unregister,
)
from .engine.keys import REQUIRED, Derived, Each, Key, Keys, Kind, Map, Reading, Rule
from .engine.service import HostService
from .engine.status import Running, StatusCheck, StatusPart

# The run order comes from each component's `after` (engine/component.run_order).
cli.install()

ns = Collection()
ns.add_task(deploy)
ns.add_task(rollback)
ns.add_task(releases)
ns.add_task(_provision.provision)
ns.add_task(audit.audit)
ns.add_task(status.status)
for module in (app, nginx, multidomain, lock, celery, flower, db, hosts):
    ns.add_collection(Collection.from_module(module))
# The maintenance page is its own component; its task reads as one of the app's.
ns.collections["app"].add_task(maintenance.maintenance)
ns.collections["app"].add_task(manage.manage)
ns.collections["app"].add_task(manage.shell)
ns.collections["app"].add_task(manage.settings)
ns.collections["app"].add_task(logs.logs)

__all__ = [
    "REQUIRED",
    "Component",
    "Derived",
    "Each",
    "Key",
    "Keys",
    "Kind",
    "Map",
    "Reading",
    "Rule",
    "HostRun",
    "HostService",
    "NginxPart",
    "Opening",
    "Phase",
    "RunOptions",
    "Running",
    "StatusCheck",
    "StatusPart",
    "components",
    "ns",
    "register",
    "tls",
    "unregister",
]
