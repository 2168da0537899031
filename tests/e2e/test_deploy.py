"""The vertical slice on a real host: `fab -H web1 deploy` of the example site.

The tests of this module share one fresh host and run in file order: inventory error, check on
the fresh host, first deploy, no-op redeploy, one value changed, check and diff of a change.
"""

from __future__ import annotations

import pytest

from .kit import SECRET, curl, fab, live_unit, nginx_pids, sh, snapshot, web_pid

pytestmark = pytest.mark.e2e
WEB_LOGS = "journalctl -u 'djk-example-web-*' --no-pager -o cat"


def test_inventory_error_exits_nonzero_and_touches_no_host(project, fresh_host):
    before = snapshot(fresh_host)
    project.site["domains"] = ["example.test", "evil.test; return 200"]
    project.write()
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        project.site["domains"] = ["example.test", "www.example.test"]
        project.write()
    assert run.code == 2
    assert "sites.example.domains[1]" in run.err and "hosts.toml" in run.err
    assert "Traceback" not in run.err + run.out
    unknown = project.fab("-H", "nosuchhost!", "deploy")
    assert unknown.code == 2 and "nosuchhost!" in unknown.err
    assert snapshot(fresh_host) == before


def test_check_on_fresh_host_reports_changes_and_changes_nothing(project, fresh_host):
    before = snapshot(fresh_host)
    run = project.fab("-H", "web1", "deploy", "--check", "--diff")
    assert run.code == 0, run.out + run.err
    assert "would change" in run.out
    assert "+    server_name example.test www.example.test;" in run.out
    assert SECRET not in run.out
    assert "DJANGO_SECRET_KEY=********" in run.out
    assert snapshot(fresh_host) == before


@pytest.fixture(scope="module")
def first_deploy(project, fresh_host):
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    return run


def test_first_deploy_serves_the_site_through_nginx(first_deploy, fresh_host):
    assert "RECAP" in first_deploy.out
    page = curl(fresh_host, "/")
    assert page.startswith("exit=0\nHTTP/1.1 200"), page
    assert "Example site" in page and "1.0.0" in page
    health = curl(fresh_host, "/health/", host_header="www.example.test")
    assert '"status": "ok"' in health or '"status":"ok"' in health


def test_the_first_deploys_prepare_migrates_the_new_database(first_deploy, fresh_host):
    """A database with no tables is migrated in the prepare's Django process; the migrate step
    then finds its marker and starts no Django of its own."""
    lines = first_deploy.out.splitlines()
    (prepare,) = [ln for ln in lines if "| prepare example:" in ln]
    assert "changed" in prepare and "migrated the new database (it had no tables)" in prepare
    (migrate,) = [ln for ln in lines if "| migrate example:" in ln]
    assert "| ok " in migrate and "done for" in migrate, migrate
    tables = sh(
        fresh_host,
        'sudo python3 -c "import sqlite3; print(sqlite3.connect('
        "'/srv/djk/example/shared/db.sqlite3').execute("
        "'select count(*) from django_migrations').fetchone()[0])\"",
    )
    assert int(tables) > 0


def test_a_fresh_deploys_units_log_no_error(first_deploy, fresh_host):
    """gunicorn 25.1+ opens a control socket; in the site user's home it could not (it logged
    `Control server error: Permission denied` at every start), so each slot has its own
    runtime directory for it."""
    log = sh(fresh_host, "journalctl -u 'djk-example-*' --no-pager -o cat")
    assert "gunicorn" in log.lower() or "Listening at" in log, log
    errors = [line for line in log.splitlines() if "ERROR" in line or "error" in line.lower()]
    assert not errors, errors
    unit = live_unit(fresh_host).removesuffix(".service")
    sh(fresh_host, f"test -S /run/{unit}/gunicorn.ctl")
    assert sh(fresh_host, f"stat -c %U:%a /run/{unit}").split() == ["djk-example:700"]


def test_static_files_are_served_by_nginx_itself(first_deploy, fresh_host):
    static = curl(fresh_host, "/static/pages/style.css")
    assert "HTTP/1.1 200" in static
    assert "X-Static: nginx" in static and "Cache-Control: max-age=2592000" in static
    # gunicorn logs every request it serves; the static one never reached it.
    log = sh(fresh_host, WEB_LOGS)
    assert "GET / HTTP" in log or "GET /" in log
    assert "/static/pages/style.css" not in log
    # nginx's worker (www-data) must be able to read the collected files: no 403.
    assert "403" not in static.splitlines()[1]


def test_unknown_host_header_never_reaches_django(first_deploy, fresh_host):
    before = sh(fresh_host, f"{WEB_LOGS} | wc -l")
    answer = curl(fresh_host, "/", host_header="unknown.test")
    assert answer.startswith("exit=52"), answer  # nginx closed the connection (444)
    assert sh(fresh_host, f"{WEB_LOGS} | wc -l") == before


def test_gunicorn_runs_as_site_user_and_env_file_is_private(first_deploy, fresh_host):
    pid = web_pid(fresh_host)
    users = sh(fresh_host, f"ps -o user= -p {pid} --ppid {pid}").split()
    assert users and set(users) == {"djk-example"}
    cmdline = sh(fresh_host, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert "uvicorn_worker.UvicornWorker" in cmdline
    assert sh(fresh_host, "stat -c '%a %U %G' /srv/djk/example/shared/env").split() == [
        "600",
        "djk-example",
        "djk-example",
    ]
    assert SECRET not in sh(fresh_host, "ps -eo args")
    unit = live_unit(fresh_host)
    assert sh(fresh_host, f"systemctl is-enabled {unit}").strip() == "enabled"
    assert "Restart=on-failure" in sh(fresh_host, f"systemctl cat {unit}")


def test_second_deploy_changes_nothing_and_restarts_nothing(first_deploy, project, fresh_host):
    gunicorn, nginx = web_pid(fresh_host), nginx_pids(fresh_host)
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    report = run.host("web1")
    assert report["changed"] == 0 and report["failed"] == 0, report
    # One remote command: the deploy lock's keeper, which reads every fact once it holds the
    # lock; no writes.
    assert report["commands"] == 1
    assert web_pid(fresh_host) == gunicorn
    assert nginx_pids(fresh_host) == nginx
    assert SECRET not in run.out


def test_one_value_changes_one_file_and_restarts_only_its_dependents(
    first_deploy, project, fresh_host
):
    gunicorn = web_pid(fresh_host)
    master, workers = nginx_pids(fresh_host)
    nginx_conf = sh(fresh_host, "sha256sum /etc/nginx/sites-enabled/djk-site-example.conf")
    project.site["workers"] = 3
    project.write()
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    changed = [s["step"] for s in run.host("web1")["steps"] if s["status"] == "changed"]
    # Both slots' unit files, then the app restarted by a health-checked slot switch.
    assert changed == [
        "unit djk-example-web-a.service",
        "unit djk-example-web-b.service",
        "switch example",
    ]
    assert web_pid(fresh_host) != gunicorn
    assert nginx_pids(fresh_host)[0] == master
    assert sh(fresh_host, "sha256sum /etc/nginx/sites-enabled/djk-site-example.conf") == nginx_conf
    assert sh(fresh_host, f"pgrep -P {web_pid(fresh_host)} | wc -l").strip() == "3"
    assert "HTTP/1.1 200" in curl(fresh_host, "/")

    # An nginx-only value: exactly the server block changes, nginx reloads, the app is untouched.
    gunicorn = web_pid(fresh_host)
    master, workers = nginx_pids(fresh_host)
    project.site["max_body_size"] = "5m"
    project.write()
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    changed = [s["step"] for s in run.host("web1")["steps"] if s["status"] == "changed"]
    assert changed == ["nginx config", "handler reload:nginx.service"]
    detail = next(s["detail"] for s in run.host("web1")["steps"] if s["step"] == "nginx config")
    assert detail == "update content: server block example"
    assert web_pid(fresh_host) == gunicorn
    new_master, new_workers = nginx_pids(fresh_host)
    assert new_master == master and set(new_workers).isdisjoint(workers)  # graceful reload
    assert "client_max_body_size 5m;" in sh(
        fresh_host, "cat /etc/nginx/sites-enabled/djk-site-example.conf"
    )


def test_domain_change_reloads_nginx_and_restarts_app(first_deploy, project, fresh_host):
    gunicorn = web_pid(fresh_host)
    project.site["domains"] = ["example.test", "www.example.test", "shop.test"]
    project.write()
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    changed = {s["step"] for s in run.host("web1")["steps"] if s["status"] == "changed"}
    # The switch restarts the app (new ALLOWED_HOSTS) and does the pending nginx reload itself.
    assert changed == {
        "nginx config",
        "env file /srv/djk/example/shared/env",
        "switch example",
    }
    assert web_pid(fresh_host) != gunicorn
    assert "HTTP/1.1 200" in curl(fresh_host, "/", host_header="shop.test")


def test_check_and_diff_of_a_changed_inventory_leave_host_identical(
    first_deploy, project, fresh_host
):
    before = snapshot(fresh_host)
    project.site["workers"] = 4
    project.secrets["DJANGO_SECRET_KEY"] = SECRET + "-rotated"
    project.write()
    try:
        run = project.fab("-H", "web1", "deploy", "--check", "--diff")
        data = project.fab("-H", "web1", "deploy", "--check", "--json")
    finally:
        project.secrets["DJANGO_SECRET_KEY"] = SECRET
        project.write()
    assert run.code == 0, run.out + run.err
    assert "would change" in run.out
    assert "-ExecStart=" in run.out and "--workers 4" in run.out
    assert "secret values changed: DJANGO_SECRET_KEY" in run.out
    assert SECRET not in run.out and SECRET not in data.out
    assert data.report["check"] is True and data.host("web1")["changed"] >= 2
    assert snapshot(fresh_host) == before


def test_failed_validation_restores_config_and_pending_restart_survives(
    first_deploy, project, fresh_host
):
    conf = "/etc/nginx/sites-enabled/djk-site-example.conf"
    before_conf = sh(fresh_host, f"sha256sum {conf}")
    gunicorn = web_pid(fresh_host)
    # Someone left a broken file on the host: every candidate config now fails `nginx -t`.
    sh(fresh_host, "echo 'this is not nginx syntax' > /etc/nginx/conf.d/broken.conf")
    project.site["domains"] = ["example.test", "www.example.test", "late.test"]
    project.write()
    try:
        failed = project.fab("-H", "web1", "deploy")
    finally:
        sh(fresh_host, "rm -f /etc/nginx/conf.d/broken.conf")
    assert failed.code == 1
    lines = failed.out.splitlines()
    failed_line = next(line for line in lines if "| failed  | nginx config" in line)
    assert "server block example" in failed_line
    assert "broken.conf" in failed.out  # nginx's own message reaches the user
    assert sh(fresh_host, f"sha256sum {conf}") == before_conf  # previous file is back
    assert "HTTP/1.1 200" in curl(fresh_host, "/")  # nginx kept serving
    assert web_pid(fresh_host) == gunicorn  # no switch and no handlers after the failure
    pending = sh(fresh_host, "cat /var/lib/djk/pending-handlers")
    assert "cycle:example" in pending and "reload:nginx.service" in pending

    again = project.fab("-H", "web1", "deploy", "--json")
    assert again.code == 0, again.out + again.err
    changed = {s["step"] for s in again.host("web1")["steps"] if s["status"] == "changed"}
    # The env file was already written by the failed run; its restart was still due.
    assert "env file /srv/djk/example/shared/env" not in changed
    assert {"nginx config", "switch example"} <= changed
    assert web_pid(fresh_host) != gunicorn
    assert "HTTP/1.1 200" in curl(fresh_host, "/", host_header="late.test")
    assert sh(fresh_host, "cat /var/lib/djk/pending-handlers").strip() == ""


def test_tasks_compose_in_scripts_by_exit_code(first_deploy, project, fresh_host):
    assert project.fab("-H", "web1", "app.status").code == 0
    assert project.fab("-H", fresh_host.address, "nginx.status", "--json").code == 0
    master, workers = nginx_pids(fresh_host)
    reload = project.fab("-H", "web1", "nginx.reload", "--quiet")
    assert reload.code == 0, reload.out + reload.err
    new_master, new_workers = nginx_pids(fresh_host)
    assert new_master == master and set(new_workers).isdisjoint(workers)
    unit = live_unit(fresh_host)
    sh(fresh_host, f"systemctl stop {unit}")
    try:
        down = project.fab("-H", "web1", "app.status", "--json")
        assert down.code == 1
        assert down.host("web1")["failed"] == 1
    finally:
        sh(fresh_host, f"systemctl start {unit}")


def test_targets_by_group_ssh_config_alias_and_address(first_deploy, project, fresh_host):
    ssh_config = project.dir / "ssh_config"
    ssh_config.write_text(
        f"Host testweb\n  HostName {fresh_host.address}\n  User deploy\n"
        f"  IdentityFile {fresh_host.key_path}\n"
    )
    inventory = project.dir / "alias.toml"
    text = project.inventory.read_text()
    text = text.replace(f'address = "{fresh_host.address}"\n', 'ssh_alias = "testweb"\n')
    text = text.replace(f'ssh_key = "{fresh_host.key_path}"\n', "")
    text = text.replace("[sites.example]", '[groups]\nfront = ["web1"]\n[sites.example]')
    inventory.write_text(text)
    for target in ("testweb", "front", "web1"):
        run = fab(inventory, "-S", str(ssh_config), "-H", target, "deploy", "--json")
        assert run.code == 0, (target, run.out, run.err)
        assert run.host("web1")["changed"] == 0
    by_address = project.fab("-H", f"deploy@{fresh_host.address}", "deploy", "--json")
    assert by_address.code == 0 and by_address.host("web1")["changed"] == 0
    # Without -H: the inventory's defaults.target.
    default = project.fab("deploy", "--json")
    assert default.code == 0 and [h["host"] for h in default.report["hosts"]] == ["web1"]
