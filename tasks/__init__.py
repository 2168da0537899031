"""djk: Fabric tasks that take Debian hosts to a production Django stack and keep them there."""

from invoke import Collection

from . import app, multidomain, nginx
from .deploy import deploy

ns = Collection()
ns.add_task(deploy)
ns.add_collection(Collection.from_module(app))
ns.add_collection(Collection.from_module(nginx))
ns.add_collection(Collection.from_module(multidomain))
