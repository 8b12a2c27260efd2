"""The gateway's inclusion proofs: ``GET /v1/proofs/{topic}/{partition}/{offset}``.

An observer holding a receipt asks its gateway for the proof that the receipted record is in
the sealed log (:mod:`bus.seal_proof`: the record's audit path to the RFC 6962 root that the
first final seal covering it states, that seal's note with the cosignatures that made it final,
and the cosigning node keys' accreditations), and checks it with the mandate file alone
(:func:`bus.seal_proof.check_receipt_inclusion`). The gateway reads the log itself; the
observer needs no Kafka access.

**Scope: this organization's reports topic only.** A gateway proves records of
``<prefix>reports.<org>``, the topic its receipts name, and that were published through it (it
takes the record's bytes from its own store; the tree is built from the topic itself). Any other
topic is refused ``wrong_topic``; a record of the topic that this gateway did not publish (an
operator's or another producer's) is ``record_missing`` here: ``obus audit prove`` proves any
record of the bus from the log. This bounds what a gateway keeps to one hash tree per partition
of one topic.

**What it reads and keeps** (:class:`ProofBook`, pure; fed by
:class:`nodes.gateway.kafka.ProofReader`): every record of the seals topic and of the two trust
topics (mandate, registry), from which a :class:`bus.seal_proof.SealedTrust` derives the final
seals, each epoch's key ring and the final seals' notes; and, per partition of the reports
topic, an append-only :class:`~bus.merkle.MerkleTree` of the record values (leaf hashes only,
about 64 bytes a record), grown incrementally from where it stood. Only the final seals that
cover new records of the reports topic keep their key ring and note (the first final seal that
covers a record is one of them), so what is kept grows with the topic, not with the epochs.

**Bounded cost per request.** A proof is a lookup and an audit path (logarithmic in the
partition's size). Reading the log forward is shared by every request and happens at most once
per ``min_catch_up_s`` (only when the record asked about is not covered yet by what is held;
a request that comes sooner waits for the interval, so a record sealed a moment ago is not
called unsealed); at most ``max_concurrent`` requests are served at once, others are answered
``503 unavailable`` with ``Retry-After``.

A gap in a partition the book reads (a record deleted) or records that hash to another root
than a final seal states (``sealed_root_mismatch``) stop the book: every later request is
answered ``sealed_log_broken`` until the gateway restarts on an intact log.
"""

from __future__ import annotations

from typing import Final, NoReturn

from bus.epoch import FinalSeal, PartitionRef
from bus.errors import Reason, SealedRootMismatchError, VerificationError
from bus.merkle import MerkleTree
from bus.model import Mandate
from bus.seal_proof import SealedTrust, SealProof, build_proof
from bus.topics import Topics
from bus.verify import Limits

# The proofs served at once; more are answered 503 (a proof is cheap, reading the log is not).
DEFAULT_MAX_CONCURRENT: Final = 8
# The log is read forward at most this often on behalf of requests.
DEFAULT_MIN_CATCH_UP_S: Final = 1.0


class LogBrokenError(Exception):
    """The book stopped: a record of a partition it reads is missing, or records contradict a
    final seal. The message says which."""


class ProofBook:
    """Final seals with their notes and the reports topic's hash trees (module docstring).

    Args:
        root: version 1 of the mandate (the final judge's root).
        topics: topic names.
        topic: the reports topic whose records are proven.
        limits: the nodes' verification limits.
    """

    def __init__(
        self, root: Mandate, topics: Topics, topic: str, limits: Limits | None = None
    ) -> None:
        self.topics = topics
        self.topic = topic
        self._trees: dict[int, MerkleTree] = {}
        self._covered: dict[int, int] = {}  # per partition: the size the last final seal gives
        self._next_trust: dict[PartitionRef, int] = {}
        self._next_seal = 0
        self.broken: str | None = None
        self.trust = SealedTrust(root, topics, limits, keep=self._keep)

    # -- feeding -----------------------------------------------------------------------------

    def read_from(self, ref: PartitionRef) -> int:
        """The offset the next record of ``ref`` to offer has."""
        if ref == (self.topics.seals, 0):
            return self._next_seal
        if ref[0] == self.topic:
            tree = self._trees.get(ref[1])
            return 0 if tree is None else tree.size
        return self._next_trust.get(ref, 0)

    def offer(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        """The next record of a partition the book reads (others are ignored).

        Raises:
            LogBrokenError: ``offset`` is not the next one (a record deleted under the reader),
                or the trust records contradict a final seal; the book is stopped.
        """
        if self.broken is not None:
            raise LogBrokenError(self.broken)
        ref = (topic, partition)
        t = self.topics
        if ref != (t.seals, 0) and topic not in (self.topic, t.registry, t.mandate):
            return
        want = self.read_from(ref)
        if offset < want:
            return  # read again after a reconnect: already held
        if offset > want:
            self._stop(f"{topic}[{partition}]: offset {want} is absent from the log")
        try:
            if ref == (self.topics.seals, 0):
                self._next_seal = offset + 1
                self.trust.offer_seal(offset, value)
            elif topic == self.topic:
                self._trees.setdefault(partition, MerkleTree()).append(value or b"")
            else:
                self._next_trust[ref] = offset + 1
                self.trust.offer_trust(ref, offset, value)
        except SealedRootMismatchError as exc:
            self._stop(exc.message)

    def _stop(self, why: str) -> NoReturn:
        self.broken = why
        raise LogBrokenError(why)

    def _keep(self, seal: FinalSeal) -> bool:
        """Keep the note and key ring of a final seal that covers new records of the topic."""
        grew = False
        for (topic, partition), sealed in seal.partitions.items():
            if topic == self.topic and sealed.size > self._covered.get(partition, 0):
                self._covered[partition] = sealed.size
                grew = True
        return grew

    # -- proving -----------------------------------------------------------------------------

    def covered(self, partition: int, offset: int) -> bool:
        """Whether a final seal held covers the record and its partition's records are held up
        to that seal's size (so :meth:`prove` can answer without reading more)."""
        ref = (self.topic, partition)
        seal = self.trust.covering(ref, offset)
        tree = self._trees.get(partition)
        return seal is not None and tree is not None and tree.size >= seal.size(ref)

    def prove(self, partition: int, offset: int, value: bytes) -> SealProof:
        """The proof of the record at ``offset`` (whose bytes are ``value``) against the first
        final seal that covers it.

        Raises:
            VerificationError: ``record_not_sealed`` (no final seal held covers it yet),
                ``record_missing`` (the partition's records are not held up to the seal's
                size yet: read further), ``invalid_field`` (``value`` is not the record at
                that offset).
            LogBrokenError: the book is stopped, or the records hash to another root than the
                seal states (the book stops).
        """
        if self.broken is not None:
            raise LogBrokenError(self.broken)
        ref = (self.topic, partition)
        seal = self.trust.covering(ref, offset)
        last = self.trust.finals[-1].epoch if self.trust.finals else 0
        if seal is None:
            raise VerificationError(
                Reason.RECORD_NOT_SEALED,
                f"no final seal covers {self.topic}[{partition}]@{offset} yet (final seals up"
                f" to epoch {last})",
            )
        note = self.trust.note(seal.epoch)
        if note is None:  # _keep keeps every first covering seal
            raise AssertionError(f"the note of epoch {seal.epoch} was not kept")
        tree = self._trees.get(partition, MerkleTree())
        try:
            return build_proof(
                self.topic, partition, offset, tree, seal=seal, note=note,
                registry=self.trust.registry_for(seal.epoch), value=value,
            )  # fmt: skip
        except SealedRootMismatchError as exc:
            self._stop(exc.message)
