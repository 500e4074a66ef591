"""Turns a byte stream into frames: terminators, a bounded buffer, and a timeout for partial frames. Pure."""

from __future__ import annotations


class Framer:
    """Splits bytes on a terminator; never holds more than ``max_frame`` bytes.

    With a CR or LF terminator, CR, LF and CRLF all end a frame (scanners differ) and empty frames are
    ignored. A frame longer than ``max_frame`` is dropped whole (up to its terminator) and reported once.
    A partial frame that sees no byte for ``timeout_ns`` is dropped and reported.
    """

    def __init__(self, terminator: bytes = b"\r", max_frame: int = 4096, timeout_ns: int = 500_000_000) -> None:
        if not terminator:
            raise ValueError("terminator must not be empty")
        self.line_mode = terminator in (b"\r", b"\n", b"\r\n", b"\n\r")
        self.terminator = terminator
        self.max_frame = max_frame
        self.timeout_ns = timeout_ns
        self._buf = bytearray()
        self._overflowing = False
        self._last_byte_ns = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, now_ns: int) -> tuple[list[bytes], list[str]]:
        """Add bytes; returns (complete frames, reasons for dropped frames)."""
        frames: list[bytes] = []
        errors = self.expire(now_ns)
        if data:
            self._last_byte_ns = now_ns
        for piece, complete in self._split(data):
            if self._overflowing:
                if complete:
                    self._overflowing = False
                continue
            if len(self._buf) + len(piece) > self.max_frame:
                errors.append(f"frame over {self.max_frame} bytes without a terminator; dropped")
                self._buf.clear()
                self._overflowing = not complete
                continue
            self._buf += piece
            if complete:
                if self._buf:
                    frames.append(bytes(self._buf))
                self._buf.clear()
        return frames, errors

    def expire(self, now_ns: int) -> list[str]:
        """Drop a partial frame that has been idle too long."""
        if (self._buf or self._overflowing) and now_ns - self._last_byte_ns >= self.timeout_ns:
            n = len(self._buf)
            self._buf.clear()
            was_overflowing, self._overflowing = self._overflowing, False
            if was_overflowing:
                return []
            return [f"partial frame of {n} bytes, no terminator within {self.timeout_ns / 1e9:g} s; dropped"]
        return []

    def reset(self) -> list[str]:
        """The device went away: whatever was half-read is dropped and reported."""
        n = len(self._buf)
        self._buf.clear()
        self._overflowing = False
        return [f"partial frame of {n} bytes lost when the port closed"] if n else []

    def _split(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Pieces of ``data`` and whether each ended with a terminator."""
        if self.line_mode:
            parts = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        else:
            parts = data.split(self.terminator)
        out = [(p, True) for p in parts[:-1]]
        if parts[-1]:
            out.append((parts[-1], False))
        return out
