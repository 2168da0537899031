"""The generic executor against a fake remote: phases, rolling batches, revert, fact re-reads,
holds and handlers. No host: the fake records what would have run."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from djk.tasks.engine import facts as F
from djk.tasks.engine.executor import HostPlan, Mode, PhaseSteps, converge
from djk.tasks.engine.hostinfo import Profile
from djk.tasks.engine.inventory import Host
from djk.tasks.engine.outcome import Outcome
from djk.tasks.engine.remote import Result
from djk.tasks.engine.report import Reporter
from djk.tasks.engine.steps import Action, Context, Plan, Step
from djk.tasks.release.commands import PrepareFindings
from djk.tasks.release.outcome import CheckWarnings

MARKER = "/var/lib/test/marker"


class FakeRemote:
    """Answers facts from `state`, records scripts; a script containing FAIL fails."""

    def __init__(self, host: Host, config=None, state=None, log=None) -> None:
        self.host, self.commands, self.bytes_sent, self.run_id = host, 0, 0, "run"
        self.state = state if state is not None else {}
        self.log = log if log is not None else []
        self.gathers = 0
        self.scripts: list[str] = []

    def open(self) -> None:
        self.log.append((self.host.name, "open"))

    def close(self) -> None:
        self.log.append((self.host.name, "close"))

    def gather(self, facts, result=None) -> F.Facts:
        if result is None:  # else a hold ran the reading: no command of its own
            self.commands += 1
        else:
            assert F.split_sections(result.stdout) is not None
            self.carried = result
        self.gathers += 1
        self.log.append((self.host.name, "gather"))
        return F.Facts({f: self.state.get(f, f.default) for f in facts})

    def run(self, script, stdin=b"", on_line=None) -> Result:
        self.commands += 1
        self.log.append((self.host.name, script.strip().splitlines()[-1]))
        self.scripts.append(script)
        if "echo applied" in script:
            self.state[F.Text(MARKER)] = "applied"
        return Result(1 if "FAIL" in script else 0, "", "boom" if "FAIL" in script else "")


class Want(Step):
    """Wants `marker` to say `value`; its action runs `command`."""

    def __init__(
        self,
        name: str,
        value: str = "applied",
        command: str = "echo applied",
        notify=(),
        consumes=(),
        marker=MARKER,
    ) -> None:
        self.id = self.name = name
        self.value, self.command, self.notify, self.consumes = value, command, notify, consumes
        self.marker = marker

    def facts(self, diff: bool) -> list:
        return [F.Text(self.marker)]

    def plan(self, ctx: Context) -> Plan:
        if ctx.facts[F.Text(self.marker)] == self.value:
            return Plan(reason="there")
        action = Action(self.name, self.command, notify=self.notify, consumes=self.consumes)
        return Plan([action])


@dataclass
class Recorded:
    acquired: list
    runs_first: bool = False  # like the deploy lock: runs the first reading once held
    scripts: list = field(default_factory=list)

    def acquire(self, remote, then=None) -> Result | None:
        self.acquired.append(remote.host.name)
        self.scripts.append(then)
        if self.runs_first and then is not None:
            remote.commands += 1  # the hold's own command
            return Result(0, "", "")
        return None


def run(plans, mode=None, state=None):
    log: list = []
    remotes: dict[str, FakeRemote] = {}

    def connect(host, config):
        remotes[host.name] = FakeRemote(host, state=(state or {}).get(host.name, {}), log=log)
        return remotes[host.name]

    reporter = Reporter("quiet", out=io.StringIO())
    reports = converge(plans, mode or Mode(), reporter, connect=connect)
    return {r.host: r for r in reports}, log, remotes


def hosts(n: int) -> list[Host]:
    return [Host(f"h{i}", f"10.0.0.{i}") for i in range(1, n + 1)]


def rolling(host: Host, fail: bool = False) -> HostPlan:
    command = "FAIL" if fail else "echo switched"
    switch = Want(f"switch {host.name}", value="switched", command=command)
    return HostPlan(
        host,
        [PhaseSteps("stage", [Want("stage")]), PhaseSteps("switch", [switch], rolling=True)],
        revert=Back(),
    )


class Back:
    """A revert (executor.Revert) with one step of its own."""

    def steps(self, facts) -> list:
        return [Want("revert", value="never", command="echo reverted")]


def test_a_failed_batch_stops_the_run_and_sends_switched_hosts_back():
    plans = [rolling(h, fail=h.name == "h3") for h in hosts(5)]
    reports, log, _ = run(plans, Mode(batch="2"))
    ran = [(h, line) for h, line in log if line.startswith("echo") or line == "FAIL"]
    assert ("h1", "echo switched") in ran and ("h2", "echo switched") in ran
    assert ("h3", "FAIL") in ran and ("h4", "echo switched") in ran
    assert not [line for h, line in ran if h == "h5" and line != "echo applied"]  # not switched
    assert {h for h, line in ran if line == "echo reverted"} == {"h1", "h2", "h4"}
    assert reports["h3"].failed and not reports["h1"].failed
    assert [s.status for s in reports["h5"].steps][-1] == "skipped"


def test_a_failed_run_recovers_every_host_after_its_revert_and_a_good_run_does_not():
    def plan(host: Host, fail: bool) -> HostPlan:
        found = rolling(host, fail)
        found.recover = [Want("recover", value="never", command="echo recovered")]
        return found

    reports, log, _ = run([plan(h, fail=h.name == "h2") for h in hosts(3)], Mode(batch="1"))
    ran = [(h, line) for h, line in log if line.startswith("echo")]
    assert {h for h, line in ran if line == "echo recovered"} == {"h1", "h2", "h3"}
    # After the revert (h1 had switched), on facts read then.
    assert ran.index(("h1", "echo reverted")) < ran.index(("h1", "echo recovered"))
    assert reports["h2"].failed and not reports["h1"].failed
    _, log, _ = run([plan(h, fail=False) for h in hosts(2)])
    assert not [line for _, line in log if line == "echo recovered"]
    _, log, _ = run([plan(h, fail=h.name == "h1") for h in hosts(2)], Mode(check=True))
    assert not [line for _, line in log if line == "echo recovered"]


def test_facts_are_read_again_only_after_this_host_changed_something():
    steps = [PhaseSteps("one", [Want("a")]), PhaseSteps("two", [Want("b")])]
    _, _, remotes = run([HostPlan(Host("x", "1"), steps)])
    assert remotes["x"].gathers == 2  # "a" changed the host: "b" plans from a fresh read
    _, log, remotes = run(
        [HostPlan(Host("x", "1"), steps)], state={"x": {F.Text(MARKER): "applied"}}
    )
    assert remotes["x"].gathers == 1 and ("x", "echo applied") not in log  # a no-op: one read


def test_a_read_after_a_change_covers_every_later_phase():
    # "a" changes the host; "b" is a no-op; "c" plans from a fact only it declares, which must
    # have been read after the change, with "b"'s (not from the first read, not missing).
    phases = [
        PhaseSteps("one", [Want("a")]),
        PhaseSteps("two", [Want("b")]),
        PhaseSteps("three", [Want("c", value="x", command="echo c", marker="/other")]),
    ]
    reports, log, remotes = run([HostPlan(Host("x", "1"), phases)])
    assert not reports["x"].failed, reports["x"].steps
    assert remotes["x"].gathers == 2 and ("x", "echo c") in log


def test_holds_are_taken_after_connecting_and_not_in_check_mode():
    taken: list = []
    plan = HostPlan(Host("x", "1"), [PhaseSteps("p", [Want("a")])], holds=[Recorded(taken)])
    run([plan])
    assert taken == ["x"]
    run(
        [HostPlan(Host("x", "1"), [PhaseSteps("p", [Want("a")])], holds=[Recorded(taken)])],
        Mode(check=True),
    )
    assert taken == ["x"]


def test_the_last_hold_carries_the_first_reading_of_the_host():
    first, last = Recorded([]), Recorded([], runs_first=True)
    plan = HostPlan(Host("x", "1"), [PhaseSteps("p", [Want("a")])], holds=[first, last])
    reports, _, remotes = run([plan])
    assert not reports["x"].failed, reports["x"].steps
    assert first.scripts == [None]  # only the last one is asked
    (script,) = last.scripts
    # The whole first reading: the steps' facts and the run's own.
    for fact in (F.Text(MARKER), F.PendingHandlers(), Profile()):
        assert fact.command() in script
    assert remotes["x"].carried is not None and remotes["x"].gathers == 1
    # The hold's command and the step's action: no command of its own for the reading.
    assert remotes["x"].commands == 2


class Reads(Step):
    """Reads a fact of another host of the run (facts.On) and says what it saw."""

    def __init__(self, on: F.On) -> None:
        self.on = on
        self.id = self.name = "reads"
        self.seen: list = []

    def facts(self, diff: bool) -> list:
        return [self.on]

    def plan(self, ctx: Context) -> Plan:
        self.seen.append(ctx.facts[self.on])
        return Plan(reason="read")


def test_a_step_reads_a_fact_of_another_host_in_that_hosts_first_round_trip():
    on = F.On("db", F.Text("/var/lib/djk/secret"))
    reads = Reads(on)
    plans = [
        HostPlan(Host("app", "1"), [PhaseSteps("p", [reads])]),
        HostPlan(Host("db", "2"), [PhaseSteps("p", [Want("a")])]),
    ]
    reports, log, remotes = run(plans, state={"db": {on.fact: "from-db"}})
    assert not any(r.failed for r in reports.values())
    assert reads.seen == ["from-db"]
    # One round trip each: the db host read the app's fact along with its own.
    assert remotes["db"].gathers == 1 and remotes["app"].gathers == 1
    alone = Reads(on)  # the db host not in the run: the fact's default
    run([HostPlan(Host("app", "1"), [PhaseSteps("p", [alone])])])
    assert alone.seen == [None]


def test_handlers_run_once_after_the_steps_and_consumed_ones_not_at_all():
    steps = [
        Want("a", notify=("restart:x.service", "reload:nginx.service")),
        Want("b", value="other", command="echo b", consumes=("restart:x.service",)),
    ]
    _, _, remotes = run([HostPlan(Host("x", "1"), [PhaseSteps("p", steps)])])
    scripts = remotes["x"].scripts
    reloads = [i for i, s in enumerate(scripts) if "nginx-reload" in s]
    assert len(reloads) == 1  # once, however many steps notified it
    assert reloads[0] > next(i for i, s in enumerate(scripts) if "echo b" in s)  # after steps
    assert not [s for s in scripts if "systemctl restart x.service" in s]  # consumed by "b"


def test_check_mode_applies_nothing():
    _, log, _ = run([rolling(h) for h in hosts(2)], Mode(check=True))
    assert not [line for _, line in log if line.startswith("echo")]


class Talking(Step):
    """A long step whose command prints lines (as the host agent does)."""

    id = name = "switch shop"

    def __init__(self, echo: bool) -> None:
        self.echo = echo

    def facts(self, diff: bool) -> list:
        return []

    def plan(self, ctx: Context) -> Plan:
        return Plan([Action("switch", "agent", progress="switching", echo=self.echo)])


class Speaking(FakeRemote):
    def run(self, script, stdin=b"", on_line=None) -> Result:
        for line in ("started release R2 in slot b\n", "\n", "healthy: HTTP 200\n"):
            if on_line is not None:
                on_line(line)
        return super().run(script, stdin, on_line)


def test_a_step_with_echo_shows_what_its_command_prints_under_its_host():
    for echo, lines in ((True, ["started release R2 in slot b", "healthy: HTTP 200"]), (False, [])):
        out = io.StringIO()
        converge(
            [HostPlan(Host("h1", "10.0.0.1"), [PhaseSteps("switch", [Talking(echo)])])],
            Mode(),
            Reporter("human", out=out),
            connect=lambda h, c: Speaking(h),
        )
        shown = [
            line.split("|")[2].strip()
            for line in out.getvalue().splitlines()
            if line.startswith("h1") and "| ..." in line
        ]
        assert shown == ["switching ...", *lines], out.getvalue()


class Checking(Step):
    id = name = "check --deploy shop"

    def facts(self, diff: bool) -> list:
        return []

    def plan(self, ctx: Context) -> Plan:
        return Plan(
            [
                Action(
                    "run", "manage.py check --deploy", findings=PrepareFindings("shop", True, True)
                )
            ]
        )


class Checked(FakeRemote):
    def run(self, script, stdin=b"", on_line=None) -> Result:
        super().run(script, stdin, on_line)
        return Result(0, CHECK_DEPLOY_OUTPUT, "")


# Recorded: `manage.py check --deploy` of a startproject app with README's settings fragment
# (Django 5.2), two of its warnings.
CHECK_DEPLOY_OUTPUT = """\
System check identified some issues:

WARNINGS:
?: (security.W004) You have not set a value for the SECURE_HSTS_SECONDS setting. If your entire site is served only over SSL, you may want to consider setting a value and enabling HTTP Strict Transport Security. Be sure to read the documentation first; enabling HSTS carelessly can cause serious, irreversible problems.
?: (security.W008) Your SECURE_SSL_REDIRECT setting is not set to True. Unless your site should be available over both SSL and non-SSL connections, you may want to either set this setting True or configure a load balancer or reverse-proxy server to redirect all connections to HTTPS.

System check identified 2 issues (0 silenced).
DJK-DJANGO {"databases": {"default": {"host": "", "name": "/srv/djk/shop/shared/db.sqlite3", "port": "", "user": "", "vendor": "sqlite"}}, "fresh": false, "migrations": [["auth.0001_initial", [], true]]}
"""  # noqa: E501


def test_what_an_actions_output_finds_goes_to_the_step_line_and_the_report():
    out = io.StringIO()
    (report,) = converge(
        [HostPlan(Host("h1", "10.0.0.1"), [PhaseSteps("stage", [Checking()])])],
        Mode(),
        Reporter("human", out=out),
        connect=lambda h, c: Checked(h),
    )
    (step,) = report.steps
    assert step.detail == "run; 2 warning(s): security.W004, security.W008"
    warnings = report.extra["check_deploy"]["shop"]
    assert [w["id"] for w in warnings] == ["security.W004", "security.W008"]
    assert warnings[0]["message"].startswith("You have not set a value for the SECURE_HSTS")
    django = report.extra["django"]["shop"]["databases"]
    assert django == [
        {
            "alias": "default",
            "vendor": "sqlite",
            "name": "/srv/djk/shop/shared/db.sqlite3",
            "host": "",
            "port": "",
            "user": "",
        }
    ]
    clean = "System check identified no issues (0 silenced).\n"
    assert PrepareFindings("shop", True, False).read(clean) == ("", (CheckWarnings("shop", ()),))


def test_a_host_that_is_not_what_its_plan_was_built_for_is_planned_again():
    from djk.tasks.engine.hostinfo import DEFAULT, HostInfo, Profile

    trixie = HostInfo(version_id="13", codename="trixie", glibc="2.41", python="3.13.5")
    built_for: list = []

    def plan_for(host: Host, info) -> HostPlan:
        built_for.append(info)
        return HostPlan(host, [PhaseSteps("", [Want(f"for {info.codename}")])])

    host = Host("x", "1", info=DEFAULT)
    log: list = []

    def connect(h, config):
        return FakeRemote(h, state={Profile(): trixie}, log=log)

    reporter = Reporter("quiet", out=io.StringIO())
    (report,) = converge(
        [plan_for(host, DEFAULT)], Mode(), reporter, connect=connect, replan=plan_for
    )
    assert built_for == [DEFAULT, trixie]
    assert [s.step for s in report.steps] == ["for trixie"] and report.host_info == trixie
    # The same host as planned: no second plan.
    built_for.clear()
    converge(
        [plan_for(Host("x", "1", info=trixie), trixie)],
        Mode(),
        reporter,
        connect=connect,
        replan=plan_for,
    )
    assert built_for == [trixie]


def test_a_host_whose_new_plan_is_refused_fails_before_any_change():
    from djk.tasks.engine.hostinfo import DEFAULT, HostInfo, Profile

    def refuse(host, info):
        raise ValueError("site shop on host x: the site needs Python 3.13")

    log: list = []

    def connect(h, config):
        return FakeRemote(h, state={Profile(): HostInfo(python="3.11.9")}, log=log)

    reporter = Reporter("quiet", out=io.StringIO())
    plan = HostPlan(Host("x", "1", info=DEFAULT), [PhaseSteps("", [Want("a")])])
    (report,) = converge([plan], Mode(), reporter, connect=connect, replan=refuse)
    assert report.failed and "needs Python 3.13" in report.error
    assert not [line for _, line in log if line == "echo applied"]


@dataclass(frozen=True)
class Found(Outcome):
    what: str

    def data(self) -> dict:
        return {"found": [self.what]}


class Finds(Step):
    """Hands back an outcome with its plan."""

    def __init__(self, what: str) -> None:
        self.id = self.name = f"find {what}"
        self.what = what

    def plan(self, ctx: Context) -> Plan:
        return Plan(reason="found", outcomes=(Found(self.what),))


class ReadsEarlier(Step):
    """Records what earlier phases found on every host."""

    id = name = "reads earlier"

    def __init__(self) -> None:
        self.seen: list = []

    def plan(self, ctx: Context) -> Plan:
        self.seen.append(ctx.outcomes_of(Found))
        return Plan(reason="read")


def test_a_later_phase_reads_what_an_earlier_one_found_on_another_host():
    reads = ReadsEarlier()
    first = HostPlan(Host("db", "1"), [PhaseSteps("backup", [Finds("dump-R2")])])
    second = HostPlan(
        Host("app", "2"),
        [PhaseSteps("backup", [ReadsEarlier()]), PhaseSteps("migrate", [reads])],
    )
    reports, _, _ = run([first, second])
    assert reads.seen == [[("db", Found("dump-R2"))]]
    # The host's report keeps its outcomes, typed, and the JSON report their data.
    assert reports["db"].outcomes_of(Found) == [Found("dump-R2")]
    assert reports["db"].as_data()["extra"] == {"found": ["dump-R2"]}
    assert "outcomes" not in reports["db"].as_data()


def test_within_a_phase_no_host_sees_another_hosts_outcomes():
    same = ReadsEarlier()
    run(
        [
            HostPlan(Host("db", "1"), [PhaseSteps("backup", [Finds("dump")])]),
            HostPlan(Host("app", "2"), [PhaseSteps("backup", [same])]),
        ]
    )
    assert same.seen == [[]]  # hosts run a phase in parallel: nothing is handed within it
