"""UUID version 7 (RFC 9562 section 5.7): 48-bit Unix milliseconds, then random bits.

Pure: the caller supplies the time and the random bytes, so ids are reproducible in tests.

Why not a library: the maintained ones (``uuid6``, ``uuid-utils``, Python 3.14's ``uuid.uuid7``)
draw their random bits themselves, and the demo scenario and the tests need ids drawn from a
seeded generator (the same scenario gives the same report ids). Nothing here relies on ids being
monotonic within a millisecond: report ids are unique per observer, ordered by the chain's
``seq``, never by id; statement ids only need to be unique. So the 74 random bits of RFC 9562's
basic layout suffice and no counter is kept.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Final

_MAX_MS: Final = (1 << 48) - 1


def uuid7(unix_ms: int | None = None, rand: bytes | None = None) -> str:
    """Return a UUIDv7 in canonical lower-case text form.

    Args:
        unix_ms: milliseconds since the epoch; the current time when None.
        rand: 10 random bytes (74 bits are used); os.urandom when None.

    Raises:
        ValueError: unix_ms outside 48 bits or rand not 10 bytes.
    """
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    if not 0 <= ms <= _MAX_MS:
        raise ValueError("unix_ms must fit in 48 bits")
    r = os.urandom(10) if rand is None else rand
    if len(r) != 10:
        raise ValueError("rand must be 10 bytes")
    tail = int.from_bytes(r, "big")
    rand_a = (tail >> 68) & 0xFFF  # 12 bits
    rand_b = tail & ((1 << 62) - 1)  # 62 bits
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def uuid7_unix_ms(text: str) -> int:
    """The millisecond timestamp embedded in a UUIDv7."""
    return uuid.UUID(text).int >> 80
