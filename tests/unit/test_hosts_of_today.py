"""Debian 12 and 13 hosts: the host profile, wheel targets, Debian's package closure and the
steps that ship wheels and uv — pure logic on recorded output, no network, no host."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from djk.tasks.engine import debian as D
from djk.tasks.engine import hostinfo, python_env, wheels
from djk.tasks.engine.facts import Facts, Text
from djk.tasks.engine.steps import Context

BOOKWORM_PROBE = """os=debian|12|bookworm
arch=amd64
machine=x86_64
glibc=glibc 2.36
python=Python 3.11.2
"""
TRIXIE_PROBE = """os=debian|13|trixie
arch=amd64
machine=x86_64
glibc=glibc 2.41
python=Python 3.13.5
"""


def test_probe_of_debian_12_and_13():
    old, new = hostinfo.parse_probe(BOOKWORM_PROBE), hostinfo.parse_probe(TRIXIE_PROBE)
    assert old == hostinfo.DEFAULT
    assert (new.codename, new.python, new.python_minor, new.glibc) == (
        "trixie",
        "3.13.5",
        "3.13",
        "2.41",
    )
    assert not old.nginx_http2_on and new.nginx_http2_on
    assert old.problem() == new.problem() == ""


@pytest.mark.parametrize(
    "probe, problem",
    [
        ("os=ubuntu|24.04|noble\nmachine=x86_64\npython=Python 3.12.3\n", "runs ubuntu 24.04"),
        ("os=debian|11|bullseye\nmachine=x86_64\npython=Python 3.9.2\n", "runs debian 11"),
        ("os=debian|12|bookworm\nmachine=riscv64\npython=Python 3.11.2\n", "is riscv64"),
        ("os=debian|12|bookworm\nmachine=x86_64\npython=\n", "has no python3"),
        ("", "runs an unknown system"),
        ("os=debian|13|trixie\nmachine=x86_64\npython=Python 3.13.5\n", "C library's version"),
    ],
)
def test_unsupported_hosts_are_named(probe, problem):
    assert problem in hostinfo.parse_probe(probe).problem()


def test_profiles_are_remembered_per_login(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    info = hostinfo.parse_probe(TRIXIE_PROBE)
    assert hostinfo.cached("deploy@10.0.0.1:22") is None
    hostinfo.remember("deploy@10.0.0.1:22", info)
    assert hostinfo.cached("deploy@10.0.0.1:22") == info
    assert hostinfo.cached("root@10.0.0.1:22") is None


# -- wheel targets -------------------------------------------------------------------------------


def test_targets_follow_the_host():
    old = wheels.Target.of(hostinfo.parse_probe(BOOKWORM_PROBE))
    new = wheels.Target.of(hostinfo.parse_probe(TRIXIE_PROBE))
    assert (old.abi, old.uv_platform) == ("cp311", "x86_64-manylinux_2_36")
    # uv knows manylinux levels up to 2_40: glibc 2.41 resolves as the highest it knows
    assert (new.abi, new.uv_platform) == ("cp313", "x86_64-manylinux_2_40")
    assert new.platforms()[0] == "manylinux_2_41_x86_64"
    assert old.key != new.key
    assert wheels.key_of(b"Django\n", old) != wheels.key_of(b"Django\n", new)


def test_the_best_wheel_for_the_target():
    target = wheels.Target("3.13.5", "x86_64", "2.41")
    files = [
        "websockets-17.4-cp311-cp311-manylinux_2_28_x86_64.whl",
        "websockets-17.4-cp313-cp313-manylinux_2_28_x86_64.whl",
        "websockets-17.4-cp313-cp313-musllinux_1_2_x86_64.whl",
        "websockets-17.4-py3-none-any.whl",
    ]
    assert wheels.best_wheel(files, target) == files[1]
    assert wheels.best_wheel(files[:1], target) is None
    # a glibc too new for the host is no match
    assert wheels.best_wheel(["x-1-cp311-cp311-manylinux_2_39_x86_64.whl"], wheels.Target()) is None


UV_PYTHON = """  x No solution found when resolving dependencies:
  cause: Because the requested Python version (>=3.11.2) does not satisfy Python>=3.12 and
         django>=6.1 depends on Python>=3.12, we can conclude that django>=6.1 cannot be used.
         And because you require django>=6.1, we can conclude that your requirements are
         unsatisfiable.
"""
UV_MISSING = (
    "error: No solution found when resolving dependencies:\n  Because nopkg-xyz was not found "
    "in the package registry and you require nopkg-xyz, we can conclude..."
)


def test_resolver_errors_are_one_line_naming_the_package():
    error = wheels.compile_error(UV_PYTHON, wheels.Target())
    assert str(error) == "django>=6.1 needs Python>=3.12 (the host has 3.11.2)"
    assert error.package == "django"
    missing = wheels.compile_error(UV_MISSING, wheels.Target())
    assert str(missing) == "nopkg-xyz is not in the package index"
    other = wheels.compile_error("error: something odd\nmore\n", wheels.Target())
    assert "\n" not in str(other) and "something odd" in str(other)


# -- Debian's archive ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, order",
    [
        ("1.0", "1.0", 0),
        ("1.0-1", "1.0-2", -1),
        ("1:0.9", "2.0", 1),
        ("1.0~rc1", "1.0", -1),
        ("2.36-9+deb12u4", "2.36-9+deb12u10", -1),
        ("1.22.1-9+deb12u1", "1.22.1-9", 1),
        ("3.11.2-1+b1", "3.11.2-1", 1),
        ("1.0a", "1.0", 1),
        ("1.0", "1.0+", -1),
    ],
)
def test_debian_version_order(a, b, order):
    assert D.compare(a, b) == order
    assert D.compare(b, a) == -order


def test_relations_drop_architecture_qualifiers():
    got = D.parse_relations(
        "libc6 (>= 2.34), python3:any, awk | mawk [amd64], debconf (>= 0.5) | debconf-2.0"
    )
    assert [[str(r) for r in alts] for alts in got] == [
        ["libc6 (>= 2.34)"],
        ["python3"],
        ["awk", "mawk"],
        ["debconf (>= 0.5)", "debconf-2.0"],
    ]


INDEX = """Package: nginx
Version: 1.26.3-3
Depends: nginx-common (= 1.26.3-3), libc6 (>= 2.38), libssl3t64 (>= 3.0.0)
Filename: pool/main/n/nginx/nginx_1.26.3-3_amd64.deb
SHA256: aa
Size: 600000

Package: nginx-common
Version: 1.26.3-3
Depends: debconf (>= 0.5) | debconf-2.0, lsb-base
Filename: pool/main/n/nginx/nginx-common_1.26.3-3_all.deb
SHA256: bb
Size: 100000

Package: libc6
Version: 2.41-12
Filename: pool/main/g/glibc/libc6_2.41-12_amd64.deb
SHA256: cc
Size: 3000000

Package: libssl3t64
Version: 3.5.1-1
Depends: libc6 (>= 2.34)
Filename: pool/main/o/openssl/libssl3t64_3.5.1-1_amd64.deb
SHA256: dd
Size: 2000000

Package: sysvinit-utils
Version: 3.14-4
Provides: lsb-base
Filename: pool/main/s/sysvinit/sysvinit-utils_3.14-4_amd64.deb
SHA256: ee
Size: 30000

Package: redis-server
Version: 5:8.0.2-3
Depends: redis-tools (= 5:8.0.2-3)
Filename: pool/main/r/redis/redis-server_8.0.2-3_amd64.deb
SHA256: ff
Size: 90000

Package: nginx-common
Version: 1.26.0-1
Filename: pool/main/n/nginx/nginx-common_1.26.0-1_all.deb
SHA256: 00
Size: 1
"""


def test_closure_keeps_what_the_host_has_and_upgrades_what_is_too_old():
    index = D.parse_packages(INDEX)
    assert index["nginx-common"].version == "1.26.3-3"  # the newest of two stanzas
    host = D.parse_status(
        "libc6\t2.36-9\tinstall ok installed\t\n"
        "debconf\t1.5.91\tinstall ok installed\tdebconf-2.0\n"
        "sysvinit-utils\t3.14-4\tinstall ok installed\tlsb-base\n"
        "gone\t1\tdeinstall ok config-files\t\n"
    )
    assert "gone" not in host
    found = D.closure(["nginx"], host, index, "Debian trixie/amd64")
    # libc6 2.36 is older than nginx needs: upgraded; lsb-base is provided by what is there
    assert [p.name for p in found.packages] == ["libc6", "libssl3t64", "nginx", "nginx-common"]
    assert found.size == 5_700_000


def test_closure_names_what_cannot_be_had():
    index = D.parse_packages(INDEX)
    with pytest.raises(
        D.PackageError, match="package postgresql-17 is not in Debian's archive for X"
    ):
        D.closure(["postgresql-17"], {}, index, "X")
    with pytest.raises(
        D.PackageError, match=r"redis-tools \(= 5:8.0.2-3\) \(needed by redis-server\)"
    ):
        D.closure(["redis-server"], {}, index, "X")


def test_closure_of_installed_packages_is_empty():
    index = D.parse_packages(INDEX)
    host = {"nginx": D.Installed("1.26.3-3")}
    assert D.closure(["nginx"], host, index, "X").packages == []


# -- the host's wheels and uv --------------------------------------------------------------------


def _ctx(values: dict) -> Context:
    return Context(Facts(values), frozenset(), False)


def test_only_missing_wheels_are_sent_once_for_all_sites(tmp_path, monkeypatch):
    monkeypatch.setattr(wheels, "store", lambda: tmp_path)
    for name in ("a-1-py3-none-any.whl", "b-2-py3-none-any.whl", "c-3-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"x" * 10)
    one = wheels.Wheelhouse(
        wheels.Target(), ("a==1", "b==2"), ("a-1-py3-none-any.whl", "b-2-py3-none-any.whl")
    )
    two = wheels.Wheelhouse(
        wheels.Target(), ("a==1", "c==3"), ("a-1-py3-none-any.whl", "c-3-py3-none-any.whl")
    )
    step = python_env.HostWheels([one, two])
    plan = step.plan(_ctx({python_env.WheelFiles(): ["a-1-py3-none-any.whl"]}))
    (action,) = plan.actions
    assert action.summary.startswith("send 2 of 3")
    assert action.kind == "wheels"
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(action.payload())) as tar:
        assert sorted(tar.getnames()) == ["b-2-py3-none-any.whl", "c-3-py3-none-any.whl"]
    have = sorted(step.wanted)
    assert step.plan(_ctx({python_env.WheelFiles(): have})).actions == []


def test_venv_installs_the_pins_offline_with_uv():
    house = wheels.Wheelhouse(
        wheels.Target(), ("django==5.2.19",), ("Django-5.2.19-py3-none-any.whl",)
    )
    step = python_env.Venv(house, "k1")
    marker = Text("/srv/djk/.kit/venvs/k1/.djk-complete")
    assert step.plan(_ctx({marker: "k1"})).actions == []
    (action,) = step.plan(_ctx({marker: None})).actions
    assert action.payload() == b"django==5.2.19\n"
    for text in (
        "--offline --no-index",
        "--no-deps",
        "--link-mode hardlink",
        "venv --quiet --python /usr/bin/python3",
    ):
        assert text in action.script
    assert "pip install" in action.script and "/bin/pip " not in action.script
    # bytecode is compiled once, by root, niced, in a transient unit after the venv is complete,
    # what a Django process imports first before the rest
    assert "systemd-run" in action.script and "--nice=10" in action.script
    assert "/srv/djk/.kit/venvs/k1 django/__init__.py django/utils" in action.script


def test_the_background_compile_covers_every_module_of_the_venv(tmp_path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    sources = [
        "django/__init__.py",
        "django/core/management/base.py",
        "zzz/deep/mod.py",
        "aaa.py",
        "gunicorn/app/base.py",
    ]
    for name in sources:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("X = 1\n")
    (site / "broken.py").write_text("def (:\n")  # a file that is no Python: skipped
    subprocess.run(
        [sys.executable, "-c", python_env.COMPILE, str(tmp_path), *python_env.FIRST_COMPILED],
        check=True,
    )
    for name in sources:
        assert importlib.util.cache_from_source(str(site / name)) in {
            str(p) for p in site.rglob("*.pyc")
        }, name


def test_sites_with_one_dependency_set_share_one_venv():
    house = wheels.Wheelhouse(
        wheels.Target(), ("django==5.2.19",), ("Django-5.2.19-py3-none-any.whl",)
    )
    other = wheels.Wheelhouse(
        wheels.Target(), ("django==6.1.3",), ("Django-6.1.3-py3-none-any.whl",)
    )
    steps = python_env.host_steps([(house, "k1"), (house, "k1"), (other, "k2")], wheels.Target())
    venvs = [s for s in steps if isinstance(s, python_env.Venv)]
    assert [v.dest for v in venvs] == ["/srv/djk/.kit/venvs/k1", "/srv/djk/.kit/venvs/k2"]
    assert len({s.id for s in steps}) == len(steps)


def test_uv_goes_once_per_host_and_version(monkeypatch, tmp_path):
    wheel = tmp_path / "uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl"
    wheel.write_bytes(b"zip")
    fake = wheels.Wheelhouse(wheels.Target(), ("uv==0.13.9",), (wheel.name,))
    monkeypatch.setattr(python_env, "resolve", lambda req, target: fake)
    monkeypatch.setattr(wheels, "store", lambda: tmp_path)
    step = python_env.UvTool(wheels.Target())
    (present,) = step.facts(False)
    assert step.plan(_ctx({present: ["present"]})).actions == []
    (action,) = step.plan(_ctx({present: []})).actions
    assert action.kind == "uv" and action.payload() == b"zip"
    # Several hosts uploading it at once share one copy of its bytes (the run's peak memory).
    second = python_env.UvTool(wheels.Target())
    (again,) = second.plan(_ctx({present: []})).actions
    assert again.payload() is action.payload()
