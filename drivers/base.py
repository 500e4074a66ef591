"""The one protocol every scanner driver implements, and the values drivers hand to the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Signal = Literal["good", "bad", "attention"]


@dataclass(frozen=True, slots=True)
class RawScan:
    """One complete frame from a scanner, stamped when its last byte arrived."""

    scanner: str
    data: bytes
    mono_ns: int
    wall_ns: int


@dataclass(frozen=True, slots=True)
class ScannerDone:
    """A finite source (replay) has no more scans."""

    scanner: str


class Scanner(Protocol):
    """A barcode source. ``read`` is called from the scanner's own thread; ``signal`` from the main loop."""

    name: str

    def open(self) -> None:
        """Acquire the device. Raises OSError or DriverError when it is absent."""
        ...

    def read(self, timeout_s: float) -> list[bytes]:
        """Complete frames received within ``timeout_s`` (may be empty). Raises OSError when the device is lost."""
        ...

    def close(self) -> None:
        """Release the device; safe to call twice."""
        ...

    def signal(self, kind: Signal) -> None:
        """Tell the employee how the read went (beep, LED, ACK/NAK). No-op when the device cannot be signalled."""
        ...

    @property
    def exhausted(self) -> bool:
        """True for a finite source that has delivered everything."""
        ...

    def take_frame_errors(self) -> list[str]:
        """Reasons for frames dropped since the last call (too long, partial, ...)."""
        ...


@dataclass
class Health:
    """A scanner's health as the runner sees it; read by status and (later) /readyz."""

    name: str
    kind: str
    state: str = "starting"  # starting | ok | absent | exhausted | stopped
    last_error: str = ""
    frames: int = 0
    opens: int = 0
    bad_frames: dict[str, int] = field(default_factory=dict)
    since_wall_ns: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "kind": self.kind, "state": self.state, "last_error": self.last_error,
            "frames": self.frames, "opens": self.opens, "bad_frames": dict(self.bad_frames),
        }
