"""What a release ships (engine/source.py), on real git repositories made in a temp dir."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from djk.tasks.engine.source import Request, SourceError, shipped, snapshot


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.test",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.test",
        "PATH": "/usr/bin:/bin",
        "HOME": str(repo),
    }
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def repo(tmp_path):
    """A repository whose Django project lives in app/ (the source), with what a developer's
    checkout holds beside the code: ignored and untracked files, a venv, node_modules."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(
        root,
        {
            ".gitignore": "node_modules/\n.venv/\nmedia/\ndb.sqlite3\nassets/dist/\n",
            "README.md": "outside the source\n",
            "app/manage.py": "print('v1')\n",
            "app/shop/settings.py": "X = 1\n",
            "app/requirements.txt": "Django==5.2\n",
            "app/.djkignore": "# team's own\ndocs\n*.log\n",
            "app/docs/notes.md": "not shipped\n",
            "app/assets/src.js": "console.log(1)\n",
        },
    )
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "v1")
    write(
        root,
        {
            "app/node_modules/x/index.js": "junk\n",
            "app/.venv/bin/python": "junk\n",
            "app/media/upload.png": "junk\n",
            "app/db.sqlite3": "junk\n",
            "app/untracked.py": "not committed\n",
            "app/debug.log": "log\n",
        },
    )
    return root


def test_tracked_files_at_head_without_what_never_ships(repo):
    snap = snapshot(Request(repo / "app"))
    assert snap.paths() == [
        ".djkignore",
        "assets/src.js",
        "manage.py",
        "requirements.txt",
        "shop/settings.py",
    ]
    assert snap.revision == git(repo, "rev-parse", "--short=8", "HEAD").strip()


def test_uncommitted_changes_are_refused_unless_allowed(repo):
    (repo / "app/manage.py").write_text("print('v2, not committed')\n")
    with pytest.raises(SourceError, match="uncommitted changes .*manage.py.*--allow-dirty"):
        snapshot(Request(repo / "app"))
    dirty = snapshot(Request(repo / "app", allow_dirty=True))
    assert dirty.revision.endswith("-dirty")
    files = {f.path: f.data for f in dirty.files}
    assert files["manage.py"] == b"print('v2, not committed')\n"
    assert "untracked.py" not in files  # untracked files stay out even then


def test_a_change_outside_the_source_is_not_dirt(repo):
    (repo / "README.md").write_text("edited\n")
    assert snapshot(Request(repo / "app")).paths()


def test_ref_ships_that_commit_not_the_working_tree(repo):
    first = git(repo, "rev-parse", "HEAD").strip()
    (repo / "app/manage.py").write_text("print('v2')\n")
    git(repo, "commit", "-q", "-am", "v2")
    old = snapshot(Request(repo / "app", ref=first))
    assert {f.path: f.data for f in old.files}["manage.py"] == b"print('v1')\n"
    new = snapshot(Request(repo / "app"))
    assert new.tree != old.tree
    with pytest.raises(SourceError, match="--ref nope .*is not a commit"):
        snapshot(Request(repo / "app", ref="nope"))


def test_the_build_runs_in_a_clean_copy_and_its_outputs_ship(repo):
    build = "mkdir -p assets/dist && cat assets/src.js > assets/dist/app.js && ls > listing.txt"
    snap = snapshot(Request(repo / "app", build=build, outputs=("assets/dist",)))
    files = {f.path: f.data for f in snap.files}
    assert files["assets/dist/app.js"] == b"console.log(1)\n"
    assert "listing.txt" not in files  # made, but not listed as an output
    assert not (repo / "app/assets/dist").exists()  # the working tree is untouched
    with pytest.raises(SourceError, match=r"build failed \(exit 3\): boom"):
        snapshot(Request(repo / "app", build="echo boom >&2; exit 3"))
    with pytest.raises(SourceError, match="build_outputs: dist was not made"):
        snapshot(Request(repo / "app", build="true", outputs=("dist",)))


def test_without_git_the_directory_minus_what_never_ships(tmp_path):
    write(
        tmp_path,
        {
            "manage.py": "x\n",
            "node_modules/a.js": "x\n",
            "media/u.png": "x\n",
            "pkg/__pycache__/m.pyc": "x\n",
            "local.env": "SECRET=1\n",
        },
    )
    snap = snapshot(Request(tmp_path))
    assert snap.paths() == ["manage.py"]
    assert snap.revision == snap.tree[:8]
    with pytest.raises(SourceError, match="not in a git repository"):
        snapshot(Request(tmp_path, ref="HEAD"))


def test_the_archive_holds_exactly_the_snapshot_with_modes(repo):
    (repo / "app/manage.py").chmod(0o755)
    git(repo, "commit", "-q", "-am", "exec")
    snap = snapshot(Request(repo / "app"))
    with tarfile.open(fileobj=io.BytesIO(snap.archive())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == snap.paths()
    assert members["manage.py"].mode == 0o755 and members["shop/settings.py"].mode == 0o644
    assert snap.archive() == snapshot(Request(repo / "app")).archive()  # deterministic


@pytest.mark.parametrize(
    "path, ok",
    [
        ("a/node_modules/b.js", False),
        ("media/x", False),
        ("src/media.py", True),
        ("x/db.sqlite3", False),
        ("docs/a.md", False),
        ("app.log", False),
        ("logs/ok.txt", True),
    ],
)
def test_shipped_rules(path, ok):
    assert shipped(path, ("docs", "*.log")) is ok


def test_the_deploys_own_files_in_the_source_are_neither_shipped_nor_dirt(repo):
    from djk.tasks.release import deploy_files

    app = repo / "app"
    write(app, {"hosts.toml": "[hosts]\n", "fabfile.py": "x\n", "secrets/app.env": "K=v\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the team commits its inventory")
    (app / "hosts.toml").write_text("[hosts]\n# an edit, not committed\n")
    skip = deploy_files(app, app / "hosts.toml", app / "secrets/app.env")
    assert {"fabfile.py", "hosts.toml", "secrets"} <= set(skip)
    snap = snapshot(Request(app, skip=skip))  # no "uncommitted changes"
    assert not {"hosts.toml", "fabfile.py", "secrets/app.env"} & set(snap.paths())
    with pytest.raises(SourceError, match="uncommitted"):  # without skip, it is dirt
        snapshot(Request(app))


def test_a_deploy_builds_only_the_sites_its_target_hosts_run(repo, tmp_path):
    from invoke import Exit

    from djk.tasks.deploy import new_builds
    from djk.tasks.engine.inventory import parse

    (repo / "app/manage.py").write_text("print('not committed')\n")  # the blog's tree: dirty
    shop = tmp_path / "shop"
    write(shop, {"manage.py": "x\n", "requirements.txt": "Django==5.2.19\n"})
    (tmp_path / "s.env").write_text("DJANGO_SECRET_KEY=k\n")
    site = {"asgi": "p.asgi:application", "settings": "p.settings", "env_file": "s.env"}
    data = {
        "hosts": {"web1": {"address": "10.0.0.1"}, "web2": {"address": "10.0.0.2"}},
        "sites": {
            "shop": {
                **site,
                "domains": ["shop.test"],
                "hosts": ["web1"],
                "source": str(shop),
                "port": 8001,
            },
            "blog": {
                **site,
                "domains": ["blog.test"],
                "hosts": ["web2"],
                "source": str(repo / "app"),
                "port": 8002,
            },
        },
    }
    inventory = parse(data, tmp_path / "hosts.toml")
    builds = new_builds(inventory, [inventory.hosts["web1"]], 0.0)
    assert list(builds) == ["shop"]  # the blog's dirty tree is not this deploy's business
    with pytest.raises(Exit, match=r"site blog \(sites.blog.source\): .*uncommitted changes"):
        new_builds(inventory, [inventory.hosts["web2"]], 0.0)
