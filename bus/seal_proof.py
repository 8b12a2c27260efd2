"""Inclusion proofs against final seals: that a record is in the sealed log, checked two ways.

Pure code (no I/O, no clock). A **seal proof** (:class:`SealProof`) says: the record at
(topic, partition, offset) holds ``value``, and it is leaf ``offset`` of the RFC 6962 tree of the
first *n* records of its partition, whose root the final seal of epoch *e* states. It carries:

* the record: topic, partition, offset, value; the leaf index (always the offset: leaf *i* of a
  sealed partition is the value at offset *i*, a null value counting as empty bytes);
* *n*, the partition's size in that seal (the first final seal that covers the record, unless the
  caller asked for a later one), and the audit path from the leaf to the seal's root for the
  partition (:func:`bus.merkle.verify_inclusion`, at most :data:`MAX_PATH_HASHES` hashes);
* the seal's signed note: the exact seal text (:mod:`bus.seal`) followed by the cosignature
  lines (type ``0x04``) of the organizations whose votes made it final, at most
  :data:`MAX_NOTE_BYTES`; and the offset, on the seals topic, of the record that made it final;
* for the light check, the registry records (accreditations, and any revocation the prover or a
  third party adds) of the cosigning node keys, at most :data:`MAX_REGISTRY_RECORDS`.

Two checks, each refusing with a machine-readable reason (:class:`bus.errors.VerificationError`):

**The full check** (:func:`verify_full`: an auditor, or anyone with the log or an export). The
caller derives, from the seals topic and the trust topics, the final seal of the note's epoch
and the key ring in force for it (:class:`SealedTrust` does both, as every node's bus reader
does). The note's text must be that final seal's text byte for byte (``seal_not_final``
otherwise), the stated seals offset the one that made it final, every cosignature line in the
note must count under that key ring (``key_revoked``, ``key_expired``, ``bad_signature``, ...
for one that does not), lines of at least *k* distinct organizations must count
(``seal_quorum_not_met``), and the audit path must lead from the value to the partition's root
at size *n* (``inclusion_proof_invalid``). This establishes that the record is in the log that
*k* organizations sealed, in the epoch the seal names, as every honest reader of that seals
topic derives it.

**The light check** (:func:`verify_light`: an observer who holds only the mandate file, no
Kafka). The carried registry records are verified under the mandate file's organization roots
and applied in order to a key ring (:class:`bus.trust.KeyRing`: one not signed by the root key
of the organization it names is refused with its reason, ``unknown_key``, ``bad_signature``,
``wrong_org``, ...); then every cosignature line of the note must count under that ring with the
rule seals are judged by (:func:`bus.seal.verify_seal`: a node key of an organization of the
mandate, accredited with role ``NODE``, inside its window at *t_e*, not revoked at the seal's
epoch by a carried revocation), and lines of at least the mandate's *k* distinct organizations
must count; then the audit path is checked as above.

What the light check establishes: *k* distinct organizations of the mandate, through node keys
their own root keys accredited, cosigned a seal text of epoch *e* at time *t_e* stating that
the partition's first *n* records have a root under which ``value`` sits at ``offset``. An
honest organization's witness cosigns a text only when its own copy of the log has exactly
those records (:func:`bus.seal.decide_cosign`), so a false proof needs the node keys of *k*
organizations to sign a text their logs contradict.

What it does **not** establish: that this text is the *final* seal of epoch *e* (another text
of that epoch could be final only if organizations signed two texts in one round or across
rounds, each such pair of signatures evidence against them: :mod:`bus.seal`, "What an operator
who hides records can do"); that no revocation the proof leaves out withdrew a signer's node
key at or before epoch *e* (a hostile prover omits them; a stolen node key still needs *k - 1*
others beside it); that the mandate file is the version in force at epoch *e* (the check uses
the file's roots and threshold: an observer should hold the version in force at the seal, or a
later one under which the signers' organizations kept their root keys, else their
accreditations do not verify); the record's verdict (inclusion is not acceptance); and anything
about records after the seal. To fool it, *k* organizations (their node keys) would have to sign
a text their own logs contradict.

**The prover's side.** :class:`SealedTrust` reads the seals topic and the two trust topics
(mandate, registry) and nothing else: with the final judge's rules (:class:`bus.judge.
FinalJudge`, which judges trust records without looking at any other topic) it derives each
epoch's key ring, and with :class:`bus.seal.SealChain` the final seals and, for each one kept,
its note. :func:`build_proof` then makes the proof of one record from its partition's values up
to the seal's size (or a :class:`bus.merkle.MerkleTree` of them) after checking that they hash
to the sealed root. :func:`receipt_matches` and :func:`check_receipt_inclusion` check that a
proof is for the record a gateway receipt names.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bus.epoch import FinalSeal, PartitionRef, PartitionSeal, epoch_of
from bus.errors import Reason, SealedRootMismatchError, VerificationError
from bus.judge import FinalJudge
from bus.merkle import MerkleTree, leaf_hash, verify_inclusion
from bus.model import (
    PAYLOAD_ACCREDITATION,
    PAYLOAD_REVOCATION,
    PAYLOAD_SEALED_REPORT,
    Envelope,
    Mandate,
    Receipt,
    Report,
    SealedReport,
)
from bus.model import Accreditation as _Accreditation
from bus.note import MAX_SIGNATURES, Note, key_name, parse_note
from bus.seal import (
    MAX_SEAL_RECORD_BYTES,
    ChainUpdate,
    Disposition,
    SealChain,
    SealProposal,
    carried_trust,
    parse_seal_record,
    verify_seal,
)
from bus.topics import Topics
from bus.trust import KeyRing, decode_registry_record
from bus.verify import Limits

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_PATH_HASHES",
    "MAX_REGISTRY_RECORDS",
    "MAX_VALUE_BYTES",
    "PROOF_FORMAT",
    "SealProof",
    "SealedTrust",
    "build_proof",
    "check_path",
    "check_receipt_inclusion",
    "receipt_matches",
    "verify_full",
    "verify_light",
]

PROOF_FORMAT: Final = "obus-seal-proof/v1"
"""The ``format`` field of a proof's JSON form."""
MAX_PATH_HASHES: Final = 64
"""An audit path holds at most this many hashes (a tree of up to 2^64 leaves)."""
MAX_NOTE_BYTES: Final = MAX_SEAL_RECORD_BYTES
"""A proof's note is at most as long as a seals record may be."""
MAX_REGISTRY_RECORDS: Final = 2 * MAX_SIGNATURES
"""Registry records a proof carries at most: an accreditation and a revocation for each of the
at most :data:`bus.note.MAX_SIGNATURES` lines of a note."""
MAX_VALUE_BYTES: Final = 16 * 1024 * 1024
"""A proven value is at most this long (more than any bus topic accepts)."""


def _bad(reason: Reason, message: str, **context: object) -> VerificationError:
    return VerificationError(reason, f"seal proof: {message}", **context)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------------------
# The proof


@dataclass(frozen=True, slots=True)
class SealProof:
    """One record's inclusion in a final seal (module docstring).

    Args:
        topic, partition, offset: where the record sits.
        value: its bytes (a null value is proven as empty bytes).
        leaf_index: its leaf in the partition's tree: always ``offset``.
        size: *n*, the partition's size in the seal.
        path: the RFC 9162 audit path from the leaf to the seal's root at ``size``.
        note: the seal text and the cosignature lines that made it final.
        seal_offset: where the record that made the seal final sits on the seals topic.
        registry: registry records (accreditations, revocations) of the cosigning node keys,
            for the light check.
    """

    topic: str
    partition: int
    offset: int
    value: bytes
    leaf_index: int
    size: int
    path: tuple[bytes, ...]
    note: bytes
    seal_offset: int
    registry: tuple[bytes, ...] = ()

    @property
    def position(self) -> tuple[str, int, int]:
        """(topic, partition, offset)."""
        return self.topic, self.partition, self.offset

    def seal(self) -> SealProposal:
        """The seal the note states (parsed, nothing verified).

        Raises:
            VerificationError: as :func:`bus.seal.parse_seal_record`.
        """
        return parse_seal_record(self.note).proposal

    def to_json(self) -> dict[str, Any]:
        """The JSON form: bytes in base64, hashes of the path in hex, the note as text. Fields
        derived from others (leaf hash, envelope digest, report id, and the seal's epoch,
        *t_e*, mandate, digest and root) are there for readers and checked on reading. The
        report id is a restricted report's too (it is in clear); a proof from before, with a
        null id for a restricted report, is still read."""
        seal = self.seal()
        record = self.note[: self.note.rfind(b"\n\n") + 1]
        sealed = seal.partitions.get((self.topic, self.partition))
        return {
            "format": PROOF_FORMAT,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "report_id": _report_id(self.value),
            "leaf_index": self.leaf_index,
            "leaf_hash": leaf_hash(self.value).hex(),
            "envelope_sha256": hashlib.sha256(self.value).hexdigest(),
            "value_base64": _b64(self.value),
            "seal": {
                "mandate_id": seal.mandate_id,
                "epoch": seal.epoch,
                "t_e": seal.time_ms,
                "digest": _b64(hashlib.sha256(record).digest()),
                "size": self.size,
                "root": None if sealed is None else _b64(sealed.root),
                "seals_offset": self.seal_offset,
                "note": self.note.decode(),
            },
            "inclusion_proof": [h.hex() for h in self.path],
            "registry": [_b64(r) for r in self.registry],
        }

    @classmethod
    def from_json(cls, doc: object) -> SealProof:
        """Read the JSON form back, within the bounds of the module docstring.

        Raises:
            VerificationError: ``malformed`` (not the JSON :meth:`to_json` writes, a field of
                the wrong type, base64 or hex that does not decode, a note that is no seals
                record); ``oversized`` (value, note, path or registry beyond its bound);
                ``invalid_field`` (a derived field that differs from what it derives from).
        """
        try:
            top = _dict(doc, "the proof")
            _check_format(top)
            s = _dict(top["seal"], "seal")
            path_hex = _list(top["inclusion_proof"], "inclusion_proof")
            registry_b64 = _list(top["registry"], "registry")
            _bound(len(path_hex), MAX_PATH_HASHES, "audit path hashes")
            _bound(len(registry_b64), MAX_REGISTRY_RECORDS, "registry records")
            note_text = _str(s["note"])
            _bound(len(note_text), MAX_NOTE_BYTES, "note bytes")
            value_b64 = _str(top["value_base64"])
            _bound(len(value_b64) * 3 // 4, MAX_VALUE_BYTES, "value bytes")
            proof = cls(
                topic=_str(top["topic"]),
                partition=_int(top["partition"]),
                offset=_int(top["offset"]),
                value=base64.b64decode(value_b64, validate=True),
                leaf_index=_int(top["leaf_index"]),
                size=_int(s["size"]),
                path=tuple(bytes.fromhex(_str(h)) for h in path_hex),
                note=note_text.encode(),
                seal_offset=_int(s["seals_offset"]),
                registry=tuple(base64.b64decode(_str(r), validate=True) for r in registry_b64),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise _bad(Reason.MALFORMED, f"not a seal proof: {exc}") from exc
        stated, stated_seal = top, s
        fresh = proof.to_json()  # parses the note: malformed when it is no seals record
        for key in ("leaf_hash", "envelope_sha256", "report_id"):
            if stated.get(key) != fresh[key] and not _written_before_sealed_ids(
                key, stated, proof.value
            ):
                raise _bad(Reason.INVALID_FIELD, f"{key} is not the value's", field=key)
        for key in ("mandate_id", "epoch", "t_e", "digest", "root"):
            if stated_seal.get(key) != fresh["seal"][key]:
                raise _bad(Reason.INVALID_FIELD, f"seal {key} is not the note's", field=key)
        return proof


def _check_format(doc: Mapping[str, Any]) -> None:
    if doc.get("format") != PROOF_FORMAT:
        raise ValueError(f"no format field {PROOF_FORMAT!r}")


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be an object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} must be a list")
    return value


def _bound(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise VerificationError(Reason.OVERSIZED, f"seal proof: more than {limit} {what}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _report_id(value: bytes) -> str | None:
    """The report id when the value is a signed report, plain or restricted (a sealed report
    carries its id among its clear fields, :mod:`bus.sealed`), for readers of the JSON form;
    None for any other value."""
    with contextlib.suppress(VerificationError):
        envelope = Envelope.decode(value)
        if envelope.payload_type == PAYLOAD_SEALED_REPORT:
            return SealedReport.decode(envelope.payload).report_id
        return Report.decode(envelope.payload).report_id
    return None


def _written_before_sealed_ids(key: str, stated: Mapping[str, Any], value: bytes) -> bool:
    """A proof of a restricted report written when the JSON form left its report id null."""
    if key != "report_id" or stated.get(key, "") is not None:
        return False
    with contextlib.suppress(VerificationError):
        return Envelope.decode(value).payload_type == PAYLOAD_SEALED_REPORT
    return False


def build_proof(
    topic: str,
    partition: int,
    offset: int,
    leaves: MerkleTree | Sequence[bytes | None],
    *,
    seal: FinalSeal,
    note: bytes,
    registry: Iterable[bytes] = (),
    value: bytes | None = None,
) -> SealProof:
    """The proof of the record at ``offset`` of (``topic``, ``partition``) against ``seal``.

    Args:
        leaves: the partition's record values from offset 0 up to at least the seal's size
            (None for a null value), or a :class:`~bus.merkle.MerkleTree` of them that stores
            its leaves (then pass ``value``: a tree holds leaf hashes only).
        seal: a final seal that covers the record.
        note: the seal's note (:meth:`SealedTrust.note`).
        registry: the cosigners' registry records (:meth:`SealedTrust.registry_for`).
        value: the record's value, required with a tree (a null value: empty bytes).

    Returns:
        The proof, checked with :func:`check_path` before it is returned.

    Raises:
        VerificationError: ``record_not_sealed`` (the seal does not cover the offset),
            ``record_missing`` (fewer leaves than the seal's size), ``sealed_root_mismatch``
            (the leaves hash to another root than sealed), ``invalid_field`` (the note is not
            the seal's text, no ``value`` with a tree or one that is not the leaf's),
            ``oversized`` beyond the proof's bounds.
    """
    sealed = seal.partitions.get((topic, partition))
    if sealed is None or not 0 <= offset < sealed.size:
        raise _bad(
            Reason.RECORD_NOT_SEALED,
            f"the seal of epoch {seal.epoch} does not cover {topic}[{partition}]@{offset}",
        )
    if isinstance(leaves, MerkleTree):
        tree = leaves
    else:
        tree = MerkleTree()
        for v in leaves[: sealed.size]:
            tree.append(v or b"")
        if value is None and offset < len(leaves):
            value = leaves[offset] or b""
    if tree.size < sealed.size:
        raise _bad(
            Reason.RECORD_MISSING,
            f"{topic}[{partition}] holds {tree.size} records, the seal of epoch {seal.epoch}"
            f" seals {sealed.size}",
        )
    if tree.root_at(sealed.size) != sealed.root:
        raise SealedRootMismatchError(
            f"{topic}[{partition}]: the records hash to another root than the seal of epoch"
            f" {seal.epoch} states at size {sealed.size}",
            topic=topic,
            partition=partition,
            size=sealed.size,
        )
    if value is None or leaf_hash(value) != tree.leaf_hash_at(offset):
        raise _bad(Reason.INVALID_FIELD, f"no value, or not the value of leaf {offset}")
    if parse_note(note).text != SealProposal.of_final(seal).text():
        raise _bad(Reason.INVALID_FIELD, "the note is not the seal's text")
    proof = SealProof(
        topic, partition, offset, value, offset, sealed.size,
        tuple(tree.inclusion_proof(offset, sealed.size)), note, seal.offset, tuple(registry),
    )  # fmt: skip
    check_path(proof)
    return proof


# ---------------------------------------------------------------------------------------------
# Checking


def check_path(proof: SealProof) -> SealProposal:
    """The checks both :func:`verify_full` and :func:`verify_light` make first: bounds, the
    note's text is a seal listing the record's partition with size ``proof.size``, the leaf
    index is the offset and below the size, and the audit path leads from the value to the
    partition's root. Signatures are not looked at.

    Returns:
        The seal the note states.

    Raises:
        VerificationError: ``oversized`` beyond a bound; ``malformed`` (the note is no seals
            record, or not in canonical form); ``invalid_field`` (leaf index not the offset, a
            size other than the seal's for the partition, or the partition not in the seal);
            ``inclusion_proof_invalid`` (the path does not lead to the root).
    """
    _bound(len(proof.path), MAX_PATH_HASHES, "audit path hashes")
    _bound(len(proof.note), MAX_NOTE_BYTES, "note bytes")
    _bound(len(proof.registry), MAX_REGISTRY_RECORDS, "registry records")
    _bound(len(proof.value), MAX_VALUE_BYTES, "value bytes")
    seal = proof.seal()
    if parse_note(proof.note).encode() != proof.note:
        # base64 with other unused bits decodes to the same signature: one note, one text.
        raise _bad(Reason.MALFORMED, "the note is not in canonical form")
    if proof.leaf_index != proof.offset:
        raise _bad(
            Reason.INVALID_FIELD,
            f"leaf index {proof.leaf_index} is not the offset {proof.offset}"
            " (leaf i of a sealed partition is the record at offset i)",
        )
    sealed = seal.partitions.get((proof.topic, proof.partition))
    if sealed is None:
        raise _bad(
            Reason.INVALID_FIELD,
            f"the seal of epoch {seal.epoch} lists no {proof.topic}[{proof.partition}]",
        )
    if sealed.size != proof.size:
        raise _bad(
            Reason.INVALID_FIELD,
            f"the seal states size {sealed.size} for {proof.topic}[{proof.partition}], the"
            f" proof {proof.size}",
        )
    try:
        verify_inclusion(leaf_hash(proof.value), proof.leaf_index, sealed.size, proof.path,
                         sealed.root)  # fmt: skip
    except VerificationError as exc:
        raise _bad(exc.reason, exc.message) from exc
    return seal


def _counted(note: bytes, keyring: KeyRing, *, what: str) -> frozenset[str]:
    """The organizations whose cosignature lines in ``note`` count under ``keyring``; every
    line must count and at least ``k`` organizations must sign."""
    try:
        verified = verify_seal(note, keyring)
    except VerificationError as exc:
        raise _bad(exc.reason, f"the note: {exc.message}") from exc
    if verified.refused:
        name, reason = verified.refused[0]
        raise _bad(reason, f"the cosignature by {name} does not count under {what}", key=name)
    counted = {s.line for s in verified.signatures}
    names = {key_name(s.org, s.subject_id) for s in verified.signatures}
    for sig in parse_note(note).signatures:
        if sig.line() not in counted:
            raise _bad(
                Reason.INVALID_FIELD if sig.name in names else Reason.UNKNOWN_KEY,
                f"the line by {sig.name} counts for nothing under {what} (a key it does not"
                " know, a proposer's line, or a second line of one organization)",
                key=sig.name,
            )
    orgs = verified.orgs
    k = keyring.mandate.threshold
    if len(orgs) < k:
        raise _bad(
            Reason.SEAL_QUORUM_NOT_MET,
            f"cosignatures of {len(orgs)} organizations count ({', '.join(sorted(orgs)) or '-'}),"
            f" {k} required",
        )
    return orgs


def verify_full(proof: SealProof, final: FinalSeal, keyring: KeyRing) -> frozenset[str]:
    """The full check (module docstring) against the log's own final seal of the epoch.

    Args:
        proof: the proof.
        final: the final seal of the note's epoch, as derived from the seals topic
            (:meth:`SealedTrust.final`, or a bus reader's).
        keyring: the key ring in force for that epoch (:meth:`SealedTrust.keyring`).

    Returns:
        The organizations whose cosignatures in the note count.

    Raises:
        VerificationError: as :func:`check_path`; ``seal_not_final`` (the note's text is not
            the final seal of its epoch, or another seals offset is stated); a line's own
            reason (``key_revoked``, ``key_expired``, ``bad_signature``, ``wrong_role``,
            ``wrong_org``) or ``unknown_key`` for a line that counts for nothing;
            ``seal_quorum_not_met``.
    """
    seal = check_path(proof)
    if seal.epoch != final.epoch or seal.text() != SealProposal.of_final(final).text():
        raise _bad(
            Reason.SEAL_NOT_FINAL,
            f"the note's seal of epoch {seal.epoch} (round {seal.round}) is not the final seal"
            f" of epoch {final.epoch} the seals topic gives",
        )
    if proof.seal_offset != final.offset:
        raise _bad(
            Reason.SEAL_NOT_FINAL,
            f"the seal of epoch {final.epoch} became final at seals offset {final.offset}, not"
            f" {proof.seal_offset}",
        )
    return _counted(proof.note, keyring, what=f"the trust in force for epoch {seal.epoch}")


def verify_light(proof: SealProof, mandate: Mandate) -> frozenset[str]:
    """The light check (module docstring): the mandate file and the proof alone.

    Returns:
        The organizations whose cosignatures in the note count.

    Raises:
        VerificationError: as :func:`check_path`; ``wrong_mandate`` (a seal of another
            mandate); a carried registry record's reason when it does not verify under the
            mandate's roots (``unknown_key``, ``bad_signature``, ``wrong_org``,
            ``wrong_payload_type`` for a record that is neither an accreditation nor a
            revocation, ``duplicate_conflict``, ``oversized``, ``malformed``); a line's own
            reason (``key_revoked``, ``key_expired``, ...) or ``unknown_key`` for a line
            no carried accreditation accredits; ``seal_quorum_not_met``.
    """
    seal = check_path(proof)
    if seal.mandate_id != mandate.mandate_id:
        raise _bad(Reason.WRONG_MANDATE, f"a seal of mandate {seal.mandate_id!r}")
    ring = KeyRing(mandate)
    for i, raw in enumerate(proof.registry):
        try:
            _apply_carried(ring, raw)
        except VerificationError as exc:
            raise _bad(
                exc.reason,
                f"carried registry record {i} does not verify under mandate"
                f" {mandate.mandate_id} version {mandate.version}: {exc.message}",
                record=i,
            ) from exc
    return _counted(
        proof.note, ring, what=f"mandate {mandate.mandate_id} version {mandate.version}"
    )


def _apply_carried(ring: KeyRing, raw: bytes) -> None:
    env = decode_registry_record(raw)
    if env.payload_type not in (PAYLOAD_ACCREDITATION, PAYLOAD_REVOCATION):
        raise VerificationError(
            Reason.WRONG_PAYLOAD_TYPE, "neither an accreditation nor a revocation"
        )
    ring.apply(env)


def receipt_matches(proof: SealProof, receipt: Receipt) -> None:
    """Check that a proof is of the record a (verified) delivery receipt names: its position
    and the envelope's SHA-256.

    Raises:
        VerificationError: ``receipt_mismatch``.
    """
    where = (receipt.topic, receipt.partition, receipt.offset)
    if proof.position != where:
        raise VerificationError(
            Reason.RECEIPT_MISMATCH,
            f"the proof is of {proof.topic}[{proof.partition}]@{proof.offset}, the receipt names"
            f" {receipt.topic}[{receipt.partition}]@{receipt.offset}",
        )
    if hashlib.sha256(proof.value).digest() != receipt.envelope_digest:
        raise VerificationError(
            Reason.RECEIPT_MISMATCH, "the sealed record is not the envelope the receipt names"
        )


def check_receipt_inclusion(proof: SealProof, receipt: Receipt, mandate: Mandate) -> frozenset[str]:
    """An observer's check of a gateway's proof for its receipt: :func:`receipt_matches`, then
    the light check (:func:`verify_light`). With the log at hand, call
    :func:`receipt_matches` and :func:`verify_full` instead.

    Returns:
        The organizations whose cosignatures count.

    Raises:
        VerificationError: as :func:`receipt_matches` and :func:`verify_light`.
    """
    receipt_matches(proof, receipt)
    return verify_light(proof, mandate)


# ---------------------------------------------------------------------------------------------
# The final seals, their trust and their notes, from the seals and trust topics alone


@dataclass
class _Held:
    """A seals record of the open epoch that carries votes: offset, value, round, digest,
    organizations whose vote it carries."""

    offset: int
    value: bytes
    round: int
    digest: bytes
    orgs: frozenset[str]


@dataclass
class _Kept:
    """What is kept of one final seal: the seal, the key ring that counted its votes and its
    note."""

    seal: FinalSeal
    keyring: KeyRing
    note: bytes


class SealedTrust:
    """Final seals, each epoch's key ring and the final seals' notes, derived from the seals
    topic and the two trust topics (mandate and registry) alone.

    Feed every seals record in offset order (:meth:`offer_seal`) and the records of the trust
    topics' partitions from offset 0 in order (:meth:`offer_trust`), in any interleaving of the
    two. The key ring that counts the votes on a seal of epoch *e* is, as at every node's bus
    reader (:mod:`bus.bus_reader`), the final judge's ring after epoch *e-1*; here the judge is
    handed each final epoch restricted to the trust topics, which gives the same ring since the
    judge's trust verdicts never look at another topic (:mod:`bus.judge`, "The order"). Seal 1
    is judged under the root mandate plus the registry records it seals, as the bus reader
    does. The trust topics' records are checked against every final seal's roots
    (``sealed_root_mismatch`` otherwise). Other topics are not read: their roots are checked by
    whoever proves one of their records (:func:`build_proof`).

    Args:
        root: the mandate the bus began under.
        topics: topic naming.
        limits: verification limits (the nodes').
        keep: which final seals to keep the key ring and note of (default: every one); the
            seals themselves are always kept (:attr:`finals`).
    """

    def __init__(
        self,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        keep: Callable[[FinalSeal], bool] = lambda _seal: True,
    ) -> None:
        self._root = root
        self._topics = topics
        self._limits = limits
        self._keep = keep
        self._judge = FinalJudge(root, topics, limits)
        self._chain = SealChain(root.mandate_id, self._trust_for)
        self._values: dict[PartitionRef, list[bytes | None]] = {}
        self._trees: dict[PartitionRef, MerkleTree] = {}
        self._held: list[_Held] = []
        self._offered: dict[int, bytes] = {}  # seals records offered and not judged yet
        self._bootstrap: dict[bytes, KeyRing] = {}
        self.finals: list[FinalSeal] = []
        """Every final seal derived so far, in epoch order."""
        self._kept: dict[int, _Kept] = {}

    # -- feeding -----------------------------------------------------------------------------

    def offer_seal(self, offset: int, value: bytes | None) -> None:
        """The next record of the seals topic.

        Raises:
            SealedRootMismatchError: a trust topic's records contradict a final seal.
        """
        self._offered[offset] = value or b""
        self._take(self._chain.offer(offset, value))
        self._settle()

    def offer_trust(self, ref: PartitionRef, offset: int, value: bytes | None) -> None:
        """The next record of a trust topic's partition (offsets from 0, without a gap).

        Raises:
            ValueError: not a trust topic, or not the next offset.
            SealedRootMismatchError: the records contradict a final seal.
        """
        if ref[0] not in (self._topics.registry, self._topics.mandate):
            raise ValueError(f"{ref[0]} is not a trust topic")
        values = self._values.setdefault(ref, [])
        if offset != len(values):
            raise ValueError(f"{ref[0]}[{ref[1]}]: offset {offset} offered after {len(values)}")
        values.append(value)
        self._trees.setdefault(ref, MerkleTree()).append(value or b"")
        self._settle()

    # -- reads -------------------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Whether a seals record waits for trust records not offered yet."""
        return self._chain.waiting

    def final(self, epoch: int) -> FinalSeal | None:
        """The final seal of ``epoch``, if derived."""
        return self.finals[epoch - 1] if 1 <= epoch <= len(self.finals) else None

    def covering(self, ref: PartitionRef, offset: int) -> FinalSeal | None:
        """The first final seal that covers the record at ``offset`` of ``ref``."""
        epoch = epoch_of(self.finals, ref, offset)
        return None if epoch is None else self.finals[epoch - 1]

    def keyring(self, epoch: int) -> KeyRing | None:
        """The key ring that counted the votes on the final seal of ``epoch`` (kept seals)."""
        kept = self._kept.get(epoch)
        return None if kept is None else kept.keyring

    def note(self, epoch: int) -> bytes | None:
        """The final seal's note: its text and, in seals-topic order, the cosignature lines of
        the votes that made it final (kept seals)."""
        kept = self._kept.get(epoch)
        return None if kept is None else kept.note

    def registry_for(self, epoch: int) -> tuple[bytes, ...]:
        """The registry records a light check of the final seal of ``epoch`` needs: for each
        node key whose line is in its note, the registry record of the accreditation in force
        for that epoch (the first one in the log equal to it). Empty when not kept."""
        kept = self._kept.get(epoch)
        if kept is None:
            return ()
        verified = verify_seal(kept.note, kept.keyring)
        wanted = {s.key_id: kept.keyring.lookup(s.key_id) for s in verified.signatures}
        prev = self.final(epoch - 1)
        out: dict[bytes, bytes] = {}
        for ref, values in sorted(self._values.items()):
            if ref[0] != self._topics.registry:
                continue
            end = prev.size(ref) if prev is not None else kept.seal.size(ref)
            for raw in values[:end]:
                acc = _accreditation(raw)
                if acc is not None and wanted.get(acc.key_id) == acc and acc.key_id not in out:
                    out[acc.key_id] = raw or b""
        return tuple(out[s.key_id] for s in verified.signatures if s.key_id in out)

    # -- inside ------------------------------------------------------------------------------

    def _trust_for(self, proposal: SealProposal) -> KeyRing | None:
        if proposal.epoch != self._judge.epoch + 1:
            return None
        if proposal.epoch > 1:
            return self._judge.keyring
        ring = self._bootstrap.get(proposal.digest)
        if ring is None:  # seal 1: the node accreditations its text carries (bus.seal)
            ring = self._bootstrap[proposal.digest] = carried_trust(
                self._root, self._topics, proposal
            )
        return ring

    def _take(self, update: ChainUpdate) -> None:
        for v in update.verdicts:
            value = self._offered.pop(v.offset, b"")
            if v.opened is not None:
                self._held = [h for h in self._held if h.round >= v.opened.round]
            if v.disposition in (Disposition.COUNTED, Disposition.FINAL) and v.proposal:
                assert v.digest is not None
                self._held.append(
                    _Held(v.offset, value, v.proposal.round, v.digest, frozenset(v.counted))
                )
            if v.final is not None:
                self._finalize(v.final, v.proposal)

    def _finalize(self, seal: FinalSeal, proposal: SealProposal | None) -> None:
        assert proposal is not None
        self.finals.append(seal)
        held, self._held = self._held, []
        if not self._keep(seal):
            return
        ring = self._trust_for(proposal)
        assert ring is not None  # the chain just counted its votes under it
        lines = [
            sig.line
            for h in held
            if h.digest == seal.digest and h.round == seal.round
            for sig in verify_seal(h.value, ring).signatures
            if sig.org in h.orgs and sig.org in seal.signers
        ]
        note = Note(SealProposal.of_final(seal).text(), ()).encode() + b"".join(
            dict.fromkeys(lines)
        )
        self._kept[seal.epoch] = _Kept(seal, ring, note)

    def _settle(self) -> None:
        """Judge every final epoch whose trust records are all held; resume the chain."""
        while True:
            progressed = False
            epoch = self._judge.epoch
            if epoch < len(self.finals):
                seal = self.finals[epoch]
                trust = {
                    r: p
                    for r, p in seal.partitions.items()
                    if r[0] in (self._topics.registry, self._topics.mandate)
                }
                if all(len(self._values.get(r, ())) >= p.size for r, p in trust.items()):
                    self._judge_trust(seal, trust)
                    progressed = True
            if self._chain.waiting:
                update = self._chain.resume()
                if update.verdicts:
                    self._take(update)
                    progressed = True
            if not progressed:
                return

    def _judge_trust(self, seal: FinalSeal, trust: Mapping[PartitionRef, PartitionSeal]) -> None:
        start = self._judge.sizes
        records: dict[PartitionRef, list[bytes | None]] = {}
        for ref, sealed in trust.items():
            if self._trees[ref].root_at(sealed.size) != sealed.root:
                raise SealedRootMismatchError(
                    f"{ref[0]}[{ref[1]}]: the records hash to another root than the final seal"
                    f" of epoch {seal.epoch} states at size {sealed.size}",
                    topic=ref[0],
                    partition=ref[1],
                    size=sealed.size,
                )
            records[ref] = self._values[ref][start.get(ref, 0) : sealed.size]
        restricted = FinalSeal(seal.mandate_id, seal.epoch, seal.time_ms, dict(trust),
                               seal.digest, seal.prev_digest, seal.signers, seal.offset,
                               seal.round)  # fmt: skip
        self._judge.judge_epoch(restricted, records)


def _accreditation(raw: bytes | None) -> _Accreditation | None:
    """The accreditation a registry record claims (decoded, not verified), or None."""
    try:
        env = decode_registry_record(raw or b"")
        if env.payload_type != PAYLOAD_ACCREDITATION:
            return None
        return _Accreditation.decode(env.payload)
    except VerificationError:
        return None
