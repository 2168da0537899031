"""What a run tells people and scripts: one line per step naming its host, a recap, or JSON.

Every text that reaches output passes through `redact`, so a secret that leaks into a remote
error message is masked before it is printed or put in the JSON report.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TextIO

from .hostinfo import HostInfo
from .outcome import K, Outcome, merged, of_kind
from .secrets import Secret, redact, redact_data

STATUSES = ("ok", "changed", "failed", "skipped")
SHOWN_APART = ("uv",)  # one-time uploads the recap names apart from the rest


@dataclass
class StepResult:
    step: str
    status: str  # ok, changed, failed, skipped
    detail: str = ""
    diff: str = ""
    seconds: float = 0.0


@dataclass
class HostReport:
    host: str
    steps: list[StepResult] = field(default_factory=list)
    commands: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    error: str = ""
    # What the run's steps found or did here, typed (engine/outcome.py), in the order they came.
    outcomes: list[Outcome] = field(default_factory=list)
    host_info: HostInfo | None = None  # what the host is, as read this run
    # Bytes of payloads with a kind (Action.kind): "uv" (the installer, once per host),
    # "wheels", "source" ...; included in bytes_sent.
    bytes_by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def failed(self) -> bool:
        return bool(self.error) or self.count("failed") > 0

    def outcomes_of(self, kind: type[K]) -> list[K]:
        return of_kind(self.outcomes, kind)

    @property
    def extra(self) -> dict[str, Any]:
        """The outcomes as the JSON report's `extra` table."""
        return merged(self.outcomes)

    def as_data(self) -> dict[str, Any]:
        data = asdict(replace(self, outcomes=[]))
        del data["outcomes"]
        data["extra"] = self.extra
        return data


class Reporter:
    """Thread-safe: hosts converge in parallel and each line is written whole."""

    def __init__(
        self,
        mode: str = "human",  # human, quiet, json
        check: bool = False,
        secrets: list[Secret] | None = None,
        out: TextIO | None = None,
        heartbeat: float = 10.0,
    ) -> None:
        self.mode, self.check = mode, check
        self.secrets = secrets or []
        self.out = out or sys.stdout
        self.heartbeat = heartbeat
        self._lock = threading.Lock()
        self.width = 8

    def clean(self, text: str) -> str:
        return redact(text, self.secrets)

    def line(self, host: str, status: str, text: str) -> None:
        if self.mode == "json" or (self.mode == "quiet" and status in ("ok", "skipped", "...")):
            return
        label = "would change" if self.check and status == "changed" else status
        with self._lock:
            print(f"{host:<{self.width}} | {label:<7} | {self.clean(text)}", file=self.out)
            self.out.flush()

    def step(self, host: str, result: StepResult) -> None:
        text = result.step + (f": {result.detail}" if result.detail else "")
        if result.seconds >= 1:
            text += f" ({result.seconds:.1f}s)"
        self.line(host, result.status, text)
        if result.diff and self.mode != "json":
            with self._lock:
                for diff_line in self.clean(result.diff).splitlines():
                    print(f"{host:<{self.width}} |         | {diff_line}", file=self.out)

    def progress(self, host: str, label: str, echo: bool = False) -> Progress:
        return Progress(self, host, label, echo)

    def recap(self, reports: list[HostReport]) -> None:
        if self.mode == "json":
            print(json.dumps(self.as_data(reports), indent=2), file=self.out)
            return
        with self._lock:
            print(
                "RECAP" + (" (check mode: nothing was changed)" if self.check else ""),
                file=self.out,
            )
            for r in reports:
                counts = "  ".join(f"{s}={r.count(s)}" for s in STATUSES)
                shown = dict(line for o in r.outcomes if (line := o.recap()) is not None)
                live = "".join(f"  {shown[key]}" for key in sorted(shown))
                apart = "".join(
                    f" ({kind} {_size(n)})"
                    for kind, n in sorted(r.bytes_by_kind.items())
                    if kind in SHOWN_APART
                )
                print(
                    f"{r.host:<{self.width}}  {counts}  commands={r.commands}  "
                    f"sent={_size(r.bytes_sent)}{apart}  {r.seconds:.2f}s{live}"
                    + (f"  error: {self.clean(r.error)}" if r.error else ""),
                    file=self.out,
                )

    def as_data(self, reports: list[HostReport]) -> dict:
        hosts = []
        for r in reports:
            data = r.as_data()
            data.update({s: r.count(s) for s in STATUSES})
            data["failed_run"] = r.failed
            hosts.append(data)
        data = {"check": self.check, "ok": not any(r.failed for r in reports), "hosts": hosts}
        return redact_data(data, self.secrets)


class Progress:
    """Shows a long step is alive: a start line, then a heartbeat with lines seen and time;
    with echo, each line the step prints as well."""

    def __init__(self, reporter: Reporter, host: str, label: str, echo: bool = False) -> None:
        self.reporter, self.host, self.label, self.echo = reporter, host, label, echo
        self.lines = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Progress:
        self.reporter.line(self.host, "...", f"{self.label} ...")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def on_line(self, line: str) -> None:
        self.lines += 1
        if self.echo and line.strip():
            self.reporter.line(self.host, "...", line.strip())

    def _beat(self) -> None:
        while not self._stop.wait(self.reporter.heartbeat):
            elapsed = time.monotonic() - self.started
            self.reporter.line(
                self.host, "...", f"{self.label}: {elapsed:.0f}s, {self.lines} lines of output"
            )


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size}B"
