"""djk: Fabric tasks that take Debian hosts to a production Django stack and keep them there."""

from invoke import Collection

from . import app, celery, flower, lock, multidomain, nginx
from .deploy import deploy, releases, rollback
from .provision import provision

ns = Collection()
ns.add_task(deploy)
ns.add_task(rollback)
ns.add_task(releases)
ns.add_task(provision)
ns.add_collection(Collection.from_module(app))
ns.add_collection(Collection.from_module(nginx))
ns.add_collection(Collection.from_module(multidomain))
ns.add_collection(Collection.from_module(lock))
ns.add_collection(Collection.from_module(celery))
ns.add_collection(Collection.from_module(flower))
