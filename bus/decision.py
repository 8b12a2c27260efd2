"""Published decisions: an organization's follow-up decision, signed by its node key (pure).

A node publishes the decisions its policy marks ``publish = true`` to ``<prefix>decisions.<org>``
as a :class:`PublishedDecision` in an :class:`~bus.model.Envelope` of type
:data:`PAYLOAD_DECISION`, signed by exactly one node key its organization accredited with role
``NODE`` (schemas/obus/v1/decision.proto). Publishing is for transparency only: every other
organization reads, verifies and shows these decisions, and never acts on them.

**One chain per organization.** The decisions of one organization form one hash chain, like an
observer's reports: ``seq`` 1, 2, ... and ``prev_digest`` the SHA-256 of the exact envelope
bytes of the organization's decision at ``seq - 1`` (empty for seq 1), whichever of its node
keys signed either. The publisher keeps its chain head (:func:`next_link` gives the next
position) and continues from it after a restart; a reader extends the chain with
:func:`bus.verify.check_link`, so a second decision at a seq already taken is refused
(``chain_fork``) and one that skips a seq is ``chain_gap``: an organization cannot rewrite or
leave out what it published, and a seq is not a number its signer picks.

Verification rule (:func:`verify_decision`), the same on every node and for auditors:

1. the bytes are at most the record limit, and a canonical envelope of type ``decision`` with
   exactly one signature (the rule of every singly signed envelope,
   :func:`bus.crypto.open_single`);
2. the signing key is accredited, its signature verifies under the pinned Ed25519 rule;
3. the key is accredited as ``NODE`` by the organization the decision names, which is also the
   organization of the topic it was read from (``wrong_org`` / ``wrong_topic`` otherwise);
4. ``signed_at_ms`` lies in the accreditation's window, and the node key is not revoked at the
   decision's **epoch**: for a node key, a revocation's ``last_valid_seq`` is the last epoch of
   the bus whose records its signatures count on (the rule of seals, :mod:`bus.seal`), so a
   decision sealed in a later epoch is ``key_revoked``. A reader that does not know the
   record's epoch yet (a provisional reader) passes none, and then any revocation of the key
   refuses it. The decision's own ``seq`` never counts here: its signer chooses it;
5. the decision is for the mandate the reader runs under;
6. with a reference time (*t_e* of the record's epoch, :mod:`bus.judge`), ``signed_at_ms`` is at
   most the clock skew ahead of it (``clock_skew``);
7. the seal it rests on (:func:`check_seal_reference`): a decision on final verdicts names the
   epoch and the digest of the final seal they were final at (``seal_epoch``,
   ``seal_digest``; 0 and empty for one on provisional verdicts). With the record's epoch, a
   ``seal_epoch`` at or after it is ``invalid_field`` (evidence cannot be final after the
   decision citing it was sealed); a reader holding the final seals also checks the digest
   (``invalid_field`` when it is not the final seal of that epoch).

The chain and the delivery lag are the final judge's (:class:`bus.judge.FinalJudge`): they need
the decisions before this one, in the order of the sealed log.

Pure: no asyncio, Kafka, socket or HTTP imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bus._pb.obus.v1 import decision_pb2
from bus.crypto import SigningKey, open_single, sign_single
from bus.errors import Reason, VerificationError
from bus.model import (
    _UUID7_RE,
    DIGEST_BYTES,
    Role,
    _invalid,
    _parse,
    check_id,
    encode,
    sha256,
)
from bus.policy import KINDS, PRIORITIES, Decision, Evidence
from bus.trust import KeyRing
from bus.verify import ChainHead, Limits

PAYLOAD_DECISION: Final = "application/vnd.obus.decision.v1+protobuf"
# A decision rests on at most this many reports; a larger window is summarized by its first
# MAX_EVIDENCE report ids (sorted) and the count in the summary. Keeps records far below the
# broker's 1 MiB default (each entry is ~75 bytes).
MAX_EVIDENCE: Final = 2000
MAX_SUMMARY_CHARS: Final = 500
# Beyond any revocation's last_valid_seq (a uint64): the position of a decision whose epoch the
# reader does not know, so that every revocation of its key counts.
_EPOCH_UNKNOWN: Final = 2**64
_DEFAULT_LIMITS: Final = Limits()


def next_link(head: ChainHead | None) -> tuple[int, bytes]:
    """``(seq, prev_digest)`` of the decision that follows an organization's chain ``head``
    (None: the organization has published none)."""
    return (1, b"") if head is None else (head.seq + 1, head.digest)


def _check_evidence(items: tuple[Evidence, ...], what: str) -> None:
    if len(items) > MAX_EVIDENCE:
        raise _invalid(what, f"more than {MAX_EVIDENCE} entries")
    for e in items:
        if not _UUID7_RE.fullmatch(e.report_id):
            raise _invalid(what, f"{e.report_id!r} is not a report id (UUIDv7)")
        if len(e.digest) != DIGEST_BYTES:
            raise _invalid(what, f"digest of {e.report_id} must be {DIGEST_BYTES} bytes")
    ids = [e.report_id for e in items]
    if ids != sorted(set(ids)):
        raise _invalid(what, "must be sorted by report id without repeats")


@dataclass(frozen=True, slots=True)
class PublishedDecision:
    """A decision as published on the bus (see schemas/obus/v1/decision.proto)."""

    decision_id: str
    mandate_id: str
    org: str
    seq: int
    prev_digest: bytes
    rule: str
    kind: str
    action: str
    priority: str
    zone: str
    group: str
    window_start_ms: int
    window_end_ms: int
    evidence: tuple[Evidence, ...]
    decided_at_ms: int
    signed_at_ms: int
    summary: str
    policy_digest: bytes
    seal_epoch: int = 0
    seal_digest: bytes = b""

    @property
    def final(self) -> bool:
        """Whether it rests on final verdicts (names a seal)."""
        return self.seal_epoch > 0

    def __post_init__(self) -> None:
        check_id("org", self.org)
        check_id("mandate_id", self.mandate_id)
        check_id("rule", self.rule)
        if (
            not self.decision_id.startswith(f"{self.org}:{self.rule}:")
            or len(self.decision_id) > 200
        ):
            raise _invalid("decision_id", "must start with '<org>:<rule>:' (at most 200 chars)")
        if self.seq < 1:
            raise _invalid("seq", "must be >= 1")
        if self.seq == 1 and self.prev_digest:
            raise _invalid("prev_digest", "must be empty when seq is 1")
        if self.seq > 1 and len(self.prev_digest) != DIGEST_BYTES:
            raise _invalid("prev_digest", f"must be {DIGEST_BYTES} bytes when seq > 1")
        if self.kind not in KINDS:
            raise _invalid("kind", f"{self.kind!r} is not one of {', '.join(KINDS)}")
        if self.priority not in PRIORITIES:
            raise _invalid("priority", f"{self.priority!r} is not one of {', '.join(PRIORITIES)}")
        if not self.action or len(self.action) > 64:
            raise _invalid("action", "must be 1..64 characters")
        if not self.evidence:
            raise _invalid("evidence", "a decision names at least one report")
        _check_evidence(self.evidence, "evidence")
        if self.window_start_ms > self.window_end_ms or self.window_start_ms < 0:
            raise _invalid("window_end_ms", "need 0 <= window_start_ms <= window_end_ms")
        if self.decided_at_ms <= 0 or self.signed_at_ms <= 0:
            raise _invalid("signed_at_ms", "timestamps must be positive Unix milliseconds")
        if len(self.summary) > MAX_SUMMARY_CHARS:
            raise _invalid("summary", f"longer than {MAX_SUMMARY_CHARS} characters")
        if len(self.policy_digest) not in (0, DIGEST_BYTES):
            raise _invalid("policy_digest", f"must be empty or {DIGEST_BYTES} bytes")
        if self.seal_epoch < 0:
            raise _invalid("seal_epoch", "must be >= 0")
        if self.seal_epoch == 0 and self.seal_digest:
            raise _invalid("seal_digest", "must be empty on provisional verdicts (seal_epoch 0)")
        if self.seal_epoch > 0 and len(self.seal_digest) != DIGEST_BYTES:
            raise _invalid("seal_digest", f"must be {DIGEST_BYTES} bytes when seal_epoch > 0")

    @classmethod
    def of(
        cls,
        decision: Decision,
        *,
        mandate_id: str,
        after: ChainHead | None,
        signed_at_ms: int,
        policy_digest: bytes = b"",
    ) -> PublishedDecision:
        """The wire form of a policy decision (evidence capped at MAX_EVIDENCE), next in its
        organization's chain after ``after`` (the chain head; None for the first)."""
        seq, prev_digest = next_link(after)
        return cls(
            decision_id=decision.decision_id,
            mandate_id=mandate_id,
            org=decision.org,
            seq=seq,
            prev_digest=prev_digest,
            rule=decision.rule,
            kind=decision.kind,
            action=decision.action,
            priority=decision.priority,
            zone=decision.zone,
            group=decision.group,
            window_start_ms=decision.window_start_ms,
            window_end_ms=decision.window_end_ms,
            evidence=decision.evidence[:MAX_EVIDENCE],
            decided_at_ms=decision.decided_at_ms,
            signed_at_ms=signed_at_ms,
            summary=decision.summary[:MAX_SUMMARY_CHARS],
            policy_digest=policy_digest,
            seal_epoch=decision.seal_epoch,
            seal_digest=decision.seal_digest,
        )

    def to_pb(self) -> decision_pb2.Decision:
        """The generated protobuf message (for the codec only)."""
        return decision_pb2.Decision(
            decision_id=self.decision_id,
            mandate_id=self.mandate_id,
            org=self.org,
            seq=self.seq,
            rule=self.rule,
            kind=self.kind,
            action=self.action,
            priority=self.priority,
            zone=self.zone,
            group=self.group,
            window_start_ms=self.window_start_ms,
            window_end_ms=self.window_end_ms,
            evidence=[
                decision_pb2.ReportRef(report_id=e.report_id, envelope_digest=e.digest)
                for e in self.evidence
            ],
            decided_at_ms=self.decided_at_ms,
            signed_at_ms=self.signed_at_ms,
            summary=self.summary,
            policy_digest=self.policy_digest,
            prev_digest=self.prev_digest,
            seal_epoch=self.seal_epoch,
            seal_digest=self.seal_digest,
        )

    @classmethod
    def decode(cls, data: bytes) -> PublishedDecision:
        """Parse and validate decision payload bytes (malformed / invalid_field)."""
        pb = _parse(decision_pb2.Decision, data, "decision")
        return cls(
            decision_id=pb.decision_id,
            mandate_id=pb.mandate_id,
            org=pb.org,
            seq=pb.seq,
            prev_digest=bytes(pb.prev_digest),
            rule=pb.rule,
            kind=pb.kind,
            action=pb.action,
            priority=pb.priority,
            zone=pb.zone,
            group=pb.group,
            window_start_ms=pb.window_start_ms,
            window_end_ms=pb.window_end_ms,
            evidence=tuple(Evidence(e.report_id, bytes(e.envelope_digest)) for e in pb.evidence),
            decided_at_ms=pb.decided_at_ms,
            signed_at_ms=pb.signed_at_ms,
            summary=pb.summary,
            policy_digest=bytes(pb.policy_digest),
            seal_epoch=pb.seal_epoch,
            seal_digest=bytes(pb.seal_digest),
        )


def check_seal_reference(
    decision: PublishedDecision,
    *,
    epoch: int | None = None,
    seal_digest: Callable[[int], bytes | None] | None = None,
) -> None:
    """Check the seal a decision names (module docstring, rule 7).

    Args:
        decision: the decision.
        epoch: the epoch its record is sealed in; None: not known (not checked).
        seal_digest: the digest of the final seal of an epoch (None when that seal is not
            known); None: digests are not checked.

    Raises:
        VerificationError: ``invalid_field``.
    """
    if not decision.final:
        return
    if epoch is not None and decision.seal_epoch >= epoch:
        raise VerificationError(
            Reason.INVALID_FIELD,
            f"rests on the seal of epoch {decision.seal_epoch}, not final when the decision was"
            f" sealed in epoch {epoch}",
            seal_epoch=decision.seal_epoch,
        )
    if seal_digest is not None and seal_digest(decision.seal_epoch) != decision.seal_digest:
        raise VerificationError(
            Reason.INVALID_FIELD,
            f"names a seal digest that is not the final seal of epoch {decision.seal_epoch}",
            seal_epoch=decision.seal_epoch,
        )


def sign_decision(decision: PublishedDecision, node_key: SigningKey) -> bytes:
    """The envelope bytes of a decision signed by the node key (Ed25519 is deterministic)."""
    return sign_single(PAYLOAD_DECISION, encode(decision), node_key).encode()


@dataclass(frozen=True, slots=True)
class VerifiedDecision:
    """A published decision whose signature and accreditation checked out; ``envelope_digest``
    is SHA-256 of its exact bytes (what the next decision's ``prev_digest`` names)."""

    decision: PublishedDecision
    node_id: str
    key_id: bytes
    envelope_digest: bytes = b""


def verify_decision(
    raw: bytes,
    keyring: KeyRing,
    *,
    topic_org: str,
    epoch: int | None = None,
    reference_ms: int | None = None,
    limits: Limits = _DEFAULT_LIMITS,
    seal_digest: Callable[[int], bytes | None] | None = None,
) -> VerifiedDecision:
    """Verify decision envelope bytes read from ``topic_org``'s decisions topic (the module
    docstring's rule; not its chain, which needs the decisions before it).

    Args:
        raw: the record value.
        keyring: the trust state the record is judged under (the final judge: the one in force
            at its epoch).
        topic_org: the organization of the decisions topic it was read from.
        epoch: the epoch the record is sealed in, where node-key revocations cut; None when
            not known yet: then any revocation of the signing key refuses it.
        reference_ms: *t_e* of that epoch, for the clock-skew bound; None: not checked.
        limits: the record size and clock-skew limits.
        seal_digest: the digest of the final seal of an epoch (None: that seal is unknown),
            to check the seal the decision names; None: not checked.

    Raises:
        VerificationError: ``oversized``, ``malformed``, ``missing_signature``,
            ``wrong_payload_type``, ``invalid_field``, ``unknown_key``, ``bad_signature``,
            ``malformed_key``, ``wrong_org``, ``wrong_topic``, ``wrong_mandate``,
            ``wrong_role``, ``key_expired``, ``key_revoked``, ``clock_skew`` or, for the
            seal it names, ``invalid_field``.
    """
    if len(raw) > limits.max_record_bytes:
        raise VerificationError(
            Reason.OVERSIZED, f"{len(raw)} bytes > limit {limits.max_record_bytes}", size=len(raw)
        )
    env, acc = open_single(raw, PAYLOAD_DECISION, keyring.lookup, what="decision")
    decision = PublishedDecision.decode(env.payload)
    if decision.org != acc.org:
        raise VerificationError(
            Reason.WRONG_ORG, f"claims org {decision.org!r}, key accredited by {acc.org!r}"
        )
    if decision.org != topic_org:
        raise VerificationError(
            Reason.WRONG_TOPIC, f"decision of {decision.org!r} on {topic_org!r}'s topic"
        )
    if decision.mandate_id != keyring.mandate.mandate_id:
        raise VerificationError(Reason.WRONG_MANDATE, f"decision for {decision.mandate_id!r}")
    position = _EPOCH_UNKNOWN if epoch is None else epoch
    keyring.check_usable(acc, role=Role.NODE, at_ms=decision.signed_at_ms, seq=position)
    if reference_ms is not None and decision.signed_at_ms > reference_ms + limits.max_clock_skew_ms:
        raise VerificationError(
            Reason.CLOCK_SKEW,
            f"signed_at is {decision.signed_at_ms - reference_ms} ms after the epoch's time",
        )
    check_seal_reference(decision, epoch=epoch, seal_digest=seal_digest)
    return VerifiedDecision(decision, acc.subject_id, env.signatures[0].key_id, sha256(raw))
