"""Fact parsers on recorded output (captured from a Debian 12 test host)."""

from tasks.engine import facts as F

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


def test_parse_stat_kinds():
    sha = "a" * 64
    assert F.parse_stat(0, f"file|640|root|djk-x|{sha}\n") == F.PathState(
        "file", "640", "root", "djk-x", sha
    )
    assert F.parse_stat(0, "dir|751|root|djk-x\n") == F.PathState("dir", "751", "root", "djk-x")
    assert F.parse_stat(0, "link|venvs/abc\n") == F.PathState("link", target="venvs/abc")
    assert F.parse_stat(0, "absent\n") is None
    assert F.parse_stat(0, "other\n") == F.PathState("other")


def test_parse_passwd():
    user = F.parse_passwd(0, "djk-example:x:998:998::/srv/djk/example:/usr/sbin/nologin\n")
    assert (user.uid, user.home, user.shell) == (998, "/srv/djk/example", "/usr/sbin/nologin")
    assert F.parse_passwd(2, "") is None


def test_gathered_output_is_split_back_per_fact():
    facts = [F.file_text("/a"), F.user("nobody"), F.pending_handlers()]
    script = F.build_script(facts)
    assert script.count("djk-fact") == 3
    # What the host printed for that script: /a absent (rc 1), a user, two pending handlers.
    output = (
        "\x1edjk-fact text:/a\n\x1fdjk-rc 1\n"
        "\x1edjk-fact user:nobody\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        "\x1fdjk-rc 0\n"
        "\x1edjk-fact pending-handlers\nreload:nginx.service\nreload:nginx.service\n"
        "daemon-reload\n\x1fdjk-rc 0\n"
    )
    values = F.parse_all(facts, output)
    assert values["text:/a"] is None
    assert values["user:nobody"].uid == 65534
    assert values["pending-handlers"] == ["reload:nginx.service", "daemon-reload"]


def test_missing_section_falls_back_to_default():
    values = F.parse_all([F.pending_handlers(), F.units(["x.service"])], "")
    assert values["pending-handlers"] == []
    assert values["units:x.service"] == {}
