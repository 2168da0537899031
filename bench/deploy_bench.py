"""Deploy benchmark on real test hosts: wall time, SSH commands, bytes sent, peak memory.

Boots test hosts (testbed "bench", 10.213.2.0/24), runs `fab` as a separate process exactly as
a user would (start-up included), and prints a table plus a JSON file under bench/results/.

    bin/bench                      # every size and scenario
    bin/bench --sizes 1x3 --reps 3 # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The kit a run measures: this checkout, or another one (bench/ab.py sets it, with PYTHONPATH
# pointing `djk` at that checkout).
KIT = Path(os.environ.get("DJK_BENCH_KIT", ROOT))

from testbed import Testbed  # noqa: E402

SIZES = {"1x1": (1, 1), "1x3": (1, 3), "4x1": (4, 1), "8x1": (8, 1)}
SCENARIOS = ("cold", "first", "noop", "code", "deps", "template", "rollback")


@dataclass
class Run:
    seconds: float
    commands: float  # per host, mean
    bytes_sent: float  # per host, mean
    peak_rss_kb: int
    ok: bool
    uv_bytes: float = 0  # per host, mean: the one-time upload of the installer
    install_s: float = 0  # the slowest host's virtualenv step
    wheels: str = ""  # what the wheels step said on the first host


@dataclass
class Figures:
    size: str
    scenario: str
    runs: list[Run] = field(default_factory=list)

    def summary(self) -> dict:
        secs = [r.seconds for r in self.runs]
        if not secs:
            return {}
        return {
            "size": self.size,
            "scenario": self.scenario,
            "runs": len(self.runs),
            "median_s": round(statistics.median(secs), 3),
            "min_s": round(min(secs), 3),
            "max_s": round(max(secs), 3),
            "commands_per_host": round(statistics.median(r.commands for r in self.runs), 1),
            "bytes_per_host": int(statistics.median(r.bytes_sent for r in self.runs)),
            "peak_rss_mb": round(max(r.peak_rss_kb for r in self.runs) / 1024, 1),
            "uv_bytes_per_host": int(statistics.median(r.uv_bytes for r in self.runs)),
            "install_s": round(statistics.median(r.install_s for r in self.runs), 2),
            "wheels": self.runs[-1].wheels,
            "all_ok": all(r.ok for r in self.runs),
        }


def fab(inventory: Path, *args: str) -> tuple[Run, dict]:
    """One `fab` process; its wall time, its peak memory (wait4), its JSON report."""
    env = dict(os.environ, DJK_INVENTORY=str(inventory))
    # As a user's shell runs it: the kit's modules load from their bytecode (a CI or sandbox
    # environment may forbid writing it, which would add their compile time to every run).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args and args[0] == "--cold-cache":
        # The control machine's caches (wheels, pins, Debian indexes, host profiles) empty.
        args = args[1:]
        env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="djk-bench-cache-")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "--search-root", str(KIT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    # measure() runs this in a fresh interpreter whose only child is this fab process.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads(out) if out.strip().startswith(b"{") else {"hosts": [], "ok": False}
    hosts = report.get("hosts", [])
    run = Run(
        seconds=seconds,
        commands=statistics.mean(h["commands"] for h in hosts) if hosts else 0,
        bytes_sent=statistics.mean(h["bytes_sent"] for h in hosts) if hosts else 0,
        peak_rss_kb=peak,
        ok=proc.returncode == 0,
        uv_bytes=statistics.mean(h["bytes_by_kind"].get("uv", 0) for h in hosts) if hosts else 0,
        install_s=max(
            [s["seconds"] for h in hosts for s in h["steps"] if s["step"].startswith("virtualenv")]
            or [0]
        ),
        wheels=next(
            (s["detail"] for h in hosts[:1] for s in h["steps"] if s["step"] == "wheels"), ""
        ),
    )
    if proc.returncode != 0:
        print(
            f"  fab {' '.join(args)} failed ({proc.returncode}): {err.decode()[-500:]}",
            file=sys.stderr,
        )
    return run, report


def measure(inventory: Path, *args: str) -> tuple[Run, dict]:
    """Run fab from a fresh child interpreter so RUSAGE_CHILDREN is this run's alone."""
    code = (
        f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from bench.deploy_bench import fab; run, report = fab(*sys.argv[1:]); "
        "print(json.dumps({'run': run.__dict__, 'report': report}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(inventory), *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    data = json.loads(done.stdout.strip().splitlines()[-1])
    run = Run(**data["run"])
    if not run.ok:
        print(done.stderr[-1500:], file=sys.stderr)
    return run, data["report"]


def write_inventory(directory: Path, hosts, sites: int, source: Path, workers: int) -> Path:
    lines = ["[defaults]", 'user = "deploy"', ""]
    for host in hosts:
        lines += [
            f"[hosts.{host.name}]",
            f'address = "{host.address}"',
            f'ssh_key = "{host.key_path}"',
            "",
        ]
    lines += ["[groups]", "all = [" + ", ".join(f'"{h.name}"' for h in hosts) + "]", ""]
    for i in range(1, sites + 1):
        lines += [
            f"[sites.s{i}]",
            f'domains = ["s{i}.test"]',
            'hosts = ["all"]',
            f'source = "{source}"',
            'asgi = "exampleproject.asgi:application"',
            'settings = "exampleproject.settings"',
            f"port = {8000 + 10 * i}",
            f"workers = {workers}",
            'migrate_on = "every"',
            'env_file = "secrets.env"',
            "",
        ]
    (directory / "secrets.env").write_text("DJANGO_SECRET_KEY=bench-secret-key-0123456789\n")
    path = directory / "hosts.toml"
    path.write_text("\n".join(lines))
    # The hosts' own keys (the kit checks every host key).
    (directory / "known_hosts").write_text("".join(h.known_hosts_line() + "\n" for h in hosts))
    return path


def settle(hosts, timeout: float = 120.0) -> None:
    """Wait until no host still compiles a new venv's bytecode in the background: the test
    hosts share this machine's CPUs with each other and with `fab`, so the runs timed next
    would pay for it; servers of their own would not."""
    deadline = time.monotonic() + timeout
    for host in hosts:
        while time.monotonic() < deadline:
            busy = host.ssh(
                "systemctl list-units --no-legend --state=active 'djk-compile-*'", check=False
            ).stdout.strip()
            if not busy:
                break
            time.sleep(0.5)


def bench_size(
    bed: Testbed, size: str, reps: int, first_reps: int, cold: bool = False
) -> list[Figures]:
    n_hosts, n_sites = SIZES[size]
    names = [f"web{i}" for i in range(1, n_hosts + 1)]
    work = Path(tempfile.mkdtemp(prefix=f"djk-bench-{size}-"))
    source = work / "example"
    shutil.copytree(ROOT / "example", source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    results = {s: Figures(size, s) for s in SCENARIOS}
    workers = 2
    version = 0

    def bump() -> None:
        nonlocal version
        version += 1
        (source / "VERSION").write_text(f"9.{version}.0\n")

    try:
        if cold:
            hosts = bed.up(names)
            inventory = write_inventory(work, hosts, n_sites, source, workers)
            run, _ = measure(inventory, "--cold-cache", "-H", "all", "deploy", "--json")
            results["cold"].runs.append(run)
            print(f"  {size} first, cold caches: {run.seconds:.2f}s", file=sys.stderr)
        for rep in range(first_reps):
            hosts = bed.up(names)  # fresh disks
            inventory = write_inventory(work, hosts, n_sites, source, workers)
            run, _ = measure(inventory, "-H", "all", "deploy", "--json")
            results["first"].runs.append(run)
            print(f"  {size} first #{rep + 1}: {run.seconds:.2f}s", file=sys.stderr)
        settle(hosts)
        for _ in range(reps):
            run, _ = measure(inventory, "-H", "all", "deploy", "--json")
            results["noop"].runs.append(run)
        for _ in range(reps):
            bump()
            run, report = measure(inventory, "-H", "all", "deploy", "--json")
            reinstalled = any(
                s["step"].startswith("virtualenv") and s["status"] == "changed"
                for h in report.get("hosts", [])
                for s in h["steps"]
            )
            run.ok = run.ok and not reinstalled
            results["code"].runs.append(run)
        requirements = source / "requirements.txt"
        pristine = requirements.read_text()
        for rep in range(reps):
            # One more package each time: only its wheel may travel.
            extra = ("idna==3.10", "six==1.16.0", "idna==3.9")[rep % 3]
            requirements.write_text(pristine + f"{extra}\n")
            run, _ = measure(inventory, "-H", "all", "deploy", "--json")
            results["deps"].runs.append(run)
            settle(hosts)
        requirements.write_text(pristine)
        for _ in range(reps):
            workers = 3 if workers == 2 else 2
            inventory = write_inventory(work, hosts, n_sites, source, workers)
            run, _ = measure(inventory, "-H", "all", "deploy", "--json")
            results["template"].runs.append(run)
        for _ in range(reps):
            bump()
            measure(inventory, "-H", "all", "deploy", "--json")
            run, _ = measure(inventory, "-H", "all", "rollback", "--json")
            results["rollback"].runs.append(run)
    finally:
        bed.down(names)
        shutil.rmtree(work, ignore_errors=True)
    return [f for f in results.values() if f.runs]


def cli_startup(reps: int = 10) -> dict:
    figures = {}
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a user's shell runs it (see fab())
    for args in (["--list"], ["--help"]):
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "fabric", "--search-root", str(ROOT), *args],
                capture_output=True,
                check=True,
                env=env,
            )
            times.append(time.perf_counter() - started)
        figures[" ".join(args)] = {
            "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3),
            "max_s": round(max(times), 3),
        }
    return figures


def table(rows: list[dict]) -> str:
    head = (
        f"{'size':<5} {'scenario':<9} {'median':>8} {'min':>7} {'max':>7} "
        f"{'cmds/host':>9} {'sent/host':>11} {'of it uv':>11} {'install':>8} {'peak MB':>8} ok"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['size']:<5} {r['scenario']:<9} {r['median_s']:>7.2f}s {r['min_s']:>6.2f}s "
            f"{r['max_s']:>6.2f}s {r['commands_per_host']:>9} {r['bytes_per_host']:>11,} "
            f"{r['uv_bytes_per_host']:>11,} {r['install_s']:>7.2f}s "
            f"{r['peak_rss_mb']:>8} {'yes' if r['all_ok'] else 'NO'}"
        )
        if r["wheels"] and r["scenario"] in ("cold", "first", "deps"):
            lines.append(f"{'':<16}wheels: {r['wheels']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="e.g. 1x1,1x3,4x1,8x1")
    parser.add_argument("--reps", type=int, default=5, help="runs per scenario (median)")
    parser.add_argument("--first-reps", type=int, default=3, help="runs of the first deploy")
    parser.add_argument("--image", default="bookworm", help="test host image (bookworm, trixie)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="also a first deploy with the control machine's caches empty",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (it boots systemd-nspawn test hosts)", file=sys.stderr)
        return 2
    # The hosts' disks in RAM when the machine has it: the figures are the kit's, not the
    # virtual disk's (testbed/_sys.ram_disk).
    os.environ.setdefault("DJK_TESTBED_DISK", "ram")
    bed = Testbed(name="bench", subnet=2, image=args.image)
    bed.ensure_image()
    rows = []
    for size in args.sizes.split(","):
        print(f"bench: {size} ...", file=sys.stderr)
        figures = bench_size(bed, size, args.reps, args.first_reps, args.cold)
        rows += [f.summary() for f in figures]
    startup = cli_startup()
    print(table(rows))
    for name, fig in startup.items():
        print(
            f"fab {name}: median {fig['median_s']:.3f}s (min {fig['min_s']:.3f}, "
            f"max {fig['max_s']:.3f})"
        )
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / time.strftime("bench-%Y%m%dT%H%M%S.json")
    path.write_text(
        json.dumps({"image": args.image, "scenarios": rows, "startup": startup}, indent=2)
    )
    print(f"figures written to {path}")
    return 0 if all(r["all_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
