"""A Bloom filter in front of a report-id lookup: most ids are new, and saying so is cheap.

Every record a node or an auditor judges needs "is this report id stored already?"
(:class:`bus.verify.ChainBook`); nearly always the answer is no, and asking SQLite costs a
query per record. :class:`IdFilter` answers "certainly not" from memory for almost all of them
and sends only the rest (true repeats and about 1 % false positives) to the real lookup, so
verdicts are exactly those of the lookup alone.

Report ids are chosen by observers, so bit positions come from Python's string hash (SipHash
under a random key per process, unless PYTHONHASHSEED pins it): nobody can aim ids at the
same bits to make every lookup fall through (and if they could, it would only cost the query
the filter saves). The filter holds 12-24 bits per id (2-3 MiB per million ids) and is
rebuilt from the store's ids with twice the capacity whenever it is full; a rebuild is also
how a worker that shares its store with others catches up on the ids they stored
(:meth:`IdFilter.rebuild`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from bus.verify import DigestLookup

# At least 12 bits and 4 positions per id: under 0.7 % false positives at capacity.
_BITS_PER_ID: Final = 12
_MIN_CAPACITY: Final = 1 << 16


class IdFilter:
    """A report-id lookup (``lookup(report_id) -> digest | None``) behind a Bloom filter.

    Args:
        lookup: the authoritative lookup (the store).
        stored_ids: yields every report id the store holds now; called at start and on
            every :meth:`rebuild` (growth included).
    """

    def __init__(self, lookup: DigestLookup, stored_ids: Callable[[], Iterable[str]]) -> None:
        self._lookup = lookup
        self._stored_ids = stored_ids
        self._capacity = _MIN_CAPACITY
        self._bits = bytearray(1)
        self._mask = 7
        self._count = 0
        self.passed = 0  # lookups answered by the filter alone
        self.asked = 0  # lookups sent on to the store
        self.rebuild()

    def _positions(self, report_id: str) -> tuple[int, int, int, int]:
        # Double hashing (Kirsch-Mitzenmacher) over the two 32-bit halves of the interpreter's
        # string hash: SipHash under a random per-process key, computed once per str object.
        h = hash(report_id)
        h1, h2 = h & 0xFFFF_FFFF, ((h >> 32) & 0xFFFF_FFFF) | 1
        m = self._mask
        return (h1 & m, (h1 + h2) & m, (h1 + 2 * h2) & m, (h1 + 3 * h2) & m)

    def add(self, report_id: str) -> None:
        """Remember an id (a report accepted or about to be stored)."""
        if self._count >= self._capacity:
            self._capacity *= 2
            self.rebuild()
        self._set(report_id)

    def add_many(self, report_ids: Iterable[str]) -> None:
        """Remember ids, as :meth:`add` of each (a stored batch's)."""
        for report_id in report_ids:
            if self._count >= self._capacity:
                self._capacity *= 2
                self.rebuild()
            self._set(report_id)

    def _set(self, report_id: str) -> None:
        # _positions written out (this runs for every stored id).
        h = hash(report_id)
        h1, h2 = h & 0xFFFF_FFFF, ((h >> 32) & 0xFFFF_FFFF) | 1
        m, bits = self._mask, self._bits
        p = h1 & m
        bits[p >> 3] |= 1 << (p & 7)
        p = (h1 + h2) & m
        bits[p >> 3] |= 1 << (p & 7)
        p = (h1 + 2 * h2) & m
        bits[p >> 3] |= 1 << (p & 7)
        p = (h1 + 3 * h2) & m
        bits[p >> 3] |= 1 << (p & 7)
        self._count += 1

    def might_contain(self, report_id: str) -> bool:
        """False only when ``report_id`` was never added."""
        # _positions written out, stopping at the first clear bit (this runs for every
        # record judged, and the first position alone rules out most new ids).
        h = hash(report_id)
        h1, h2 = h & 0xFFFF_FFFF, ((h >> 32) & 0xFFFF_FFFF) | 1
        m, bits = self._mask, self._bits
        p = h1 & m
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (h1 + h2) & m
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (h1 + 2 * h2) & m
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (h1 + 3 * h2) & m
        return bool(bits[p >> 3] & (1 << (p & 7)))

    def rebuild(self) -> None:
        """Start again from the store's ids, sized for at least twice as many.

        Streams the ids (never holds them all: a rebuild must not be the auditor's memory
        peak); when they turn out too many for the current size, it sizes up and reads again.
        """
        while True:
            nbits = 1 << (self._capacity * _BITS_PER_ID - 1).bit_length()
            self._bits = bytearray(nbits // 8)
            self._mask = nbits - 1
            self._count = 0
            for report_id in self._stored_ids():
                self._set(report_id)
            if 2 * self._count <= self._capacity:
                return
            while self._capacity < 2 * self._count:
                self._capacity *= 2

    def __call__(self, report_id: str) -> bytes | None:
        """The stored digest of ``report_id`` or None, as the lookup says, asking it only when
        the filter cannot rule the id out."""
        if not self.might_contain(report_id):
            self.passed += 1
            return None
        self.asked += 1
        return self._lookup(report_id)
