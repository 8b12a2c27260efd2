"""``obus audit prove``: the inclusion proof of one record against a quorum checkpoint.

A record is named by (topic, partition, offset) or by report id. The prover reads the log in
the order of the export sections (live from Kafka, or from an export file): mandate versions
and registry (to know the node keys), the checkpoints of that record's partition (each
verified as the auditor does), then that partition's records, building its RFC 6962 tree. It
picks the largest checkpoint that covers the record and is signed or cosigned by at least the
mandate's threshold of distinct organizations, checks that the partition's records hash to
that checkpoint's root, and returns the audit path. :func:`verify_proof` checks a proof from
its own fields only (the merged note's signatures, the quorum, and RFC 9162 inclusion), which
is what a third party would do with the printed JSON.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.checkpoint import (
    Checkpoint,
    NoteKeys,
    VerifiedCheckpoint,
    merge_notes,
    origin_for,
    parse_checkpoint,
    parse_note,
    verify_checkpoint,
)
from bus.errors import Reason, VerificationError
from bus.export import ExportProblem, ExportReader, LogRecord
from bus.kafka.client import KafkaSecurity
from bus.kafka.replay import replay
from bus.lifecycle import TrustTimeline
from bus.merkle import MerkleTree, leaf_hash, verify_inclusion
from bus.model import Envelope, Mandate, Receipt, Report, sha256
from bus.topics import Topics
from bus.trust import KeyRing


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """A record, the quorum checkpoint it is proven against, and the audit path."""

    topic: str
    partition: int
    offset: int
    leaf_index: int
    value: bytes
    checkpoint: Checkpoint
    note: bytes  # the checkpoint text with every verified signature line seen for it
    orgs: tuple[str, ...]
    quorum: int
    proof: tuple[bytes, ...]
    note_time_ms: int  # latest log time of the records carrying those lines
    note_seq: int  # latest checkpoints-topic position of those records, plus one

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (hashes in hex, bytes in base64)."""
        report_id = None
        with contextlib.suppress(VerificationError):
            report_id = Report.decode(Envelope.decode(self.value).payload).report_id
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "report_id": report_id,
            "leaf_index": self.leaf_index,
            "leaf_hash": leaf_hash(self.value).hex(),
            "envelope_sha256": sha256(self.value).hex(),
            "value_base64": base64.b64encode(self.value).decode(),
            "checkpoint": {
                "origin": self.checkpoint.origin,
                "size": self.checkpoint.size,
                "root": self.checkpoint.root.hex(),
                "signed_by": list(self.orgs),
                "quorum": self.quorum,
                "note": self.note.decode(),
                "note_time_ms": self.note_time_ms,
                "note_seq": self.note_seq,
            },
            "inclusion_proof": [h.hex() for h in self.proof],
        }


def verify_proof(proof: InclusionProof, keyring: KeyRing) -> frozenset[str]:
    """Check a proof from its own fields: signatures, quorum and RFC 9162 inclusion.

    Returns:
        The organizations whose signatures on the checkpoint verified.

    Raises:
        VerificationError: the note does not verify (its reason), the organizations are fewer
            than ``keyring.mandate.threshold`` (``witness_quorum_not_met``), the note is not
            the stated checkpoint (``invalid_field``), or the path does not lead to its root
            (``inclusion_proof_invalid``).
    """
    vc = verify_checkpoint(proof.note, keyring, at_ms=proof.note_time_ms, seq=proof.note_seq)
    if vc.checkpoint != proof.checkpoint:
        raise VerificationError(Reason.INVALID_FIELD, "the note is not the stated checkpoint")
    if len(vc.orgs) < keyring.mandate.threshold:
        raise VerificationError(
            Reason.WITNESS_QUORUM_NOT_MET,
            f"checkpoint signed by {len(vc.orgs)} organizations, {keyring.mandate.threshold}"
            " required",
        )
    if (vc.topic, vc.partition) != (proof.topic, proof.partition):
        raise VerificationError(Reason.INVALID_FIELD, "checkpoint of another partition")
    cp = proof.checkpoint
    verify_inclusion(leaf_hash(proof.value), proof.leaf_index, cp.size, proof.proof, cp.root)
    return vc.orgs


def check_receipt_inclusion(proof: InclusionProof, receipt: Receipt, keyring: KeyRing) -> None:
    """Check that a proof proves what a (verified) delivery receipt promised.

    The receipt names topic, partition, offset and the envelope's SHA-256; the proof must be of
    that position and that value, and verify (:func:`verify_proof`).

    Raises:
        VerificationError: ``receipt_mismatch`` when the proof is of another position or value;
            otherwise as :func:`verify_proof`.
    """
    where = (receipt.topic, receipt.partition, receipt.offset)
    if (proof.topic, proof.partition, proof.offset) != where:
        raise VerificationError(Reason.RECEIPT_MISMATCH, "the proof is of another record")
    if sha256(proof.value) != receipt.envelope_digest:
        raise VerificationError(
            Reason.RECEIPT_MISMATCH, "the logged record is not the envelope the receipt names"
        )
    verify_proof(proof, keyring)


@dataclass
class _Text:
    checkpoint: Checkpoint
    orgs: set[str] = field(default_factory=set)
    lines: list[bytes] = field(default_factory=list)
    time_ms: int = 0
    seq: int = 0


class Prover:
    """Builds the inclusion proof of the record at (topic, partition, offset) from a log fed
    in export-section order (see module docstring)."""

    def __init__(self, mandate: Mandate, topic: str, partition: int, offset: int) -> None:
        self.timeline = TrustTimeline(mandate)
        self.topic, self.partition, self.offset = topic, partition, offset
        self._origin = origin_for(mandate.mandate_id, topic, partition)
        self._texts: dict[bytes, _Text] = {}
        self._keys: dict[int, NoteKeys] = {}
        self._tree = MerkleTree()
        self._index: int | None = None
        self._value = b""

    def record(self, rec: LogRecord) -> None:
        """Take the next record of the log."""
        if rec.section == "mandate":
            # A refused version or registry record is the auditor's to name; the proof uses
            # only what verifies.
            with contextlib.suppress(VerificationError):
                self.timeline.offer_mandate(
                    Envelope.decode(rec.value or b""), log_time_ms=rec.timestamp_ms
                )
        elif rec.section == "registry":
            with contextlib.suppress(VerificationError):
                self.timeline.apply_registry(Envelope.decode(rec.value or b""))
        elif rec.section == "checkpoints":
            self._checkpoint(rec)
        elif (rec.topic, rec.partition) == (self.topic, self.partition):
            if rec.offset == self.offset and self._index is None:
                self._index, self._value = self._tree.size, rec.value or b""
            self._tree.append(rec.value or b"")

    def _checkpoint(self, rec: LogRecord) -> None:
        keyring = self.timeline.at(rec.timestamp_ms)
        keys = self._keys.get(id(keyring))
        if keys is None or keys.stale():
            keys = self._keys[id(keyring)] = NoteKeys(keyring)
        try:
            vc: VerifiedCheckpoint = verify_checkpoint(
                rec.value or b"", keyring, at_ms=rec.timestamp_ms, seq=rec.offset + 1, keys=keys
            )
        except VerificationError:
            return
        if vc.checkpoint.origin != self._origin:
            return
        t = self._texts.setdefault(vc.text, _Text(vc.checkpoint))
        t.orgs |= vc.orgs
        t.lines.extend(a.line for a in vc.attestations)
        t.time_ms = max(t.time_ms, rec.timestamp_ms)
        t.seq = max(t.seq, rec.offset + 1)

    def result(self) -> InclusionProof:
        """The proof, checked with :func:`verify_proof` before it is returned.

        Raises:
            VerificationError: ``record_missing`` (no record at that offset),
                ``witness_quorum_not_met`` (no quorum checkpoint covers it yet),
                ``checkpoint_root_mismatch`` (the records do not hash to the quorum's root).
        """
        where = f"{self.topic}[{self.partition}]@{self.offset}"
        if self._index is None:
            raise VerificationError(Reason.RECORD_MISSING, f"no record at {where}")
        quorum = self.timeline.mandate.threshold
        covering = [
            t
            for t in self._texts.values()
            if len(t.orgs) >= quorum and self._index < t.checkpoint.size <= self._tree.size
        ]
        if not covering:
            best = max((t.checkpoint.size for t in self._texts.values() if len(t.orgs) >= quorum),
                       default=0)  # fmt: skip
            raise VerificationError(
                Reason.WITNESS_QUORUM_NOT_MET,
                f"no checkpoint signed by {quorum} organizations covers {where} yet"
                f" (leaf {self._index}; largest quorum checkpoint: size {best})",
            )
        t = max(covering, key=lambda x: x.checkpoint.size)
        cp = t.checkpoint
        if self._tree.root_at(cp.size) != cp.root:
            raise VerificationError(
                Reason.CHECKPOINT_ROOT_MISMATCH,
                f"the records of {self.topic}[{self.partition}] do not hash to the root that"
                f" {', '.join(sorted(t.orgs))} signed at size {cp.size}",
            )
        proof = InclusionProof(
            self.topic, self.partition, self.offset, self._index, self._value, cp,
            merge_notes(cp.text(), t.lines), tuple(sorted(t.orgs)), quorum,
            tuple(self._tree.inclusion_proof(self._index, cp.size)), t.time_ms, t.seq,
        )  # fmt: skip
        verify_proof(proof, self.timeline.at(t.time_ms))
        return proof


def _matches(rec: LogRecord, report_id: str) -> bool:
    value = rec.value or b""
    if rec.section != "reports" or report_id.encode() not in value:
        return False
    try:
        return Report.decode(Envelope.decode(value).payload).report_id == report_id
    except VerificationError:
        return False


def locate(records: Iterable[LogRecord], report_id: str) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the first report record with this id, or None."""
    for rec in records:
        if _matches(rec, report_id):
            return rec.topic, rec.partition, rec.offset
    return None


def _file_records(path: Path) -> Iterator[LogRecord]:
    with path.open("rb") as f:
        for item in ExportReader(f):
            if not isinstance(item, ExportProblem):
                yield item


def prove_from_file(
    path: Path, mandate: Mandate, *, where: tuple[str, int, int] | None, report_id: str | None
) -> InclusionProof:
    """Prove a record of an export file (two passes when it is named by report id).

    Raises:
        VerificationError: as :meth:`Prover.result`; ``record_missing`` for an unknown id.
    """
    if where is None:
        assert report_id is not None
        where = locate(_file_records(path), report_id)
        if where is None:
            raise VerificationError(Reason.RECORD_MISSING, f"no report {report_id} in {path}")
    prover = Prover(mandate, *where)
    for rec in _file_records(path):
        prover.record(rec)
    return prover.result()


async def _live(
    bootstrap: str, section: str, names: list[str], security: KafkaSecurity | None
) -> AsyncIterator[LogRecord]:
    async for rec in replay(bootstrap, names, security=security):
        yield LogRecord(
            section, rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value
        )


async def prove_live(
    bootstrap: str,
    topics: Topics,
    mandate: Mandate,
    *,
    where: tuple[str, int, int] | None,
    report_id: str | None,
    security: KafkaSecurity | None = None,
) -> InclusionProof:
    """Prove a record of the live log (``security``: how to authenticate; None: PLAINTEXT).

    Raises:
        VerificationError: as :meth:`Prover.result`; ``record_missing`` for an unknown id.
        TransportError: the broker failed.
    """
    if where is None:
        assert report_id is not None
        async for rec in replay(bootstrap, pattern=topics.reports_pattern, security=security):
            lr = LogRecord("reports", rec.topic, rec.partition, rec.offset, rec.timestamp,
                           rec.key, rec.value)  # fmt: skip
            if _matches(lr, report_id):
                where = (lr.topic, lr.partition, lr.offset)
                break
        if where is None:
            raise VerificationError(Reason.RECORD_MISSING, f"no report {report_id} on the bus")
    prover = Prover(mandate, *where)
    for section, name in (
        ("mandate", topics.mandate),
        ("registry", topics.registry),
        ("checkpoints", topics.checkpoints),
        ("reports", where[0]),
    ):
        async for lr in _live(bootstrap, section, [name], security):
            prover.record(lr)
    return prover.result()


def proof_from_json(doc: dict[str, Any]) -> InclusionProof:
    """Rebuild a proof from :meth:`InclusionProof.to_json` output (for re-verification).

    Raises:
        VerificationError: ``malformed`` when fields are missing or of the wrong type.
    """
    try:
        cpd = doc["checkpoint"]
        note = cpd["note"].encode()
        cp = parse_checkpoint(parse_note(note).text)
        return InclusionProof(
            doc["topic"], int(doc["partition"]), int(doc["offset"]), int(doc["leaf_index"]),
            base64.b64decode(doc["value_base64"], validate=True), cp, note,
            tuple(cpd["signed_by"]), int(cpd["quorum"]),
            tuple(bytes.fromhex(h) for h in doc["inclusion_proof"]),
            int(cpd["note_time_ms"]), int(cpd["note_seq"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise VerificationError(Reason.MALFORMED, f"not an inclusion proof: {exc}") from exc
