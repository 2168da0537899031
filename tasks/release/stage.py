"""Stage: a site's release directory on a host, from the deploy's source, unless the live
release already has it; then its preparation (commands.Prepare)."""

from __future__ import annotations

import shlex

from ..engine import python_env, topology
from ..engine.facts import Fact
from ..engine.inventory import Host, Inventory
from ..engine.layout import SitePaths, app_of
from ..engine.steps import Action, Context, Plan, Step
from . import layer, store
from .build import Build
from .commands import Prepare
from .migrate import fresh_migrate
from .outcome import ReleaseMove
from .target import Latest, live_release

# awk: the filesystem a directory is on, and its free space.
_DF_AWK = 'NR == 2 { printf "%s is on %s (%s), %d MB free: disk full?\\n", d, $6, $1, $4 / 1024 }'


def disk_full(directory: str, partial: str, errors: str) -> str:
    """Shell for a failed write under `directory`: the partial copy removed; the first "No space
    left" of the command's `errors` file (else its last lines) and the filesystem `directory`
    is on, with what it has left, on stderr; exits 1."""
    q = shlex.quote
    return (
        f"rm -rf {q(partial)}; grep -m 1 'No space left' {errors} >&2 || tail -n 3 {errors} >&2; "
        f"df -Pk {q(directory)} | awk -v d={q(directory)} {q(_DF_AWK)} >&2; exit 1"
    )


class Stage(Step):
    """A release directory for this deploy's source, unless the live release already has it."""

    def __init__(self, build: Build) -> None:
        self.build = build
        self.target = Latest(build)
        self.paths = SitePaths.of(build.site)
        self.id = f"stage:{build.site.name}"
        self.name = f"release {build.site.name}"

    def facts(self, diff: bool) -> list[Fact]:
        return self.target.facts()

    def plan(self, ctx: Context) -> Plan:
        b, paths = self.build, self.paths
        live = live_release(ctx.facts, paths)
        want = self.target.resolve(ctx.facts)
        report = (ReleaseMove(b.site.name, live, want),)
        if want == live:
            return Plan(
                reason=f"{live} is live with this source and dependency set", outcomes=report
            )
        q = shlex.quote
        target = paths.release(b.release_id)
        new = f"{target}.djk-new"
        group = q(b.site.user)
        manifest = store.manifest(b.release_id, b.revision, b.tree, b.deps)
        full = disk_full(paths.releases, new, '"$errors"')
        script = f"""set -e
rm -rf {q(new)}
install -d -m 750 -o root -g {group} {q(new)}
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
tar -xzf - -C {q(new)} --no-same-owner --no-same-permissions 2>"$errors" || {{ {full}; }}
printf '%s\\n' {b.tree} > {q(new)}/.djk-tree
{layer.write(f"{new}/{layer.FILE}")}
printf 'APP_RELEASE=%s\\nDJANGO_STATIC_ROOT=%s\\n' {q(b.release_id)} \\
  {q(paths.release_static(b.release_id))} > {q(new)}/.djk-release.env
printf '%s\\n' {q(manifest)} > {q(new)}/.djk-release.json
ln -sfn {q(python_env.venv_path(b.deps))} {q(new)}/.venv
chown -R root:{group} {q(new)}
chmod -R u=rwX,g=rX,o= {q(new)}
# The id is the deploy's second and revision: a directory of it that is not live is what a
# deploy of the same revision in the same second left when it stopped before its switch.
rm -rf {q(target)}
mv -T {q(new)} {q(target)}
# nginx serves this release's static files (once collected) after the live one's, until the
# switch: pages of the new release find theirs on a web host before its `current` moves.
ln -sfn {q(b.release_id)} {q(paths.static)}/next.djk-new
mv -Tf {q(paths.static)}/next.djk-new {q(paths.static)}/next
"""
        was = f"live {live}" if live else "no live release"
        return Plan(
            [Action(f"stage {b.release_id} ({was})", script, stdin=b.archive or (lambda: b""))],
            outcomes=report,
        )


def release_steps(build: Build, inventory: Inventory, host: Host) -> list[Step]:
    """The release of a site on a host: staged (with the settings layer), then prepared (static
    files collected and, on app hosts, Django's deployment checklist run and Django asked what
    it connects to and migrates)."""
    site = build.site
    app = "app" in topology.roles(host)
    return [
        Stage(build),
        Prepare(
            build,
            check=app_of(site).check_deploy and app,
            ask=app,
            fresh=fresh_migrate(build, inventory, host),
        ),
    ]
