"""``obus audit prove``: one record's inclusion proof against a final seal, and the checks of a
printed proof (:mod:`bus.seal_proof` holds the proof, its JSON form and both checks).

A record is named by (topic, partition, offset) or by report id. The prover reads the seals
topic, the two trust topics (mandate, registry) and the record's partition, live from Kafka or
from an export file, and nothing else: :class:`bus.seal_proof.SealedTrust` derives the final
seals and each epoch's key ring from the first three, the record's partition is hashed into an
RFC 6962 tree, and the proof is made against the first final seal that covers the record (or the
final seal of the epoch the caller names), after checking that the partition's records hash to
the sealed root. The proof carries the seal's note (the votes that made it final) and the
cosigning node keys' accreditations, so an observer can check it with the mandate file alone.

Checking a printed proof (``obus audit prove --check FILE``):

* **full** (:func:`check_from_file`, :func:`check_live`): the seals and trust topics of the log
  (or an export) give the final seal of the note's epoch and the key ring in force for it, and
  :func:`bus.seal_proof.verify_full` checks the proof against them;
* **light** (``--light``, :func:`bus.seal_proof.verify_light`): the mandate file alone, no log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from bus.epoch import FinalSeal
from bus.errors import Reason, VerificationError
from bus.export import ExportProblem, ExportReader, LogRecord
from bus.kafka.client import KafkaSecurity
from bus.kafka.replay import replay
from bus.merkle import MerkleTree
from bus.model import Envelope, Mandate, Report
from bus.seal_proof import SealedTrust, SealProof, build_proof, verify_full
from bus.topics import Topics

__all__ = [
    "Prover",
    "check_from_file",
    "check_live",
    "file_topics",
    "locate",
    "prove_from_file",
    "prove_live",
]

Position = tuple[str, int, int]  # (topic, partition, offset)


class _Log:
    """Seals and trust records from a log in any interleaving, into a :class:`SealedTrust`
    (offsets of one partition in order; a gap is a deleted record)."""

    def __init__(self, trust: SealedTrust, topics: Topics) -> None:
        self.trust = trust
        self.topics = topics
        self._next: dict[tuple[str, int], int] = {}

    def record(self, rec: LogRecord) -> None:
        """Take a record of the seals or a trust topic; records of other topics are ignored."""
        t = self.topics
        if rec.topic == t.seals and rec.partition == 0:
            self.trust.offer_seal(rec.offset, rec.value)
        if rec.topic in (t.registry, t.mandate):
            ref = (rec.topic, rec.partition)
            want = self._next.get(ref, 0)
            if rec.offset != want:
                raise VerificationError(
                    Reason.RECORD_MISSING,
                    f"{rec.topic}[{rec.partition}]: offset {want} is absent from the log (next"
                    f" record at {rec.offset})",
                    topic=rec.topic,
                    partition=rec.partition,
                )
            self._next[ref] = want + 1
            self.trust.offer_trust(ref, rec.offset, rec.value)


class Prover:
    """Builds the proof of the record at (topic, partition, offset) from a log fed in any
    order (module docstring).

    Args:
        root: the mandate the bus began under (the root every node starts from).
        topics: topic naming of the log.
        topic, partition, offset: the record to prove.
        epoch: prove against the final seal of this epoch (it must cover the record); None:
            the first final seal that covers it.
    """

    def __init__(
        self,
        root: Mandate,
        topics: Topics,
        topic: str,
        partition: int,
        offset: int,
        *,
        epoch: int | None = None,
    ) -> None:
        self.ref = (topic, partition)
        self.offset = offset
        self.epoch = epoch
        self._first: int | None = None
        self._log = _Log(SealedTrust(root, topics, keep=self._keep), topics)
        self._tree = MerkleTree()
        self._value: bytes | None = None

    def _keep(self, seal: FinalSeal) -> bool:
        if seal.size(self.ref) <= self.offset:
            return False
        if self.epoch is not None:
            return seal.epoch == self.epoch
        if self._first is None:
            self._first = seal.epoch
        return seal.epoch == self._first

    def record(self, rec: LogRecord) -> None:
        """Take the next record of the log (records of unrelated topics are ignored).

        Raises:
            VerificationError: ``record_missing`` (an offset absent from a trust topic or the
                record's partition), ``sealed_root_mismatch`` (a trust topic contradicts a
                final seal).
        """
        self._log.record(rec)
        if (rec.topic, rec.partition) != self.ref:
            return
        if rec.offset != self._tree.size:
            raise VerificationError(
                Reason.RECORD_MISSING,
                f"{rec.topic}[{rec.partition}]: offset {self._tree.size} is absent from the log",
            )
        if rec.offset == self.offset:
            self._value = rec.value or b""
        self._tree.append(rec.value or b"")

    def result(self) -> SealProof:
        """The proof, checked with :func:`bus.seal_proof.verify_full` against the log read.

        Raises:
            VerificationError: ``record_missing`` (no record at that offset),
                ``record_not_sealed`` (no final seal covers it yet, or the one named does not),
                ``sealed_root_mismatch`` (the partition's records hash to another root than
                sealed).
        """
        where = f"{self.ref[0]}[{self.ref[1]}]@{self.offset}"
        if self._value is None:
            raise VerificationError(Reason.RECORD_MISSING, f"no record at {where}")
        trust = self._log.trust
        epoch = self.epoch if self.epoch is not None else self._first
        seal = None if epoch is None else trust.final(epoch)
        note = None if epoch is None else trust.note(epoch)
        if seal is None or note is None:
            last = trust.finals[-1].epoch if trust.finals else 0
            named = "" if self.epoch is None else f" in epoch {self.epoch}"
            raise VerificationError(
                Reason.RECORD_NOT_SEALED,
                f"no final seal{named} covers {where} (final seals up to epoch {last})",
            )
        proof = build_proof(
            *self.ref, self.offset, self._tree, seal=seal, note=note,
            registry=trust.registry_for(seal.epoch), value=self._value,
        )  # fmt: skip
        ring = trust.keyring(seal.epoch)
        assert ring is not None  # kept with its note
        verify_full(proof, seal, ring)  # what a third party's full check will find
        return proof


def _is_report(rec: LogRecord, report_id: str, topics: Topics) -> bool:
    value = rec.value or b""
    if topics.org_of_report_topic(rec.topic) is None or report_id.encode() not in value:
        return False
    try:
        return Report.decode(Envelope.decode(value).payload).report_id == report_id
    except VerificationError:
        return False


def locate(records: Iterable[LogRecord], report_id: str, topics: Topics) -> Position | None:
    """(topic, partition, offset) of the first report record with this id, or None."""
    for rec in records:
        if _is_report(rec, report_id, topics):
            return rec.topic, rec.partition, rec.offset
    return None


def _file_records(path: Path) -> Iterator[LogRecord]:
    with path.open("rb") as f:
        for item in ExportReader(f):
            if not isinstance(item, ExportProblem):
                yield item


def file_topics(path: Path, mandate: Mandate) -> Topics:
    """The export's topic naming (its mandate must be ``mandate``'s).

    Raises:
        VerificationError: ``wrong_mandate``.
    """
    with path.open("rb") as f:
        header = ExportReader(f).header
    if header.mandate_id != mandate.mandate_id:
        raise VerificationError(
            Reason.WRONG_MANDATE,
            f"export is of mandate {header.mandate_id!r}, not {mandate.mandate_id!r}",
        )
    return Topics(header.topic_prefix)


def prove_from_file(
    path: Path,
    root: Mandate,
    *,
    where: Position | None,
    report_id: str | None,
    epoch: int | None = None,
) -> SealProof:
    """Prove a record of an export file (two passes when it is named by report id).

    Raises:
        VerificationError: as :meth:`Prover.result`; ``record_missing`` for an unknown id;
            ``wrong_mandate`` for an export of another mandate.
    """
    topics = file_topics(path, root)
    if where is None:
        assert report_id is not None
        where = locate(_file_records(path), report_id, topics)
        if where is None:
            raise VerificationError(Reason.RECORD_MISSING, f"no report {report_id} in {path}")
    prover = Prover(root, topics, *where, epoch=epoch)
    for rec in _file_records(path):
        prover.record(rec)
    return prover.result()


async def _live(
    bootstrap: str, names: list[str], security: KafkaSecurity | None
) -> AsyncIterator[LogRecord]:
    async for rec in replay(bootstrap, names, security=security):
        yield LogRecord("live", rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key,
                        rec.value)  # fmt: skip


async def prove_live(
    bootstrap: str,
    topics: Topics,
    root: Mandate,
    *,
    where: Position | None,
    report_id: str | None,
    epoch: int | None = None,
    security: KafkaSecurity | None = None,
) -> SealProof:
    """Prove a record of the live log (``security``: how to authenticate; None: PLAINTEXT).

    Raises:
        VerificationError: as :meth:`Prover.result`; ``record_missing`` for an unknown id.
        TransportError: the broker failed.
    """
    if where is None:
        assert report_id is not None
        async for rec in replay(bootstrap, pattern=topics.reports_pattern, security=security):
            lr = LogRecord("live", rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key,
                           rec.value)  # fmt: skip
            if _is_report(lr, report_id, topics):
                where = (lr.topic, lr.partition, lr.offset)
                break
        if where is None:
            raise VerificationError(Reason.RECORD_MISSING, f"no report {report_id} on the bus")
    prover = Prover(root, topics, *where, epoch=epoch)
    for names in ([topics.seals, topics.mandate, topics.registry], [where[0]]):
        async for lr in _live(bootstrap, names, security):
            prover.record(lr)
    return prover.result()


# ---------------------------------------------------------------------------------------------
# The full check of a printed proof


def _checker(proof: SealProof, root: Mandate, topics: Topics) -> tuple[_Log, int]:
    epoch = proof.seal().epoch  # malformed notes are refused before the log is read
    return _Log(SealedTrust(root, topics, keep=lambda s: s.epoch == epoch), topics), epoch


def _full(proof: SealProof, log: _Log, epoch: int) -> frozenset[str]:
    final, ring = log.trust.final(epoch), log.trust.keyring(epoch)
    if final is None or ring is None:
        last = log.trust.finals[-1].epoch if log.trust.finals else 0
        raise VerificationError(
            Reason.SEAL_NOT_FINAL,
            f"seal proof: the log holds no final seal of epoch {epoch} (final seals up to epoch"
            f" {last})",
        )
    return verify_full(proof, final, ring)


def check_from_file(proof: SealProof, path: Path, root: Mandate) -> frozenset[str]:
    """The full check of a proof against an export file (only its seals and trust sections
    are read).

    Returns:
        The organizations whose cosignatures count.

    Raises:
        VerificationError: as :func:`bus.seal_proof.verify_full`; ``seal_not_final`` when the
            file holds no final seal of the proof's epoch; ``wrong_mandate`` for an export of
            another mandate; ``record_missing``/``sealed_root_mismatch`` for trust records
            deleted or altered under a seal.
    """
    log, epoch = _checker(proof, root, file_topics(path, root))
    for rec in _file_records(path):
        log.record(rec)
    return _full(proof, log, epoch)


async def check_live(
    proof: SealProof,
    bootstrap: str,
    topics: Topics,
    root: Mandate,
    *,
    security: KafkaSecurity | None = None,
) -> frozenset[str]:
    """The full check of a proof against the live log (the seals and trust topics are
    replayed).

    Raises:
        VerificationError: as :func:`check_from_file`.
        TransportError: the broker failed.
    """
    log, epoch = _checker(proof, root, topics)
    async for rec in _live(bootstrap, [topics.seals, topics.mandate, topics.registry], security):
        log.record(rec)
    return _full(proof, log, epoch)
