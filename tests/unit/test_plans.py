"""Plans as data: one case file per scenario in plans/ (an inventory, the facts a host shows,
the run's phase), and the actions every step plans from them. Facts a case does not give are
at their defaults, as on a fresh host. No host, no SSH: planning is a pure function."""

from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path

import pytest

from djk.tasks import release
from djk.tasks.deploy import deploy_plan, rollback_plan
from djk.tasks.engine import facts as F
from djk.tasks.engine.inventory import parse
from djk.tasks.engine.steps import Context, plan_phase
from djk.tasks.provision import host_steps

CASES = sorted((Path(__file__).parent / "plans").glob("*.toml"))
EXAMPLE = Path(__file__).resolve().parents[2] / "example"


def _matches(fact, spec: dict) -> bool:
    """A case's fact names its class and some of its fields (lists for tuples): it is every
    fact the steps declare of that class with those fields."""
    kind = F.fact_kinds().get(spec["fact"])
    if kind is None:
        raise ValueError(f"unknown fact {spec['fact']}: no fact class of that name")
    if type(fact) is not kind:
        return False
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return all(
        getattr(fact, name) == want
        for name, want in fields.items()
        if name not in ("fact", "value")
    )


def _given(case: dict, declared: dict) -> dict:
    """The case's facts, each decoded by the fact it matches (Fact.from_data)."""
    given = {}
    for spec in case.get("facts", []):
        # None matching: no step reads it here (what the case shows is not read).
        for fact in (fact for fact in declared if _matches(fact, spec)):
            given[fact] = fact.from_data(spec.get("value"))
    return given


def _inventory(case: dict, tmp_path: Path):
    (tmp_path / "site.env").write_text(case.get("secrets", "DJANGO_SECRET_KEY=k3y-value-0\n"))
    for name, text in case.get("files", {}).items():
        (tmp_path / name).write_text(text)
    data = case["inventory"]
    for site in data.get("sites", {}).values():
        site.setdefault("source", str(EXAMPLE))
        if "wsgi" not in site:
            site.setdefault("asgi", "exampleproject.asgi:application")
        site.setdefault("settings", "exampleproject.settings")
        site.setdefault("env_file", "site.env")
    return parse(data, tmp_path / "hosts.toml")


def _steps(case: dict, inventory):
    host = inventory.hosts[case.get("host", "web1")]
    sites = tuple(inventory.sites_on(host))
    kind = case.get("run", "deploy")
    if kind == "provision":
        return host_steps(inventory, host)
    if kind == "rollback":
        plan = rollback_plan(inventory, host, None, case.get("to"), db=case.get("db", ""))
    else:
        release_id, tree = case["build"]["release"], case["build"]["tree"]
        builds = {s.name: release.Build(s, release_id, tree, "d1", "rev") for s in sites}
        plan = deploy_plan(inventory, host, builds, targets=[host.name])
    (phase,) = [p for p in plan.phases if p.name == case["phase"]]
    return phase.steps


def _subset(want, got, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not a table"
        for key, value in want.items():
            assert key in got, f"{where}.{key}: missing"
            _subset(value, got[key], f"{where}.{key}")
    else:
        assert want == got, f"{where}: {got!r} != {want!r}"


@pytest.fixture
def components_of(request):
    """The team components a case names (`components = ["module"]`, modules beside the tests
    with install() and uninstall()), registered for the case alone."""
    installed = []

    def install(names: list[str]) -> None:
        for name in names:
            module = importlib.import_module(name)
            module.install()
            installed.append(module)

    yield install
    for module in reversed(installed):
        module.uninstall()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan(path: Path, tmp_path: Path, components_of):
    case = tomllib.loads(path.read_text())
    components_of(case.get("components", []))
    inventory = _inventory(case, tmp_path)
    steps = _steps(case, inventory)
    declared = {fact: fact.default for step in steps for fact in step.facts(False)}
    given = _given(case, declared)
    facts = F.Facts({**declared, **given})
    planned = {
        step.name: plan
        for step, plan in plan_phase(steps, Context(facts, frozenset(case.get("pending", []))))
    }
    for expect in case["expect"]:
        name = expect["step"]
        assert name in planned, f"{path.name}: no step {name!r} in {list(planned)}"
        plan = planned[name]
        summaries = [a.summary for a in plan.actions]
        scripts = "\n".join(a.full_script() for a in plan.actions)
        if "error" in expect:
            assert expect["error"] in plan.error, f"{name}: {plan.error!r}"
        elif expect.get("actions") == []:
            assert summaries == [] and not plan.error, f"{name}: {summaries} {plan.error}"
            assert expect.get("reason", "") in plan.reason, f"{name}: {plan.reason!r}"
        else:
            assert not plan.error, f"{name}: {plan.error}"
            assert len(summaries) == len(expect["actions"]), f"{name}: {summaries}"
            for want, got in zip(expect["actions"], summaries, strict=True):
                assert want in got, f"{name}: {want!r} not in {got!r}"
        for text in expect.get("script", []):
            assert text in scripts, f"{name}: {text!r} not in the script"
        for text in expect.get("not_script", []):
            assert text not in scripts, f"{name}: {text!r} in the script"
        for name_ in expect.get("notify", []):
            assert any(name_ in a.notify for a in plan.actions), f"{name}: no notify {name_}"
        if "input" in expect:  # what an agent command gets on stdin (JSON), a subset of it
            (given,) = [json.loads(a.stdin) for a in plan.actions if isinstance(a.stdin, bytes)]
            _subset(expect["input"], given, f"{name}: input")
        for name_ in expect.get("not_notify", []):
            assert not any(name_ in a.notify for a in plan.actions), f"{name}: notifies {name_}"
        for name_ in expect.get("consumes", []):
            assert any(name_ in a.consumes for a in plan.actions), f"{name}: no {name_}"
    for absent in case.get("absent", []):
        assert absent not in planned, f"{path.name}: step {absent!r} should not be planned"
