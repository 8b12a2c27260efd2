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

from dataclasses import dataclass, field
from typing import Final

from bus._pb.obus.v1 import statement_pb2
from bus.crypto import SigningKey, verify_pae
from bus.decision import _check_evidence
from bus.errors import Reason, VerificationError
from bus.model import (
    _UUID7_RE,
    Envelope,
    Role,
    Signature,
    _invalid,
    _parse,
    check_id,
    encode,
    sha256,
)
from bus.policy import Evidence
from bus.trust import KeyRing, check_record_size, check_signature_count

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


def signing_orgs(envelope: Envelope, keyring: KeyRing, *, at_ms: int) -> dict[str, str]:
    """Organizations with a valid signature on the envelope -> who signed (root or node id).

    Invalid signatures, unknown keys, keys of other roles and revoked node keys are ignored.
    A signature is verified only when its key is a root key or a usable NODE key, of an
    organization not yet counted, and its key id was not tried before on this envelope.
    """
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
                keyring.check_usable(acc, role=Role.NODE, at_ms=at_ms, seq=_AFTER_EVERY_SEQ)
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
    """Folds the statements topic (one partition, in offset order) into statement statuses."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring
        self._by_id: dict[str, StatementStatus] = {}

    def apply(self, raw: bytes) -> tuple[StatementStatus, list[str]]:
        """Apply one record; returns the statement's status and the organizations it added.

        Raises:
            VerificationError: ``oversized`` (checked before decoding), ``malformed``,
                ``missing_signature``, ``wrong_payload_type``, ``too_many_signatures`` (more
                than the mandate's organizations, or two by one key id), ``invalid_field``,
                ``wrong_mandate``, ``wrong_org`` (a draft not signed by its drafter),
                ``unknown_key`` (no valid signature of any organization) or
                ``duplicate_conflict`` (other bytes under a known statement id).
        """
        check_record_size(len(raw), MAX_STATEMENT_RECORD_BYTES, "statement record")
        env = Envelope.decode(raw)
        if env.payload_type != PAYLOAD_STATEMENT:
            raise VerificationError(
                Reason.WRONG_PAYLOAD_TYPE, f"expected {PAYLOAD_STATEMENT}, got {env.payload_type!r}"
            )
        mandate = self.keyring.mandate
        check_signature_count(env, len(mandate.organizations), "a statement record")
        stmt = JointStatement.decode(env.payload)
        if stmt.mandate_id != mandate.mandate_id:
            raise VerificationError(Reason.WRONG_MANDATE, f"statement for {stmt.mandate_id!r}")
        if mandate.organization(stmt.drafted_by) is None:
            raise VerificationError(
                Reason.WRONG_ORG, f"{stmt.drafted_by!r} is not part of the mandate"
            )
        # A signature carries no time of its own: keys are judged at the statement's creation.
        signers = signing_orgs(env, self.keyring, at_ms=stmt.created_at_ms)
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

    def get(self, statement_id: str) -> StatementStatus | None:
        """The status of a statement, or None."""
        return self._by_id.get(statement_id)

    def statuses(self) -> list[StatementStatus]:
        """Every statement, oldest first."""
        return sorted(self._by_id.values(), key=lambda s: s.statement.statement_id)
