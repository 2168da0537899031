"""The health-gated switch of a site to a release, as one script run on the host.

Start the release in the idle gunicorn slot, wait until it answers its health endpoint with the
release id, point nginx's upstream and `current` at it, reload nginx (waiting for the old workers
to leave), check the health endpoint again through nginx with the site's Host header, and only
then stop the old slot. A failure before the switch leaves the old slot serving; a failure after
it switches back. Either way the release is marked failed and the script exits non-zero.
"""

from __future__ import annotations

import shlex

from .facts import PENDING_FILE
from .layout import SLOTS, UPSTREAM_DIR, SitePaths
from .render import MANAGED
from .steps import NGINX_RELOAD
from .values import url_host

PROBE = r"""
import http.client, socket, ssl, subprocess, sys, time, urllib.parse
url, host, want, timeout, unit = sys.argv[1:6]
parts = urllib.parse.urlsplit(url)


def fetch():
    if parts.scheme == "https":
        # The site's own name in SNI and Host; this probe checks health, not the certificate.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 443, timeout=5)
        raw = socket.create_connection((parts.hostname, parts.port or 443), timeout=5)
        conn.sock = context.wrap_socket(raw, server_hostname=host)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=5)
    conn.request("GET", parts.path or "/", headers={"Host": host})
    answer = conn.getresponse()
    return answer.status, answer.read(65536).decode("utf-8", "replace")


deadline = time.monotonic() + float(timeout)
last = "no answer yet"
while True:
    try:
        status, body = fetch()
        if 200 <= status < 300 and want in body:
            print(f"healthy: HTTP {status} from {want}")
            sys.exit(0)
        last = f"HTTP {status}, not from release {want}: {body[:200]!r}"
    except Exception as error:
        last = str(error)
    if unit:
        state = subprocess.run(["systemctl", "show", "-p", "ActiveState,SubState", "--value",
                                unit], capture_output=True, text=True).stdout.split()
        if state and (state[0] in ("failed", "inactive") or "auto-restart" in state):
            print(f"{unit} stopped while starting ({' '.join(state)}); last answer: {last}",
                  file=sys.stderr)
            sys.exit(1)
    if time.monotonic() >= deadline:
        print(f"no healthy answer from {url} (Host: {host}) within {timeout}s: {last}",
              file=sys.stderr)
        sys.exit(1)
    time.sleep(0.25)
"""


def upstream_text(port: int) -> str:
    return f"# {MANAGED}\nserver 127.0.0.1:{port};\n"


def live_slot(paths: SitePaths, upstream: str | None) -> str | None:
    """The slot nginx's upstream file points at (None before the first switch)."""
    for line in (upstream or "").splitlines():
        for slot in SLOTS:
            if line.strip() == f"server 127.0.0.1:{paths.slot_port(slot)};":
                return slot
    return None


def _prelude(paths: SitePaths, release: str, active: str) -> str:
    """Which slot is live (`active`: shell lines setting $active), which one starts next, and
    the helpers both kinds of switch use."""
    q = shlex.quote
    a, b = SLOTS
    return f"""set -e
base={q(paths.base)}
want={q(release)}
live=$(readlink "$base/current" 2>/dev/null | sed 's#^releases/##') || live=""
{active}
case "$active" in
  {a}) next={b}; next_port={paths.slot_port(b)} ;;
  {b}) next={a}; next_port={paths.slot_port(a)} ;;
  *) active=""; next={a}; next_port={paths.slot_port(a)} ;;
esac
unit_next="djk-{paths.name}-web-$next.service"
unit_old="djk-{paths.name}-web-$active.service"
probe() {{ python3 -c {q(PROBE)} "$@"; }}
mark_failed() {{
  if [ "$want" != "$live" ] && [ -d "$base/releases/$want" ]; then
    echo failed > "$base/releases/$want/.djk-status"
  fi
}}
"""


def _start_next(
    paths: SitePaths, bind: str, health_path: str, health_host: str, timeout: int
) -> str:
    """Start the release in the idle slot; it must answer its health check before anything
    else changes, or it is stopped and marked failed (exit 4)."""
    q = shlex.quote
    return f"""systemctl daemon-reload
install -d -m 750 -o root -g {q("djk-" + paths.name)} "$base/slots"
ln -sfn "../releases/$want" "$base/slots/$next.djk-new"
mv -Tf "$base/slots/$next.djk-new" "$base/slots/$next"
# A unit that cannot even start is reported like an unhealthy one, with its log, below.
systemctl restart "$unit_next" || true
echo "started release $want in slot $next ({url_host(bind)}:$next_port);" \
  "waiting for its health check"
if ! probe "http://{url_host(bind)}:$next_port{health_path}" {q(health_host)} "$want" {timeout} \\
    "$unit_next"; then
  journalctl -u "$unit_next" -n 20 --no-pager -o cat >&2 || true
  systemctl stop "$unit_next" || true
  mark_failed
  echo "release $want failed its health check before the switch;" \\
    "${{live:-nothing}} still serves" >&2
  exit 4
fi
"""


def _finish(paths: SitePaths, mark_old: str, delete: list[str]) -> str:
    """Old slot stopped gracefully, statuses, and releases and venvs no longer kept."""
    q = shlex.quote
    return f"""systemctl enable --quiet "$unit_next"
if [ -n "$active" ] && [ "$active" != "$next" ]; then
  systemctl disable --quiet "$unit_old" || true
  systemctl stop "$unit_old" || true
fi
echo live > "$base/releases/$want/.djk-status"
if [ -n "$live" ] && [ "$live" != "$want" ] && [ -d "$base/releases/$live" ]; then
  echo {q(mark_old)} > "$base/releases/$live/.djk-status"
fi
for id in {" ".join(q(i) for i in delete)}; do rm -rf -- "$base/releases/$id"; done
for v in "$base"/venvs/*; do
  [ -d "$v" ] || continue
  used=0
  for link in "$base"/releases/*/.venv; do
    [ "$(readlink "$link" 2>/dev/null)" = "../../venvs/${{v##*/}}" ] && used=1
  done
  [ $used = 1 ] || rm -rf -- "$v"
done
echo "release $want is live in slot $next"
"""


def switch_script(
    paths: SitePaths,
    release: str,
    health_path: str,
    health_host: str,
    timeout: int,
    mark_old: str,
    delete: list[str],
    tls: bool = False,
) -> str:
    """The switch on a host whose nginx proxies to its own slots through the upstream file."""
    q = shlex.quote
    a, b = SLOTS
    # The second check goes through nginx, as clients do: HTTPS when the site has TLS.
    front = "https://127.0.0.1:443" if tls else "http://127.0.0.1:80"
    upstream = paths.upstream_conf
    # The live slot is the one nginx's upstream points at.
    active = f"""active_port=$(grep -o '^server 127.0.0.1:[0-9]*;' {q(upstream)} 2>/dev/null \\
  | cut -d: -f2 | tr -d ';' || true)
case "$active_port" in
  {paths.slot_port(a)}) active={a} ;;
  {paths.slot_port(b)}) active={b} ;;
  *) active="" ;;
esac"""
    return (
        _prelude(paths, release, active)
        + f"""nginx_reload() {{ ( {NGINX_RELOAD}
) ; }}
point_upstream() {{
  tmp=$(mktemp {q(UPSTREAM_DIR)}/.{paths.name}.XXXXXX)
  printf '# %s\\nserver 127.0.0.1:%s;\\n' {q(MANAGED)} "$1" > "$tmp"
  chmod 644 "$tmp"; mv -f "$tmp" {q(upstream)}
}}
"""
        + _start_next(paths, "127.0.0.1", health_path, health_host, timeout)
        + f"""cp -p {q(upstream)} {q(upstream)}.djk-prev
# Recorded first: if this run dies between the upstream write and the reload, the next one reloads.
mkdir -p {q(PENDING_FILE.rsplit("/", 1)[0])}
echo reload:nginx.service >> {PENDING_FILE}
point_upstream "$next_port"
ln -sfn "releases/$want" "$base/current.djk-new"
mv -Tf "$base/current.djk-new" "$base/current"
if ! nginx_reload || ! probe "{front}{health_path}" {q(health_host)} "$want" \\
    {timeout} ""; then
  mv -f {q(upstream)}.djk-prev {q(upstream)}
  if [ -n "$live" ]; then
    ln -sfn "releases/$live" "$base/current.djk-new"
    mv -Tf "$base/current.djk-new" "$base/current"
  fi
  nginx_reload || true
  systemctl stop "$unit_next" || true
  mark_failed
  echo "release $want failed its health check through nginx;" \\
    "switched back to ${{live:-nothing}}" >&2
  exit 5
fi
rm -f {q(upstream)}.djk-prev
"""
        + _finish(paths, mark_old, delete)
    )


def app_switch_script(
    paths: SitePaths,
    release: str,
    bind: str,
    health_path: str,
    health_host: str,
    timeout: int,
    mark_old: str,
    delete: list[str],
) -> str:
    """The switch on an app host behind nginx on other hosts.

    Their upstream lists both slots of every app host, so nothing there changes: the new slot
    starts and must pass its health check here, then the old slot stops gracefully, and nginx,
    finding its port closed, sends requests to the new one (proxy_next_upstream). The live slot
    is recorded in .djk-slot.
    """
    slot_file = shlex.quote(f"{paths.base}/.djk-slot")
    return (
        _prelude(paths, release, f"active=$(cat {slot_file} 2>/dev/null || true)")
        + _start_next(paths, bind, health_path, health_host, timeout)
        + f"""ln -sfn "releases/$want" "$base/current.djk-new"
mv -Tf "$base/current.djk-new" "$base/current"
echo "$next" > {slot_file}
"""
        + _finish(paths, mark_old, delete)
    )


def verify_script(
    paths: SitePaths, release: str, front: str, health_path: str, health_host: str, timeout: int
) -> str:
    """On a web host of a split site: nginx reloaded (a changed server block is due), the
    release answers through it; then `current` here (which the next deploy compares with)
    points at it."""
    q = shlex.quote
    return f"""set -e
( {NGINX_RELOAD}
)
python3 -c {q(PROBE)} "{front}{health_path}" {q(health_host)} {q(release)} {timeout} ""
ln -sfn {q("releases/" + release)} {q(paths.current)}.djk-new
mv -Tf {q(paths.current)}.djk-new {q(paths.current)}
"""


def static_upstream(paths: SitePaths, addresses: list[str]) -> str:
    """Every app host's two slots; a stopped slot refuses and nginx tries the next server.

    max_fails=0: a refused or reset connection must not mark a server down for a while (with
    every server marked down at once nginx answers 502 "no live upstreams"); a refusal costs one
    connection attempt on the private network.
    """
    lines = [f"# {MANAGED}"]
    for address in addresses:
        for slot in SLOTS:
            lines.append(f"server {url_host(address)}:{paths.slot_port(slot)} max_fails=0;")
    return "\n".join(lines) + "\n"
