"""Clocks: monotonic time for order and timeouts, wall time for the record, and whether wall time is trusted.

Nothing else in the agent calls ``time.time()``; decisions take ``now`` from a Clock so tests can inject one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    """What the agent needs from time."""

    def monotonic_ns(self) -> int:
        """Nanoseconds on a clock that never goes back (CLOCK_MONOTONIC)."""
        ...

    def wall_ns(self) -> int:
        """Nanoseconds since the Unix epoch, as the system believes it."""
        ...

    def synchronized(self) -> bool:
        """True when the kernel says the wall clock is disciplined by NTP (a Pi without RTC may boot wrong)."""
        ...


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only `status` is read. Padding covers the reserved tail.
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class SystemClock:
    """The real clocks. ``synchronized`` asks the kernel (adjtimex) at most once every 60 s."""

    def __init__(self) -> None:
        self._libc = None
        name = ctypes.util.find_library("c")
        if name:
            try:
                self._libc = ctypes.CDLL(name, use_errno=True)
            except OSError:
                self._libc = None
        self._synced = False
        self._checked_mono_ns: int | None = None

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns()

    def synchronized(self) -> bool:
        now = time.monotonic_ns()
        if self._checked_mono_ns is None or now - self._checked_mono_ns > 60_000_000_000:
            self._checked_mono_ns = now
            self._synced = self._ask_kernel()
        return self._synced

    def _ask_kernel(self) -> bool:
        if self._libc is None:
            return False
        tx = _Timex()
        state = self._libc.adjtimex(ctypes.byref(tx))
        return state not in (-1, _TIME_ERROR) and not (tx.status & _STA_UNSYNC)


class FakeClock:
    """A clock the caller moves by hand (tests, simulated outages)."""

    def __init__(self, wall_ns: int = 1_795_000_000_000_000_000, synced: bool = True) -> None:
        self._mono = 1_000_000_000
        self._wall = wall_ns
        self.synced = synced

    def advance(self, seconds: float) -> None:
        step = int(seconds * 1e9)
        self._mono += step
        self._wall += step

    def monotonic_ns(self) -> int:
        return self._mono

    def wall_ns(self) -> int:
        return self._wall

    def synchronized(self) -> bool:
        return self.synced


def rfc3339(wall_ns: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-22T01:08:06.123Z``."""
    t = dt.datetime.fromtimestamp(wall_ns / 1e9, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str, what: str = "time") -> dt.datetime:
    """An RFC 3339 time with a zone, as a UTC datetime.

    Raises:
        ValueError: naming ``what``: not a time, or no time zone.
    """
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an RFC 3339 time such as 2026-11-02T14:00:00Z") from None
    if t.tzinfo is None:
        raise ValueError(f"{what} {text!r} has no time zone (add Z or an offset)")
    return t.astimezone(dt.timezone.utc)
