"""The gateway's trust state: its organization's node's final trust state, nothing else.

A gateway judges a report with the trust state (the mandate version in force and the key ring)
that the node's final judge holds after the newest final seal, so the gateway, the node, its
follow-up and every other organization's node agree on who may sign, whatever mandate file
each was started from: a root rotated out accredits nothing, a revocation stands once sealed.

:class:`SealedTrust` is the pure part. It is fed the records of the trust topics
(``<prefix>registry`` and ``<prefix>mandate``, each partition in offset order) and the node's
final seals in epoch order (:meth:`SealedTrust.advance`), and judges each final seal's epoch,
restricted to the trust topics, with a :class:`~bus.sealed_reader.SealedReader` (so a
:class:`~bus.judge.FinalJudge` derived from the root mandate, version 1, decides). Trust records
logged in epoch *e* take effect from epoch *e + 1*; the key ring after the newest judged epoch
is the one in force for the reports the gateway publishes now (they are sealed in a later
epoch). The node's final store gives the seals; the records come from the bus
(:class:`nodes.gateway.kafka.TrustReader`), checked against the seals' roots, so neither a
hostile operator nor a corrupt file can hand the gateway a trust state no quorum sealed.

**Before the first final seal** the gateway holds no trust state: it publishes nothing and
answers every report ``503`` with reason :data:`NOT_SEALED_YET` (retry: the first seal comes
within a seal interval of the nodes starting). A key accredited in epoch *e* may sign through
the gateway once seal *e* is final and the gateway has judged it (its refresh interval later).
A sealed trust record that no longer hashes to its seal's root
(:class:`~bus.errors.SealedRootMismatchError`) stops the gateway's trust where it stood: it
answers :data:`SEALED_LOG_BROKEN` until restarted on an intact log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from bus.epoch import FinalSeal, PartitionRef
from bus.errors import VerificationError
from bus.model import PAYLOAD_ACCREDITATION, Accreditation, Mandate
from bus.sealed_reader import SealedReader
from bus.topics import Topics
from bus.trust import KeyRing, decode_registry_record, verify_accreditation
from bus.verify import Limits

NOT_SEALED_YET: Final = "not_sealed_yet"  # no final seal judged yet: nothing to judge with
SEALED_LOG_BROKEN: Final = "sealed_log_broken"  # a sealed trust record was altered or deleted
# Accreditation records kept per key id the gateway asks about (its own node key): re-signed
# copies after root rotations are few; more are not kept (the newest win).
_MAX_RECORDS_PER_KEY: Final = 64


class SealedTrust:
    """The final trust state of a bus, judged from the trust topics and final seals (pure).

    Args:
        root: version 1 of the mandate (what every node's final judge starts from).
        topics: topic names.
        limits: the verification limits the nodes' sealers judge with.
        watch_key: a key id whose accreditation records are kept (the gateway's node key), so
            :meth:`accreditation_record` can serve the one in force.
    """

    def __init__(
        self,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        watch_key: bytes | None = None,
    ) -> None:
        self._topics = topics
        self._reader = SealedReader(root, topics, limits)
        self._time_ms = 0
        self._watch = watch_key
        self._records: list[bytes] = []

    # -- reads -------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The last final epoch judged (0: none yet, no trust state)."""
        return self._reader.judge.epoch

    @property
    def sealed(self) -> bool:
        """Whether at least one final seal has been judged."""
        return self.epoch > 0

    @property
    def time_ms(self) -> int:
        """*t_e* of the last epoch judged (0 before the first)."""
        return self._time_ms

    @property
    def keyring(self) -> KeyRing:
        """The key ring in force for the next epoch (the final judge's)."""
        return self._reader.judge.keyring

    @property
    def mandate(self) -> Mandate:
        """The mandate version in force for the next epoch."""
        return self.keyring.mandate

    def covers(self, topic: str) -> bool:
        """Whether ``topic`` is one the trust state is read from."""
        return topic in (self._topics.registry, self._topics.mandate)

    def positions(self) -> dict[PartitionRef, int]:
        """Each trust partition's judged size (where to read from after a restart)."""
        return self._reader.positions()

    def read_size(self, ref: PartitionRef) -> int:
        """Records of ``ref`` held without a gap from offset 0."""
        return self._reader.read_size(ref)

    def restricted(self, seal: FinalSeal) -> FinalSeal:
        """``seal`` with only the trust partitions."""
        parts = {r: p for r, p in seal.partitions.items() if self.covers(r[0])}
        return dataclasses.replace(seal, partitions=parts)

    def ready(self, seal: FinalSeal) -> bool:
        """Whether every trust record ``seal`` covers is held."""
        return all(self.read_size(r) >= p.size for r, p in self.restricted(seal).partitions.items())

    def missing(self, seal: FinalSeal) -> dict[PartitionRef, tuple[int, int]]:
        """Trust partitions ``seal`` covers beyond what is held: (held, sealed size)."""
        return {
            r: (self.read_size(r), p.size)
            for r, p in self.restricted(seal).partitions.items()
            if self.read_size(r) < p.size
        }

    def accreditation_record(self, key_id: bytes) -> tuple[bytes, Accreditation] | None:
        """The registry record accrediting the watched key as the trust in force holds it (a
        record verifying under the mandate in force, with the accreditation the key ring
        holds), or None (unknown, or accredited by no record that verifies now)."""
        try:
            acc = self.keyring.lookup(key_id)
        except VerificationError:
            return None
        for raw in reversed(self._records):
            try:
                found = verify_accreditation(decode_registry_record(raw), self.mandate)
            except VerificationError:
                continue
            if found == acc:
                return raw, acc
        return None

    # -- feeding -----------------------------------------------------------------------------

    def offer_records(self, ref: PartitionRef, offset: int, values: Sequence[bytes | None]) -> None:
        """Consecutive records of one trust partition (others are ignored).

        Raises:
            EpochInputError: an offset offered again with other bytes.
        """
        if not self.covers(ref[0]):
            return
        self._reader.offer_records(ref, offset, values)
        if self._watch is not None and ref[0] == self._topics.registry:
            for value in values:
                if value is not None and _accredits(value, self._watch):
                    self._records.append(value)
            del self._records[:-_MAX_RECORDS_PER_KEY]

    def advance(self, seals: Sequence[FinalSeal]) -> int:
        """Judge the final seals after :attr:`epoch`, in epoch order, as far as the records
        held allow; how many epochs were judged. Seals already judged are skipped.

        Raises:
            EpochInputError: a seal out of order (not the next epoch).
            SealedRootMismatchError: the trust records held do not hash to a seal's roots (a
                sealed record altered or deleted); nothing of that epoch is judged.
        """
        judged = 0
        for seal in seals:
            if seal.epoch <= self.epoch:
                continue
            if not self.ready(seal):
                break
            self._reader.offer_final_seal(self.restricted(seal))
            self._time_ms = seal.time_ms
            judged += 1
        return judged


def _accredits(raw: bytes, key_id: bytes) -> bool:
    """Whether a registry record (verified or not) is an accreditation of ``key_id``."""
    try:
        envelope = decode_registry_record(raw)
        if envelope.payload_type != PAYLOAD_ACCREDITATION:
            return False
        return Accreditation.decode(envelope.payload).key_id == key_id
    except VerificationError:
        return False
