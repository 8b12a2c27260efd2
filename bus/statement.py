"""Joint statements: drafted by one organization, co-signed by others, valid at k of n (pure).

Wire form: every record on ``<prefix>statements`` (one partition, record key = statement id) is
an :class:`~bus.model.Envelope` of type :data:`PAYLOAD_STATEMENT` whose payload is a
:class:`JointStatement`. The draft is the first record of a statement id and must carry a
signature of the drafting organization. A co-signature is a record with the *same payload
bytes* and the co-signer's own signature (records are never merged or re-serialized, so every
signature can be checked against the exact bytes it covers).

Counting (:class:`StatementBook`), like :func:`bus.trust.signing_organizations`: a statement is
signed by an organization when a valid signature comes from that organization's root key or
from a node key it accredited with role ``NODE``; one organization counts once however many of
its keys sign (two signatures by one key refuse the record, see below). A statement is
**valid** when the distinct signing organizations reach the mandate's threshold k (of n
organizations). Node keys have no sequence here, so a node key that was ever revoked signs
nothing (fail closed, as for receipts). Other bytes under a known statement id are refused as
``duplicate_conflict``.

Bounded work per record: a statement record is at most :data:`MAX_STATEMENT_RECORD_BYTES`
(``oversized``, checked before decoding) and carries at most as many signatures as the mandate
has organizations, never two by one key id (``too_many_signatures``, checked before any
signature is verified). Signatures by keys that are neither a root key nor an accredited,
usable NODE key, and signatures of an organization already counted, are skipped without a
verification, so a record costs at most one verification per organization.

Statements are words, not gates: nothing in an organization's own policy or decisions waits for
or reads them.

Pure: no asyncio, Kafka, socket or HTTP imports.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bus._pb.obus.v1 import statement_pb2
from bus.crypto import SigningKey, verify_pae
from bus.decision import VerifiedDecision, _check_evidence, check_seal_reference
from bus.epoch import FinalSeal, PartitionRef
from bus.errors import BusError, ConfigError, EpochInputError, Reason, VerificationError
from bus.judge import RecordPos, Status, Verdict
from bus.model import (
    _UUID7_RE,
    Envelope,
    Mandate,
    Role,
    Signature,
    _invalid,
    _parse,
    check_id,
    encode,
    sha256,
)
from bus.policy import Evidence
from bus.sealed_reader import SealedReader
from bus.topics import Topics
from bus.trust import KeyRing, check_record_size, check_signature_count
from bus.verify import Limits

PAYLOAD_STATEMENT: Final = "application/vnd.obus.statement.v1+protobuf"
MAX_TITLE_CHARS: Final = 200
MAX_TEXT_CHARS: Final = 10_000
# The largest valid statement (MAX_EVIDENCE references, MAX_TEXT_CHARS and MAX_TITLE_CHARS of
# four-byte characters) encodes to about 190 KB; a signature adds 102 bytes.
MAX_STATEMENT_RECORD_BYTES: Final = 256 * 1024
# A co-signature record carries only its signer's signature; see the module docstring.
_AFTER_EVERY_SEQ: Final = 2**64


@dataclass(frozen=True, slots=True)
class JointStatement:
    """A statement text referencing reports (see schemas/obus/v1/statement.proto)."""

    statement_id: str
    mandate_id: str
    drafted_by: str
    title: str
    text: str
    references: tuple[Evidence, ...]
    created_at_ms: int

    def __post_init__(self) -> None:
        if not _UUID7_RE.fullmatch(self.statement_id):
            raise _invalid("statement_id", "must be a lower-case UUIDv7")
        check_id("mandate_id", self.mandate_id)
        check_id("drafted_by", self.drafted_by)
        if not self.title.strip() or len(self.title) > MAX_TITLE_CHARS:
            raise _invalid("title", f"must be 1..{MAX_TITLE_CHARS} characters")
        if not self.text.strip() or len(self.text) > MAX_TEXT_CHARS:
            raise _invalid("text", f"must be 1..{MAX_TEXT_CHARS} characters")
        _check_evidence(self.references, "references")
        if self.created_at_ms <= 0:
            raise _invalid("created_at_ms", "must be positive Unix milliseconds")

    def to_pb(self) -> statement_pb2.JointStatement:
        """The generated protobuf message (for the codec only)."""
        return statement_pb2.JointStatement(
            statement_id=self.statement_id,
            mandate_id=self.mandate_id,
            drafted_by=self.drafted_by,
            title=self.title,
            text=self.text,
            references=[
                statement_pb2.StatementReference(report_id=e.report_id, envelope_digest=e.digest)
                for e in self.references
            ],
            created_at_ms=self.created_at_ms,
        )

    @classmethod
    def decode(cls, data: bytes) -> JointStatement:
        """Parse and validate statement payload bytes (malformed / invalid_field)."""
        pb = _parse(statement_pb2.JointStatement, data, "statement")
        return cls(
            statement_id=pb.statement_id,
            mandate_id=pb.mandate_id,
            drafted_by=pb.drafted_by,
            title=pb.title,
            text=pb.text,
            references=tuple(
                Evidence(r.report_id, bytes(r.envelope_digest)) for r in pb.references
            ),
            created_at_ms=pb.created_at_ms,
        )


def sign_statement(statement: JointStatement, key: SigningKey) -> bytes:
    """The draft record: the statement signed by the drafter's node (or root) key."""
    payload = encode(statement)
    sig = Signature(key.key_id, key.sign_pae(PAYLOAD_STATEMENT, payload))
    return Envelope(PAYLOAD_STATEMENT, payload, (sig,)).encode()


def cosign(record: bytes, key: SigningKey) -> bytes:
    """A co-signature record: the same payload bytes, signed by ``key`` alone."""
    env = Envelope.decode(record)
    if env.payload_type != PAYLOAD_STATEMENT:
        raise VerificationError(Reason.WRONG_PAYLOAD_TYPE, "not a statement record")
    sig = Signature(key.key_id, key.sign_pae(PAYLOAD_STATEMENT, env.payload))
    return Envelope(PAYLOAD_STATEMENT, env.payload, (sig,)).encode()


def signing_orgs(
    envelope: Envelope, keyring: KeyRing, *, at_ms: int, epoch: int | None = None
) -> dict[str, str]:
    """Organizations with a valid signature on the envelope -> who signed (root or node id).

    Invalid signatures, unknown keys, keys of other roles and revoked node keys are ignored:
    with the record's ``epoch``, a node key whose revocation's ``last_valid_seq`` (the last
    epoch its signatures count on) is below it; without (not sealed yet), a node key revoked at
    all. Root keys are those of ``keyring``'s mandate version: a root rotated out counts for
    nothing. A signature is verified only when its key is a root key or a usable NODE key, of
    an organization not yet counted, and its key id was not tried before on this envelope.
    """
    position = _AFTER_EVERY_SEQ if epoch is None else epoch
    roots = {o.root_key_id: o for o in keyring.mandate.organizations}
    out: dict[str, str] = {}
    tried: set[bytes] = set()
    for s in envelope.signatures:
        if s.key_id in tried:
            continue
        tried.add(s.key_id)
        root = roots.get(s.key_id)
        try:
            if root is not None:
                org, public_key, signer = root.org, root.root_public_key, "root key"
            else:
                acc = keyring.lookup(s.key_id)
                keyring.check_usable(acc, role=Role.NODE, at_ms=at_ms, seq=position)
                org, public_key, signer = acc.org, acc.public_key, acc.subject_id
            if org in out:
                continue
            verify_pae(public_key, envelope.payload_type, envelope.payload, s.sig)
        except VerificationError:
            continue
        out[org] = signer
    return out


@dataclass
class StatementStatus:
    """What is known of one statement: its text, who signed it and whether it is valid."""

    statement: JointStatement
    digest: bytes  # SHA-256 of the payload bytes every signature covers
    threshold: int
    organizations: int
    signed_by: dict[str, str] = field(default_factory=dict)  # org -> signer (first valid)

    @property
    def valid(self) -> bool:
        """True when at least ``threshold`` distinct organizations signed."""
        return len(self.signed_by) >= self.threshold

    @property
    def state(self) -> str:
        """``valid`` or ``pending``."""
        return "valid" if self.valid else "pending"


class StatementBook:
    """Folds the statements topic (one partition, in offset order) into statement statuses.

    Args:
        keyring: the trust state records are judged under unless :meth:`apply` is given one
            (the board passes the key ring in force at each record's epoch).
    """

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring
        self._by_id: dict[str, StatementStatus] = {}

    def apply(
        self,
        raw: bytes,
        *,
        keyring: KeyRing | None = None,
        epoch: int | None = None,
        at_ms: int | None = None,
    ) -> tuple[StatementStatus, list[str]]:
        """Apply one record; returns the statement's status and the organizations it added.

        Args:
            raw: the record value.
            keyring: the trust state to judge it under (default: the book's).
            epoch: the epoch the record is sealed in, where node-key revocations cut (None:
                not sealed yet, any revocation refuses the key).
            at_ms: when signing keys must be in their accreditation window: *t_e* of the
                record's epoch on the sealed board; default the statement's ``created_at_ms``
                (a time its drafter chose).

        Raises:
            VerificationError: ``oversized`` (checked before decoding), ``malformed``,
                ``missing_signature``, ``wrong_payload_type``, ``too_many_signatures`` (more
                than the mandate's organizations, or two by one key id), ``invalid_field``,
                ``wrong_mandate``, ``wrong_org`` (a draft not signed by its drafter),
                ``unknown_key`` (no valid signature of any organization) or
                ``duplicate_conflict`` (other bytes under a known statement id).
        """
        ring = keyring or self.keyring
        check_record_size(len(raw), MAX_STATEMENT_RECORD_BYTES, "statement record")
        env = Envelope.decode(raw)
        if env.payload_type != PAYLOAD_STATEMENT:
            raise VerificationError(
                Reason.WRONG_PAYLOAD_TYPE, f"expected {PAYLOAD_STATEMENT}, got {env.payload_type!r}"
            )
        mandate = ring.mandate
        check_signature_count(env, len(mandate.organizations), "a statement record")
        stmt = JointStatement.decode(env.payload)
        if stmt.mandate_id != mandate.mandate_id:
            raise VerificationError(Reason.WRONG_MANDATE, f"statement for {stmt.mandate_id!r}")
        if mandate.organization(stmt.drafted_by) is None:
            raise VerificationError(
                Reason.WRONG_ORG, f"{stmt.drafted_by!r} is not part of the mandate"
            )
        when = stmt.created_at_ms if at_ms is None else at_ms
        signers = signing_orgs(env, ring, at_ms=when, epoch=epoch)
        if not signers:
            raise VerificationError(
                Reason.UNKNOWN_KEY, "no valid signature of a mandate organization"
            )
        digest = sha256(env.payload)
        status = self._by_id.get(stmt.statement_id)
        if status is None:
            if stmt.drafted_by not in signers:
                raise VerificationError(
                    Reason.WRONG_ORG,
                    f"a draft must be signed by its drafter {stmt.drafted_by!r}",
                    signed_by=sorted(signers),
                )
            status = StatementStatus(stmt, digest, mandate.threshold, len(mandate.organizations))
            self._by_id[stmt.statement_id] = status
        elif status.digest != digest:
            raise VerificationError(
                Reason.DUPLICATE_CONFLICT,
                "other bytes under a known statement id",
                statement_id=stmt.statement_id,
            )
        added = [o for o in sorted(signers) if o not in status.signed_by]
        for o in added:
            status.signed_by[o] = signers[o]
        return status, added

    def restore(self, status: StatementStatus) -> None:
        """Take a status as stored earlier (a restart rebuilds the book from its store, so a
        co-signature read after it counts for a statement drafted before it)."""
        self._by_id[status.statement.statement_id] = status

    def copy(self) -> StatementBook:
        """An independent book with the same statuses (to apply provisional records on)."""
        out = StatementBook(self.keyring)
        for sid, st in self._by_id.items():
            out._by_id[sid] = StatementStatus(
                st.statement, st.digest, st.threshold, st.organizations, dict(st.signed_by)
            )
        return out

    def get(self, statement_id: str) -> StatementStatus | None:
        """The status of a statement, or None."""
        return self._by_id.get(statement_id)

    def statuses(self) -> list[StatementStatus]:
        """Every statement, oldest first."""
        return sorted(self._by_id.values(), key=lambda s: s.statement.statement_id)


# ---------------------------------------------------------------------------------------------
# The board on the sealed log


@dataclass(frozen=True, slots=True)
class BoardDecision:
    """A decision record's final answer on the board.

    Args:
        pos: where it sits.
        raw: its bytes (empty for a record with no value).
        accepted: the verified decision when accepted, else None.
        reason: the reason code when refused, else "".
        detail: one sentence for humans.
    """

    pos: RecordPos
    raw: bytes
    accepted: VerifiedDecision | None
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BoardStatement:
    """A statement record's answer on the board.

    Args:
        pos: where it sits.
        raw: its bytes (empty for a record with no value).
        status: the statement after this record (None when the record was refused).
        added: the organizations this record added.
        signed: how many organizations had signed after this record.
        reason: the reason code when refused, else "".
        detail: one sentence for humans.
    """

    pos: RecordPos
    raw: bytes
    status: StatementStatus | None
    added: tuple[str, ...] = ()
    signed: int = 0
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BoardEpoch:
    """One sealed epoch of the board: decisions (in the judge's order) and statement records
    (in offset order) with their answers."""

    epoch: int
    time_ms: int
    seal_digest: bytes
    decisions: tuple[BoardDecision, ...]
    statements: tuple[BoardStatement, ...]


BOARD_SNAPSHOT_FORMAT: Final = "obus-board-v1"


class SealedBoard:
    """Others' decisions and joint statements, judged epoch by epoch on the sealed log (pure).

    What every part of a node and every reader of the board runs, so that one trust state
    counts everywhere: the trust records (``registry``, ``mandate``), the decisions topics and
    the statements topic, fed in any interleaving (:meth:`offer_records`: each partition in
    offset order), and the node's final seals in epoch order (:meth:`judge`). A final seal's
    partitions outside those topics are left out (the reports are the sealer's business), so
    its roots are checked for exactly the records read here, and a
    :class:`~bus.judge.FinalJudge` judges them: trust takes effect from the epoch after its
    own, mandate versions replace root keys (a rotated-out root accredits nothing and signs
    nothing), decisions are verified and chained per organization under their epoch's trust at
    *t_e*. Statement records of epoch *e* are then applied under the key ring in force at *e*
    (what the judge held before judging *e*), at *t_e*, with node keys revoked at an epoch
    before *e* counting for nothing. So the board is a function of the sealed log: the same at
    every node and reader, whatever order they read in and however often they restart.

    Given the final seals' digests (:meth:`judge`), an accepted decision that names a seal
    whose digest is not the final seal of that epoch is refused here (``invalid_field``,
    :func:`bus.decision.check_seal_reference`); every reader holding the final seals refuses it
    alike.

    Args:
        root: the mandate the bus began under (the same at every reader).
        topics: topic names.
        limits: verification limits (the sealer's).
        decisions: whether the decisions topics are read (a statements reader may leave them).
        book: statements known before (a restarted board restores its book from its store).
    """

    def __init__(
        self,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        decisions: bool = True,
        book: StatementBook | None = None,
        _reader: SealedReader | None = None,
        _held: dict[RecordPos, bytes] | None = None,
    ) -> None:
        self._root = root
        self._topics = topics
        self._limits = limits
        self._decisions = decisions
        self._reader = _reader or SealedReader(root, topics, limits)
        self.book = book or StatementBook(self._reader.judge.keyring)
        self.book.keyring = self._reader.judge.keyring
        # Deferred decisions' bytes, kept until the next epoch's answer on them.
        self._held: dict[RecordPos, bytes] = dict(_held or {})

    # -- reads -------------------------------------------------------------------------------

    def covers(self, topic: str) -> bool:
        """Whether this board reads ``topic``."""
        t = self._topics
        if topic in (t.registry, t.mandate, t.statements):
            return True
        return self._decisions and t.org_of_decision_topic(topic) is not None

    @property
    def epoch(self) -> int:
        """The last epoch judged (0 before the first)."""
        return self._reader.judge.epoch

    @property
    def keyring(self) -> KeyRing:
        """The final trust state in force for the next epoch."""
        return self._reader.judge.keyring

    def positions(self) -> dict[PartitionRef, int]:
        """Each partition's judged size: where to read from after a restart."""
        return self._reader.positions()

    def read_size(self, ref: PartitionRef) -> int:
        """Records of ``ref`` held without a gap from offset 0."""
        return self._reader.read_size(ref)

    def unsealed(self, ref: PartitionRef) -> tuple[int, list[bytes | None]]:
        """(first offset, values) held beyond the last judged epoch without a gap."""
        start = self.positions().get(ref, 0)
        return start, self._reader.buffered_values(ref, self.read_size(ref))

    def restricted(self, seal: FinalSeal) -> FinalSeal:
        """``seal`` with only the partitions this board reads."""
        parts = {r: p for r, p in seal.partitions.items() if self.covers(r[0])}
        return dataclasses.replace(seal, partitions=parts)

    def ready(self, seal: FinalSeal) -> bool:
        """Whether every record ``seal`` covers here is held (it can be judged now)."""
        return all(
            self._reader.read_size(r) >= p.size for r, p in self.restricted(seal).partitions.items()
        )

    # -- feeding -----------------------------------------------------------------------------

    def offer_records(self, ref: PartitionRef, offset: int, values: Sequence[bytes | None]) -> None:
        """Consecutive records of one partition this board reads (others are ignored).

        Raises:
            EpochInputError: an offset offered again with other bytes.
        """
        if self.covers(ref[0]):
            self._reader.offer_records(ref, offset, values)

    def judge(
        self, seal: FinalSeal, seal_digest: Callable[[int], bytes | None] | None = None
    ) -> BoardEpoch | None:
        """Judge the next final seal's epoch, or None while its records are not all held.

        Args:
            seal: the final seal of epoch :attr:`epoch` + 1 (as the node's sealer found it).
            seal_digest: the digest of the final seal of an earlier epoch (None: unknown), to
                check the seal each accepted decision names; None: not checked.

        Raises:
            EpochInputError: not the next final seal.
            SealedRootMismatchError: the records held do not hash to its roots (a sealed record
                altered or deleted); nothing of the epoch is judged.
        """
        if seal.epoch != self.epoch + 1:
            raise EpochInputError(
                f"final seal of epoch {seal.epoch} offered to a board at epoch {self.epoch}",
                epoch=seal.epoch,
            )
        mine = self.restricted(seal)
        if not self.ready(mine):
            return None
        ring = self._reader.judge.keyring  # in force at this epoch
        values: dict[RecordPos, bytes | None] = {}
        for ref, p in mine.partitions.items():
            if ref[0] == self._topics.registry or ref[0] == self._topics.mandate:
                continue
            start = self.positions().get(ref, 0)
            for i, value in enumerate(self._reader.buffered_values(ref, p.size)):
                values[(ref[0], ref[1], start + i)] = value
        [ev] = self._reader.offer_final_seal(mine)
        self.book.keyring = self._reader.judge.keyring
        decisions = []
        for verdict in ev.verdicts:
            if self._topics.org_of_decision_topic(verdict.pos[0]) is None:
                continue
            if verdict.status is Status.DEFERRED:
                self._held[verdict.pos] = values.get(verdict.pos) or b""
                continue
            raw = values.get(verdict.pos) or self._held.pop(verdict.pos, b"")
            decisions.append(_board_decision(verdict, raw, seal_digest))
        stmt_positions = sorted(p for p in values if p[0] == self._topics.statements)
        statements = [self._statement(p, values[p], ring, seal) for p in stmt_positions]
        return BoardEpoch(
            seal.epoch, seal.time_ms, seal.digest, tuple(decisions), tuple(statements)
        )

    def _statement(
        self, pos: RecordPos, value: bytes | None, ring: KeyRing, seal: FinalSeal
    ) -> BoardStatement:
        if value is None:
            return BoardStatement(pos, b"", None, reason=Reason.MALFORMED.value,
                                  detail="record has no value")  # fmt: skip
        try:
            status, added = self.book.apply(
                value, keyring=ring, epoch=seal.epoch, at_ms=seal.time_ms
            )
        except VerificationError as exc:
            return BoardStatement(pos, value, None, reason=exc.reason.value, detail=exc.message)
        except BusError as exc:  # never crash on input
            return BoardStatement(pos, value, None, reason=Reason.MALFORMED.value,
                                  detail=exc.message)  # fmt: skip
        return BoardStatement(pos, value, status, tuple(added), len(status.signed_by))

    def provisional(self, now_ms: int) -> tuple[StatementBook, list[BoardStatement]]:
        """The statements topic beyond the last judged epoch applied to a copy of the book,
        under the trust in force next, at ``now_ms``, any revoked node key refused: what will
        probably be final once sealed, never stored as such."""
        book = self.book.copy()
        book.keyring = self.keyring
        out = []
        ref = (self._topics.statements, 0)
        start, values = self.unsealed(ref)
        for i, value in enumerate(values):
            pos = (ref[0], ref[1], start + i)
            if value is None:
                out.append(BoardStatement(pos, b"", None, reason=Reason.MALFORMED.value))
                continue
            try:
                status, added = book.apply(value, at_ms=now_ms)
            except BusError as exc:
                reason = exc.reason.value if isinstance(exc, VerificationError) else "malformed"
                out.append(BoardStatement(pos, value, None, reason=reason, detail=exc.message))
                continue
            out.append(BoardStatement(pos, value, status, tuple(added), len(status.signed_by)))
        return book, out

    # -- restarts ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The board's state after the last judged epoch (its judge and Merkle frontiers, the
        bytes of decisions deferred to the next epoch), canonical JSON; the book is not in it
        (it is stored row by row with the epochs that made it)."""
        state: dict[str, Any] = {
            "format": BOARD_SNAPSHOT_FORMAT,
            "decisions": self._decisions,
            "reader": self._reader.snapshot().decode(),
            "held": sorted(
                [t, p, o, base64.b64encode(raw).decode()] for (t, p, o), raw in self._held.items()
            ),
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def resume(
        cls,
        snapshot: bytes,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        book: StatementBook | None = None,
    ) -> SealedBoard:
        """A board standing where :meth:`snapshot` was taken, with the statements of ``book``;
        feed it again from :meth:`positions`.

        Raises:
            ConfigError: not a board snapshot, or made with another root, topics or limits.
        """
        try:
            s = json.loads(snapshot)
            ok = s["format"] == BOARD_SNAPSHOT_FORMAT
            decisions = bool(s["decisions"])
            reader_state: str = s["reader"]
            held = {
                (str(t), int(p), int(o)): base64.b64decode(b, validate=True)
                for t, p, o, b in s["held"]
            }
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ConfigError(
                "board snapshot",
                "not a snapshot of a sealed board",
                "read the board again from the first epoch",
            )
        reader = SealedReader.resume(reader_state.encode(), root, topics, limits)
        return cls(root, topics, limits, decisions=decisions, book=book, _reader=reader, _held=held)


def _board_decision(
    v: Verdict, raw: bytes, seal_digest: Callable[[int], bytes | None] | None
) -> BoardDecision:
    if v.status is not Status.ACCEPTED or v.decision is None:
        return BoardDecision(v.pos, raw, None, v.reason or Reason.MALFORMED.value, v.detail)
    if seal_digest is not None:
        try:
            check_seal_reference(v.decision.decision, seal_digest=seal_digest)
        except VerificationError as exc:
            return BoardDecision(v.pos, raw, None, exc.reason.value, exc.message)
    return BoardDecision(v.pos, raw, v.decision)
