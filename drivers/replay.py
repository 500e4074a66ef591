"""Replays scans from a file or standard input: the demo, tests and benchmarks.

One scan per line. Blank lines and lines starting with '#' are skipped. A line may start with
``+SECONDS`` and a space to wait that long (scaled by ``speed``; 0 = no waiting) before the scan.
Feedback is recorded in ``signals`` (a replay has no beeper).
"""

from __future__ import annotations

import re
import select
import sys
import time
from typing import IO

from agent.settings import ReplayScanner
from drivers.base import Signal

_DELAY = re.compile(rb"^\+(\d+(?:\.\d*)?)\s+")


class ReplayDriver:
    """Scans from a file or stdin, optionally paced."""

    def __init__(self, cfg: ReplayScanner) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._file: IO[bytes] | None = None
        self._due = 0.0
        self._pending: bytes | None = None
        self._done = False
        self.signals: list[Signal] = []

    @property
    def exhausted(self) -> bool:
        return self._done

    def open(self) -> None:
        if self._file is None and not self._done:
            self._file = sys.stdin.buffer if self.cfg.path == "-" else open(self.cfg.path, "rb")  # noqa: SIM115
            self._due = time.monotonic()

    def read(self, timeout_s: float) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        out: list[bytes] = []
        while not self._done:
            if self._pending is None:
                line = self._next_line(deadline)
                if line is None:
                    break  # stdin had nothing yet
                self._pending = line
            now = time.monotonic()
            if now < self._due:
                if out or self._due > deadline:
                    break
                time.sleep(self._due - now)
            if self._pending:
                out.append(self._pending)
            self._pending = None
            if out and self.cfg.speed:
                break  # paced: one scan per call keeps the timing honest
        return out

    def _next_line(self, deadline: float) -> bytes | None:
        assert self._file is not None
        while True:
            if self.cfg.path == "-":
                ready, _, _ = select.select([self._file], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    return None
            line = self._file.readline()
            if not line:
                self._done = True
                return None
            text = line.strip()
            if not text or text.startswith(b"#"):
                continue
            m = _DELAY.match(text)
            if m:
                if self.cfg.speed:
                    self._due = max(self._due, time.monotonic()) + float(m.group(1)) / self.cfg.speed
                text = text[m.end():]
            return text

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdin.buffer:
            self._file.close()
        self._file = None

    def signal(self, kind: Signal) -> None:
        self.signals.append(kind)

    def take_frame_errors(self) -> list[str]:
        return []
