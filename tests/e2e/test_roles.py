"""One site across four hosts by role: nginx on web1 proxies to gunicorn on two app hosts,
Celery workers and the Redis broker on a fourth (an app host too: a SQLite site's workers need
the app host's database file); a rolling deploy under load through web1.
The two app hosts run different process managers: web2 systemd, web3 supervisor (its forwarder
is a supervisor program), and nginx on web1 cannot tell."""

from __future__ import annotations

import socket
import time

import pytest
from websockets.sync.client import connect

from .kit import Load, Project, curl, health, nginx_pids, sh, spawn_fab, wait_for_line

pytestmark = pytest.mark.e2e
NAMES = ["web1", "web2", "web3", "web4"]
ROLES = {"web1": ["web"], "web2": ["app"], "web3": ["app"], "web4": ["app", "worker", "broker"]}
SUPERVISED = "web3"


@pytest.fixture(scope="module")
def hosts(testbed):
    return testbed.up(NAMES)


@pytest.fixture(scope="module")
def project(hosts, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), hosts)
    project.host_keys[SUPERVISED] = {"process_manager": "supervisor"}
    project.site["source"] = str(src)
    project.site["migrate_on"] = "every"  # sqlite: one database per app host
    project.site["celery"] = {"app": "exampleproject"}
    project.secrets["BROKER_PASSWORD"] = "broker-Pw-8812/+x"
    write(project)
    run = project.fab("deploy", "-H", ",".join(NAMES))
    assert run.code == 0, run.out + run.err
    project.first_run = run
    return project


def write(project) -> None:
    """hosts.toml with each host's roles."""
    for name, roles in ROLES.items():
        project.host_keys.setdefault(name, {})["roles"] = roles
    project.write()


def listening(host, port: int) -> set[str]:
    out = sh(host, f"ss -Hltn 'sport = :{port}'")
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines()}


def test_each_host_runs_only_its_roles(project, hosts):
    web, app1, app2, worker = hosts
    assert health(web)["status"] == "ok"  # through nginx on web1 to an app host
    assert sh(web, "systemctl is-active djk-example-web-a djk-example-web-b || true").split() == [
        "inactive",
        "inactive",
    ]
    for app_host in (app1, app2):
        assert sh(app_host, "ls /etc/nginx/sites-enabled").split() == ["default"]
        assert "djk-example-worker" not in sh(app_host, "systemctl list-units --no-legend")
        # The forwarder listens on the host's address (for web1), not on every address;
        # gunicorn only on its unix sockets.
        assert listening(app_host, 8001) == {app_host.address}
        assert listening(app_host, 8002) == set()
        if app_host.name == SUPERVISED:
            assert "djk-example-" not in sh(app_host, "systemctl list-units --all --no-legend")
            forward = sh(app_host, "supervisorctl status djk-example-forward || true")
            assert "RUNNING" in forward, forward
        else:
            forward = sh(app_host, "systemctl is-active djk-example-forward.socket").strip()
            assert forward == "active"
    assert "active" == sh(worker, "systemctl is-active djk-example-worker").strip()
    redis_lines = [line for line in project.first_run.out.splitlines() if "redis" in line]
    assert listening(worker, 6379) == {"127.0.0.1", "[::1]", worker.address}, redis_lines
    upstream = sh(web, "cat /etc/nginx/sites-enabled/djk-site-example.conf")
    for app_host in (app1, app2):
        assert f"server {app_host.address}:8001;" in upstream


def test_a_task_goes_from_an_app_host_through_the_broker_host_to_a_worker(project, hosts):
    answer = curl(hosts[0], "/tasks/add/?x=20&y=22")
    assert "HTTP/1.1 200" in answer and '"result": 42' in answer, answer
    # Redis on the broker host takes no command without the password.
    worker = hosts[3]
    denied = sh(worker, f"redis-cli -h {worker.address} ping 2>&1 || true")
    assert "NOAUTH" in denied or "DENIED" in denied
    assert "broker-Pw" not in project.first_run.out
    with pytest.raises(OSError):  # and no broker anywhere else
        socket.create_connection((hosts[0].address, 6379), timeout=3).close()


def test_rolling_deploy_of_the_app_hosts_under_load_through_the_web_host(project, hosts, src):
    before = health(hosts[0])["release"]
    (src / "VERSION").write_text("4.0.0\n")
    pids = nginx_pids(hosts[0])
    with (
        Load(hosts[0].address, "example.test") as load,
        Load(hosts[0].address, "example.test", keep_alive=True) as steady,
    ):
        run = project.fab("deploy", "-H", ",".join(NAMES), "--batch", "1", "--json")
        back = project.fab("rollback", "-H", ",".join(NAMES))
    assert run.code == 0, run.out + run.err
    assert back.code == 0, back.out + back.err
    # Keep-alive GET and POST that never retry: none failed; web1's nginx never reloaded.
    assert len(steady.results) > 20 and steady.failures == [], steady.failures[:10]
    assert steady.connections <= len(steady.results) // 900 + 1, steady.connections
    assert nginx_pids(hosts[0]) == pids
    outcomes = [o for o, _ in load.results]
    first_bad = next((i for i, o in enumerate(outcomes) if o != "200"), None)
    assert load.failures == [], (
        len(outcomes),
        first_bad,
        outcomes[-3:],
        sh(hosts[0], "tail -5 /var/log/nginx/error.log"),
        run.out[-3000:],
    )
    assert len(load.results) > 20
    assert health(hosts[0])["release"] == before  # rolled back
    run = project.fab("deploy", "-H", ",".join(NAMES), "--batch", "1", "--json")
    assert run.code == 0, run.out + run.err
    after = health(hosts[0])
    assert after["version"] == "4.0.0" and after["release"] != before
    verify = next(s for s in run.host("web1")["steps"] if s["step"].startswith("verify"))
    assert verify["status"] == "changed"
    for app_host in hosts[1:3]:
        assert sh(app_host, "readlink /srv/djk/example/current").strip().endswith(after["release"])
    again = project.fab("deploy", "-H", ",".join(NAMES), "--json")
    assert again.code == 0 and all(h["changed"] == 0 for h in again.report["hosts"])


def test_app_status_reads_the_live_slot_of_app_hosts_behind_a_web_host(project, hosts):
    # web2 and web3 run only the app (nginx is on web1): their live slot is live.sock's.
    run = project.fab("app.status", "-H", "web2,web3", "--json")
    assert run.code == 0, run.out + run.err
    for name in ("web2", "web3"):
        steps = run.host(name)["steps"]
        assert len(steps) == 1, steps
        (step,) = steps
        assert step["status"] == "ok" and "active" in step["detail"], step
    sh(hosts[1], "systemctl stop 'djk-example-web-*.service'")
    try:
        down = project.fab("app.status", "-H", "web2", "--json")
        assert down.code == 1 and down.host("web2")["failed"] == 1
    finally:
        sh(
            hosts[1],
            'systemctl start "djk-example-web-$(readlink '
            '/srv/djk/example/sockets/live.sock | cut -c1).service"',
        )


def test_a_websocket_through_the_web_host_outlives_the_app_hosts_switch(project, hosts, src):
    """nginx on web1 -> an app host's forwarder -> the old slot: the app host drains that slot
    (it waits for the WebSocket) instead of stopping it, while new connections reach the new
    release; the deploy ends once the WebSocket closes."""
    web = hosts[0]
    sock = socket.create_connection((web.address, 80), timeout=10)
    with connect("ws://example.test/ws/echo/", sock=sock, open_timeout=10) as ws:
        ws.send("before")
        old = ws.recv(timeout=10).split(":")[0]
        (src / "VERSION").write_text("5.0.0\n")
        deploy = spawn_fab(project.inventory, "deploy", "-H", ",".join(NAMES))
        wait_for_line(deploy, "connection(s) of the old slot", timeout=240)
        deadline = time.monotonic() + 60
        while (new := health(web)["release"]) == old and time.monotonic() < deadline:
            time.sleep(0.5)
        assert new != old
        # Every app host switched (nginx on web1 picks any of them for a new connection).
        apps = [h for h in hosts if "app" in ROLES[h.name]]
        while time.monotonic() < deadline and any(
            f'"release": "{new}"' not in forwarded(web, app) for app in apps
        ):
            time.sleep(0.5)
        fresh = socket.create_connection((web.address, 80), timeout=10)
        with connect("ws://example.test/ws/echo/", sock=fresh, open_timeout=10) as other:
            other.send("after")
            assert other.recv(timeout=10) == f"{new}: after"
        ws.send("still there")
        assert ws.recv(timeout=10) == f"{old}: still there"
        assert deploy.poll() is None  # the deploy waits for it (drain_timeout)
    out, _ = deploy.communicate(timeout=120)
    assert deploy.returncode == 0, out


@pytest.mark.parametrize("index", [1, 2], ids=["systemd", "supervisor"])
def test_a_rebooted_app_host_is_reached_through_its_forwarder_again(project, hosts, testbed, index):
    release = sh(hosts[index], "readlink /srv/djk/example/current").strip()
    release = release.removeprefix("releases/")
    app = testbed.reboot(hosts[index].name)
    answer = ""
    deadline = time.monotonic() + 60
    while '"status": "ok"' not in answer and time.monotonic() < deadline:
        time.sleep(0.5)
        answer = forwarded(hosts[0], app)
    assert f'"release": "{release}"' in answer, answer
    if app.name == SUPERVISED:  # the forwarder's address came up after supervisord: retried
        assert "RUNNING" in sh(app, "supervisorctl status djk-example-forward || true")
    else:
        assert sh(app, "systemctl is-active djk-example-forward.socket").strip() == "active"
    run = project.fab("deploy", "-H", ",".join(NAMES), "--json")
    assert run.code == 0 and all(h["changed"] == 0 for h in run.report["hosts"]), run.out


def forwarded(web, app) -> str:
    """The health answer of an app host's live slot, through its forwarder, from the web host."""
    url = f"http://{app.address}:8001/health/"
    return sh(web, f"curl -s -m 5 -H 'Host: example.test' {url} || true")


def reaches(source, host, port: int) -> bool:
    """Whether `source` (a test host, or None: the control machine) opens a TCP connection to
    host:port within 3 s."""
    probe = f"timeout 3 bash -c '</dev/tcp/{host.address}/{port}' 2>/dev/null && echo open || true"
    if source is None:
        try:
            socket.create_connection((host.address, port), timeout=3).close()
            return True
        except OSError:
            return False
    return sh(source, probe).strip() == "open"


def test_the_firewall_opens_each_port_to_its_peers_only(project, hosts, testbed):
    web, app1, app2, worker = hosts
    # Open to anyone before the firewall.
    assert reaches(None, app1, 8001) and reaches(web, worker, 6379)
    # Security updates asked for on the web host (the others: their own setting, untouched).
    project.host_keys["web1"] = {"unattended_upgrades": True}
    write(project)
    run = project.fab("provision", "-H", ",".join(NAMES), "--diff")
    assert run.code == 0, run.out + run.err  # applied over the run's own connections
    assert 'tcp dport 6379 accept comment "Redis"' in run.out  # --diff shows the rules
    auto = "/etc/apt/apt.conf.d/20auto-upgrades"
    assert 'APT::Periodic::Unattended-Upgrade "1";' in sh(web, f"cat {auto}")
    assert "install ok installed" in sh(web, "dpkg-query -W -f='${Status}' unattended-upgrades")
    assert "Unattended-Upgrade" not in sh(app1, f"cat {auto} 2>/dev/null || true")
    for host in hosts:
        rules = sh(host, "nft list table inet djk")
        assert "policy drop;" in rules and 'tcp dport 22 accept comment "SSH"' in rules
    assert "tcp dport 80 accept" in sh(web, "nft list table inet djk")
    for app_host in (app1, app2):
        rules = sh(app_host, "nft list table inet djk")
        assert f"ip saddr {web.address} tcp dport 8001 accept" in rules, rules
        assert "dport 80 " not in rules and "6379" not in rules
    rules = sh(worker, "nft list table inet djk")
    assert f"ip saddr {{ {app1.address}, {app2.address} }} tcp dport 6379 accept" in rules
    # The web host reaches the app hosts' forwarders; the control machine (no peer) does not.
    assert reaches(web, app1, 8001) and reaches(web, app2, 8001)
    assert not reaches(None, app1, 8001) and not reaches(worker, app1, 8001)
    # The broker: for the app hosts and its own workers; not for the web host.
    assert reaches(app1, worker, 6379) and not reaches(web, worker, 6379)
    assert reaches(None, web, 80) and health(web)["status"] == "ok"
    # Loaded at boot; the next runs change nothing.
    rebooted = testbed.reboot(app1.name)
    assert "policy drop;" in sh(rebooted, "nft list table inet djk")
    again = project.fab("provision", "-H", ",".join(NAMES), "--json")
    assert again.code == 0 and all(h["changed"] == 0 for h in again.report["hosts"]), again.out
    run = project.fab("deploy", "-H", ",".join(NAMES), "--json")
    assert run.code == 0 and all(h["changed"] == 0 for h in run.report["hosts"]), run.out
