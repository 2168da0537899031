"""Pinned host keys on a real host: a host missing from known_hosts, and one whose key changed
(regenerated, as a reinstall — or a machine in the middle — looks), are refused during the
handshake, before any login: sshd accepts no key for the deploy user meanwhile. `fab
hosts.trust` shows the fingerprints, needs --yes without a terminal, records the key; then the
run goes through."""

from __future__ import annotations

import base64
import subprocess

import pytest

from .kit import Project, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(fresh_host, tmp_path_factory, src):
    project = Project(tmp_path_factory.mktemp("project"), [fresh_host])
    project.site["source"] = str(src)
    project.write()
    return project


def cursor(host) -> str:
    """Where sshd's journal is now."""
    out = sh(host, "journalctl -u ssh -n 0 --show-cursor --no-pager")
    return out.strip().rsplit("cursor: ", 1)[-1]


def logins_since(host, mark: str) -> int:
    """Logins sshd accepted after `mark`, this reading's own included (it waits a second, so
    its own line is surely written)."""
    out = sh(
        host,
        f"sleep 1; journalctl -u ssh --after-cursor='{mark}' --no-pager -o cat "
        "| grep -c 'Accepted publickey' || true",
    )
    return int(out.strip() or 0)


def fingerprint(host) -> str:
    return sh(host, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").split()[1]


def test_a_known_host_is_reached(project, fresh_host):
    mark = cursor(fresh_host)
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 0, run.out + run.err
    assert logins_since(fresh_host, mark) == 2  # the run's one connection, and the reading


def test_an_unknown_host_is_refused_before_any_login(project, fresh_host):
    (project.dir / "known_hosts").write_text("")
    mark = cursor(fresh_host)
    run = project.fab("-H", "web1", "deploy")
    assert run.code == 1
    assert logins_since(fresh_host, mark) == 1  # the reading's own: the run never logged in
    line = [ln for ln in run.out.splitlines() if "failed" in ln][0]
    assert f"host web1 ({fresh_host.address}) is not trusted: it shows key " in line
    assert fingerprint(fresh_host) in line and "fab hosts.trust -H web1" in line
    project.write()  # trusted again


def test_a_changed_key_is_refused_then_trusted_again(project, fresh_host, tmp_path):
    old, old_line = fingerprint(fresh_host), fresh_host.host_key
    # A new key, as after a reinstall: made here, so the test's own ssh knows it explicitly.
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(tmp_path / "key")],
        check=True,
    )
    private = base64.b64encode((tmp_path / "key").read_bytes()).decode()
    public = (tmp_path / "key.pub").read_text().strip()
    sh(
        fresh_host,
        "mkdir -p /root/saved && cp -a /etc/ssh/ssh_host_ed25519_key* /root/saved/ && "
        f"echo {private} | base64 -d > /etc/ssh/ssh_host_ed25519_key && "
        f"echo '{public}' > /etc/ssh/ssh_host_ed25519_key.pub && "
        "systemctl restart ssh",
    )
    fresh_host.host_key = " ".join(public.split()[:2])
    try:
        new = fingerprint(fresh_host)
        assert new != old
        mark = cursor(fresh_host)
        run = project.fab("-H", "web1", "deploy")
        assert run.code == 1
        assert logins_since(fresh_host, mark) == 1  # the reading's own
        line = [ln for ln in run.out.splitlines() if "failed" in ln][0]
        assert f"shows a different key: expected {old}, seen {new}" in line, line
        # hosts.trust: no terminal, no --yes: nothing recorded.
        refused = project.fab("-H", "web1", "hosts.trust")
        assert refused.code == 2 and "needs --yes" in refused.err
        assert f"{new}; recorded: {old} — it CHANGED" in refused.out
        trusted = project.fab("-H", "web1", "hosts.trust", "--yes")
        assert trusted.code == 0 and "recorded in" in trusted.out, trusted.out + trusted.err
        again = project.fab("-H", "web1", "hosts.trust")
        assert again.code == 0 and f"{new}: trusted" in again.out
        run = project.fab("-H", "web1", "deploy", "--json")
        assert run.code == 0 and run.host("web1")["changed"] == 0
    finally:
        sh(fresh_host, "cp -a /root/saved/ssh_host_ed25519_key* /etc/ssh/ && systemctl restart ssh")
        fresh_host.host_key = old_line
        project.write()
