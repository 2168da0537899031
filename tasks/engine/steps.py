"""Steps: each compares facts with the wanted state and yields the actions that close the gap.

A step that yields nothing is ok and says why. Check mode, diffs and the report all fall out of
that: the executor decides whether actions are applied, a step never does. Planning is pure:
`plan_phase` folds a phase's steps over the facts read for it, and the only thing one step's plan
passes to the next is the set of pending handlers (what earlier actions notified or consumed).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import re
import shlex
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from . import procs
from .facts import PENDING_FILE, Content, Fact, Facts, PathState, Stat, Text, Unit, User
from .outcome import K, Outcome, merged
from .secrets import MASK

Payload = bytes | Callable[[], bytes]


class Findings(Protocol):
    """What an action's output says: a note for the step's line and an outcome for the report
    (e.g. the warnings of `manage.py check --deploy`)."""

    def read(self, out: str) -> tuple[str, Outcome | tuple[Outcome, ...] | None]: ...


@dataclass
class Action:
    summary: str
    script: str
    stdin: Payload = b""
    notify: tuple[str, ...] = ()
    diff: str = ""
    progress: str = ""  # a label: this action is long, show progress while it runs
    consumes: tuple[str, ...] = ()  # pending handlers this action does itself (and clears)
    echo: bool = False  # with progress: show each line it prints (the host agent's own words)
    findings: Findings | None = None  # what its output says, read once it succeeded
    kind: str = ""  # what its payload is ("uv", "wheels", "source"): counted apart in the report

    def payload(self) -> bytes:
        return self.stdin() if callable(self.stdin) else self.stdin

    def as_data(self) -> dict[str, Any]:
        """What a plan test or a --check report compares: no payload, no script text."""
        return {
            "summary": self.summary,
            "notify": list(self.notify),
            "consumes": list(self.consumes),
        }

    def full_script(self) -> str:
        """The script with its notifications recorded first, so a dropped run leaves them due,
        and the pending handlers it does itself cleared after it succeeded."""
        script = self.script
        if self.notify:
            lines = "\n".join(self.notify)
            record = (
                f"mkdir -p {shlex.quote(PENDING_FILE.rsplit('/', 1)[0])} && "
                f"printf '%s\\n' {shlex.quote(lines)} >> {PENDING_FILE}"
            )
            script = f"{record}\n{script}"
        if self.consumes:
            # Only after the script succeeded, whatever its own error handling: in a subshell
            # (not tested by || or if, which would switch its `set -e` off), then its status.
            script = (
                f"(\n{script}\n)\ndjk_status=$?\n[ $djk_status -eq 0 ] || exit $djk_status\n"
                f"{clear_pending(self.consumes)}"
            )
        return script


def clear_pending(names: tuple[str, ...]) -> str:
    """Shell lines that drop handlers from the host's pending list."""
    return "\n".join(
        f"if [ -f {PENDING_FILE} ]; then grep -vxF -- {shlex.quote(name)} {PENDING_FILE} "
        f"> {PENDING_FILE}.tmp || true; mv -f {PENDING_FILE}.tmp {PENDING_FILE}; fi"
        for name in names
    )


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    reason: str = ""
    skipped: bool = False
    error: str = ""  # a read-only step's finding that must fail the run (e.g. a unit is down)
    outcomes: tuple[Outcome, ...] = ()  # what the plan found, for the run (engine/outcome.py)

    def as_data(self) -> dict[str, Any]:
        return {
            "actions": [a.as_data() for a in self.actions],
            "reason": self.reason,
            "error": self.error,
            "report": merged(self.outcomes),
        }


@dataclass(frozen=True)
class Context:
    """What a step plans from: the facts read for its phase, the handlers pending so far, and
    the outcomes of the run's earlier phases on every host (host name, outcome)."""

    facts: Facts
    pending: frozenset[str] = frozenset()
    diff: bool = False
    earlier: tuple[tuple[str, Outcome], ...] = ()

    def outcomes_of(self, kind: type[K]) -> list[tuple[str, K]]:
        """What earlier phases of the run found of this kind, on any host."""
        return [(host, o) for host, o in self.earlier if isinstance(o, kind)]

    def after(self, plan: Plan) -> Context:
        """The context the next step sees: this plan's notifications added, consumed ones gone."""
        pending = set(self.pending)
        for action in plan.actions:
            pending |= set(action.notify)
            pending -= set(action.consumes)
        return replace(self, pending=frozenset(pending))


class Step:
    id: str = ""
    name: str = ""

    def facts(self, diff: bool) -> list[Fact]:
        return []

    def plan(self, ctx: Context) -> Plan:
        raise NotImplementedError


def sha256(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def _q(value: str) -> str:
    return shlex.quote(value)


def upload_script(path: str, owner: str, group: str, mode: str) -> str:
    """Atomic, sudo-aware upload of stdin to path: a temp file in the target directory (a dot
    name, so `include dir/*` globs skip it) gets owner and mode, then is renamed into place."""
    directory, name = path.rsplit("/", 1)
    return f"""set -e
tmp=$(mktemp {_q(f"{directory}/.{name}.djk-XXXXXX")})
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
chown {_q(f"{owner}:{group}")} "$tmp"
chmod {_q(mode)} "$tmp"
mv -f "$tmp" {_q(path)}
"""


def _attr_actions(path: str, state: PathState, owner: str, group: str, mode: str) -> list[Action]:
    actions = []
    if (state.owner, state.group) != (owner, group):
        actions.append(
            Action(
                f"owner {state.owner}:{state.group} -> {owner}:{group}",
                f"chown {_q(f'{owner}:{group}')} {_q(path)}",
            )
        )
    if state.mode.lstrip("0") != mode.lstrip("0"):
        actions.append(Action(f"mode {state.mode} -> {mode}", f"chmod {_q(mode)} {_q(path)}"))
    return actions


_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def mask_env(text: str, secret_keys: Iterable[str], plain_keys: Iterable[str] | None = None) -> str:
    """An env file as read from a host, fit for a diff: secret values masked, and any line that
    is not a comment or NAME=value (a hand edit, a value split over lines) not shown at all.
    With `plain_keys` every other name's value is masked: the host's file may hold a secret
    that is no longer one (removed from the secrets file), and its old value is still secret.
    Lines end at \\n only, as for the readers of the file (splitlines() would also cut at
    U+2028 and show the rest of a secret as a line of its own)."""
    keys = set(secret_keys)
    plain = None if plain_keys is None else set(plain_keys) - keys
    out = []
    for line in _lines(text):
        body = line[:-1]
        match = _ENV_LINE.match(body)
        if not body.strip() or body.lstrip().startswith("#"):
            out.append(line)
        elif match is None:
            out.append("# (a line that is not NAME=value: not shown)\n")
        elif match.group(1) in keys or (plain is not None and match.group(1) not in plain):
            out.append(f"{match.group(1)}={MASK}\n")
        else:
            out.append(line)
    return "".join(out)


def _lines(text: str) -> list[str]:
    """Lines ending at \\n only, each with its \\n."""
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    return [p + "\n" for p in parts]


class File(Step):
    """A managed file with exact content, owner, group and mode."""

    def __init__(
        self,
        path: str,
        content: str | bytes,
        owner: str = "root",
        group: str = "root",
        mode: str = "644",
        notify: tuple[str, ...] = (),
        secret_keys: tuple[str, ...] = (),
        name: str | None = None,
        create_only: bool = False,
        secret_content: bool = False,
        shown: str | None = None,
        secret_env: bool = False,
    ) -> None:
        self.shown = shown  # what a diff shows of the content: rendered with secrets masked
        # A dotenv file that carries secrets (a site's env file): every value it holds on the
        # host is masked in a diff, whatever the inventory holds now. A secrets file emptied,
        # or a site without its env_file, names no secret, and the host's file still has them.
        self.secret_env = secret_env
        self.create_only = create_only  # the content is only a starting point (e.g. upstream)
        self.secret_content = secret_content  # e.g. a private key: never in a diff
        self.path, self.content = path, content
        self.owner, self.group, self.mode = owner, group, mode
        self.notify, self.secret_keys = notify, secret_keys
        self.id = f"file:{path}"
        self.name = name or f"file {path}"

    def facts(self, diff: bool) -> list[Fact]:
        found: list[Fact] = [Stat(self.path)]
        if diff and not self.secret_content and not isinstance(self.content, bytes):
            found.append(Content(self.path))
        return found

    def plan(self, ctx: Context) -> Plan:
        state = ctx.facts[Stat(self.path)]
        if state is not None and state.kind != "file":
            return Plan([Action(f"replace {state.kind}", "false")], reason="")
        wanted = sha256(self.content)
        if state is not None and (state.sha256 == wanted or self.create_only):
            actions = _attr_actions(self.path, state, self.owner, self.group, self.mode)
            for action in actions:
                action.notify = self.notify
            return Plan(actions, reason="content, owner and mode match")
        old = (ctx.facts.get(Content(self.path)) if ctx.diff else None) or ""
        return Plan(
            [
                Action(
                    "create" if state is None else "update content",
                    upload_script(self.path, self.owner, self.group, self.mode),
                    stdin=self.content
                    if isinstance(self.content, bytes)
                    else self.content.encode(),
                    notify=self.notify,
                    diff=self.render_diff(old) if ctx.diff else "",
                )
            ]
        )

    def render_diff(self, old: str) -> str:
        if isinstance(self.content, bytes):
            return f"# {self.path}: binary content changed\n"
        if self.secret_content:
            return f"# {self.path}: secret content changed (not shown)\n"
        new = self.content if self.shown is None else self.shown
        changed = []
        if self.secret_keys or self.secret_env:
            changed = [
                key
                for key in self.secret_keys
                if _env_value(old, key) != _env_value(self.content, key)
            ]
            # The host's file: with secret_env every value masked (what is plain now may have
            # been a secret there); else the values of names that are plain now are shown.
            plain = (
                []
                if self.secret_env
                else [m.group(1) for m in map(_ENV_LINE.match, self.content.split("\n")) if m]
            )
            old = mask_env(old, self.secret_keys, plain)
            if self.shown is None:
                new = mask_env(new, self.secret_keys)
        lines = difflib.unified_diff(
            _lines(old),
            _lines(new),
            fromfile=f"{self.path} (host)",
            tofile=f"{self.path} (wanted)",
        )
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        if changed:
            text += f"# secret values changed: {', '.join(changed)}\n"
        return text


def _env_value(text: str, key: str) -> str | None:
    for line in text.split("\n"):
        match = _ENV_LINE.match(line)
        if match and match.group(1) == key:
            return match.group(2)
    return None


class Directory(Step):
    def __init__(self, path: str, owner: str = "root", group: str = "root", mode: str = "755"):
        self.path, self.owner, self.group, self.mode = path, owner, group, mode
        self.id = f"dir:{path}"
        self.name = f"directory {path}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Stat(self.path)]

    def plan(self, ctx: Context) -> Plan:
        state = ctx.facts[Stat(self.path)]
        if state is None:
            return Plan(
                [
                    Action(
                        "create",
                        f"install -d -o {_q(self.owner)} -g {_q(self.group)} -m {_q(self.mode)} "
                        f"{_q(self.path)}",
                    )
                ]
            )
        if state.kind != "dir":
            return Plan([Action(f"is a {state.kind}, not a directory", "false")])
        actions = _attr_actions(self.path, state, self.owner, self.group, self.mode)
        return Plan(actions, reason="exists with owner and mode")


class Absent(Step):
    """A file that must not exist (a flag turned off): removed when it is there."""

    def __init__(self, path: str, name: str | None = None, notify: tuple[str, ...] = ()) -> None:
        self.path, self.notify = path, notify
        self.id = f"file:{path}"
        self.name = name or f"file {path}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Stat(self.path)]

    def plan(self, ctx: Context) -> Plan:
        state = ctx.facts[Stat(self.path)]
        if state is None:
            return Plan(reason="absent")
        if state.kind == "dir":
            return Plan(error=f"{self.path} is a directory")
        return Plan([Action("remove", f"rm -f -- {_q(self.path)}", notify=self.notify)])


class Directories(Step):
    """Several directories as one step: what is missing or differs is fixed in one command
    (a site's tree on a fresh host is eight directories, eight round trips otherwise)."""

    def __init__(self, name: str, dirs: list[Directory]) -> None:
        self.dirs = dirs
        self.id = f"dirs:{name}"
        self.name = name

    def facts(self, diff: bool) -> list[Fact]:
        return [fact for d in self.dirs for fact in d.facts(diff)]

    def plan(self, ctx: Context) -> Plan:
        summaries, scripts = [], []
        for d in self.dirs:
            for action in d.plan(ctx).actions:
                summaries.append(f"{action.summary} {d.path}")
                scripts.append(action.script)
        if not scripts:
            return Plan(reason=f"{len(self.dirs)} exist with owner and mode")
        return Plan([Action("; ".join(summaries), "set -e\n" + "\n".join(scripts))])


class SystemUser(Step):
    """A locked system user with its own group, no login shell — or, with `login`, a user who
    logs in (a home and bash: the deploy user a bootstrap makes)."""

    def __init__(self, name: str, home: str, login: bool = False):
        self.user, self.home, self.login = name, home, login
        self.id = f"{'login-' if login else ''}user:{name}"
        self.name = f"user {name}"

    def facts(self, diff: bool) -> list[Fact]:
        return [User(self.user)]

    def plan(self, ctx: Context) -> Plan:
        state = ctx.facts[User(self.user)]
        if state is not None:
            return Plan(reason=f"exists (uid {state.uid})")
        if self.login:
            command = (
                f"useradd --create-home --home-dir {_q(self.home)} --shell /bin/bash "
                f"{_q(self.user)}"
            )
        else:
            command = (
                f"useradd --system --user-group --no-create-home --home-dir "
                f"{_q(self.home)} --shell /usr/sbin/nologin {_q(self.user)}"
            )
        return Plan([Action("create", command)])


class Service(Step):
    """A systemd unit enabled at boot and running, or a supervisor program running."""

    def __init__(self, unit: str):
        self.unit = unit
        self.id = f"service:{unit}"
        self.name = f"service {unit}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Unit(self.unit)]

    def plan(self, ctx: Context) -> Plan:
        state = ctx.facts[Unit(self.unit)]
        script = []
        parts = []
        if "daemon-reload" in ctx.pending and not procs.is_program(self.unit):
            # A unit file written earlier in this run must be loaded before it is started.
            script.append("systemctl daemon-reload")
        enabled = state is not None and state.enabled in ("enabled", "static", "alias")
        if procs.enable(self.unit) and not enabled:
            parts.append("enable")
            script += procs.enable(self.unit)
        if state is None or not state.running:
            parts.append("start")
            script += procs.start(self.unit)
        if not parts:
            running = "running" if procs.is_program(self.unit) else "enabled and running"
            return Plan(reason=f"{running} (pid {state.main_pid})")
        # A unit this run starts needs no restart handler afterwards.
        started = (f"restart:{self.unit}",) if "start" in parts else ()
        return Plan([Action(" and ".join(parts), "\n".join(["set -e", *script]), consumes=started)])


class ApplyNow(Step):
    """A service's pending restart or reload done here rather than after the run's steps: for
    a server later steps of the run already talk to (PostgreSQL before migrations)."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.id = f"apply:{unit}"
        self.name = f"apply {unit}"

    def plan(self, ctx: Context) -> Plan:
        restart, reload = f"restart:{self.unit}", f"reload:{self.unit}"
        if restart in ctx.pending:
            script = f"systemctl restart {_q(self.unit)}"
            return Plan([Action("restart", script, consumes=(restart, reload))])
        if reload in ctx.pending:
            return Plan([Action("reload", f"systemctl reload {_q(self.unit)}", consumes=(reload,))])
        return Plan(reason="no change to apply")


class MarkedCommand(Step):
    """A command that must have run for a given input (e.g. migrate for this source + venv).

    The host keeps a marker holding the input's key; the command runs when it differs, and the
    marker is written only when the command succeeds.
    """

    def __init__(
        self,
        step_id: str,
        name: str,
        script: str,
        marker: str,
        key: str,
        progress: str = "",
        notify: tuple[str, ...] = (),
    ) -> None:
        self.id, self.name, self.script = step_id, name, script
        self.marker, self.key, self.progress, self.notify = marker, key, progress, notify

    def facts(self, diff: bool) -> list[Fact]:
        return [Text(self.marker)]

    def plan(self, ctx: Context) -> Plan:
        return self.command_plan(ctx, self.script)

    def command_plan(self, ctx: Context, command: str) -> Plan:
        if ctx.facts[Text(self.marker)] == self.key:
            return Plan(reason=f"done for {self.key[:12]}")
        script = f"set -e\n{command}\nprintf '%s\\n' {_q(self.key)} > {_q(self.marker)}\n"
        return Plan([Action("run", script, progress=self.progress, notify=self.notify)])


class Run(Step):
    """An explicit command the user asked for (e.g. `nginx.reload`): always one action."""

    def __init__(
        self, step_id: str, name: str, summary: str, script: str, stdin: Payload = b""
    ) -> None:
        self.id, self.name, self.summary, self.script = step_id, name, summary, script
        self.stdin = stdin

    def plan(self, ctx: Context) -> Plan:
        return Plan([Action(self.summary, self.script, stdin=self.stdin)])


class UnitStatus(Step):
    """Read-only: reports a unit's state; a unit that is not running fails the run."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.id = f"status:{unit}"
        self.name = f"status {unit}"

    def facts(self, diff: bool) -> list[Fact]:
        return [Unit(self.unit)]

    def plan(self, ctx: Context) -> Plan:
        state = ctx.facts[Unit(self.unit)]
        if state is None or state.load != "loaded":
            return Plan(error="not installed")
        text = f"{state.active}, {state.enabled or 'no unit file'}, pid {state.main_pid}"
        return Plan(reason=text) if state.running else Plan(error=text)


class ConfigSet(Step):
    """Files that are validated together (a server's whole configuration).

    Every changed file is put in place at once, the validator runs on the whole candidate
    configuration, and if it fails every previous file is back and the validator's own message
    is the error. Members report their own names in the detail.
    """

    def __init__(
        self,
        step_id: str,
        name: str,
        files: list[File],
        absent: list[str],
        validate: str,
        notify: tuple[str, ...],
    ) -> None:
        self.id, self.name = step_id, name
        self.files, self.absent = files, absent
        self.validate, self.notify = validate, notify

    def facts(self, diff: bool) -> list[Fact]:
        found = [fact for f in self.files for fact in f.facts(diff)]
        return found + [Stat(path) for path in self.absent]

    def plan(self, ctx: Context) -> Plan:
        writes: list[File] = []
        removes: list[str] = []
        summaries: list[str] = []
        diffs: list[str] = []
        for member in self.files:
            actions = member.plan(ctx).actions
            if actions:
                writes.append(member)
                summaries.append(f"{actions[0].summary}: {member.name}")
                diffs += [a.diff for a in actions if a.diff]
        for path in self.absent:
            if ctx.facts[Stat(path)] is not None:
                removes.append(path)
                summaries.append(f"remove {path}")
        if not writes and not removes:
            return Plan(reason=f"{len(self.files)} files match")
        return Plan(
            [
                Action(
                    "; ".join(summaries),
                    self._script(writes, removes),
                    stdin=lambda: _archive({f"new-{i}": f.content for i, f in enumerate(writes)}),
                    notify=self.notify,
                    diff="".join(diffs),
                )
            ]
        )

    def _script(self, writes: list[File], removes: list[str]) -> str:
        lines = [
            "set -e",
            "stage=$(mktemp -d /var/lib/djk/.stage.XXXXXX)",
            "trap 'rm -rf \"$stage\"' EXIT",
            'tar -xf - -C "$stage"',
        ]
        targets = [f.path for f in writes] + removes
        restore = []
        for i, path in enumerate(targets):
            lines.append(f'if [ -e {_q(path)} ]; then cp -p {_q(path)} "$stage/prev-{i}"; fi')
            restore.append(
                f'  if [ -e "$stage/prev-{i}" ]; then cp -p "$stage/prev-{i}" {_q(path)}; '
                f"else rm -f {_q(path)}; fi"
            )
        for i, member in enumerate(writes):
            directory, base = member.path.rsplit("/", 1)
            tmp = f"{directory}/.{base}.djk-new"
            lines += [
                f'cp "$stage/new-{i}" {_q(tmp)}',
                f"chown {_q(member.owner + ':' + member.group)} {_q(tmp)}",
                f"chmod {_q(member.mode)} {_q(tmp)}",
                f"mv -f {_q(tmp)} {_q(member.path)}",
            ]
        lines += [f"rm -f {_q(path)}" for path in removes]
        names = ", ".join(m.name for m in writes) or "removals"
        lines += [
            f"if ! out=$({self.validate} 2>&1); then",
            *restore,
            "  printf '%s\\n' \"$out\" >&2",
            f"  echo {_q(f'candidate set ({names}) failed validation; previous files are back')}"
            " >&2",
            "  exit 3",
            "fi",
        ]
        return "\n".join(lines) + "\n"


def _archive(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            data = content if isinstance(content, bytes) else content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def plan_phase(steps: list[Step], ctx: Context) -> list[tuple[Step, Plan]]:
    """Plan every step of a phase, in order, from the same facts: a pure function.

    A step that raises is planned as a failure (its error, not a traceback, reaches the report).
    """
    planned: list[tuple[Step, Plan]] = []
    for step in steps:
        try:
            plan = step.plan(ctx)
        except Exception as exc:  # a step's own bug is reported, not raised as a traceback
            plan = Plan(error=f"planning failed: {exc}")
        planned.append((step, plan))
        ctx = ctx.after(plan)
    return planned
