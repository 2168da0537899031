"""PostgreSQL from Debian's archive, provisioned with no internet on the hosts: one site with its
database on its own app host (loopback only), one on a separate db host that the deploy reaches
without being a target (its firewall admitting the app host alone). The generated password is
in no output, process list, log or file but the site's env file and the db host's root-only
file; the db port turns away a host that is not one of the site's app hosts, at the firewall
and at pg_hba. PostgreSQL stopped during migrate: no switch, the backup intact, the message
names the database host."""

from __future__ import annotations

import shlex
import socket
import struct
import subprocess

import pytest

from .kit import Project, add_migration, curl, health, sh, spawn_fab, wait_for_line

pytestmark = pytest.mark.e2e
NAMES = ["web1", "db1"]


@pytest.fixture(scope="module")
def hosts(testbed):
    return testbed.up(NAMES)


@pytest.fixture(scope="module")
def project(hosts, tmp_path_factory, src):
    web1, _ = hosts
    project = Project(tmp_path_factory.mktemp("project"), hosts)
    project.host_keys["db1"] = {"roles": ["db"]}
    project.site.update(hosts=["web1"], source=str(src), database={"engine": "postgresql"})
    project.others["shop"] = {
        "domains": ["shop.test"],
        "hosts": ["db1", "web1"],  # the first host with the db role holds its database
        "source": project.site["source"],
        "asgi": "exampleproject.asgi:application",
        "settings": "exampleproject.settings",
        "port": 8002,
        "env_file": "example.env",
        "database": {"engine": "postgresql", "name": "shop_db", "user": "shop_app"},
    }
    project.write()
    run = project.fab("-H", "web1,db1", "provision")
    assert run.code == 0, run.out + run.err
    run = project.fab("-H", "web1", "deploy")  # db1 is not a target
    assert run.code == 0, run.out + run.err
    project.first_run = run
    return project


def env_of(host, site: str) -> dict[str, str]:
    text = sh(host, f"cat /srv/djk/{site}/shared/env")
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k: v.strip("'") for k, v in pairs if not k.startswith("#")}


def test_both_sites_run_on_postgresql_local_and_remote(project, hosts):
    web1, db1 = hosts
    assert health(web1)["db"] is True
    assert health(web1, "shop.test")["db"] is True
    local, remote = env_of(web1, "example"), env_of(web1, "shop")
    assert local["DATABASE_HOST"] == "127.0.0.1" and local["DATABASE_NAME"] == "example"
    assert remote["DATABASE_HOST"] == db1.address and remote["DATABASE_USER"] == "shop_app"
    assert remote["DATABASE_URL"].startswith("postgres://shop_app:")
    assert remote["DATABASE_URL"].endswith(f"@{db1.address}:5432/shop_db")
    # The migrations went to PostgreSQL on db1, not to a SQLite file.
    tables = sh(
        db1, 'runuser -u postgres -- psql -d shop_db -Atc "select count(*) from django_migrations"'
    )
    assert int(tables) > 0
    said = [line for line in project.first_run.out.splitlines() if "database host" in line]
    assert said and said[0].startswith("db1") and "not among the targets" in said[0], said
    # Only the site's role may connect to its database.
    acl = sh(
        db1,
        "runuser -u postgres -- psql -Atc "
        "\"select datacl from pg_database where datname = 'shop_db'\"",
    )
    assert acl.strip() == "{shop_app=CTc/shop_app}"


def test_the_password_is_only_in_the_env_file_and_the_root_only_file(project, hosts):
    web1, db1 = hosts
    kept = "/var/lib/djk/secrets/shop.db-password"
    assert sh(db1, f"stat -c '%a %U' {kept} /var/lib/djk/secrets").split() == [
        "600",
        "root",
        "700",
        "root",
    ]
    secret = sh(db1, f"cat {kept}").strip()
    assert len(secret) >= 24 and env_of(web1, "shop")["DATABASE_PASSWORD"] == secret
    again = project.fab("-H", "web1", "deploy", "--json", "--diff")
    assert again.code == 0
    for text in (project.first_run.out, project.first_run.err, again.out, again.err):
        assert secret not in text
    for host, allowed in ((web1, {"/srv/djk/shop/shared/env"}), (db1, {kept})):
        # The secret goes to grep on stdin: not on a command line sudo or ps would show.
        found = subprocess.run(
            host.ssh_argv(
                "sudo grep -rlF -f /dev/stdin /etc /srv /var /root /home /tmp 2>/dev/null; "
                "sudo journalctl --no-pager -o cat | grep -cF -f /dev/stdin || true; "
                "ps auxww | grep -cF -f /dev/stdin || true"
            ),
            input=f"{secret}\n" * 3,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert set(found[:-2]) == allowed, found
        assert found[-2:] == ["0", "0"], found  # journal and process list


def startup(address: str, user: str, database: str, timeout: float = 10) -> bytes:
    """PostgreSQL's first message (protocol 3.0) as a client sends it; the server's answer."""
    params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    packet = struct.pack("!ii", 8 + len(params), 196608) + params
    with socket.create_connection((address, 5432), timeout=timeout) as sock:
        sock.sendall(packet)
        return sock.recv(4096)


def test_the_db_port_admits_only_the_sites_app_hosts(project, hosts):
    web1, db1 = hosts
    # This machine is not one of shop's app hosts: the firewall drops it ...
    with pytest.raises(OSError):
        startup(db1.address, "shop_app", "shop_db", timeout=3)
    # ... and without the firewall the server answers with an error (pg_hba).
    sh(db1, "nft delete table inet djk")
    try:
        answer = startup(db1.address, "shop_app", "shop_db")
    finally:
        sh(db1, "systemctl restart djk-firewall")
    assert answer[:1] == b"E" and b"no pg_hba.conf entry" in answer, answer
    # web1 is: it is asked for its scram proof (R = authentication request, 10 = SASL).
    probe = (
        'python3 -c \'import socket,struct,sys; p=b"user\\0shop_app\\0database\\0shop_db\\0\\0"; '
        f's=socket.create_connection(("{db1.address}",5432),5); '
        's.sendall(struct.pack("!ii",8+len(p),196608)+p); r=s.recv(64); '
        'print(r[:1].decode(), struct.unpack("!i", r[5:9])[0])\''
    )
    assert sh(web1, probe).split() == ["R", "10"]
    # The app host's own PostgreSQL (site example) listens on loopback only.
    with pytest.raises(OSError):
        startup(web1.address, "example", "example")
    listening = sh(db1, "ss -Hltn 'sport = :5432'")
    assert db1.address in listening


def test_a_second_deploy_changes_nothing_on_either_host(project, hosts):
    run = project.fab("-H", "web1", "deploy", "--json")
    assert run.code == 0, run.out + run.err
    for host in run.report["hosts"]:
        changed = [s for s in host["steps"] if s["status"] == "changed"]
        assert changed == [], (host["host"], changed)


def psql(host, sql: str, db: str = "shop_db") -> str:
    return sh(host, f"runuser -u postgres -- psql -XAtq -d {db} -c {shlex.quote(sql)}").strip()


def test_a_migration_is_preceded_by_pg_dump_on_the_db_host(project, hosts, src):
    web1, db1 = hosts
    for _ in range(3):
        curl(web1, "/", host_header="shop.test")  # rows to keep
    rows = int(psql(db1, "select count(*) from pages_visit"))
    assert rows >= 3
    name = add_migration(src, 2, "note")
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    lines = [line for line in run.out.splitlines() if "| backup " in line]
    release = health(web1, "shop.test")["release"]
    assert any(
        line.startswith("db1")
        and "changed | backup shop" in line
        and f"{release} before 1 migration(s): {name}" in line
        for line in lines
    ), lines
    assert any(line.startswith("web1") and "backup example" in line for line in lines), lines
    dump = f"/var/backups/djk/shop/{release}.pgdump"
    assert sh(db1, f"stat -c '%a %U' {dump}").split() == ["600", "root"]
    # What it holds: the rows of before, without the column the migration added.
    sh(db1, "runuser -u postgres -- createdb scratch")
    sh(db1, f"runuser -u postgres -- pg_restore --no-owner -d scratch < {dump}")
    assert int(psql(db1, "select count(*) from pages_visit", "scratch")) == rows
    columns = psql(
        db1,
        "select column_name from information_schema.columns where table_name = 'pages_visit'",
        "scratch",
    )
    assert "note" not in columns.split()
    assert int(psql(db1, "select count(*) from pages_visit where note like 'filled-%'")) >= rows


def test_a_rollback_across_the_migration_restores_the_dump_on_the_db_host(project, hosts):
    web1, db1 = hosts
    live = health(web1, "shop.test")["release"]
    # The migration only added a column (a plain rollback would keep it, its database default
    # put back: test_schema.py); --restore-db puts back the dump taken before it instead.
    run = project.fab("-H", "web1", "rollback", "--site", "shop", "--restore-db")
    assert run.code == 0, run.out + run.err
    restored = [line for line in run.out.splitlines() if "restore shop" in line]
    assert restored and restored[0].startswith("db1") and f"from {live}" in restored[0], restored
    assert health(web1, "shop.test")["release"] < live
    columns = psql(
        db1, "select column_name from information_schema.columns where table_name = 'pages_visit'"
    )
    assert "note" not in columns.split()
    # The restored tables are the site role's again: the app writes (a visit) and reads.
    assert curl(web1, "/", host_header="shop.test").split("\n")[1].split(" ")[1] == "200"
    owner = psql(db1, "select tableowner from pg_tables where tablename = 'pages_visit'")
    assert owner == "shop_app"


def test_db_restore_brings_back_exactly_the_rows_of_before(project, hosts):
    web1, db1 = hosts
    taken = project.fab("db.backup", "--site", "shop", "--json")
    assert taken.code == 0, taken.out + taken.err
    (host,) = taken.report["hosts"]
    assert host["host"] == "db1"  # where the database is, whatever -H says
    backup_id = next(s["detail"] for s in host["steps"] if s["step"] == "backup shop")
    before = psql(db1, "select id, path from pages_visit order by id")
    for _ in range(3):
        curl(web1, "/", host_header="shop.test")
    assert psql(db1, "select id, path from pages_visit order by id") != before
    run = project.fab("db.restore", "--site", "shop", "--from", backup_id, "--yes")
    assert run.code == 0, run.out + run.err
    assert psql(db1, "select id, path from pages_visit order by id") == before
    assert health(web1, "shop.test")["db"] is True


def test_a_failing_pg_dump_stops_the_deploy_before_it_migrates(project, hosts, src):
    web1, db1 = hosts
    live = health(web1, "shop.test")["release"]
    name = add_migration(src, 3, "extra")
    sh(db1, "mv /usr/bin/pg_dump /usr/bin/pg_dump.off")
    try:
        run = project.fab("-H", "web1", "deploy")
    finally:
        sh(db1, "mv /usr/bin/pg_dump.off /usr/bin/pg_dump")
    assert run.code == 1
    failed = [line for line in run.out.splitlines() if "failed  | backup shop" in line]
    assert failed and failed[0].startswith("db1"), run.out
    assert health(web1, "shop.test")["release"] == live
    applied = psql(db1, "select name from django_migrations where app = 'pages'").split()
    assert name.split(".")[1] not in applied


def test_postgresql_stopped_during_migrate_switches_nothing_and_keeps_the_backup(
    project, hosts, src
):
    web1, db1 = hosts
    live = health(web1, "shop.test")["release"]
    name = add_migration(src, 4, "late")
    path = src / "pages/migrations" / f"{name.split('.')[1]}.py"
    # The migration waits before it alters the table: PostgreSQL goes away meanwhile.
    path.write_text(
        path.read_text().replace(
            "    operations = [\n",
            "    operations = [\n        migrations.RunPython(lambda apps, editor: "
            "__import__('time').sleep(8), migrations.RunPython.noop,"
            " hints={'djk': 'expand'}),\n",
        )
    )
    proc = spawn_fab(project.inventory, "-H", "web1", "deploy")
    try:
        wait_for_line(proc, "migrating", timeout=180)
        sh(db1, "systemctl stop postgresql")
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.returncode != 1:
            sh(db1, "systemctl start postgresql")
    assert proc.returncode == 1, out
    start = out.index("| failed  | migrate shop")
    failed = out[start:].split("| skipped")[0]
    assert "the database: PostgreSQL database shop_db on db1 (" in failed, out
    assert "nothing was switched" in failed and len(failed.splitlines()) <= 5, failed
    sh(db1, "systemctl start postgresql")
    assert health(web1, "shop.test")["release"] == live  # no switch
    # The backup taken before the migration is whole: pg_restore reads its table of contents.
    backups = project.fab("db.backups", "--site", "shop", "--json")
    newest = backups.report["hosts"][0]["extra"]["backup_table"]["shop"][-1]
    assert newest["reason"] == "before migrate" and newest["id"] > live
    toc = sh(db1, f"pg_restore -l {newest['file']}")
    assert "TABLE DATA public pages_visit" in toc
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    assert health(web1, "shop.test")["release"] != live
