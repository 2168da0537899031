"""Inventories for the input fuzz (tests/unit/test_input_fuzz.py) and the e2e check of its
readers (tests/e2e/test_readers.py): a hypothesis strategy of clean inventories with nasty
mutations, the files that write a case to disk, what the kit would write for an inventory, and
the checks on it. See the fuzz test for what is checked and why."""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from file_readers import (
    Unparsable,
    dotenv_env,
    nginx_directives,
    nginx_structure,
    sh_env,
    systemd_env,
    unit_structure,
)
from hypothesis import strategies as st

from djk.tasks import app, celery
from djk.tasks.celery import RedisAuth, RedisBind
from djk.tasks.deploy import deploy_plan
from djk.tasks.engine import facts as F
from djk.tasks.engine import topology
from djk.tasks.engine.debian import Installed
from djk.tasks.engine.inventory import InventoryError, load
from djk.tasks.engine.layout import app_of
from djk.tasks.engine.secrets import Secret
from djk.tasks.engine.steps import ConfigSet, Context, File, plan_phase
from djk.tasks.provision import DpkgStatus, host_steps, packages_for

EXAMPLE = Path(__file__).resolve().parents[1] / "example"
MARKER = "zqSECRETq"  # in every secret and every bad secrets line: must never be shown
CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEfake" + MARKER + "\n-----END PRIVATE KEY-----\n"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

NASTY = [
    "\n", "\r", "\r\n", " ", "\t", ";", "{", "}", "#", '"', "'", "\\", "$", "${X}", "`",
    "%", "%n", "\x00", "\x1b[31m", "\u2028", "\u2029", "\x85", "*", "..", "/", ":", "@", "=",
    "\u00e9", "\ud800", "$(id)", "\\n", "'\"", "\n.test",
]  # fmt: skip
NUMBERS = [-1, 0, 1, 22, 80, 1023, 1024, 6378, 6379, 5555, 8001, 8002, 65534, 65535, 65536,
           2**63, True, "8001", 8001.5]  # fmt: skip
NAMES = ["PATH", "IFS", "LD_PRELOAD", "PYTHONPATH", "DJANGO_SETTINGS_MODULE",
         "DJANGO_ALLOWED_HOSTS", "CELERY_BROKER_URL", "", "1X", "A-B", "A\nB", "A B"]  # fmt: skip
BAD_LINES = [
    f"DB_PASSWORD='{MARKER}unterminated", f"{MARKER}NOEQUALS", f"'K\n{MARKER}'=1",
    f"={MARKER}", f"A B={MARKER}", f'X="{MARKER}', f"{MARKER}\u2028Y=1",
]  # fmt: skip


# -- the clean inventory, as data ------------------------------------------------------------


@dataclass
class Case:
    toml: dict[str, Any]
    secrets: list[tuple[str, str, str]]  # (name, value, quoting: bare | single | double)
    raw_lines: list[str] = field(default_factory=list)  # extra secrets lines, as written
    splice: tuple[int, bytes] | None = None  # bytes put into hosts.toml at a position


@st.composite
def clean_cases(draw) -> Case:
    count = draw(st.integers(1, 3))
    ipv6 = draw(st.booleans())
    split = count > 1 and draw(st.booleans())
    hosts: dict[str, Any] = {}
    for i in range(1, count + 1):
        hosts[f"web{i}"] = {"address": f"fd00::{i}" if ipv6 else f"10.0.0.{i}"}
        if split:
            hosts[f"web{i}"]["roles"] = ["web"] if i == 1 else ["app", "worker", "broker"]
    sites: dict[str, Any] = {}
    secrets: list[tuple[str, str, str]] = []
    quoting = st.sampled_from(["bare", "single", "double"])
    for k, name in enumerate(draw(st.sampled_from([["shop"], ["shop", "blog"]]))):
        domains = [f"{name}{i}.test" for i in range(draw(st.integers(1, 3)))]
        if draw(st.booleans()):
            domains.append(f"*.{name}.test")
        site: dict[str, Any] = {
            "domains": domains,
            "hosts": list(hosts),
            "source": str(EXAMPLE),
            "asgi": "exampleproject.asgi:application",
            "settings": "exampleproject.settings",
            "port": 8001 + 100 * k,
            "env_file": f"{name}.env",
            "workers": draw(st.integers(1, 8)),
            "health_path": "/health/",
            "env": {"APP_MODE": draw(st.sampled_from(["prod", "a b", "x/y"])), "APP_N": "1"},
        }
        secrets.append(("DJANGO_SECRET_KEY", f"k3y-{MARKER}-{k}", draw(quoting)))
        if draw(st.booleans()):
            site["celery"] = {
                "app": "exampleproject",
                "queues": ["celery", "mail"],
                "options": ["--max-tasks-per-child=100"],
                "concurrency": 2,
                "beat": draw(st.booleans()),
                "redis_db": k,
            }
            secrets.append(("BROKER_PASSWORD", f"broker-{MARKER}-{k}", draw(quoting)))
            if not split and draw(st.booleans()):
                site["flower"] = {"port": 5555 + k}
                secrets.append(("FLOWER_BASIC_AUTH", f"admin:{MARKER}{k}", draw(quoting)))
        if draw(st.booleans()):
            site["nginx"] = {"max_body_size": "20m", "redirect_to": domains[0]}
        if draw(st.booleans()):
            site["tls"] = {"cert": "cert.pem", "key": "key.pem", "hsts": True}
        sites[name] = site
    # One secrets file serves every site: each name once in it.
    secrets = list({name: (name, value, q) for name, value, q in reversed(secrets)}.values())[::-1]
    extra = draw(st.integers(0, 2))
    for i in range(extra):
        secrets.append((f"EXTRA_{i}", f"extra-{MARKER}-{i}", draw(quoting)))
    toml = {"defaults": {"user": "deploy", "port": 22}, "hosts": hosts, "sites": sites}
    return Case(toml, secrets)


# -- mutations ---------------------------------------------------------------------------------


def _leaves(data: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every value and every table key (as ("key", path, name))."""
    found: list[tuple] = []
    if isinstance(data, dict):
        for name, value in data.items():
            found.append(("key", path, name))
            found += _leaves(value, (*path, name))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _leaves(value, (*path, i))
    elif not isinstance(data, bool):  # a bool flip changes what is deployed, not how it's written
        found.append(("value", path, None))
    return found


def _nasty_text(draw, text: str) -> str:
    how = draw(st.sampled_from(["append", "prepend", "insert", "replace", "long", "upper"]))
    piece = draw(st.sampled_from(NASTY))
    if how == "append":
        return text + piece
    if how == "prepend":
        return piece + text
    if how == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + piece + text[at:]
    if how == "replace":
        return draw(st.text(max_size=12))
    if how == "long":
        return text * draw(st.sampled_from([40, 400]))
    return text.upper()


@st.composite
def mutated_cases(draw) -> tuple[Case, Case]:
    clean = draw(clean_cases())
    case = copy.deepcopy(clean)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["toml", "toml", "toml", "secret", "line", "splice"]))
        if kind == "toml":
            leaves = _leaves(case.toml)
            what, path, name = draw(st.sampled_from(leaves))
            parent = case.toml
            for part in path:
                parent = parent[part]
            if what == "key":
                if draw(st.booleans()):
                    new = draw(st.sampled_from(NAMES))
                else:
                    new = _nasty_text(draw, str(name))
                if new not in parent:
                    parent[new] = parent.pop(name)
                continue
            holder = case.toml
            for part in path[:-1]:
                holder = holder[part]
            old = holder[path[-1]]
            if isinstance(old, int):
                holder[path[-1]] = draw(st.sampled_from(NUMBERS))
            else:
                holder[path[-1]] = _nasty_text(draw, str(old))
        elif kind == "secret" and case.secrets:
            i = draw(st.integers(0, len(case.secrets) - 1))
            name, value, quoting = case.secrets[i]
            if draw(st.booleans()):
                value = _nasty_text(draw, value)
            else:
                name = draw(st.sampled_from(NAMES)) if draw(st.booleans()) else name
            case.secrets[i] = (name, value, draw(st.sampled_from(["bare", "single", "double"])))
        elif kind == "line":
            case.raw_lines.append(draw(st.sampled_from(BAD_LINES)))
        elif kind == "splice":
            case.splice = (draw(st.integers(0, 2000)), draw(st.binary(min_size=1, max_size=4)))
    return clean, case


# -- writing a case ---------------------------------------------------------------------------


def toml_text(data: dict[str, Any]) -> str:
    """A minimal TOML writer: tables as [a."b"], keys always quoted, strings as JSON escapes
    them (a subset of TOML's basic strings)."""
    lines: list[str] = []

    def key(name: str) -> str:
        return json.dumps(name)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    def table(path: list[str], data: dict[str, Any]) -> None:
        simple = {k: v for k, v in data.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in data.items() if isinstance(v, dict)}
        if path and (simple or not nested):
            lines.append("[" + ".".join(key(p) for p in path) + "]")
        for k, v in simple.items():
            lines.append(f"{key(k)} = {value(v)}")
        for k, v in nested.items():
            table([*path, k], v)

    table([], data)
    return "\n".join(lines) + "\n"


def secrets_text(case: Case) -> str:
    lines = []
    for name, value, quoting in case.secrets:
        if quoting == "single":
            lines.append(f"{name}='{value}'")
        elif quoting == "double":
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name}="{escaped}"')
        else:
            lines.append(f"{name}={value}")
    return "\n".join(lines + case.raw_lines) + "\n"


def write(case: Case, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_text(CERT)
    (directory / "key.pem").write_text(KEY)
    (directory / "both.pem").write_text(CERT + KEY)
    text = secrets_text(case).encode("utf-8", "surrogatepass")
    for name in ("shop", "blog"):
        (directory / f"{name}.env").write_bytes(text)
    data = toml_text(case.toml).encode("utf-8", "surrogatepass")
    if case.splice is not None:
        at, piece = case.splice
        at = min(at, len(data))
        data = data[:at] + piece + data[at:]
    path = directory / "hosts.toml"
    path.write_bytes(data)
    return path


# -- what the kit writes for an inventory, and how its readers see it ---------------------------


@dataclass
class Written:
    host: str
    kind: str  # nginx, unit, sudoers, env, redis, other
    path: str
    content: str
    file: File | None = None


def classify(path: str) -> str:
    if path.startswith("/etc/nginx/"):
        return "nginx"
    if path.startswith("/etc/systemd/system/"):
        return "unit"
    if path.startswith("/etc/sudoers.d/"):
        return "sudoers"
    if path.endswith("/shared/env"):
        return "env"
    return "other"


def written(inventory) -> tuple[list[Written], list[str]]:
    """Every file a provision and a first deploy write on every host, and every script and
    summary those runs would show or run (for the secret check)."""
    files: list[Written] = []
    shown: list[str] = []
    for host in inventory.hosts.values():
        sites = inventory.sites_on(host)
        if not sites:
            continue
        builds = {s.name: app.Build(s, "R1", "t1", "d1", "rev") for s in sites}
        steps = list(host_steps(inventory, host))
        for phase in deploy_plan(inventory, host, builds).phases:
            steps += phase.steps
        for step in steps:
            members = step.files if isinstance(step, ConfigSet) else [step]
            for f in members:
                if isinstance(f, File) and isinstance(f.content, bytes):  # the host agent
                    files.append(Written(host.name, "binary", f.path, "", f))
                elif isinstance(f, File):
                    files.append(Written(host.name, classify(f.path), f.path, f.content, f))
            # A fresh host (every fact at its default) with Debian's redis.conf and the
            # packages installed (their names are the kit's, not the user's; resolving them
            # would read Debian's archive).
            given = {
                RedisBind(): "bind 127.0.0.1 -::1",
                RedisAuth(): None,
                DpkgStatus(): {n: Installed("1") for n in packages_for(inventory, host)},
            }
            facts = F.Facts({f: given.get(f, f.default) for f in step.facts(True)})
            for _, plan in plan_phase([step], Context(facts, diff=True)):
                for action in plan.actions:
                    shown += [action.summary, action.full_script(), action.diff]
                    if step.id == "redis-bind" and isinstance(action.stdin, bytes):
                        text = action.stdin.decode()
                        files.append(Written(host.name, "redis", "redis.conf", text))
                shown += [plan.reason, plan.error]
    return files, shown


def structure(item: Written) -> Any:
    if item.kind == "nginx":
        return nginx_structure(item.content)
    if item.kind == "unit":
        return unit_structure(item.content)
    if item.kind == "sudoers":
        rules = [ln for ln in item.content.split("\n") if ln.strip() and not ln.startswith("#")]
        assert len(rules) == 1 and re.fullmatch(r"[a-z_][a-z0-9_-]* ALL=\(ALL\) NOPASSWD:ALL",
                                                 rules[0]), rules  # fmt: skip
        return "one rule"
    if item.kind == "redis":
        lines = item.content.split("\n")
        auth = [ln for ln in lines if ln.startswith("requirepass")]
        assert all(len(ln.split()) == 2 for ln in auth), auth
        return [ln.split()[0] for ln in lines if ln]
    return item.kind


def secret_values(inventory) -> list[str]:
    found = [v.reveal() for s in inventory.sites.values() for v in s.secrets.values()]
    return [v for v in found if len(v) >= 6]


def check_env_files(inventory, files: list[Written]) -> None:
    for site in inventory.sites.values():
        wanted = {
            k: v.reveal() if isinstance(v, Secret) else v
            for k, v in app.env_entries(inventory, site)
        }
        path = f"/srv/djk/{site.name}/shared/env"
        for item in (f for f in files if f.path == path):
            assert systemd_env(item.content) == wanted, "systemd reads other pairs"
            assert sh_env(item.content) == wanted, "sh reads other pairs"
            assert dotenv_env(item.content) == wanted, "python-dotenv reads other pairs"


_LISTEN = re.compile(r"--bind \S*:(\d+) |--port=(\d+) ")


def check_ports(inventory, files: list[Written]) -> None:
    """What the rendered files make listen on each host (gunicorn binds, Flower, Redis where
    provision installs it, and sshd) uses every port once."""
    for host in inventory.hosts.values():
        used = [host.port]
        if "redis-server" in packages_for(inventory, host):
            used.append(6379)
        for item in (f for f in files if f.host == host.name and f.kind == "unit"):
            used += [int(a or b) for a, b in _LISTEN.findall(item.content)]
        assert len(used) == len(set(used)), f"{host.name}: a port twice in {sorted(used)}"


def _host_port(text: str) -> None:
    """An address:port as a URL authority: IPv6 must be in brackets to find the port."""
    parts = urlsplit("//" + text)
    assert parts.port is not None and parts.hostname, text


def check_addresses(inventory, files: list[Written]) -> None:
    """Every address with a port after it (a TCP --bind, the forwarder's ListenStream, nginx
    upstream servers, the broker URL) parses as host and port."""
    for item in files:
        if item.kind == "unit":
            binds = re.findall(r"--bind (\S+)", item.content)
            binds += re.findall(r"^ListenStream=(\S+)", item.content, re.M)
            for bind in binds:
                if not bind.startswith("unix:"):
                    _host_port(bind)
        elif item.kind == "nginx":
            for args in nginx_directives(item.content, "server"):  # `server {` has no args
                if args and not args[0].startswith("unix:"):
                    _host_port(args[0])
    for site in inventory.sites.values():
        # The URL the kit derives for its own Redis (a user's own CELERY_BROKER_URL is theirs).
        url = celery.broker_url(site, topology.broker_address(inventory, site))
        if url is not None:
            parts = urlsplit(url)
            assert parts.port == 6379 and parts.hostname, "broker URL without its port"


# The variables issue 10 names: they change how the interpreter, the loader or sh run code.
REFUSED = {"PATH", "IFS", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME",
           "PYTHONSTARTUP", "PYTHONINSPECT"}  # fmt: skip


def check_policy(inventory, files: list[Written]) -> None:
    """What env and the secrets may not do, seen in the written files: set a variable that
    changes how code runs; replace what the kit derives without env_override; put a private
    key in a file anyone may read; point requirements outside source."""
    for site in inventory.sites.values():
        entries = dict(app.env_entries(inventory, site))
        assert not set(entries) & REFUSED, sorted(entries)
        if "DJANGO_SETTINGS_MODULE" not in getattr(site, "env_override", ()):
            assert entries["DJANGO_SETTINGS_MODULE"] == app_of(site).settings
        requirements = Path(os.path.realpath(app_of(site).requirements))
        assert requirements.is_relative_to(app_of(site).source), requirements
    for item in files:
        if "PRIVATE KEY-----" in item.content:
            assert item.file is not None and item.file.secret_content, item.path
            assert item.file.mode in ("600", "640", "400"), item.path


def check_no_secret(texts: list[str], secrets: list[str], where: str) -> None:
    for text in texts:
        for value in secrets:
            assert value not in text, f"a secret in {where}: {text[:200]!r}"
        assert MARKER not in text, f"part of a secret in {where}: {text[:200]!r}"


# -- the property ------------------------------------------------------------------------------


STATS = {"cases": 0, "accepted": 0, "refused": 0}


def outcome(case: Case, directory: Path):
    path = write(case, directory)
    try:
        return load(path)
    except InventoryError as exc:
        message = str(exc)
        assert not CONTROL.search(message), f"control character in the error: {message!r}"
        assert len(message) < 1000, f"error of {len(message)} characters"
        assert MARKER not in message, f"part of a secret in the error: {message!r}"
        return exc


def run_case(clean: Case, case: Case, directory: Path) -> None:
    STATS["cases"] += 1
    result = outcome(case, directory)
    if isinstance(result, InventoryError):
        STATS["refused"] += 1
        return
    STATS["accepted"] += 1
    inventory = result
    files, shown = written(inventory)
    twin = outcome(clean, directory / "twin")
    assert not isinstance(twin, InventoryError), twin
    twin_files, twin_shown = written(twin)
    # A secret is looked for only where it would be a leak: a value that the clean twin's
    # output holds as well (six spaces, a common word a mutation made the secret) is text of
    # the kit's own, not the secret (each secret also holds MARKER, checked always).
    secrets = [v for v in secret_values(inventory) if not any(v in t for t in twin_shown)]
    check_no_secret(shown, secrets, "a script, summary or diff")
    assert not case.raw_lines, "a secrets file with an unparsable line was accepted"
    check_env_files(inventory, files)
    check_ports(inventory, files)
    check_addresses(inventory, files)
    check_policy(inventory, files)
    assert [f.kind for f in files] == [f.kind for f in twin_files], "other files than the twin's"
    for item, other in zip(files, twin_files, strict=True):
        try:
            got = structure(item)
        except Unparsable as exc:
            raise AssertionError(f"{item.path}: {exc}\n{item.content}") from None
        assert got == structure(other), f"{item.path} differs in structure:\n{item.content}"
    # Diffs between the twin's env file (on the host) and this one, both ways: no secret.
    for item, other in zip(files, twin_files, strict=True):
        if item.kind == "env" and item.file is not None and other.file is not None:
            texts = [item.file.render_diff(other.content), other.file.render_diff(item.content)]
            check_no_secret(texts, secrets + secret_values(twin), "an env file diff")


def seed_pair(seed) -> tuple[Case, Case]:
    """An @example: the clean single-site inventory and a copy changed by the seed (a
    mutation, or (layout, mutation) where the layout changes both)."""
    layout, mutate = seed if isinstance(seed, tuple) else (None, seed)
    site = {
        "domains": ["shop.test", "www.shop.test"],
        "hosts": ["web1"],
        "source": str(EXAMPLE),
        "asgi": "exampleproject.asgi:application",
        "settings": "exampleproject.settings",
        "port": 8001,
        "env_file": "shop.env",
        "env": {"APP_MODE": "prod"},
        "celery": {"app": "exampleproject", "queues": ["celery"], "options": []},
    }
    toml = {"defaults": {"user": "deploy"}, "hosts": {"web1": {"address": "10.0.0.1"}},
            "sites": {"shop": site}}  # fmt: skip
    secrets = [("DJANGO_SECRET_KEY", f"k3y-{MARKER}", "single")]
    clean = Case(copy.deepcopy(toml), list(secrets))
    if layout is not None:
        layout(clean)
    case = copy.deepcopy(clean)
    mutate(case)
    return clean, case


def _split(case: Case) -> None:
    """web1 runs nginx, web2 the app, web3 the workers and the broker (reached over the
    network, so with BROKER_PASSWORD)."""
    case.toml["hosts"] = {
        "web1": {"address": "10.0.0.1", "roles": ["web"]},
        "web2": {"address": "10.0.0.2", "roles": ["app"]},
        "web3": {"address": "10.0.0.3", "roles": ["worker", "broker"]},
    }
    case.toml["sites"]["shop"]["hosts"] = ["web1", "web2", "web3"]
    case.secrets.append(("BROKER_PASSWORD", f"pw-{MARKER}", "bare"))


def _set_secret(name: str, value: str, quoting: str = "single"):
    def mutate(case: Case) -> None:
        case.secrets = [(n, v, q) for n, v, q in case.secrets if n != name]
        case.secrets.append((name, value, quoting))

    return mutate


def _both(*mutations):
    def mutate(case: Case) -> None:
        for m in mutations:
            m(case)

    return mutate


def _set(path: str, value: Any):
    def mutate(case: Case) -> None:
        *parents, last = path.split("|")
        holder = case.toml
        for part in parents:
            holder = holder.setdefault(part, {})
        holder[last] = value

    return mutate


def _rename_site(new: str):
    def mutate(case: Case) -> None:
        case.toml["sites"][new] = case.toml["sites"].pop("shop")

    return mutate


def _secret(name: str, value: str, quoting: str = "bare"):
    def mutate(case: Case) -> None:
        case.secrets.append((name, value, quoting))

    return mutate


def _line(text: str):
    def mutate(case: Case) -> None:
        case.raw_lines.append(text)

    return mutate


SEEDS = [
    _set("defaults|user", "deploy\n"),
    _rename_site("web1\n"),
    _set("sites|shop|domains", ["shop.test", "x\n.test"]),
    _set("sites|shop|domains", ["shop.test\n"]),
    _set("sites|shop|asgi", "exampleproject.asgi:application\n"),
    _set("sites|shop|settings", "exampleproject.settings\n"),
    _set("sites|shop|celery|app", "exampleproject\n"),
    _set("sites|shop|celery|queues", ["celery\n"]),
    _set("sites|shop|env", {"APP_MODE\n": "x"}),
    _set("sites|shop|port", 6378),
    _both(_set("sites|shop|flower", {"port": 8001}), _secret("FLOWER_BASIC_AUTH", "a:b")),
    _set("sites|shop|env", {"APP_MODE": "a\\b$c"}),
    _set("sites|shop|env", {"APP_MODE": "${HOME}"}),
    _set("sites|shop|env", {"APP_MODE": "it's `x`"}),
    _line(f"DB_PASSWORD='{MARKER}unterminated"),
    _secret("SENTRY_DSN", f"abc\u2028{MARKER}def"),
    _secret("SENTRY_DSN", f"abc\x85{MARKER}def"),
    _line(f"'KEY\n{MARKER}'=1"),
    _line(f"{MARKER}HALF"),
    (_split, _set_secret("BROKER_PASSWORD", f"two words{MARKER}")),
    (_split, _set_secret("BROKER_PASSWORD", "")),
    _set("sites|shop|celery|options", ["--logfile=%n.log"]),
    (
        _split,
        _both(
            _set("hosts|web1|address", "fd00::1"),
            _set("hosts|web2|address", "fd00::2"),
            _set("hosts|web3|address", "fd00::3"),
        ),
    ),
    _set("sites|shop|env", {"DJANGO_SETTINGS_MODULE": "other.settings"}),
    _set("sites|shop|env", {"PATH": "/tmp"}),
    _secret("LD_PRELOAD", "/tmp/x.so"),
    _set("sites|shop|requirements", "../README.md"),
    _set("sites|shop|source", "~nosuchuser/x"),
    _set("sites|shop|source", "/tmp/\x00x"),
    _set("sites|shop|source", "/" + "x" * 300),
    # Found by CI's fuzz: a long path (under PATH_MAX) quoted whole made a 1,062-character error.
    _set("sites|shop|source", "/" + "/".join(["example"] * 400)),
    _set("sites|shop|requirements", "/".join(["r"] * 1500) + ".txt"),
    _set("sites|shop|tls", {"cert": "both.pem", "key": "key.pem"}),
    _set("sites|shop|tls", {"cert": "/dev/zero", "key": "key.pem"}),
    _set("", 1),
    _set("sites|shop|health_path", "/\x1b[2J" + "x" * 5000),
    # Found by a local 30k-case fuzz (once in eight runs): a secret a mutation made six spaces
    # was "found" in nginx.conf's indentation; only a distinctive value is looked for.
    _set_secret("DJANGO_SECRET_KEY", "      "),
]


