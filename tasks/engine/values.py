"""Validators for every value that can reach an nginx, systemd or env file.

Each returns the value unchanged or raises ValueError with a message that says what is allowed;
the inventory loader adds the file and key path to it.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SITE_NAME = re.compile(r"[a-z][a-z0-9-]{0,23}")
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ASGI = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_URL_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# No %: systemd expands specifiers on ExecStart= lines.
_CLI_OPTION = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.:/,@+-]+)?")
_NGINX_SIZE = re.compile(r"[0-9]{1,6}[kKmMgG]?")
_NGINX_TIME = re.compile(r"[1-9][0-9]{0,6}(ms|s|m|h|d)?")
# C0 and C1 control characters and the Unicode line and paragraph separators: each of them
# ends a line for some reader (Python's splitlines, a terminal, a log viewer).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# python-dotenv's own pattern for the variables it expands (dotenv/variables.py).
_DOTENV_VARIABLE = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")
_QUEUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}")
SHOW_LIMIT = 60


def has_control(text: str) -> bool:
    """A newline, NUL, escape or another character that ends or alters a line for some reader."""
    return _CONTROL.search(text) is not None


def escape(text: str) -> str:
    """Text with every character a terminal or a line reader would act on written as an escape
    (\\n, \\x1b, \\u2028): what an error message may show of a user's input."""
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


def show(value: object, limit: int = SHOW_LIMIT) -> str:
    """A user's value as an error message quotes it: repr-style, escaped, shortened."""
    if not isinstance(value, str):
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    if len(value) > limit:
        return f"{escape(repr(value[:limit]))}... ({len(value)} characters)"
    return escape(repr(value))


PATH_SHOW_LIMIT = 200


def show_path(path: object, limit: int = PATH_SHOW_LIMIT) -> str:
    """A path as an error message shows it: unquoted, escaped, and when long its start and its
    end with the middle left out (the end names the file, the start where it is)."""
    text = escape(str(path))
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]}[...]{text[-half:]}"


def domain(value: str) -> str:
    """A server_name: letters, digits, hyphens and dots, with an optional leading `*.`."""
    name = value[2:] if value.startswith("*.") else value
    labels = name.split(".")
    if not name or len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{show(value)} is not a valid domain name "
            '(letters, digits, hyphens and dots; a leading "*." only)'
        )
    return value.lower()


def address(value: str) -> str:
    """An IP address (no IPv6 zone: `%` means something else in a unit file) or a DNS name."""
    if "%" not in value:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    try:
        return domain(value)
    except ValueError:
        raise ValueError(f"{show(value)} is neither an IP address nor a host name") from None


def ip_address(value: str) -> str:
    """An IP address, as systemd (ListenStream=, IPAddressAllow=) and nftables need it."""
    if "%" not in value:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    raise ValueError(f"{show(value)} is not an IP address (IPv4, or IPv6 without a %zone)")


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def url_host(address: str) -> str:
    """An address as a URL, a bind or a `server` directive needs it: IPv6 in brackets."""
    return f"[{address}]" if ":" in address else address


def site_name(value: str) -> str:
    if not _SITE_NAME.fullmatch(value):
        raise ValueError(
            f"site name {show(value)} must be lower-case letters, digits and hyphens, "
            "starting with a letter, at most 24 characters (it names a system user and units)"
        )
    return value


def host_name(value: str) -> str:
    if not _HOST_NAME.fullmatch(value):
        raise ValueError(
            f"{show(value)} is not a valid host or group name (letters, digits, . _ -)"
        )
    return value


def unix_user(value: str) -> str:
    if not _UNIX_USER.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid user name")
    return value


def dotted(value: str) -> str:
    if not _DOTTED.fullmatch(value):
        raise ValueError(f"{show(value)} is not a dotted Python module path")
    return value


def asgi_app(value: str) -> str:
    if not _ASGI.fullmatch(value):
        raise ValueError(f"{show(value)} is not of the form package.module:application")
    return value


def build_command(value: str) -> str:
    """A shell command run on the control machine (the team's own): one line, bounded."""
    if not value.strip() or len(value) > 2000 or any(c in value for c in "\0\n\r"):
        raise ValueError(f"{show(value)} is not one line of shell (at most 2,000 characters)")
    return value


_REL_PATH = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*(/[A-Za-z0-9_@+.-][A-Za-z0-9._@+-]*)*/?")


def relative_path(value: str) -> str:
    """A path inside the source: relative, no `..`, plain characters."""
    parts = value.rstrip("/").split("/")
    if not _REL_PATH.fullmatch(value) or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"{show(value)} is not a relative path inside the source "
            "(letters, digits, ._@+-, no ..)"
        )
    return value.rstrip("/")


def absolute_path(value: str) -> str:
    """A directory on the hosts for config files (no spaces, quotes or .. components)."""
    parts = value.rstrip("/").split("/")[1:]
    if (
        not value.startswith("/")
        or not parts
        or not all(_REL_PATH.fullmatch(p) for p in parts)
        or any(p in (".", "..") for p in parts)
    ):
        raise ValueError(
            f"{show(value)} is not an absolute path (letters, digits, ._@+- between /, no ..)"
        )
    return value.rstrip("/")


def url_path(value: str) -> str:
    if not _URL_PATH.fullmatch(value):
        raise ValueError(f"{show(value)} is not a URL path (starts with /; letters, digits, ._~-/)")
    return value


def env_key(value: str) -> str:
    if not _ENV_KEY.fullmatch(value):
        raise ValueError(f"{show(value)} is not a valid environment variable name")
    return value


def env_value(value: str) -> str:
    """Text the env file can hold so that systemd (EnvironmentFile=), python-dotenv and sh all
    read exactly this value (see env_quote); anything else is refused."""
    env_quote(value)
    return value


def env_quote(value: str) -> str:
    """The value as one quoted word that systemd, python-dotenv and POSIX sh read alike.

    Single quotes are literal to all three, except that python-dotenv unescapes `\\\\` and `\\'`
    in them: so a value without ' and \\ is single-quoted. Otherwise it is double-quoted with
    \\ and " escaped, which all three unescape the same way, as long as the value has no $ or `
    (sh and systemd need those escaped, python-dotenv would keep the backslash). python-dotenv
    expands ${NAME} even inside single quotes, so that is refused too.
    """
    if _CONTROL.search(value):
        raise ValueError("contains a newline or another control character")
    if _DOTENV_VARIABLE.search(value):
        raise ValueError("contains ${...}, which python-dotenv would expand")
    if "'" not in value and "\\" not in value:
        return f"'{value}'"
    if "$" in value or "`" in value:
        raise ValueError(
            "has ' or \\ together with $ or `: no quoting reads the same in systemd, sh and "
            "python-dotenv"
        )
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def celery_queue(value: str) -> str:
    if not _QUEUE.fullmatch(value):
        raise ValueError(
            f"{show(value)} is not a queue name (letters, digits and _ . : -, at most 100)"
        )
    return value


def port(value: int) -> int:
    if not 1024 <= value <= 65535:
        raise ValueError(f"{value} is not a port between 1024 and 65535")
    return value


def ssh_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port between 1 and 65535")
    return value


def count(low: int, high: int):
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is not between {low} and {high}")
        return value

    return check


_PYTHON = re.compile(r"3\.\d{1,2}")


def python_version(value: str) -> str:
    """A Python minor version: "3.13"."""
    if not _PYTHON.fullmatch(value):
        raise ValueError(f'{show(value)} is not a Python version like "3.13"')
    return value


def choice(*allowed: str):
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"{show(value)} is not one of {', '.join(map(repr, allowed))}")
        return value

    return check


def nginx_size(value: str) -> str:
    if not _NGINX_SIZE.fullmatch(value):
        raise ValueError(f"{show(value)} is not an nginx size (digits with an optional k, m or g)")
    return value


def nginx_time(value: str) -> str:
    if not _NGINX_TIME.fullmatch(value):
        raise ValueError(f"{show(value)} is not an nginx time (digits with ms, s, m, h or d)")
    return value


def cli_option(value: str) -> str:
    """One `--name` or `--name=value` token for a command line in a systemd unit."""
    if not _CLI_OPTION.fullmatch(value):
        raise ValueError(
            f"{show(value)} is not one --option or --option=value "
            "(letters, digits and _ . : / , @ + -; no spaces, quotes, ; or %)"
        )
    return value


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_HTTPS_URL = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")


def email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError(f"{show(value)} is not an e-mail address")
    return value


def https_url(value: str) -> str:
    if not _HTTPS_URL.fullmatch(value):
        raise ValueError(f"{show(value)} is not an https:// URL (host, optional port and path)")
    return value
