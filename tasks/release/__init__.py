"""The release: what a deploy ships of a site, and its lifecycle on each host.

    build (control machine)  -> build.Build, resolved per host (build.for_host)
    target                    -> target.Job: the rule picking each site's release, resolved in
                                 the plan against the host's facts (target.Target)
    stage, prepare            -> stage.Stage, commands.Prepare
    migrate                   -> migrate.migrate_step (after db.py's backup, before any switch),
                                 split around the switch by schema.py (schema_change.py on
                                 the host); migrate.AfterSwitch in the contract phase
    switch, verify            -> switch.Switch, switch.Verify (the host agent does both)
    rollback guard, audit     -> db.py reads the job; plan.ReleaseAudit, plan.SwitchBack

On a host a site keeps `releases/<id>/` (source, `.venv` link, `.djk-release.json` manifest,
`.djk-status`), `shared/`, and a `current` link (store.py). What the steps found comes back as
typed outcomes (outcome.ReleaseMove, ...). Components (app, celery, db, hooks, status) import
this package, never each other, for anything about a release.
"""

from . import layer, schema, store
from .build import Build, deploy_files, for_host, new_build
from .commands import FreshMigrate, Prepare, ReleaseCommand, manage
from .migrate import (
    AfterSwitch,
    OldGone,
    after_switch_due,
    fresh_migrate,
    migrate_marker,
    migrate_step,
    migrated_marker,
    migrates_here,
    migrating_host,
    read_record,
    record_fact,
    record_path,
    runner,
    write_record,
)
from .outcome import CheckWarnings, ReleaseMove, ReleaseTable
from .plan import ReleaseAudit, SwitchBack, phase_steps
from .schema import Split
from .stage import Stage, disk_full, release_steps
from .switch import LayerIn, Switch, Verify, current_slot, front, gate, retired, switch_step
from .target import Job, Latest, Named, PreviousGood, Rule, Target, live_release

__all__ = [
    "AfterSwitch",
    "after_switch_due",
    "schema",
    "OldGone",
    "Split",
    "migrating_host",
    "read_record",
    "record_fact",
    "record_path",
    "runner",
    "write_record",
    "Build",
    "CheckWarnings",
    "FreshMigrate",
    "Job",
    "Latest",
    "LayerIn",
    "Named",
    "Prepare",
    "PreviousGood",
    "ReleaseAudit",
    "ReleaseCommand",
    "ReleaseMove",
    "ReleaseTable",
    "Rule",
    "Stage",
    "Switch",
    "SwitchBack",
    "Target",
    "Verify",
    "current_slot",
    "deploy_files",
    "disk_full",
    "for_host",
    "fresh_migrate",
    "front",
    "layer",
    "gate",
    "live_release",
    "manage",
    "migrate_marker",
    "migrate_step",
    "migrated_marker",
    "migrates_here",
    "new_build",
    "phase_steps",
    "release_steps",
    "retired",
    "store",
    "switch_step",
]
