"""Two versions of the kit, A and B, on the same test hosts in one sitting, interleaved: per
round and size, fresh hosts, then a first deploy, no-ops (their median) and a code-only deploy
with each version in turn (the order alternating by round). Prints each scenario's median, B
against A, and the raw figures.

Both versions run from their bytecode, as pip installs a package: Invoke turns the writing of
bytecode off for the modules a fabfile imports (`fab --write-pyc`), so a checkout run by `fab`
would compile every module of the kit on every run — about 0.1 s here — and a version with more
modules would pay for its sources, not its work.

    bench/ab.py --a 44f4264 --reps 5 --sizes 1x1,1x3,8x1

A version is a git revision of this repository (checked out under /tmp) or a directory holding
a checkout; B is this checkout by default. Runs as root (it boots test hosts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.deploy_bench import SIZES, measure, settle, write_inventory  # noqa: E402
from testbed import Testbed  # noqa: E402

SCENARIOS = ("first", "noop", "code")


def checkout(rev: str, work: Path) -> Path:
    """A checkout of `rev` (a directory as it is, or a git revision of this repository)."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    target = work / f"kit-{rev}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-f", "-q", str(target), rev], check=True
    )
    return target


def compiled(kit: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    compileall = [sys.executable, "-m", "compileall", "-q", str(kit / "tasks")]
    subprocess.run(compileall, check=True, env=env, stdout=subprocess.DEVNULL)


def shim(kit: Path, work: Path, label: str) -> Path:
    """A directory for PYTHONPATH whose `djk` package is `kit`'s tasks/ and templates/."""
    pkg = work / f"pkg-{label}" / "djk"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks").symlink_to(kit / "tasks")
    (pkg / "templates").symlink_to(kit / "templates")
    return pkg.parent


def run_as(kit: Path, path: Path, inventory: Path, *args: str):
    os.environ["DJK_BENCH_KIT"] = str(kit)
    os.environ["PYTHONPATH"] = str(path)
    return measure(inventory, *args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="version A: a git revision or a checkout")
    parser.add_argument("--b", default=str(ROOT), help="version B (default: this checkout)")
    parser.add_argument("--sizes", default="1x1,1x3,8x1")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--noops", type=int, default=3, help="no-op deploys a round (median)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("ab: run as root (it boots systemd-nspawn test hosts)", file=sys.stderr)
        return 2
    os.environ.setdefault("DJK_TESTBED_DISK", "ram")
    work = Path(tempfile.mkdtemp(prefix="djk-ab-"))
    kits = {"A": checkout(args.a, work), "B": checkout(args.b, work)}
    paths = {label: shim(kit, work, label) for label, kit in kits.items()}
    for kit in kits.values():
        compiled(kit)
    bed = Testbed(name="bench", subnet=2)
    bed.ensure_image()
    raw: dict = {}
    try:
        for rep in range(args.reps):
            order = ("A", "B") if rep % 2 == 0 else ("B", "A")
            for size in args.sizes.split(","):
                n_hosts, n_sites = SIZES[size]
                names = [f"web{i}" for i in range(1, n_hosts + 1)]
                for label in order:
                    kit, path = kits[label], paths[label]
                    source = work / f"src-{label}-{size}-{rep}" / "example"
                    shutil.copytree(
                        ROOT / "example", source, ignore=shutil.ignore_patterns("__pycache__")
                    )
                    hosts = bed.up(names)
                    inventory = write_inventory(source.parent, hosts, n_sites, source, 2)
                    found = {}
                    found["first"], _ = run_as(
                        kit, path, inventory, "-H", "all", "deploy", "--json"
                    )
                    settle(hosts)
                    found["noop"], _ = run_as(kit, path, inventory, "-H", "all", "deploy", "--json")
                    (source / "VERSION").write_text(f"9.{rep}.1\n")
                    found["code"], _ = run_as(kit, path, inventory, "-H", "all", "deploy", "--json")
                    for scenario, run in found.items():
                        key = f"{size} {scenario} {label}"
                        raw.setdefault(key, []).append(
                            {"s": round(run.seconds, 3), "cmds": run.commands, "ok": run.ok}
                        )
                    print(
                        f"round {rep + 1} {size} {label}: "
                        + ", ".join(f"{s} {r.seconds:.2f}s" for s, r in found.items()),
                        file=sys.stderr,
                    )
                bed.down(names)
    finally:
        for kit in kits.values():
            if kit.is_relative_to(work):
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(kit)])
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'size':<5} {'scenario':<6} {'A median':>9} {'B median':>9} {'B/A':>6}  cmds A/B  ok")
    for size in args.sizes.split(","):
        for scenario in SCENARIOS:
            a, b = raw[f"{size} {scenario} A"], raw[f"{size} {scenario} B"]
            ma = statistics.median(r["s"] for r in a)
            mb = statistics.median(r["s"] for r in b)
            ca = statistics.median(r["cmds"] for r in a)
            cb = statistics.median(r["cmds"] for r in b)
            cmds = f"{ca}/{cb}"
            ok = all(r["ok"] for r in a + b)
            print(
                f"{size:<5} {scenario:<6} {ma:>8.2f}s {mb:>8.2f}s {mb / ma:>6.2f}  {cmds:>8}  {ok}"
            )
    for key, runs in raw.items():
        print(f"raw {key}: {' '.join(str(r['s']) for r in runs)}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("ab-%Y%m%dT%H%M%S.json")
    path.write_text(json.dumps({"a": args.a, "b": args.b, "raw": raw}, indent=2))
    print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
