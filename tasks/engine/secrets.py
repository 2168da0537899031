"""Secrets are a type: they print as a mask everywhere and are revealed only into 0600 files."""

from __future__ import annotations

import io
from typing import Any

from . import values

MASK = "********"


class Secret:
    """A value that must never reach output, a diff, a JSON report or a process argument."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __bool__(self) -> bool:
        return bool(self._value)


def load_env_file(text: str) -> dict[str, Secret]:
    """A dotenv file's pairs, every value a secret. Strict: a line python-dotenv cannot parse,
    a name without `=`, a bad name, a value the env file cannot carry or a name given twice is
    a ValueError naming the line number, never the line (it may hold half a secret)."""
    from dotenv.parser import parse_stream  # imported only when a secrets file is read

    result: dict[str, Secret] = {}
    lines: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            raise ValueError(f"line {line}: not NAME=value (python-dotenv cannot parse it)")
        key = binding.key
        if key is None:  # a comment or a blank line
            continue
        try:
            values.env_key(key)
        except ValueError:
            raise ValueError(
                f"line {line}: the name is not a valid environment variable name "
                "(letters, digits and _, not starting with a digit)"
            ) from None
        if binding.value is None:
            # Not even the name: a line without = may be the second half of a split value.
            raise ValueError(f"line {line}: no = (write NAME=value)")
        if key in lines:
            raise ValueError(f"line {line}: {key} is given twice (also on line {lines[key]})")
        try:
            values.env_value(binding.value)
        except ValueError as exc:
            raise ValueError(f"line {line}: the value of {key} {exc}") from None
        lines[key] = line
        result[key] = Secret(binding.value)
    return result


def redact(text: str, secrets: list[Secret]) -> str:
    """Mask every secret value that occurs in free text (output of remote commands, errors):
    the one place masking must search, as nothing else marks where a secret landed."""
    for secret in sorted(secrets, key=lambda s: len(s.reveal()), reverse=True):
        value = secret.reveal()
        if len(value) >= 4:
            text = text.replace(value, MASK)
    return text


# Fields the kit fills from a fixed vocabulary or the inventory (never from a host's output):
# masking "changed" because a secret happens to be that word would only corrupt the report.
KIT_FIELDS = frozenset({"status", "host", "step"})


def redact_data(data: Any, secrets: list[Secret]) -> Any:
    """The same for data bound for JSON: each string inside masked on its own, so the result
    still serializes (masking the serialized text can cut a token or a quote)."""
    if isinstance(data, str):
        return redact(data, secrets)
    if isinstance(data, dict):
        return {
            k: v if k in KIT_FIELDS and isinstance(v, str) else redact_data(v, secrets)
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [redact_data(v, secrets) for v in data]
    return data
