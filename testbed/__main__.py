"""CLI: python -m testbed deps | image | up | down | status | known-hosts."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from ._sys import TestbedError, require_root
from .core import Testbed, ensure_deps
from .image import DEFAULT, KINDS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("deps", help="apt-get install nspawn/debootstrap/iproute2/ssh if missing")
    image = sub.add_parser("image", help="build the cached Debian image if needed, print its path")
    image.add_argument("--image", default=DEFAULT, choices=KINDS, help="which image")

    def named(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--name", default="demo", help="testbed name (default: demo)")
        return sp

    up = named("up", "boot hosts (fresh) and wait until they accept SSH")
    up.add_argument("--subnet", type=int, default=0, help="10.213.<subnet>.0/24 (default: 0)")
    up.add_argument("--json", action="store_true", help="print hosts as JSON")
    up.add_argument("--image", default=DEFAULT, choices=KINDS, help="image to boot")
    up.add_argument("hosts", nargs="+", metavar="HOST")
    down = named("down", "stop hosts (default: all of the testbed)")
    down.add_argument("hosts", nargs="*", metavar="HOST")
    status = named("status", "list the testbed's hosts")
    status.add_argument("--json", action="store_true")
    known = named("known-hosts", "print known_hosts lines for the hosts' own SSH keys")
    known.add_argument("hosts", nargs="*", metavar="HOST")
    return p


def _subnet_of(name: str) -> int:
    # down/status need no subnet from the user: the bridge is only used by
    # up, and removal checks for attached ports anyway. Recover it from state.
    tb = Testbed(name=name)
    for row in tb.status():
        return int(str(row["address"]).split(".")[2])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        require_root()
        if args.cmd == "deps":
            ensure_deps()
            print("deps: ok")
        elif args.cmd == "image":
            print(Testbed(image=args.image).ensure_image())
        elif args.cmd == "up":
            tb = Testbed(name=args.name, subnet=args.subnet, image=args.image)
            hosts = tb.up(args.hosts)
            if args.json:
                print(json.dumps([h.as_dict() for h in hosts], indent=2))
            else:
                for h in hosts:
                    print(f"{h.name} {h.address} ready in {tb.boot_seconds.get(h.name, 0):.1f}s")
                login = f"ssh -i {hosts[0].key_path} {hosts[0].user}@<address>"
                print(f"login: {login}", file=sys.stderr)
        elif args.cmd == "down":
            tb = Testbed(name=args.name, subnet=_subnet_of(args.name))
            tb.down(args.hosts or None)
        elif args.cmd == "known-hosts":
            tb = Testbed(name=args.name)
            for row in tb.status():
                if not args.hosts or row["name"] in args.hosts:
                    print(tb.host(str(row["name"])).known_hosts_line())
        elif args.cmd == "status":
            rows = Testbed(name=args.name).status()
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print(f"testbed {args.name}: no hosts")
            else:
                for r in rows:
                    state = "running" if r["running"] else "dead"
                    print(f"{r['name']} {r['address']} {state} pid={r['pid']} up {r['uptime']}s")
    except TestbedError as e:
        print(f"testbed: error: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"testbed: error: {e}\n{e.stdout or ''}{e.stderr or ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
