"""``obus audit prove``: the inclusion proof of one record against a quorum checkpoint, and its
verification against the log.

A record is named by (topic, partition, offset) or by report id. The prover reads the log in
the order of the export sections (live from Kafka, or from an export file): mandate versions
and registry (to know the node keys at every log time, :class:`nodes.auditor.trust_feed.
TrustFeed`), the checkpoints of that record's partition (each verified as the auditor does),
then that partition's records, building its RFC 6962 tree. It picks the largest checkpoint that
covers the record and is signed or cosigned by at least the mandate's threshold of distinct
organizations, checks that the partition's records hash to that checkpoint's root, and returns
the audit path with the merged signed note and the checkpoint records that carry its lines.

A proof is checked against the log, never against itself (:func:`verify_proof`): each
checkpoint record it names is read from the log (:class:`LogView`: the live topic or the
export file), and that record's real position on the checkpoints topic and its real log time
decide whether its signatures count (a node key revoked at or before the position, or used
outside its accreditation window, counts for nothing). A proof whose stated position or time
differs from what the log holds there is refused. :func:`verify_proof_from_file` and
:func:`verify_proof_live` are what a third party runs on a printed proof
(``obus audit prove --check FILE``).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
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
    parse_origin,
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
from nodes.auditor.trust_feed import TrustFeed

Position = tuple[str, int, int]  # (topic, partition, offset)


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A checkpoints-topic record a proof relies on, as the proof states it: its position and
    its log time. The verifier reads both from the log and refuses a proof that differs."""

    topic: str
    partition: int
    offset: int
    log_time_ms: int

    @property
    def position(self) -> Position:
        """(topic, partition, offset)."""
        return self.topic, self.partition, self.offset

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """A record, the quorum checkpoint it is proven against, and the audit path.

    ``note`` is the checkpoint text with the signature lines the proof relies on; ``records``
    the checkpoint records that carry those lines.
    """

    topic: str
    partition: int
    offset: int
    leaf_index: int
    value: bytes
    checkpoint: Checkpoint
    note: bytes
    orgs: tuple[str, ...]
    quorum: int
    proof: tuple[bytes, ...]
    records: tuple[CheckpointRecord, ...]

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
                "records": [
                    {
                        "topic": r.topic,
                        "partition": r.partition,
                        "offset": r.offset,
                        "log_time_ms": r.log_time_ms,
                    }
                    for r in self.records
                ],
            },
            "inclusion_proof": [h.hex() for h in self.proof],
        }


@dataclass(frozen=True, slots=True)
class LogView:
    """What a proof is verified against, read from the log: the key state over log time and
    the records found at the checkpoints-topic positions the proof names (absent: not in the
    log)."""

    checkpoints_topic: str
    timeline: TrustTimeline
    records: Mapping[Position, LogRecord]


def _refused(reason: Reason, message: str) -> VerificationError:
    return VerificationError(reason, message)


def _checkpoint_in_log(
    ref: CheckpointRecord, view: LogView, expected: Checkpoint
) -> VerifiedCheckpoint:
    """The checkpoint record the proof names, verified at its real position and log time."""
    if ref.topic != view.checkpoints_topic:
        raise _refused(
            Reason.INVALID_FIELD,
            f"the proof names {ref}, which is not on the checkpoints topic"
            f" {view.checkpoints_topic}",
        )
    rec = view.records.get(ref.position)
    if rec is None:
        raise _refused(Reason.RECORD_MISSING, f"the log holds no checkpoint record at {ref}")
    if rec.timestamp_ms != ref.log_time_ms:
        raise _refused(
            Reason.INVALID_FIELD,
            f"the checkpoint record at {ref} was logged at {rec.timestamp_ms} ms; the proof"
            f" claims {ref.log_time_ms} ms",
        )
    try:
        vc = verify_checkpoint(
            rec.value or b"",
            view.timeline.at(rec.timestamp_ms),
            at_ms=rec.timestamp_ms,
            seq=rec.offset + 1,
        )
    except VerificationError as exc:
        raise _refused(
            exc.reason, f"the checkpoint record at {ref} does not count: {exc.message}"
        ) from exc
    if vc.checkpoint != expected:
        raise _refused(
            Reason.INVALID_FIELD,
            f"the checkpoint record at {ref} carries another checkpoint"
            f" ({vc.checkpoint.origin} size {vc.checkpoint.size}), not the proof's",
        )
    return vc


def verify_proof(proof: InclusionProof, view: LogView) -> frozenset[str]:
    """Check a proof against the log: signatures where the log holds them, quorum, inclusion.

    Every checkpoint record the proof names must be on the log's checkpoints topic at that
    position with that log time, carry the proof's checkpoint, and verify under the key state
    in force at that time and position (:func:`bus.checkpoint.verify_checkpoint`); every
    signature line of the proof's note must be carried by one of them.

    Returns:
        The organizations whose signatures on the checkpoint verified.

    Raises:
        VerificationError: ``record_missing`` (no checkpoint record at a named position),
            ``invalid_field`` (a named position off the checkpoints topic, another log time
            than the log's, a record of another checkpoint, a note line no named record
            carries, the note not the stated checkpoint, stated signers or quorum other than
            the log's), the named record's own reason when it does not verify there
            (``key_revoked``, ``key_expired``, ``bad_signature``, ``unknown_key``, ...),
            ``witness_quorum_not_met`` (fewer organizations than the threshold), or
            ``inclusion_proof_invalid`` (the path does not lead to the root).
    """
    cp = proof.checkpoint
    try:
        mandate_id, topic, partition = parse_origin(cp.origin)
        note = parse_note(proof.note)
    except VerificationError as exc:
        raise _refused(exc.reason, f"the proof's checkpoint: {exc.message}") from exc
    if note.text != cp.text():
        raise _refused(Reason.INVALID_FIELD, "the note is not the stated checkpoint")
    if (topic, partition) != (proof.topic, proof.partition):
        raise _refused(Reason.INVALID_FIELD, "checkpoint of another partition")
    if mandate_id != view.timeline.mandate.mandate_id:
        raise _refused(Reason.WRONG_MANDATE, f"checkpoint for mandate {mandate_id!r}")
    if not proof.records:
        raise _refused(Reason.INVALID_FIELD, "the proof names no checkpoint record")
    carried: dict[bytes, str] = {}
    for ref in proof.records:
        for a in _checkpoint_in_log(ref, view, cp).attestations:
            carried[a.line] = a.org
    orgs: set[str] = set()
    for sig in note.signatures:
        org = carried.get(sig.line())
        if org is None:
            raise _refused(
                Reason.INVALID_FIELD,
                f"the note's signature line by {sig.name} is carried by none of the checkpoint"
                " records the proof names",
            )
        orgs.add(org)
    threshold = view.timeline.at(max(r.log_time_ms for r in proof.records)).mandate.threshold
    if len(orgs) < threshold:
        raise _refused(
            Reason.WITNESS_QUORUM_NOT_MET,
            f"checkpoint signed by {len(orgs)} organizations, {threshold} required",
        )
    if tuple(sorted(orgs)) != tuple(sorted(proof.orgs)) or proof.quorum != threshold:
        raise _refused(
            Reason.INVALID_FIELD,
            f"the proof states signers {', '.join(sorted(proof.orgs))} and quorum"
            f" {proof.quorum}; the log holds signatures by {', '.join(sorted(orgs))} and"
            f" quorum {threshold}",
        )
    verify_inclusion(leaf_hash(proof.value), proof.leaf_index, cp.size, proof.proof, cp.root)
    return frozenset(orgs)


def check_receipt_inclusion(proof: InclusionProof, receipt: Receipt, view: LogView) -> None:
    """Check that a proof proves what a (verified) delivery receipt promised.

    The receipt names topic, partition, offset and the envelope's SHA-256; the proof must be of
    that position and that value, and verify against the log (:func:`verify_proof`).

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
    verify_proof(proof, view)


@dataclass
class _Text:
    checkpoint: Checkpoint
    orgs: set[str] = field(default_factory=set)
    lines: list[bytes] = field(default_factory=list)
    records: list[CheckpointRecord] = field(default_factory=list)


class Prover:
    """Builds the inclusion proof of the record at (topic, partition, offset) from a log fed
    in export-section order (see module docstring).

    Args:
        mandate: the verified trust root.
        topic, partition, offset: the record to prove.
        checkpoints_topic: the log's checkpoints topic (records elsewhere are ignored).
    """

    def __init__(
        self, mandate: Mandate, topic: str, partition: int, offset: int, *, checkpoints_topic: str
    ) -> None:
        self.timeline = TrustTimeline(mandate)
        # A refused version or registry record is the auditor's to name; the proof uses only
        # what verifies.
        self._trust = TrustFeed(self.timeline)
        self._trust_done = False
        self.topic, self.partition, self.offset = topic, partition, offset
        self.checkpoints_topic = checkpoints_topic
        self._origin = origin_for(mandate.mandate_id, topic, partition)
        self._texts: dict[bytes, _Text] = {}
        self._records: dict[Position, LogRecord] = {}
        self._keys: dict[int, NoteKeys] = {}
        self._tree = MerkleTree()
        self._index: int | None = None
        self._value = b""

    def record(self, rec: LogRecord) -> None:
        """Take the next record of the log."""
        if rec.section == "mandate":
            self._trust.mandate(rec)
            return
        if rec.section == "registry":
            with contextlib.suppress(VerificationError):
                self._trust.registry(rec)
            return
        self._end_trust()
        if rec.section == "checkpoints":
            self._checkpoint(rec)
        elif (rec.topic, rec.partition) == (self.topic, self.partition):
            if rec.offset == self.offset and self._index is None:
                self._index, self._value = self._tree.size, rec.value or b""
            self._tree.append(rec.value or b"")

    def _end_trust(self) -> None:
        if not self._trust_done:
            self._trust_done = True
            self._trust.settle()

    def _checkpoint(self, rec: LogRecord) -> None:
        if rec.topic != self.checkpoints_topic:
            return
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
        ref = CheckpointRecord(rec.topic, rec.partition, rec.offset, rec.timestamp_ms)
        self._records[ref.position] = rec
        t = self._texts.setdefault(vc.text, _Text(vc.checkpoint))
        t.orgs |= vc.orgs
        t.lines.extend(a.line for a in vc.attestations)
        t.records.append(ref)

    def result(self) -> InclusionProof:
        """The proof, checked with :func:`verify_proof` against the log read before it is
        returned.

        Raises:
            VerificationError: ``record_missing`` (no record at that offset),
                ``witness_quorum_not_met`` (no quorum checkpoint covers it yet),
                ``checkpoint_root_mismatch`` (the records do not hash to the quorum's root).
        """
        self._end_trust()
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
        latest = max(r.log_time_ms for r in t.records)
        proof = InclusionProof(
            self.topic, self.partition, self.offset, self._index, self._value, cp,
            merge_notes(cp.text(), t.lines), tuple(sorted(t.orgs)),
            self.timeline.at(latest).mandate.threshold,
            tuple(self._tree.inclusion_proof(self._index, cp.size)), tuple(t.records),
        )  # fmt: skip
        verify_proof(proof, LogView(self.checkpoints_topic, self.timeline, self._records))
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


def _file_topics(path: Path, mandate: Mandate) -> Topics:
    """The export's topic naming (its mandate must be ``mandate``'s)."""
    with path.open("rb") as f:
        header = ExportReader(f).header
    if header.mandate_id != mandate.mandate_id:
        raise VerificationError(
            Reason.WRONG_MANDATE,
            f"export is of mandate {header.mandate_id!r}, not {mandate.mandate_id!r}",
        )
    return Topics(header.topic_prefix)


def prove_from_file(
    path: Path, mandate: Mandate, *, where: tuple[str, int, int] | None, report_id: str | None
) -> InclusionProof:
    """Prove a record of an export file (two passes when it is named by report id).

    Raises:
        VerificationError: as :meth:`Prover.result`; ``record_missing`` for an unknown id;
            ``wrong_mandate`` for an export of another mandate.
    """
    topics = _file_topics(path, mandate)
    if where is None:
        assert report_id is not None
        where = locate(_file_records(path), report_id)
        if where is None:
            raise VerificationError(Reason.RECORD_MISSING, f"no report {report_id} in {path}")
    prover = Prover(mandate, *where, checkpoints_topic=topics.checkpoints)
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
    prover = Prover(mandate, *where, checkpoints_topic=topics.checkpoints)
    for section, name in (
        ("mandate", topics.mandate),
        ("registry", topics.registry),
        ("checkpoints", topics.checkpoints),
        ("reports", where[0]),
    ):
        async for lr in _live(bootstrap, section, [name], security):
            prover.record(lr)
    return prover.result()


# ---------------------------------------------------------------------------------------------
# Verifying a printed proof against the log


class _ViewBuilder:
    """Collects a :class:`LogView` from the trust and checkpoint sections of a log."""

    def __init__(self, mandate: Mandate, checkpoints_topic: str, wanted: set[Position]) -> None:
        self.timeline = TrustTimeline(mandate)
        self._trust = TrustFeed(self.timeline)
        self._topic = checkpoints_topic
        self._wanted = wanted
        self._found: dict[Position, LogRecord] = {}

    def record(self, rec: LogRecord) -> None:
        if rec.section == "mandate":
            self._trust.mandate(rec)
        elif rec.section == "registry":
            with contextlib.suppress(VerificationError):
                self._trust.registry(rec)
        elif rec.section == "checkpoints" and rec.topic == self._topic:
            position = (rec.topic, rec.partition, rec.offset)
            if position in self._wanted:
                self._found[position] = rec

    def view(self) -> LogView:
        self._trust.settle()
        return LogView(self._topic, self.timeline, self._found)


def _wanted(proof: InclusionProof) -> set[Position]:
    return {r.position for r in proof.records}


def log_view_from_file(path: Path, mandate: Mandate, wanted: Iterable[Position]) -> LogView:
    """The :class:`LogView` of an export file at the checkpoint positions ``wanted``, reading
    only its trust and checkpoint sections.

    Raises:
        VerificationError: ``wrong_mandate`` for an export of another mandate.
    """
    builder = _ViewBuilder(mandate, _file_topics(path, mandate).checkpoints, set(wanted))
    for rec in _file_records(path):
        if rec.section == "reports":
            break
        builder.record(rec)
    return builder.view()


async def log_view_live(
    bootstrap: str,
    topics: Topics,
    mandate: Mandate,
    wanted: Iterable[Position],
    *,
    security: KafkaSecurity | None = None,
) -> LogView:
    """The :class:`LogView` of the live log at the checkpoint positions ``wanted``: the
    mandate, registry and checkpoints topics are replayed.

    Raises:
        TransportError: the broker failed.
    """
    builder = _ViewBuilder(mandate, topics.checkpoints, set(wanted))
    for section, name in (
        ("mandate", topics.mandate),
        ("registry", topics.registry),
        ("checkpoints", topics.checkpoints),
    ):
        async for lr in _live(bootstrap, section, [name], security):
            builder.record(lr)
    return builder.view()


def verify_proof_from_file(proof: InclusionProof, path: Path, mandate: Mandate) -> frozenset[str]:
    """Verify a proof against an export file (:func:`verify_proof`).

    Raises:
        VerificationError: as :func:`verify_proof`; ``wrong_mandate`` for an export of another
            mandate.
    """
    return verify_proof(proof, log_view_from_file(path, mandate, _wanted(proof)))


async def verify_proof_live(
    proof: InclusionProof,
    bootstrap: str,
    topics: Topics,
    mandate: Mandate,
    *,
    security: KafkaSecurity | None = None,
) -> frozenset[str]:
    """Verify a proof against the live log (:func:`verify_proof`).

    Raises:
        VerificationError: as :func:`verify_proof`.
        TransportError: the broker failed.
    """
    view = await log_view_live(bootstrap, topics, mandate, _wanted(proof), security=security)
    return verify_proof(proof, view)


def proof_from_json(doc: dict[str, Any]) -> InclusionProof:
    """Rebuild a proof from :meth:`InclusionProof.to_json` output (for re-verification).

    Raises:
        VerificationError: ``malformed`` when fields are missing or of the wrong type.
    """
    try:
        cpd = doc["checkpoint"]
        note = cpd["note"].encode()
        cp = parse_checkpoint(parse_note(note).text)
        records = tuple(
            CheckpointRecord(str(r["topic"]), int(r["partition"]), int(r["offset"]),
                             int(r["log_time_ms"]))
            for r in cpd["records"]
        )  # fmt: skip
        return InclusionProof(
            doc["topic"], int(doc["partition"]), int(doc["offset"]), int(doc["leaf_index"]),
            base64.b64decode(doc["value_base64"], validate=True), cp, note,
            tuple(cpd["signed_by"]), int(cpd["quorum"]),
            tuple(bytes.fromhex(h) for h in doc["inclusion_proof"]), records,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise VerificationError(Reason.MALFORMED, f"not an inclusion proof: {exc}") from exc
