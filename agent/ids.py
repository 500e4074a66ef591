"""Event identifiers minted at capture: UUIDv7 (RFC 9562), 48-bit ms time plus 74 random bits.

The time part only orders ids loosely; uniqueness comes from the random bits, so a wrong or repeated wall
clock (a Pi without RTC) never produces a repeated id.
"""

from __future__ import annotations

import os
import uuid


def uuid7(wall_ns: int) -> str:
    """A new UUIDv7 string for an event captured at ``wall_ns``."""
    ms = (wall_ns // 1_000_000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
