from tasks.engine import facts as F
from tasks.engine.steps import (
    ConfigSet,
    Context,
    Directory,
    File,
    MarkedCommand,
    Service,
    handler_order,
    sha256,
)


def ctx(**facts):
    values = {"units": {}, **facts}
    return Context(values)


def test_identical_file_is_ok_and_changed_content_is_one_upload():
    step = File("/etc/x.conf", "hello\n", notify=("reload:nginx.service",))
    same = F.PathState("file", "644", "root", "root", sha256("hello\n"))
    plan = step.plan(ctx(**{"stat:/etc/x.conf": same}))
    assert plan.actions == [] and "match" in plan.reason
    other = F.PathState("file", "644", "root", "root", sha256("old\n"))
    plan = step.plan(ctx(**{"stat:/etc/x.conf": other}))
    (action,) = plan.actions
    assert action.stdin == b"hello\n"
    assert action.notify == ("reload:nginx.service",)
    assert "hello" not in action.script  # content travels on stdin, never in arguments


def test_only_mode_differs_gives_chmod_not_upload():
    step = File("/etc/x.conf", "hello\n", mode="600")
    state = F.PathState("file", "644", "root", "root", sha256("hello\n"))
    (action,) = step.plan(ctx(**{"stat:/etc/x.conf": state})).actions
    assert action.script == "chmod 600 /etc/x.conf" and action.stdin == b""


def test_diff_masks_secret_values_but_names_changed_keys():
    step = File("/s/env", 'A="1"\nSECRET="new-value"\n', mode="600", secret_keys=("SECRET",))
    c = ctx(**{"stat:/s/env": F.PathState("file", "600", "root", "root", "0" * 64)})
    c.diff = True
    c.facts["content:/s/env"] = 'A="0"\nSECRET="old-value"\n'
    (action,) = step.plan(c).actions
    assert "new-value" not in action.diff and "old-value" not in action.diff
    assert '+A="1"' in action.diff
    assert "secret values changed: SECRET" in action.diff


def test_config_set_validates_all_changes_at_once_and_restores_them_all():
    d = "/etc/nginx/sites-enabled"
    a, b = File(f"{d}/a.conf", "a\n"), File(f"{d}/b.conf", "b\n")
    step = ConfigSet("n", "nginx config", [a, b], [f"{d}/default"], "nginx -t", ("reload",))
    same = F.PathState("file", "644", "root", "root", sha256("a\n"))
    c = ctx(
        **{
            f"stat:{d}/a.conf": same,
            f"stat:{d}/b.conf": None,
            f"stat:{d}/default": F.PathState("link", target="x"),
        }
    )
    (action,) = step.plan(c).actions
    assert action.summary == f"create: file {d}/b.conf; remove {d}/default"
    script = action.script
    assert script.count("nginx -t") == 1  # one validation for the whole candidate set
    assert script.index(f"mv -f {d}/.b.conf.djk-new {d}/b.conf") < script.index("nginx -t")
    assert f'cp -p "$stage/prev-1" {d}/default' in script  # restored on failure
    assert f"else rm -f {d}/b.conf" in script  # a new file goes again on failure
    assert action.notify == ("reload",)
    c.facts[f"stat:{d}/b.conf"] = F.PathState("file", "644", "root", "root", sha256("b\n"))
    c.facts[f"stat:{d}/default"] = None
    assert step.plan(c).actions == []


def test_directory():
    d = Directory("/srv/x", "root", "djk-x", "751")
    assert d.plan(ctx(**{"stat:/srv/x": None})).actions[0].summary == "create"
    ok = d.plan(ctx(**{"stat:/srv/x": F.PathState("dir", "751", "root", "djk-x")}))
    assert ok.actions == []


def test_service_starts_enables_and_remembers_started_units():
    step = Service("web.service")
    c = ctx()
    c.facts["units"] = {"web.service": F.UnitState("web.service", "loaded", "inactive", "", 0)}
    c.pending = ["daemon-reload"]
    (action,) = step.plan(c).actions
    assert action.script.splitlines() == [
        "set -e",
        "systemctl daemon-reload",
        "systemctl enable --quiet web.service",
        "systemctl start web.service",
    ]
    assert c.started_units == {"web.service"}
    c.facts["units"]["web.service"] = F.UnitState("web.service", "loaded", "active", "enabled", 9)
    assert Service("web.service").plan(c).actions == []


def test_marked_command_runs_only_for_a_new_key():
    step = MarkedCommand("m", "migrate", "true", "/srv/x/.m", "key1")
    assert step.plan(ctx(**{"text:/srv/x/.m": "key1"})).actions == []
    (action,) = step.plan(ctx(**{"text:/srv/x/.m": "key0"})).actions
    assert action.script.endswith("printf '%s\\n' key1 > /srv/x/.m\n")


def test_handlers_order_daemon_reload_then_restarts_then_reloads():
    names = ["reload:nginx.service", "restart:a.service", "daemon-reload"]
    assert sorted(names, key=handler_order) == [
        "daemon-reload",
        "restart:a.service",
        "reload:nginx.service",
    ]
