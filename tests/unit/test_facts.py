"""Fact parsers on recorded output (captured from a Debian 12 test host)."""

from djk.tasks.engine import facts as F

SYSTEMCTL_SHOW = """Id=nginx.service
LoadState=loaded
ActiveState=active
UnitFileState=enabled
MainPID=312

Id=djk-example-web.service
LoadState=not-found
ActiveState=inactive
UnitFileState=
MainPID=0
"""


def test_parse_units_reads_each_block():
    units = F.parse_units(0, SYSTEMCTL_SHOW)
    assert units["nginx.service"].running and units["nginx.service"].main_pid == 312
    web = units["djk-example-web.service"]
    assert (web.load, web.active, web.enabled, web.running) == ("not-found", "inactive", "", False)


def test_parse_stats_kinds():
    sha = "a" * 64
    # Recorded on a Debian 12 test host (one path missing: stat says so on stderr).
    out = (
        "regular file|640|root|djk-x|/srv/djk/x/shared/env\n"
        "directory|751|root|djk-x|/srv/djk/x\n"
        "symbolic link|777|root|root|/srv/djk/x/current -> releases/R1\n"
        "regular empty file|644|root|root|/srv/djk/x/.empty\n"
        "fifo|600|root|root|/srv/djk/x/pipe\n"
        "--\n"
        f"{sha}  /srv/djk/x/shared/env\n"
        f"{'e' * 64}  /srv/djk/x/.empty\n"
    )
    found = F.parse_stats(out)
    assert found["/srv/djk/x/shared/env"] == F.PathState("file", "640", "root", "djk-x", sha)
    assert found["/srv/djk/x"] == F.PathState("dir", "751", "root", "djk-x")
    assert found["/srv/djk/x/current"] == F.PathState("link", target="releases/R1")
    assert found["/srv/djk/x/.empty"].sha256 == "e" * 64
    assert found["/srv/djk/x/pipe"] == F.PathState("other")
    assert "/srv/djk/x/missing" not in found


def test_every_stat_of_a_round_trip_is_one_stat_call_run_by_the_shell(tmp_path):
    """The gather script itself (sh, coreutils) on a real directory: links, files, dirs, a
    file named like a link's arrow, a missing path."""
    import hashlib
    import os
    import subprocess

    (tmp_path / "d").mkdir(mode=0o751)
    (tmp_path / "f").write_text("hello\n")
    os.chmod(tmp_path / "f", 0o640)
    (tmp_path / "empty").write_text("")
    os.symlink("releases/R1", tmp_path / "l")
    os.symlink("d", tmp_path / "dl")
    paths = [str(tmp_path / n) for n in ("d", "f", "empty", "l", "dl", "missing")]
    facts = [F.Stat(p) for p in paths]
    script = F.build_script(facts)
    assert script.count("djk_stats ") == 1
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
    values = F.parse_all(facts, done.stdout)
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256(b"hello\n").hexdigest()
    assert values[F.Stat(paths[0])] == F.PathState("dir", "751", me, group)
    assert values[F.Stat(paths[1])] == F.PathState("file", "640", me, group, digest)
    assert values[F.Stat(paths[2])].sha256 == hashlib.sha256(b"").hexdigest()
    assert values[F.Stat(paths[3])] == F.PathState("link", target="releases/R1")
    assert values[F.Stat(paths[4])] == F.PathState("link", target="d")
    assert values[F.Stat(paths[5])] is None


def test_parse_passwd():
    user = F.parse_passwd(0, "djk-example:x:998:998::/srv/djk/example:/usr/sbin/nologin\n")
    assert (user.uid, user.home, user.shell) == (998, "/srv/djk/example", "/usr/sbin/nologin")
    assert F.parse_passwd(2, "") is None


def test_gathered_output_is_split_back_per_fact():
    facts = [F.Text("/a"), F.User("nobody"), F.PendingHandlers()]
    script = F.build_script(facts)
    assert script.count("djk-fact") == 3
    # What the host printed for that script: /a absent (rc 1), a user, two pending handlers.
    output = (
        f"\x1edjk-fact {F.Text('/a').label}\n\x1fdjk-rc 1\n"
        f"\x1edjk-fact {F.User('nobody').label}\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\x1fdjk-rc 0\n"
        f"\x1edjk-fact {F.PendingHandlers().label}\nreload:nginx.service\nreload:nginx.service\n"
        "daemon-reload\n\x1fdjk-rc 0\n"
    )
    values = F.parse_all(facts, output)
    assert values[F.Text("/a")] is None
    assert values[F.User("nobody")].uid == 65534
    assert values[F.PendingHandlers()] == ["reload:nginx.service", "daemon-reload"]


def test_facts_are_looked_up_by_type_and_arguments():
    assert F.Text("/a") == F.Text("/a") and F.Text("/a") != F.Stat("/a")
    assert F.Text("/a").label != F.Stat("/a").label
    values = F.parse_all([F.Text("/a")], "")
    try:
        values[F.Text("/b")]
    except KeyError as exc:
        assert "Text('/b') was not gathered" in str(exc)
    else:
        raise AssertionError("an undeclared fact must not read as its default")


def test_units_are_read_in_one_systemctl_call():
    facts = [F.Unit("b.service"), F.Unit("a.service"), F.Stat("/x")]
    script = F.build_script(facts)
    assert script.count("systemctl show") == 1
    assert "-- a.service b.service" in script
    label = F.Units(("a.service", "b.service")).label
    output = f"\x1edjk-fact {label}\n{SYSTEMCTL_SHOW.replace('nginx', 'a')}\x1fdjk-rc 0\n"
    values = F.parse_all(facts, output)
    assert values[F.Unit("a.service")].main_pid == 312
    assert values[F.Unit("b.service")] is None  # not loaded: no state


def test_missing_section_falls_back_to_default():
    values = F.parse_all([F.PendingHandlers(), F.Unit("x.service")], "")
    assert values[F.PendingHandlers()] == []
    assert values[F.Unit("x.service")] is None


# Recorded on a Debian 12 host (supervisor 4.2.5): a running slot, the idle one, a worker
# retrying after a crash, the boot program that has done its work, and a name it does not know.
SUPERVISORCTL_STATUS = """\
djk-shop-web-a                   RUNNING   pid 1042, uptime 0:03:11
djk-shop-web-b                   STOPPED   Nov 26 04:18 PM
djk-shop-worker                  BACKOFF   Exited too quickly (process log may have details)
djk-shop-boot                    EXITED    Nov 26 04:15 PM
djk-shop-beat: ERROR (no such process)
"""


def test_supervisor_programs_are_read_in_one_call_beside_systemd_units():
    names = [
        "djk-shop-web-a",
        "djk-shop-web-b",
        "djk-shop-worker",
        "djk-shop-boot",
        "djk-shop-beat",
    ]
    facts = [F.Unit(n) for n in names] + [F.Unit("nginx.service")]
    script = F.build_script(facts)
    assert script.count("supervisorctl status") == 1 and script.count("systemctl show") == 1
    label = F.Programs(tuple(sorted(names))).label
    output = f"\x1edjk-fact {label}\n{SUPERVISORCTL_STATUS}\x1fdjk-rc 3\n"
    values = F.parse_all(facts, output)
    web = values[F.Unit("djk-shop-web-a")]
    assert (web.active, web.main_pid, web.running) == ("active", 1042, True)
    assert values[F.Unit("djk-shop-web-b")].active == "inactive"
    assert values[F.Unit("djk-shop-worker")].active == "activating"  # not running
    assert not values[F.Unit("djk-shop-worker")].running
    assert values[F.Unit("djk-shop-boot")].active == "inactive"
    assert values[F.Unit("djk-shop-beat")] is None  # unknown to supervisord: absent
    assert values[F.Unit("nginx.service")] is None  # its section is missing here
