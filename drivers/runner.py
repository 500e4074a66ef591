"""Runs one scanner in its own thread: open, read, reopen with backoff, and keep its health.

Retry and health are written once here for every driver. The thread only puts RawScan / ScannerDone on
the loop's queue; it never touches the database.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable

from drivers.base import Health, RawScan, Scanner, ScannerDone, Signal

log = logging.getLogger(__name__)


def backoff_s(attempt: int, base_s: float = 0.2, cap_s: float = 5.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt, 30)))


class ScannerRunner:
    """Owns one Scanner: a reader thread, reconnects, health, and feedback signalling."""

    def __init__(
        self, scanner: Scanner, kind: str, out: queue.Queue[object] | None = None, *, cap_s: float = 5.0,
        wall_ns: Callable[[], int] = time.time_ns, monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.scanner = scanner
        self.name = scanner.name
        self.out: queue.Queue[object] = out if out is not None else queue.Queue()
        self.wall_ns = wall_ns  # injectable (agent.clock), so a simulated clock stamps scans too
        self.monotonic_ns = monotonic_ns
        self.cap_s = cap_s
        self.health = Health(name=scanner.name, kind=kind, since_wall_ns=time.time_ns())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scanner-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def signal(self, kind: Signal) -> None:
        try:
            self.scanner.signal(kind)
        except Exception as e:  # a beeper that fails must never take the loop down
            log.warning("scanner %r: feedback %s failed: %s", self.name, kind, e)

    def _set_state(self, state: str, error: str = "") -> None:
        if state != self.health.state or error != self.health.last_error:
            self.health.state = state
            self.health.last_error = error
            self.health.since_wall_ns = time.time_ns()

    def _count_frame_errors(self) -> None:
        for reason in self.scanner.take_frame_errors():
            self.health.bad_frames[reason] = self.health.bad_frames.get(reason, 0) + 1
            log.warning("scanner %r: %s", self.name, reason)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.scanner.open()
            except Exception as e:
                if attempt == 0 or self.health.state != "absent":
                    log.warning("scanner %r: cannot open: %s", self.name, e)
                self._set_state("absent", str(e))
                self._stop.wait(backoff_s(attempt, cap_s=self.cap_s))
                attempt += 1
                continue
            attempt = 0
            self.health.opens += 1
            self._set_state("ok")
            log.info("scanner %r: open", self.name)
            try:
                self._read_until_stopped()
            except Exception as e:
                log.warning("scanner %r: lost: %s", self.name, e)
                self._set_state("absent", str(e))
            finally:
                self.scanner.close()
                self._count_frame_errors()
            if self.health.state == "exhausted":
                self.out.put(ScannerDone(self.name))
                return
            if not self._stop.is_set():
                self._stop.wait(backoff_s(attempt, cap_s=self.cap_s))
                attempt += 1
        self._set_state("stopped")

    def _read_until_stopped(self) -> None:
        while not self._stop.is_set():
            frames = self.scanner.read(0.2)
            if frames:
                wall_ns, mono_ns = self.wall_ns(), self.monotonic_ns()
                for f in frames:
                    self.health.frames += 1
                    self.out.put(RawScan(self.name, f, mono_ns, wall_ns))
            self._count_frame_errors()
            if self.scanner.exhausted:
                self._set_state("exhausted")
                return
