"""Epochs of the bus: what a final seal says, and where each record falls in the one order.

Kafka orders each partition and nothing orders partitions against each other, so a verdict that
depended on the order a reader fetched partitions in would differ between readers. Seals fix
that. The final seal of epoch *e* (chosen from the seals topic alone, :mod:`bus.seal`) states,
for every partition of every bus topic, how many records it holds (its *size*) and their
RFC 6962 root, plus a time *t_e* that a quorum of organizations cosigned. From these:

* **The order.** A record at ``offset`` of a partition belongs to the first epoch whose size
  for that partition exceeds ``offset``. Every record of epoch *e* comes after every record of
  epoch *e-1*; inside an epoch records are judged in :func:`canonical_key` order.
* **The clock.** Wherever a verdict needs "now", it is *t_e* of the record's epoch, never a
  broker timestamp or a local clock.

An epoch's votes may take several rounds (:mod:`bus.seal`); only the final seal counts here,
whichever round it was final in.

This module holds only the data both sides agree on (:class:`FinalSeal`) and the pure functions
over it; it has no I/O and no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

PartitionRef = tuple[str, int]
"""A topic-partition: (topic name, partition number)."""


@dataclass(frozen=True, slots=True)
class PartitionSeal:
    """What a seal states about one partition: its size and the RFC 6962 root over its first
    ``size`` record values (leaf i = value of the record at offset i; a null value counts as
    empty bytes)."""

    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class FinalSeal:
    """The final seal of one epoch, as every honest reader derives it from the seals topic.

    Args:
        mandate_id: the mandate the bus runs under.
        epoch: 1, 2, 3, ... (epoch 0 is the empty log before the first seal).
        time_ms: *t_e*, the time a quorum cosigned; strictly greater than the previous epoch's.
        partitions: every sealed partition with its size and root; a partition absent here has
            size 0 in this epoch. Sizes never shrink from one epoch to the next.
        digest: SHA-256 of the seal's exact text (what the next seal's ``prev`` names).
        prev_digest: the digest of the final seal of epoch ``epoch - 1`` (32 zero bytes for
            epoch 1).
        signers: the organizations whose cosignatures made it final.
        offset: where the cosignature that made it final sits on the seals topic.
        round: the epoch's voting round it was final in (1 unless a round of split votes died
            first, :mod:`bus.seal`); part of its text, so of ``digest``.
        carried: for epoch 1, the registry records accrediting node keys its text carries (the
            trust its votes were counted under, :mod:`bus.seal`); part of its text. Empty for
            every later epoch.
    """

    mandate_id: str
    epoch: int
    time_ms: int
    partitions: Mapping[PartitionRef, PartitionSeal]
    digest: bytes
    prev_digest: bytes
    signers: frozenset[str] = field(default_factory=frozenset)
    offset: int = -1
    round: int = 1
    carried: tuple[bytes, ...] = ()

    def size(self, ref: PartitionRef) -> int:
        """Records of ``ref`` sealed up to and including this epoch."""
        sealed = self.partitions.get(ref)
        return 0 if sealed is None else sealed.size


GENESIS_DIGEST = bytes(32)
"""What the first seal names as its previous seal."""


def epoch_of(seals: list[FinalSeal], ref: PartitionRef, offset: int) -> int | None:
    """The epoch a record falls in, or None while no final seal covers it yet.

    ``seals`` are the final seals in epoch order (seals[0] is epoch 1).
    """
    lo, hi = 0, len(seals)
    while lo < hi:  # first seal whose size for ref exceeds offset (sizes never shrink)
        mid = (lo + hi) // 2
        if seals[mid].size(ref) > offset:
            hi = mid
        else:
            lo = mid + 1
    return seals[lo].epoch if lo < len(seals) else None


def canonical_key(ref: PartitionRef, offset: int) -> tuple[str, int, int]:
    """Sort key of a record inside its epoch: topic, then partition, then offset."""
    return (ref[0], ref[1], offset)
