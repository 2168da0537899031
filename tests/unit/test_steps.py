from djk.tasks.engine import facts as F
from djk.tasks.engine.facts import PENDING_FILE
from djk.tasks.engine.handlers import handler_order
from djk.tasks.engine.steps import (
    ConfigSet,
    Context,
    Directory,
    File,
    MarkedCommand,
    Service,
    sha256,
)


def ctx(facts=None, pending=(), diff=False):
    return Context(F.Facts(facts or {}), frozenset(pending), diff)


def test_identical_file_is_ok_and_changed_content_is_one_upload():
    step = File("/etc/x.conf", "hello\n", notify=("reload:nginx.service",))
    same = F.PathState("file", "644", "root", "root", sha256("hello\n"))
    plan = step.plan(ctx({F.Stat("/etc/x.conf"): same}))
    assert plan.actions == [] and "match" in plan.reason
    other = F.PathState("file", "644", "root", "root", sha256("old\n"))
    plan = step.plan(ctx({F.Stat("/etc/x.conf"): other}))
    (action,) = plan.actions
    assert action.stdin == b"hello\n"
    assert action.notify == ("reload:nginx.service",)
    assert "hello" not in action.script  # content travels on stdin, never in arguments


def test_only_mode_differs_gives_chmod_not_upload():
    step = File("/etc/x.conf", "hello\n", mode="600")
    state = F.PathState("file", "644", "root", "root", sha256("hello\n"))
    (action,) = step.plan(ctx({F.Stat("/etc/x.conf"): state})).actions
    assert action.script == "chmod 600 /etc/x.conf" and action.stdin == b""


def test_diff_masks_secret_values_but_names_changed_keys():
    step = File("/s/env", 'A="1"\nSECRET="new-value"\n', mode="600", secret_keys=("SECRET",))
    state = F.PathState("file", "600", "root", "root", "0" * 64)
    old = 'A="0"\nSECRET="old-value"\n'
    c = ctx({F.Stat("/s/env"): state, F.Content("/s/env"): old}, diff=True)
    (action,) = step.plan(c).actions
    assert "new-value" not in action.diff and "old-value" not in action.diff
    assert '+A="1"' in action.diff
    assert "secret values changed: SECRET" in action.diff


def test_config_set_validates_all_changes_at_once_and_restores_them_all():
    d = "/etc/nginx/sites-enabled"
    a, b = File(f"{d}/a.conf", "a\n"), File(f"{d}/b.conf", "b\n")
    step = ConfigSet("n", "nginx config", [a, b], [f"{d}/default"], "nginx -t", ("reload",))
    same = F.PathState("file", "644", "root", "root", sha256("a\n"))
    facts = {
        F.Stat(f"{d}/a.conf"): same,
        F.Stat(f"{d}/b.conf"): None,
        F.Stat(f"{d}/default"): F.PathState("link", target="x"),
    }
    (action,) = step.plan(ctx(facts)).actions
    assert action.summary == f"create: file {d}/b.conf; remove {d}/default"
    script = action.script
    assert script.count("nginx -t") == 1  # one validation for the whole candidate set
    assert script.index(f"mv -f {d}/.b.conf.djk-new {d}/b.conf") < script.index("nginx -t")
    assert f'cp -p "$stage/prev-1" {d}/default' in script  # restored on failure
    assert f"else rm -f {d}/b.conf" in script  # a new file goes again on failure
    assert action.notify == ("reload",)
    facts[F.Stat(f"{d}/b.conf")] = F.PathState("file", "644", "root", "root", sha256("b\n"))
    facts[F.Stat(f"{d}/default")] = None
    assert step.plan(ctx(facts)).actions == []


def test_directory():
    d = Directory("/srv/x", "root", "djk-x", "751")
    assert d.plan(ctx({F.Stat("/srv/x"): None})).actions[0].summary == "create"
    ok = d.plan(ctx({F.Stat("/srv/x"): F.PathState("dir", "751", "root", "djk-x")}))
    assert ok.actions == []


def test_service_starts_enables_and_consumes_its_pending_restart():
    step = Service("web.service")
    stopped = F.UnitState("web.service", "loaded", "inactive", "", 0)
    c = ctx({F.Unit("web.service"): stopped}, pending=["daemon-reload", "restart:web.service"])
    (action,) = step.plan(c).actions
    assert action.script.splitlines() == [
        "set -e",
        "systemctl daemon-reload",
        "systemctl enable --quiet web.service",
        "systemctl start web.service",
    ]
    # A unit this run starts needs no restart afterwards: the pending restart is consumed.
    assert action.consumes == ("restart:web.service",)
    assert "restart:web.service" not in c.after(step.plan(c)).pending
    running = F.UnitState("web.service", "loaded", "active", "enabled", 9)
    assert Service("web.service").plan(ctx({F.Unit("web.service"): running})).actions == []


def test_marked_command_runs_only_for_a_new_key():
    step = MarkedCommand("m", "migrate", "true", "/srv/x/.m", "key1")
    assert step.plan(ctx({F.Text("/srv/x/.m"): "key1"})).actions == []
    (action,) = step.plan(ctx({F.Text("/srv/x/.m"): "key0"})).actions
    assert action.script.endswith("printf '%s\\n' key1 > /srv/x/.m\n")


def test_handlers_order_daemon_reload_then_restarts_then_reloads():
    names = ["reload:nginx.service", "restart:a.service", "daemon-reload"]
    assert sorted(names, key=handler_order) == [
        "daemon-reload",
        "restart:a.service",
        "reload:nginx.service",
    ]


def test_a_failed_script_keeps_what_it_would_consume_pending():
    """The agent's exit code is the script's last word: a switch that fails must not clear the
    restart it was to do (nor report success)."""
    import subprocess

    from djk.tasks.engine.steps import Action

    for body, code in (("exit 4", 4), ("false", 1), ("set -e\nfalse\necho never", 1)):
        action = Action("x", body, consumes=("cycle:shop",))
        script = action.full_script().replace(PENDING_FILE, "/nonexistent/pending")
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        assert done.returncode == code and "never" not in done.stdout, (body, done)
