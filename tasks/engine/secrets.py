"""Secrets are a type: they print as a mask everywhere and are revealed only into 0600 files."""

from __future__ import annotations

from pathlib import Path

from dotenv import dotenv_values

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


def load_env_file(path: Path) -> dict[str, Secret]:
    """Read a dotenv file; every value in it is a secret. Raises ValueError naming the key."""
    raw = dotenv_values(path, interpolate=False)
    result: dict[str, Secret] = {}
    for key, value in raw.items():
        values.env_key(key)
        if value is None:
            raise ValueError(f"{key} has no value (write {key}=...)")
        try:
            values.env_value(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        result[key] = Secret(value)
    return result


def redact(text: str, secrets: list[Secret]) -> str:
    """Mask every secret value that occurs in text (output of remote commands, errors)."""
    for secret in sorted(secrets, key=lambda s: len(s.reveal()), reverse=True):
        value = secret.reveal()
        if len(value) >= 4:
            text = text.replace(value, MASK)
    return text
