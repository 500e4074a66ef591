"""Counters kept outside the database: the boot counter and the sequence high-water mark.

They live in a small file written atomically (write, fsync, rename, fsync the directory), so that a database
moved aside as corrupt, or rebuilt, never makes a sequence number repeat. Sequence numbers are handed out
from reserved blocks: the file records the last number of the current block before any number in it is
used, so a crash leaves a gap (at most one block), never a repeat. A clean stop gives the unused rest of the
block back, so clean restarts leave no gap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BLOCK = 1000


class Counters:
    """Boot counter and per-device sequence numbers for one state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.boot = 0
        self._next_seq = 1
        self._reserved_last = 0  # every seq up to this one (inclusive) may have been handed out

    def load(self, db_max_seq: int) -> None:
        """Read the file (missing = first start) and continue above both it and the database's highest seq.

        Raises:
            OSError: the file exists but cannot be read or written.
        """
        data: dict[str, int] = {}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            pass
        except (ValueError, UnicodeDecodeError):
            # A torn file cannot happen with rename; a hand-edited one can. The database still bounds seq.
            data = {}
        self.boot = int(data.get("boot", 0)) + 1
        self._reserved_last = max(int(data.get("seq_hwm", 0)), db_max_seq)
        self._next_seq = self._reserved_last + 1
        self._write(self._reserved_last)

    def next_seq(self) -> int:
        """The next sequence number; reserves a new block on disk first when the current one is used up."""
        if self._next_seq > self._reserved_last:
            last = self._next_seq + BLOCK - 1
            self._write(last)  # on OSError nothing changes: the caller may retry once space returns
            self._reserved_last = last
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def release(self) -> None:
        """Clean stop: give back the unused rest of the block. Best effort (a crash just leaves a gap)."""
        if self._reserved_last >= self._next_seq:
            try:
                self._write(self._next_seq - 1)
                self._reserved_last = self._next_seq - 1
            except OSError:
                pass

    def _write(self, seq_hwm: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        payload = json.dumps({"boot": self.boot, "seq_hwm": seq_hwm}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
