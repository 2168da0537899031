"""Testbed tests: pure helpers (fast) and a real two-host boot (e2e, root only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import Testbed, TestHost, _sys, image
from testbed._sys import _unescape_mount, cgroup_roots, cmdline, is_tmpfs, mounts_under
from testbed.core import RAM_DISK_NEED, RAM_DISK_ROOT
from testbed.net import assign_address, bridge_name, render_networkd

# --- pure helpers -------------------------------------------------------------


def test_web_hosts_get_fixed_addresses() -> None:
    assert assign_address(0, "web1", {}) == "10.213.0.11"
    assert assign_address(9, "web0", {}) == "10.213.9.10"
    assert assign_address(9, "web39", {}) == "10.213.9.49"
    # Fixed even if something else was recorded.
    assert assign_address(3, "web2", {"web2": "10.213.3.77"}) == "10.213.3.12"


def test_other_hosts_get_next_free_from_50() -> None:
    assert assign_address(1, "db", {}) == "10.213.1.50"
    taken = {"db": "10.213.1.50", "web1": "10.213.1.11"}
    assert assign_address(1, "cache", taken) == "10.213.1.51"
    # A recorded host keeps its address (restart_fresh relies on this).
    assert assign_address(1, "db", taken) == "10.213.1.50"
    # web40+ would collide with the dynamic range, so it is dynamic itself.
    assert assign_address(1, "web40", taken) == "10.213.1.51"


def test_address_space_is_bounded() -> None:
    taken = {f"h{i}": f"10.213.2.{i}" for i in range(50, 255)}
    with pytest.raises(RuntimeError, match="no free address"):
        assign_address(2, "one-more", taken)
    with pytest.raises(RuntimeError):
        assign_address(256, "db", {})


def test_bridge_name() -> None:
    assert bridge_name(0) == "djkbr0"
    assert bridge_name(9) == "djkbr9"


def test_recipe_hash_is_stable() -> None:
    rec = image.recipe()
    assert image.recipe_hash() == image.recipe_hash(rec) == image.recipe_hash(image.recipe())
    # Key order must not matter (json is dumped with sorted keys).
    assert image.recipe_hash(dict(reversed(list(rec.items())))) == image.recipe_hash(rec)
    assert len(image.recipe_hash()) == 12
    assert image.image_dir(Path("/x")) == Path("/x") / f"djk-bookworm-{image.recipe_hash()}"


def test_recipe_hash_changes_with_recipe() -> None:
    rec = image.recipe()
    base = image.recipe_hash(rec)
    assert image.recipe_hash({**rec, "packages": [*rec["packages"], "git"]}) != base  # type: ignore[list-item]
    assert image.recipe_hash({**rec, "customize_version": -1}) != base
    assert image.recipe_hash({**rec, "customize_script": "true"}) != base


def test_recipe_ignores_package_order() -> None:
    # Reordering PACKAGES in the source must not trigger a rebuild.
    assert image.recipe()["packages"] == sorted(image.PACKAGES)


def test_render_networkd() -> None:
    text = render_networkd("10.213.4.11")
    assert "[Match]\nName=host0\n" in text
    assert "Address=10.213.4.11/24\n" in text
    # No gateway and no DHCP: hosts must not get a route to the outside.
    assert "Gateway" not in text
    assert "DHCP" not in text


def test_ssh_argv_accepts_the_hosts_own_key_only() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhostkeyhostkeyhostkeyhostkeyhostkeyhostkey"
    h = TestHost(name="web1", address="10.213.0.11", key_path=Path("/k"), host_key=key)
    argv = h.ssh_argv("uptime")
    assert argv[0] == "ssh"
    assert argv[-2:] == ["deploy@10.213.0.11", "uptime"]
    for opt in (
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        f"KnownHostsCommand=/bin/echo 10.213.0.11 {key}",
    ):
        assert opt in argv
    assert argv[argv.index("-i") + 1] == "/k"
    assert h.known_hosts_line() == f"10.213.0.11 {key}"


def test_mountinfo_unescape() -> None:
    assert _unescape_mount(r"/a\040b") == "/a b"
    assert _unescape_mount("/plain") == "/plain"


def test_bad_names_rejected() -> None:
    with pytest.raises(RuntimeError):
        Testbed(name="Bad Name")
    tb = Testbed(name="x", subnet=1)
    with pytest.raises(RuntimeError):
        tb._check_hosts(["web_1"])
    with pytest.raises(TypeError):
        tb._check_hosts("web1")


def test_host_disks_stay_on_disk_unless_asked_and_the_memory_is_there(tmp_path, monkeypatch):
    monkeypatch.delenv("DJK_TESTBED_DISK", raising=False)
    assert _sys.ram_disk(tmp_path / "ram", 0) is None
    monkeypatch.setenv("DJK_TESTBED_DISK", "ram")
    monkeypatch.setattr(_sys, "mem_available", lambda: 1 << 30)
    assert _sys.ram_disk(tmp_path / "ram", 8 << 30) is None
    assert not (tmp_path / "ram").exists()  # nothing mounted or made


# --- e2e: real hosts --------------------------------------------------------

NAME, SUBNET = "tbtest", 9


def _nspawn_pids(tb: Testbed) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = cmdline(int(entry.name))  # empty for zombies, which are gone anyway
            if (
                argv
                and "systemd-nspawn" in argv[0]
                and any(a.startswith(f"--machine={tb.name}-") for a in argv)
            ):
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def booted() -> Iterator[tuple[Testbed, list[TestHost]]]:
    if os.geteuid() != 0:
        pytest.skip("testbed needs root")
    tb = Testbed(name=NAME, subnet=SUBNET)
    try:
        hosts = tb.up(["web1", "web2"])
        yield tb, hosts
    finally:
        tb.down()


@pytest.mark.e2e
def test_hosts_are_real_and_distinct(booted: tuple[Testbed, list[TestHost]]) -> None:
    tb, (web1, web2) = booted
    assert (web1.address, web2.address) == ("10.213.9.11", "10.213.9.12")
    names = set()
    for h in (web1, web2):
        assert h.ssh("whoami").stdout.strip() == "deploy"
        h.ssh("sudo -n true")
        assert h.ssh("ps -p 1 -o comm=").stdout.strip() == "systemd"
        assert h.ssh("systemctl is-active ssh").stdout.strip() == "active"
        assert h.ssh("dpkg-query -W -f='${Status}' nginx").stdout == "install ok installed"
        hostname = h.ssh("hostname").stdout.strip()
        assert hostname == h.name
        names.add(hostname)
        assert f"inet {h.address}/24" in h.ssh("ip -4 -o addr show dev host0").stdout
    assert names == {"web1", "web2"}
    # Their disks in the testbed's own tmpfs when asked for and the machine has the memory.
    disk = Path(tb._read_state("web1").disk)
    in_ram = os.environ.get("DJK_TESTBED_DISK") == "ram" and _sys.mem_available() >= RAM_DISK_NEED
    assert disk.is_relative_to(RAM_DISK_ROOT) == in_ram
    assert not in_ram or is_tmpfs(RAM_DISK_ROOT)
    assert {h.name for h in tb.running()} == {"web1", "web2"}
    # Each its own host key, the one it shows (ssh checked it: StrictHostKeyChecking=yes).
    assert web1.host_key.startswith("ssh-ed25519 ") and web1.host_key != web2.host_key
    shown = web1.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
    assert " ".join(shown) == web1.host_key


@pytest.mark.e2e
def test_restart_fresh_discards_disk(booted: tuple[Testbed, list[TestHost]]) -> None:
    tb, (web1, _) = booted
    web1.ssh("touch /home/deploy/marker")
    again = tb.restart_fresh("web1")
    assert again.address == web1.address
    assert again.ssh("test -e /home/deploy/marker", check=False).returncode == 1


@pytest.mark.e2e
def test_down_leaves_nothing(booted: tuple[Testbed, list[TestHost]]) -> None:
    tb, _ = booted
    tb.down()
    assert tb.running() == []
    assert _nspawn_pids(tb) == []
    assert mounts_under(tb.state_dir) == []
    assert not Path("/sys/class/net", tb.bridge).exists()
    assert not tb.state_dir.exists()
    assert not (RAM_DISK_ROOT / tb.name).exists()
    for root in cgroup_roots():
        assert not (root / tb.cgroup_prefix).exists()


def test_image_build_progress_is_a_few_lines() -> None:
    """debootstrap's hundreds of per-package lines (retrieve and validate alternate) become a
    counter line every few seconds, not one line each."""
    from testbed.image import BuildProgress

    now = [0.0]
    progress = BuildProgress(clock=lambda: now[0], every=5.0)
    shown = progress.feed("I: Retrieving InRelease \n")
    for i in range(470):
        now[0] += 0.05  # 470 lines in 23.5 s
        verb = "Retrieving" if i % 2 else "Validating"
        shown += progress.feed(f"I: {verb} libfoo{i} 1.0-1\n")
    shown += progress.feed("I: Chosen extractor for .deb packages: dpkg-deb\n")
    shown += progress.flush()
    counters = [s for s in shown if "steps so far" in s]
    assert 3 <= len(counters) <= 6, shown
    assert counters[-1].endswith("(471 steps so far)")
    assert shown[-1] == "image: Chosen extractor for .deb packages: dpkg-deb"
