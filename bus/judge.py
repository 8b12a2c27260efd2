"""The final judge: every verdict a function of the sealed log, in the one order, on the one clock.

A :class:`FinalJudge` is given, out of band, the mandate the log starts under (its *root*, the
version every reader of the bus starts from), the topic names and the verification limits. It is
then handed the bus one final epoch at a time (:meth:`FinalJudge.judge_epoch`): the final seal of
epoch *e* (:class:`bus.epoch.FinalSeal`) and exactly the records that seal adds to each
partition. Its answer (:class:`EpochVerdicts`) is a deterministic function of the root, the
seals and the records, and of nothing else: no broker timestamp, no local clock, no read order,
no record key. Every node, witness and auditor that judges the same sealed log holds the same
verdicts, reason codes, chain heads and state digest. :class:`bus.sealed_reader.SealedReader`
feeds it from records read in any interleaving.

Rules
=====

**The order.** Epochs are judged one after the other. Inside epoch *e* the judging order is:

1. trust records (the mandate and registry topics), by :func:`bus.epoch.canonical_key`;
2. the reports deferred from epoch *e-1* (see *Trust takes effect*), ordered as in 3;
3. report records, by the position they claim: (organization, observer id, seq), then topic,
   partition and offset. Ordering by claimed position lets an honest chain whose reports a
   producer spread over several partitions verify in seq order whatever the partitioner did;
   the claims are read from each record's own bytes (its protobuf framing, unvalidated), so
   every reader sorts alike, and a record that claims falsely is quarantined on its own without
   moving the chain. Records whose claims do not parse (or whose size exceeds the record limit:
   never parsed) come first, by (topic, partition, offset): they change nothing;
4. the decisions deferred from epoch *e-1*, then the records of the decisions topics
   (``<prefix>decisions.<org>``), by the position they claim: (the topic's organization, seq),
   then topic, partition and offset, unparsed ones first, for the reasons given in 3 (see
   *Decisions*);
5. records of every other topic (statements, attachments, seals, checkpoints), by canonical
   key, with status ``not_judged``: they have readers of their own, and are listed so that no
   record of a sealed epoch goes without an answer.

Trust records and the reports and decisions of one epoch do not see each other (next rule): 1
before 3 and 4 is the listing order, not a dependency. :attr:`EpochVerdicts.verdicts` lists the
verdicts in this order.

**Trust takes effect at the next epoch.** Mandate versions, accreditations, revocations and
encryption keys logged in epoch *e* take effect from epoch *e+1*; the reports of epoch *e* are
judged under the trust in force at *e*.

* A registry record of epoch *e* is verified under the mandate version in force at *e*: signed
  by the root key, in that version, of the organization it names, for a subject in that
  organization's namespace (``<org>-...``, and not inside the namespace of a longer org id of the
  mandate: with ``un`` and ``un-women`` both members, ``un-women-obs-1`` is UN Women's alone).
  A key is accredited to one subject: the first accreditation in the order wins and a later one
  of the same key for another subject or organization is ``duplicate_conflict``. A revocation
  names a key of its own organization (another organization's key: ``wrong_org``). Whatever
  fails is quarantined with its reason and never applied; a null or undecodable record is
  ``malformed``. A byte-identical copy of an applied record is applied again, changing nothing.
* A mandate record of epoch *e* that is exactly version N+1 of the newest version known (in
  force, or logged earlier in the same epoch) is verified against version N
  (:func:`bus.trust.verify_mandate`, expiry judged at *t_e*) and takes effect from *e+1*. A
  byte-identical copy of the newest version is applied again, changing nothing (the root
  published on the topic); any other version at or below the newest, even a genuine old one,
  is ``mandate_rollback``.
* When a new version takes effect, the registry records applied so far count under it when
  their organization is still a member with the same root key that signed them and their
  subject is still in that organization's namespace (so an organization that leaves takes its
  accreditations along, and one that rotates its root key re-accredits under the new key once
  the new version is in force). Revocations are never undone: a revocation applied once stays
  in force in every later version, whatever that version says of its organization.
* **Deferral.** A report of epoch *e* signed by a key that is unknown at *e* but accredited by
  a registry record of epoch *e* itself (an observer that starts reporting the moment it is
  enrolled or re-keyed) is not quarantined: its epoch lists it ``deferred``, and it is judged
  once more at the start of epoch *e+1*, under *e+1*'s trust and its own epoch's clock, before
  the reports of *e+1*; that verdict is final. So the first reports of a new key do not
  depend on how a seal cut the race, and the observer's chain does not break there. A report
  logged one epoch or more before its key's accreditation is ``unknown_key`` and the observer's
  later reports are ``chain_gap`` behind it, until the report is logged again (a copy of a
  report that was not accepted is judged afresh): at every reader the same.

**The clock.** Every "now" is *t_e* (:attr:`bus.epoch.FinalSeal.time_ms`) of the record's own
epoch, which a quorum of organizations cosigned; a broker timestamp is never read. A report must
satisfy ``signed_at <= t_e + max_clock_skew_ms`` (else ``clock_skew``, :class:`bus.verify.Limits`)
and ``signed_at >= t_e - lag`` (else ``delivery_lag``), where ``lag`` is the maximum delivery
lag of the mandate version in force at the record's epoch
(:attr:`bus.model.Mandate.delivery_lag_ms`: the organizations agree on it, and a version that
changes it takes effect from the epoch after its own, like any trust record; a deferred report
keeps its own epoch's lag with its own epoch's clock); the accreditation's validity window and
the mandate window are judged at ``signed_at``. So the holder of an expired key can backdate a
report by at most the delivery lag. The lag is checked after every check
:func:`bus.verify.verify_report` makes, so a record that already fails one of those keeps
today's reason code.

**Scope.** Chains are keyed by (organization, observer id) and report ids by (organization,
observer id, report id): another organization's observer using the same report id is a
different report and never a conflict. A report is verified by :func:`bus.verify.verify_report`
or :func:`bus.sealed.verify_sealed_report` under the epoch's key ring with ``reference_ms=t_e``,
then extends its observer's chain: seq beyond the head + 1 is ``chain_gap``, at or below it or
with another ``prev_digest`` is ``chain_fork``, a report id the observer already used is
``replayed`` (same bytes) or ``duplicate_conflict`` (other bytes). A byte-identical copy, on
its organization's topic, of a report accepted earlier in the order (another partition, the
same epoch or a later one) is ``replayed`` before any other check, so which copy counts and
what the other is called never depend on where the copies sit, nor on trust that changed since.

**Amendments.** A plain report that corrects or retracts another (:mod:`bus.verify`,
*Amendments*) is judged by :func:`bus.verify.check_amendment` once its chain link held, against
the reports accepted before it in this order: its target must be a report of its own chain
(else ``amend_other_observer`` / ``amend_other_org``, when another chain holds an accepted
report of that id, of the same organization first; else ``amend_target_missing``), the latest
version of it (``amend_superseded``), not retracted (``amend_target_retracted``) and not a
retraction (``retraction_of_retraction``, ``correction_of_retraction``). The order makes
"before" the same at every reader: within a chain, an earlier seq; across chains, the epoch
order, then (organization, observer id, seq). A report cut by a revocation takes its
amendments along (its target is the latest version again), as the chain rewinds. The verdicts
carry the reports, so a reader derives the links ("corrected by", "retracted") from the
accepted reports and the changes (:mod:`bus.store.final`).

**Revocation.** When a revocation (or a lower ``last_valid_seq`` for a key already revoked)
takes effect at epoch *e+1*, the observer chains holding an accepted report signed by that key
with ``seq > last_valid_seq`` are cut before the first such report: that report and every
accepted report after it in the chain (they rest on it, whatever key signed them) change to
``revoked_after_acceptance`` (:class:`VerdictChange`, ``at_epoch`` = *e+1*), and the chain head
rewinds to the last report before the cut (none: the chain starts again at seq 1). The
observer's next report, under a new key, continues from there, at every reader alike. Their
report ids stay used.

**Decisions.** An organization's published decisions (:mod:`bus.decision`) form one hash
chain per organization, whichever of its node keys signed them. A decision record of epoch *e*
on ``<prefix>decisions.<org>`` is ``replayed`` when it is a byte-identical copy of a decision
of that organization accepted earlier in the order (before any other check, as for reports:
wherever the copies sit), else verified by :func:`bus.decision.verify_decision` under the key
ring in force at *e* with ``reference_ms=t_e``: signed by a node key the topic's organization
accredited with role ``NODE``, within its window at ``signed_at``, ``signed_at <= t_e +
max_clock_skew_ms`` (``clock_skew``), and the key not revoked **at an epoch**: for a node key a
revocation's ``last_valid_seq`` is the last epoch its signatures count on (the rule of seals,
:mod:`bus.seal`), so its decisions of later epochs are ``key_revoked``. Then
``signed_at >= t_e - lag`` (``delivery_lag``, as for reports), and the decision must extend its
organization's chain (:func:`bus.verify.check_link`): seq beyond the head + 1 is
``chain_gap``, at or below it (a repeated seq) or with another ``prev_digest`` is
``chain_fork``. An accepted decision stays accepted: a revocation taking effect later never
withdraws it (like a seal of an epoch before the revocation held), it refuses the key's
decisions from then on. A decision signed by a node key that a registry record of its own
epoch accredits is ``deferred`` and judged at the start of epoch *e+1* under *e+1*'s trust, its
own epoch's clock and its own epoch as the revocation position, before *e+1*'s decisions (so a
node that publishes the moment its new key is accredited does not break its chain).

**What a reader compares.** :attr:`EpochVerdicts.state_digest` chains, epoch by epoch, the seal
digest, every verdict (position, status, reason code), every verdict change, the observer chain
heads changed, the decision chain heads extended and the mandate version in force next
(:func:`state_digest`): two readers that hold the same digest after epoch *e* hold the same
verdicts up to *e*. Details (human text) are not in it.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple

from bus._pb.obus.v1 import decision_pb2, envelope_pb2, report_pb2, sealed_pb2
from bus.decision import PAYLOAD_DECISION, VerifiedDecision, verify_decision
from bus.epoch import GENESIS_DIGEST, FinalSeal, PartitionRef, canonical_key
from bus.errors import ConfigError, EpochInputError, Reason, VerificationError
from bus.model import (
    PAYLOAD_ACCREDITATION,
    PAYLOAD_ENCRYPTION_KEY,
    PAYLOAD_MANDATE,
    PAYLOAD_REVOCATION,
    PAYLOAD_SEALED_REPORT,
    Accreditation,
    EncryptionKey,
    Envelope,
    Mandate,
    Report,
    Revocation,
    SealedReport,
    encode,
    sha256,
)
from bus.sealed import DecryptionKey, VerifiedSealed, is_sealed, verify_sealed_report
from bus.topics import Topics
from bus.trust import (
    KeyRing,
    decode_mandate_record,
    decode_registry_record,
    verify_accreditation,
    verify_mandate,
    verify_revocation,
)
from bus.verify import (
    Amendable,
    ChainHead,
    Limits,
    VerifiedReport,
    check_amendment,
    check_link,
    verify_report,
)

# stdlib logging (not structlog) keeps this module free of any I/O framework import.
log = logging.getLogger(__name__)

RecordPos = tuple[str, int, int]
"""Where a record sits: (topic, partition, offset)."""

ObserverKey = tuple[str, str]
"""Whose chain: (organization, observer id)."""

TrustEntry = Accreditation | Revocation | EncryptionKey

SNAPSHOT_FORMAT: Final = "obus-judge-state-v2"
_DIGEST_DOMAIN: Final = b"obus judge state v2\n"
_NO_VALUE: Final = "record has no value"  # a null value: on an append-only topic, no tombstone


class Status(enum.StrEnum):
    """What the final judge says of a record (values are stored and compared: never renamed)."""

    ACCEPTED = "accepted"  # a report or decision that verified and extended its chain
    QUARANTINED = "quarantined"  # rejected, with a reason code
    APPLIED = "applied"  # a trust record in force from the next epoch
    DEFERRED = "deferred"  # judged again at the next epoch (its key's accreditation is pending)
    REVOKED_AFTER_ACCEPTANCE = "revoked_after_acceptance"  # only in VerdictChange
    NOT_JUDGED = "not_judged"  # a topic the final judge does not judge (module docstring)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict on one record.

    Args:
        pos: (topic, partition, offset).
        epoch: the epoch the record was sealed in (a deferred report's verdict comes with the
            next epoch's answer but keeps its own epoch).
        status: see :class:`Status`.
        reason: the :class:`~bus.errors.Reason` code when quarantined, else "".
        detail: one sentence for humans (not compared between readers).
        observer: the chain a report claims, when its claims parse.
        report: the verified report of an accepted report record.
        trust: the verified entry or mandate of an applied trust record.
        decision: the verified decision of an accepted decision record.
    """

    pos: RecordPos
    epoch: int
    status: Status
    reason: str = ""
    detail: str = ""
    observer: ObserverKey | None = None
    report: VerifiedReport | VerifiedSealed | None = None
    trust: TrustEntry | Mandate | None = None
    decision: VerifiedDecision | None = None


@dataclass(frozen=True, slots=True)
class VerdictChange:
    """An accepted report that a revocation taking effect at ``at_epoch`` withdrew."""

    pos: RecordPos
    observer: ObserverKey
    seq: int
    report_id: str
    key_id: bytes
    at_epoch: int
    detail: str
    status: Status = Status.REVOKED_AFTER_ACCEPTANCE


@dataclass(frozen=True, slots=True)
class EpochVerdicts:
    """The final judge's answer for one epoch.

    Args:
        epoch: the epoch judged.
        seal_digest: its final seal's digest.
        time_ms: its *t_e*.
        verdicts: one per record of the epoch (``deferred`` for reports judged at the next
            epoch), preceded by the final verdicts of the reports deferred from the previous
            epoch; in judging order (module docstring).
        changes: accepted reports withdrawn by revocations that take effect at ``epoch + 1``.
        heads: the chain heads this epoch changed (extended or rewound), None for a chain
            rewound to nothing.
        mandate_version: the mandate version in force from ``epoch + 1``.
        state_digest: the digest of the whole verdict state after this epoch.
        decision_heads: the organizations' decision chain heads this epoch extended.
    """

    epoch: int
    seal_digest: bytes
    time_ms: int
    verdicts: tuple[Verdict, ...]
    changes: tuple[VerdictChange, ...]
    heads: Mapping[ObserverKey, ChainHead | None]
    mandate_version: int
    state_digest: bytes
    decision_heads: Mapping[str, ChainHead] = field(default_factory=dict)


def state_digest(
    previous: bytes,
    seal_digest: bytes,
    *,
    epoch: int,
    verdicts: Iterable[Verdict],
    changes: Iterable[VerdictChange],
    heads: Mapping[ObserverKey, ChainHead | None],
    mandate_version: int,
    decision_heads: Mapping[str, ChainHead],
) -> bytes:
    """SHA-256 of ``"obus judge state v2\\n" || previous || seal digest || body``.

    ``body`` is compact JSON with sorted keys: ``epoch``; ``verdicts`` as [topic, partition,
    offset, epoch, status, reason] in listing order; ``changes`` as [topic, partition, offset,
    status, at_epoch]; ``heads`` as [org, observer id, seq, digest hex] sorted (seq 0 and ""
    for a chain rewound to nothing); ``decision_heads`` as [org, seq, digest hex] sorted (the
    organizations' decision chains the epoch extended); ``mandate_version``. The digest before
    epoch 1 is :func:`genesis_digest` of the root.
    """
    body = {
        "epoch": epoch,
        "verdicts": [[*v.pos, v.epoch, v.status.value, v.reason] for v in verdicts],
        "changes": [[*c.pos, c.status.value, c.at_epoch] for c in changes],
        "heads": sorted(
            [o, ob, 0 if h is None else h.seq, "" if h is None else h.digest.hex()]
            for (o, ob), h in heads.items()
        ),
        "decision_heads": sorted([o, h.seq, h.digest.hex()] for o, h in decision_heads.items()),
        "mandate_version": mandate_version,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"".join((_DIGEST_DOMAIN, previous, seal_digest, text))).digest()


def genesis_digest(root: Mandate) -> bytes:
    """The state digest before the first epoch: SHA-256 of the domain and the root's bytes."""
    return hashlib.sha256(_DIGEST_DOMAIN + b"genesis\n" + encode(root)).digest()


@dataclass(frozen=True, slots=True)
class _Applied:
    """A registry record applied at some epoch: verified object, envelope, signing root."""

    entry: TrustEntry
    envelope: bytes
    root_key_id: bytes


class _Link(NamedTuple):
    """An accepted report in its chain (seq = position in the chain + 1), with the report id
    it amends ("" for none; always "" for a sealed report) and whether it retracts it."""

    seq: int
    digest: bytes
    key_id: bytes
    topic: str  # the position, flat (no tuple per link: the judge keeps every accepted one)
    partition: int
    offset: int
    report_id: str
    amends: str = ""
    retraction: bool = False

    @property
    def pos(self) -> RecordPos:
        return (self.topic, self.partition, self.offset)


@dataclass(slots=True)
class _Chain:
    links: list[_Link] = field(default_factory=list)
    ids: dict[str, bytes] = field(default_factory=dict)  # every report id ever accepted
    # The amendment state of every report of ``links``, by report id (module docstring).
    states: dict[str, Amendable] = field(default_factory=dict)
    # The state of a plain report of this chain (not a retraction, not amended), one object
    # shared by all of them: Amendable is frozen, an amendment replaces its target's entry.
    plain: Amendable | None = None

    def head(self) -> ChainHead | None:
        return ChainHead(self.links[-1].seq, self.links[-1].digest) if self.links else None

    def add_state(self, key: ObserverKey, link: _Link) -> None:
        """Record what an accepted ``link`` is and what it amended."""
        if link.amends:
            target = self.states[link.amends]
            self.states[link.amends] = (
                replace(target, retracted_by=link.report_id)
                if link.retraction
                else replace(target, corrected_by=link.report_id)
            )
        if link.retraction:
            self.states[link.report_id] = Amendable(key[0], key[1], retraction=True)
            return
        plain = self.plain
        if plain is None:
            plain = self.plain = Amendable(key[0], key[1])
        self.states[link.report_id] = plain

    def rebuild_states(self, key: ObserverKey) -> None:
        """The states of the links left (after a revocation cut the chain)."""
        self.states = {}
        for link in self.links:
            self.add_state(key, link)


class _Claims(NamedTuple):
    org: str
    observer_id: str
    seq: int
    report_id: str
    key_id: bytes | None  # of the single signature, None when there are several


def _claims(raw: bytes) -> _Claims | None:
    """The routing fields a report record claims, or None when they do not parse.

    Only the protobuf framing is read (no validation): the claims order the judging and find
    byte-identical copies, and every check is the verifier's.
    """
    try:
        env = envelope_pb2.SignedEnvelope.FromString(raw)
        c: report_pb2.ObserverReport | sealed_pb2.SealedReport
        if env.payload_type == PAYLOAD_SEALED_REPORT:
            c = sealed_pb2.SealedReport.FromString(env.payload)
        else:
            c = report_pb2.ObserverReport.FromString(env.payload)
    except Exception:  # noqa: BLE001 - any failure here is judged (and named) by the verifier
        return None
    key_id = bytes(env.signatures[0].key_id) if len(env.signatures) == 1 else None
    return _Claims(c.org, c.observer_id, c.seq, c.report_id, key_id)


class _Report(NamedTuple):
    """A report record to judge: where, its bytes, its topic's organization, what it claims,
    and the epoch (and so the clock) it was sealed in."""

    pos: RecordPos
    value: bytes | None
    org: str
    claims: _Claims | None
    epoch: int
    time_ms: int


def _report_order(r: _Report) -> tuple[int, str, str, int, str, int, int]:
    """Judging order of reports: claimed (org, observer, seq), then position; unparsed first."""
    c = r.claims
    if c is None:
        return (0, "", "", 0, *r.pos)
    return (1, c.org, c.observer_id, c.seq, *r.pos)


@dataclass(slots=True)
class _DecisionChain:
    """An organization's accepted decisions, by seq (digest of each envelope)."""

    digests: list[bytes] = field(default_factory=list)
    known: set[bytes] = field(default_factory=set)

    def head(self) -> ChainHead | None:
        return ChainHead(len(self.digests), self.digests[-1]) if self.digests else None


@dataclass(frozen=True, slots=True)
class _Decision:
    """A decision record to judge: where, its bytes, its topic's organization, the seq and
    key id it claims (None when they do not parse), its epoch and that epoch's clock."""

    pos: RecordPos
    value: bytes | None
    org: str
    seq: int | None
    key_id: bytes | None
    epoch: int
    time_ms: int


def _decision_claims(raw: bytes) -> tuple[int, bytes | None] | None:
    """The seq and single signing key id a decision record claims, or None when its protobuf
    framing does not parse (read unvalidated: it orders the judging, the verifier decides)."""
    try:
        env = envelope_pb2.SignedEnvelope.FromString(raw)
        if env.payload_type != PAYLOAD_DECISION:
            return None
        seq = decision_pb2.Decision.FromString(env.payload).seq
    except Exception:  # noqa: BLE001 - any failure here is judged (and named) by the verifier
        return None
    key_id = bytes(env.signatures[0].key_id) if len(env.signatures) == 1 else None
    return seq, key_id


def _decision_record(
    pos: RecordPos, value: bytes | None, org: str, *, epoch: int, t: int, limit: int
) -> _Decision:
    # An oversized value is refused on its length alone: never parsed.
    claims = None if value is None or len(value) > limit else _decision_claims(value)
    seq, key_id = (None, None) if claims is None else claims
    return _Decision(pos, value, org, seq, key_id, epoch, t)


def _decision_order(d: _Decision) -> tuple[int, str, int, str, int, int]:
    """Judging order of decisions: (organization, claimed seq), then position; unparsed first."""
    if d.seq is None:
        return (0, "", 0, *d.pos)
    return (1, d.org, d.seq, *d.pos)


def _check_delivery_lag(signed_at_ms: int, t: int, mandate: Mandate) -> None:
    """``signed_at >= t_e - lag``, the lag of ``mandate`` (the version in force at the record's
    epoch).

    Raises:
        VerificationError: ``delivery_lag``.
    """
    lag = mandate.delivery_lag_ms
    if signed_at_ms < t - lag:
        raise VerificationError(
            Reason.DELIVERY_LAG,
            f"signed_at is {t - signed_at_ms} ms before the epoch's time (at most {lag})",
        )


def _verify_mandate_record(
    value: bytes | None, newest_payload: bytes, newest: Mandate, t: int
) -> tuple[bytes, Mandate]:
    """A mandate record against the newest version known; returns ``newest`` itself for a
    byte-identical copy of it.

    Raises:
        VerificationError: ``malformed``, ``wrong_payload_type``, ``wrong_mandate``,
            ``mandate_rollback``, ``threshold_not_met``, ``mandate_expired``.
    """
    if value is None:
        raise VerificationError(Reason.MALFORMED, _NO_VALUE)
    env = decode_mandate_record(value)
    if env.payload_type != PAYLOAD_MANDATE:
        raise VerificationError(Reason.WRONG_PAYLOAD_TYPE, f"not a mandate: {env.payload_type!r}")
    offered = Mandate.decode(env.payload)
    if offered.mandate_id != newest.mandate_id:
        raise VerificationError(
            Reason.WRONG_MANDATE,
            f"mandate id {offered.mandate_id!r} differs from {newest.mandate_id!r}",
        )
    if offered.version == newest.version and env.payload == newest_payload:
        return newest_payload, newest
    if offered.version <= newest.version:
        raise VerificationError(
            Reason.MANDATE_ROLLBACK,
            f"version {offered.version} appears after version {newest.version}",
            version=offered.version,
        )
    return env.payload, verify_mandate(env, previous=newest, now_ms=t)


def _verify_registry_record(value: bytes | None, stage: KeyRing) -> TrustEntry:
    """A registry record under ``stage``'s mandate, added to ``stage`` (the first of two
    accreditations of one key wins).

    Raises:
        VerificationError: ``malformed``, ``wrong_payload_type``, ``wrong_mandate``,
            ``wrong_org``, ``unknown_key``, ``bad_signature``, ``duplicate_conflict``.
    """
    if value is None:
        raise VerificationError(Reason.MALFORMED, _NO_VALUE)
    env = decode_registry_record(value)
    mandate = stage.mandate
    if env.payload_type == PAYLOAD_ACCREDITATION:
        acc = verify_accreditation(env, mandate)
        _check_namespace(acc, mandate)
        stage.add_accreditation(acc)
        return acc
    if env.payload_type == PAYLOAD_REVOCATION:
        rev = verify_revocation(env, mandate)
        stage.add_revocation(rev)
        return rev
    if env.payload_type == PAYLOAD_ENCRYPTION_KEY:
        ek = stage.apply(env)
        assert isinstance(ek, EncryptionKey)
        return ek
    raise VerificationError(
        Reason.WRONG_PAYLOAD_TYPE,
        f"not a registry record: {env.payload_type!r}",
        payload_type=env.payload_type,
    )


def namespace_owner(subject_id: str, mandate: Mandate) -> str | None:
    """The organization whose namespace a subject id is in: the longest org id of the mandate
    that the id starts with, followed by ``-`` (None: no organization's)."""
    owners = [o.org for o in mandate.organizations if subject_id.startswith(f"{o.org}-")]
    return max(owners, key=len) if owners else None


def _check_namespace(acc: Accreditation, mandate: Mandate) -> None:
    owner = namespace_owner(acc.subject_id, mandate)
    if owner != acc.org:
        raise VerificationError(
            Reason.WRONG_ORG,
            f"subject id {acc.subject_id!r} is in {owner}'s namespace, not {acc.org}'s",
            subject_id=acc.subject_id,
            org=acc.org,
        )


def _build_ring(mandate: Mandate, applied: Sequence[_Applied]) -> KeyRing:
    """The key ring of ``mandate`` over every registry record applied so far (module
    docstring: what counts under a version; revocations always)."""
    ring = KeyRing(mandate)
    for a in applied:  # revocations first: they are keyed by their own organization
        if isinstance(a.entry, Revocation):
            ring.add_revocation(a.entry)
    roots = {o.org: o.root_key_id for o in mandate.organizations}
    for a in applied:
        entry = a.entry
        if isinstance(entry, Revocation) or roots.get(entry.org) != a.root_key_id:
            continue
        if isinstance(entry, Accreditation):
            if namespace_owner(entry.subject_id, mandate) != entry.org:
                continue
            # A key accredited to two subjects across versions: the first in the order wins.
            with contextlib.suppress(VerificationError):
                ring.add_accreditation(entry)
        else:
            ring.apply(Envelope.decode(a.envelope))  # verified when applied: same root key
    return ring


def _revocation_map(ring: KeyRing) -> dict[tuple[str, bytes], Revocation]:
    return {(r.org, r.key_id): r for r in ring.revocations()}


class FinalJudge:
    """Judges final epochs in order (see the module docstring for every rule).

    Args:
        root: the mandate version the log starts under (out of band; verified by the caller).
            Readers with different roots do not share verdicts: every reader of one bus starts
            from the same root, whatever newer version its mandate file holds.
        topics: topic names (which topics carry reports, the registry, the mandate).
        limits: verification limits, the same at every reader of the mandate.
        decryption_keys: this organization's X25519 keys by key id, to read restricted reports
            (readability only: acceptance never depends on them).
    """

    def __init__(
        self,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        decryption_keys: Mapping[bytes, DecryptionKey] | None = None,
    ) -> None:
        self._root = root
        self._topics = topics
        self._limits = limits or Limits()
        self._keys = dict(decryption_keys or {})
        self._epoch = 0
        self._seal_digest = GENESIS_DIGEST
        self._time_ms = 0
        self._sizes: dict[PartitionRef, int] = {}
        self._digest = genesis_digest(root)
        # (first epoch in force, payload, mandate); the root is in force from epoch 1.
        self._versions: list[tuple[int, bytes, Mandate]] = [(1, encode(root), root)]
        self._applied: list[_Applied] = []
        self._applied_digests: set[bytes] = set()  # SHA-256 of every applied envelope
        self._ring = KeyRing(root)
        self._chains: dict[ObserverKey, _Chain] = {}
        self._by_key: dict[bytes, set[ObserverKey]] = {}  # key id -> chains it signed into
        # report id -> the chains holding an accepted report of that id (amendment targets): the
        # one chain, or a set when several do (an id is nearly always one observer's alone)
        self._holders: dict[str, ObserverKey | set[ObserverKey]] = {}
        self._key_ids: dict[bytes, bytes] = {}  # one bytes object per signing key id held
        self._observers: dict[ObserverKey, ObserverKey] = {}  # one tuple per chain
        self._deferred: list[_Report] = []
        self._decisions: dict[str, _DecisionChain] = {}  # organization -> its decision chain
        self._deferred_decisions: list[_Decision] = []

    # -- reads -------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The last epoch judged (0 before the first)."""
        return self._epoch

    @property
    def seal_digest(self) -> bytes:
        """The digest of the last epoch's final seal (the next seal's ``prev_digest``)."""
        return self._seal_digest

    @property
    def time_ms(self) -> int:
        """*t_e* of the last epoch judged (0 before the first)."""
        return self._time_ms

    @property
    def sizes(self) -> dict[PartitionRef, int]:
        """Every partition's size at the last epoch judged: where the next epoch begins."""
        return dict(self._sizes)

    @property
    def digest(self) -> bytes:
        """The state digest after the last epoch judged."""
        return self._digest

    @property
    def deferred(self) -> int:
        """Reports and decisions the last epoch judged deferred to the next one (they need a
        next epoch to be judged in)."""
        return len(self._deferred) + len(self._deferred_decisions)

    @property
    def keyring(self) -> KeyRing:
        """The key ring in force for the next epoch (what a provisional judge uses)."""
        return self._ring

    @property
    def mandate(self) -> Mandate:
        """The mandate version in force for the next epoch."""
        return self._ring.mandate

    @property
    def versions(self) -> tuple[tuple[int, Mandate], ...]:
        """(first epoch in force, mandate) of every version applied, the root first."""
        return tuple((e, m) for e, _, m in self._versions)

    def heads(self) -> dict[ObserverKey, ChainHead]:
        """Every observer's chain head after the last epoch judged."""
        out = {}
        for k, chain in self._chains.items():
            h = chain.head()
            if h is not None:
                out[k] = h
        return out

    def decision_heads(self) -> dict[str, ChainHead]:
        """Every organization's decision chain head after the last epoch judged."""
        out = {}
        for org, chain in self._decisions.items():
            h = chain.head()
            if h is not None:
                out[org] = h
        return out

    # -- judging -----------------------------------------------------------------------------

    def judge_epoch(
        self,
        seal: FinalSeal,
        records: Mapping[PartitionRef, Sequence[bytes | None]],
        *,
        preverified: Container[tuple[bytes, bytes]] = frozenset(),
    ) -> EpochVerdicts:
        """Judge the next epoch.

        Args:
            seal: the final seal of epoch :attr:`epoch` + 1.
            records: for every partition the seal grows, its record values (None for a null
                value) from the previous seal's size up to this seal's size, in offset order;
                a partition the seal does not grow may be absent.
            preverified: ``(public key, raw)`` pairs whose signature was already verified
                (:func:`bus.verify.preverify_signatures`); the verdicts do not change.

        Returns:
            The epoch's verdicts; the judge's state is then that after the epoch.

        Raises:
            EpochInputError: the seal is not the next one (epoch, previous digest, mandate,
                time not later, a size that shrinks) or the records are not exactly the
                epoch's. Nothing was judged and the state is unchanged.
        """
        spans = self._spans(seal, records)
        e, t = seal.epoch, seal.time_ms
        ring = self._ring
        trust: list[tuple[RecordPos, bytes | None]] = []
        reports: list[_Report] = []
        decisions: list[_Decision] = []
        other: list[RecordPos] = []
        topics = self._topics
        limit = self._limits.max_record_bytes
        for (topic, partition), (start, values) in spans.items():
            org = topics.org_of_report_topic(topic)
            decider = topics.org_of_decision_topic(topic)
            is_trust = topic in {topics.registry, topics.mandate}
            for i, value in enumerate(values):
                pos = (topic, partition, start + i)
                if is_trust:
                    trust.append((pos, value))
                elif decider is not None:
                    decisions.append(
                        _decision_record(pos, value, decider, epoch=e, t=t, limit=limit)
                    )
                elif org is not None:
                    claims = None
                    # An oversized value is refused on its length alone: never parsed.
                    if value is not None and len(value) <= limit:
                        claims = _claims(value)
                    reports.append(_Report(pos, value, org, claims, e, t))
                else:
                    other.append(pos)
        trust.sort(key=lambda r: canonical_key((r[0][0], r[0][1]), r[0][2]))
        other.sort(key=lambda p: canonical_key((p[0], p[1]), p[2]))

        # 1. Trust records: verified under the version in force, applied to the next epoch.
        out: list[Verdict] = []
        pending_versions: list[tuple[bytes, Mandate]] = []
        applied_now: list[_Applied] = []
        stage: KeyRing | None = None  # the version in force plus this epoch's registry records
        for pos, value in trust:
            if pos[0] == topics.mandate:
                out.append(self._judge_mandate(pos, e, t, value, pending_versions))
                continue
            if stage is None:
                stage = _build_ring(ring.mandate, self._applied)
            out.append(self._judge_registry(pos, e, value, stage, applied_now))
        applied = self._applied + applied_now
        versions = list(self._versions)
        versions.extend((e + 1, payload, m) for payload, m in pending_versions)
        if pending_versions:
            next_ring = _build_ring(versions[-1][2], applied)
        else:
            next_ring = ring if stage is None else stage

        # 2 and 3. Reports deferred from the previous epoch, then this epoch's.
        pending_keys = {
            a.entry.key_id
            for a in applied_now
            if isinstance(a.entry, Accreditation)
            and not _accredits(ring, a.entry.key_id)
            and _accredits(next_ring, a.entry.key_id)
        }
        touched: set[ObserverKey] = set()
        again = sorted(self._deferred, key=_report_order)
        out.extend(
            self._judge_report(r, ring, frozenset(), preverified=preverified, touched=touched)
            for r in again
        )
        deferred: list[_Report] = []
        reports.sort(key=_report_order)
        for r in reports:
            v = self._judge_report(r, ring, pending_keys, preverified=preverified, touched=touched)
            out.append(v)
            if v.status is Status.DEFERRED:
                deferred.append(r)
        # 4. Decisions deferred from the previous epoch, then this epoch's.
        deciders: set[str] = set()
        again_decisions = sorted(self._deferred_decisions, key=_decision_order)
        out.extend(self._judge_decision(d, ring, frozenset(), deciders) for d in again_decisions)
        deferred_decisions: list[_Decision] = []
        decisions.sort(key=_decision_order)
        for d in decisions:
            v = self._judge_decision(d, ring, pending_keys, deciders)
            out.append(v)
            if v.status is Status.DEFERRED:
                deferred_decisions.append(d)
        # 5. Every other topic.
        not_here = "not a report, decision or trust topic"
        out.extend(Verdict(p, e, Status.NOT_JUDGED, detail=not_here) for p in other)

        changes = self._cut_revoked(_revocation_map(ring), next_ring, e + 1, touched)
        heads = {k: self._chains[k].head() for k in sorted(touched)}
        decision_heads: dict[str, ChainHead] = {}
        for org in sorted(deciders):
            head = self._decisions[org].head()
            assert head is not None  # extended this epoch
            decision_heads[org] = head
        version = next_ring.mandate.version
        digest = state_digest(
            self._digest,
            seal.digest,
            epoch=e,
            verdicts=out,
            changes=changes,
            heads=heads,
            mandate_version=version,
            decision_heads=decision_heads,
        )
        # Commit: from here on the judge stands after epoch e.
        self._epoch, self._seal_digest, self._time_ms = e, seal.digest, t
        for ref, (start, values) in spans.items():
            self._sizes[ref] = start + len(values)
        self._versions = versions
        self._applied = applied
        self._ring = next_ring
        self._deferred = deferred
        self._deferred_decisions = deferred_decisions
        self._digest = digest
        return EpochVerdicts(
            e, seal.digest, t, tuple(out), tuple(changes), heads, version, digest, decision_heads
        )

    def _spans(
        self, seal: FinalSeal, records: Mapping[PartitionRef, Sequence[bytes | None]]
    ) -> dict[PartitionRef, tuple[int, Sequence[bytes | None]]]:
        """Check that ``seal`` is the next final seal and ``records`` exactly its epoch's."""
        if seal.epoch != self._epoch + 1:
            raise EpochInputError(
                f"seal of epoch {seal.epoch} offered after epoch {self._epoch}", epoch=seal.epoch
            )
        if seal.prev_digest != self._seal_digest:
            raise EpochInputError(
                f"seal of epoch {seal.epoch} does not name the previous final seal",
                epoch=seal.epoch,
            )
        if seal.mandate_id != self._root.mandate_id:
            raise EpochInputError(
                f"seal for mandate {seal.mandate_id!r}, judging {self._root.mandate_id!r}",
                epoch=seal.epoch,
            )
        if seal.time_ms <= self._time_ms:
            raise EpochInputError(
                f"seal of epoch {seal.epoch}: time {seal.time_ms} not after {self._time_ms}",
                epoch=seal.epoch,
            )
        spans: dict[PartitionRef, tuple[int, Sequence[bytes | None]]] = {}
        for ref in sorted(set(seal.partitions) | set(self._sizes) | set(records)):
            start, end = self._sizes.get(ref, 0), seal.size(ref)
            values = records.get(ref, ())
            if end < start:
                raise EpochInputError(
                    f"{ref[0]}[{ref[1]}]: sealed size {end} below the previous {start}",
                    topic=ref[0],
                    partition=ref[1],
                )
            if len(values) != end - start:
                raise EpochInputError(
                    f"{ref[0]}[{ref[1]}]: epoch {seal.epoch} seals offsets {start}..{end - 1},"
                    f" {len(values)} records given",
                    topic=ref[0],
                    partition=ref[1],
                )
            if values:
                spans[ref] = (start, values)
        return spans

    # -- trust records -----------------------------------------------------------------------

    def _judge_mandate(
        self,
        pos: RecordPos,
        e: int,
        t: int,
        value: bytes | None,
        pending: list[tuple[bytes, Mandate]],
    ) -> Verdict:
        """A mandate record: a new version joins ``pending``, in force from ``e + 1``."""
        newest_payload, newest = pending[-1] if pending else self._versions[-1][1:]
        try:
            payload, mandate = _verify_mandate_record(value, newest_payload, newest, t)
        except VerificationError as exc:
            return Verdict(pos, e, Status.QUARANTINED, exc.reason.value, exc.message)
        if mandate is newest:
            return Verdict(pos, e, Status.APPLIED, detail="the newest version again", trust=newest)
        pending.append((payload, mandate))
        detail = f"version {mandate.version}, in force from epoch {e + 1}"
        return Verdict(pos, e, Status.APPLIED, detail=detail, trust=mandate)

    def _judge_registry(
        self, pos: RecordPos, e: int, value: bytes | None, stage: KeyRing, out: list[_Applied]
    ) -> Verdict:
        """A registry record, verified under ``stage``'s version and added to it."""
        mandate = stage.mandate
        try:
            entry = _verify_registry_record(value, stage)
        except VerificationError as exc:
            return Verdict(pos, e, Status.QUARANTINED, exc.reason.value, exc.message)
        assert value is not None  # verified
        org = mandate.organization(entry.org)
        assert org is not None  # verified: signed by that organization's root key
        digest = sha256(value)
        if digest not in self._applied_digests:  # a copy changes nothing: kept once
            self._applied_digests.add(digest)
            out.append(_Applied(entry, value, org.root_key_id))
        return Verdict(pos, e, Status.APPLIED, detail=f"in force from epoch {e + 1}", trust=entry)

    # -- reports -----------------------------------------------------------------------------

    def _judge_report(
        self,
        r: _Report,
        ring: KeyRing,
        pending_keys: Container[bytes],
        *,
        preverified: Container[tuple[bytes, bytes]],
        touched: set[ObserverKey],
    ) -> Verdict:
        """One report under ``ring`` at its epoch's time; ``deferred`` when its key is unknown
        to ``ring`` and one of ``pending_keys``."""
        pos, e, value, claims = r.pos, r.epoch, r.value, r.claims
        observer = None if claims is None else (claims.org, claims.observer_id)
        if value is None:
            return Verdict(pos, e, Status.QUARANTINED, Reason.MALFORMED.value, _NO_VALUE)
        if claims is not None and claims.org == r.org:
            chain = self._chains.get((claims.org, claims.observer_id))
            known = None if chain is None else chain.ids.get(claims.report_id)
            if known is not None and known == sha256(value):
                detail = f"report {claims.report_id} is already accepted"
                return Verdict(pos, e, Status.QUARANTINED, Reason.REPLAYED.value, detail, observer)
        try:
            verified, link = self._verify_report(r, value, ring, preverified)
            self._extend((link.org, link.observer_id), link, verified, pos)
        except VerificationError as exc:
            if (
                exc.reason is Reason.UNKNOWN_KEY
                and claims is not None
                and (claims.key_id in pending_keys)
            ):
                detail = f"its key is accredited from epoch {e + 1}"
                return Verdict(pos, e, Status.DEFERRED, detail=detail, observer=observer)
            return Verdict(pos, e, Status.QUARANTINED, exc.reason.value, exc.message, observer)
        except Exception as exc:  # a reader never crashes on input (see Reason.INTERNAL_ERROR)
            log.exception(
                "verifier_internal_error",
                extra={"topic": pos[0], "partition": pos[1], "offset": pos[2]},
            )
            reason = Reason.INTERNAL_ERROR.value
            return Verdict(pos, e, Status.QUARANTINED, reason, repr(exc), observer)
        touched.add((link.org, link.observer_id))
        return Verdict(pos, e, Status.ACCEPTED, observer=observer, report=verified)

    def _verify_report(
        self,
        r: _Report,
        value: bytes,
        ring: KeyRing,
        preverified: Container[tuple[bytes, bytes]],
    ) -> tuple[VerifiedReport | VerifiedSealed, Report | SealedReport]:
        """Today's report checks at ``t_e``, then the delivery lag.

        Raises:
            VerificationError: the first check that fails.
        """
        t = r.time_ms
        verified: VerifiedReport | VerifiedSealed
        link: Report | SealedReport
        if is_sealed(value):
            verified = verify_sealed_report(
                value,
                expected_org=r.org,
                keyring=ring,
                reference_ms=t,
                limits=self._limits,
                keys=self._keys,
            )
            link = verified.sealed
        else:
            verified = verify_report(
                value,
                expected_org=r.org,
                keyring=ring,
                reference_ms=t,
                limits=self._limits,
                preverified=preverified,
            )
            link = verified.report
        _check_delivery_lag(link.signed_at_ms, t, self._mandate_at(r.epoch))
        return verified, link

    def _mandate_at(self, epoch: int) -> Mandate:
        """The mandate version in force at ``epoch`` (at most the epoch being judged)."""
        newest = self._versions[-1]
        if newest[0] <= epoch:  # nearly always: the newest version
            return newest[2]
        return next(m for first, _, m in reversed(self._versions) if first <= epoch)

    def _extend(
        self,
        key: ObserverKey,
        r: Report | SealedReport,
        verified: VerifiedReport | VerifiedSealed,
        pos: RecordPos,
    ) -> None:
        """Extend an observer's chain (the rules of :class:`bus.verify.ChainBook`, with report
        ids scoped to the observer).

        Raises:
            VerificationError: ``replayed``, ``duplicate_conflict``, ``chain_gap``, ``chain_fork``.
        """
        # One key object per chain: every report id it holds refers to it.
        key = self._observers.setdefault(key, key)
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = _Chain()
        digest = verified.envelope_digest
        known = chain.ids.get(r.report_id)
        if known is not None:
            if known == digest:
                raise VerificationError(
                    Reason.REPLAYED,
                    f"report {r.report_id} is already accepted",
                    report_id=r.report_id,
                )
            raise VerificationError(
                Reason.DUPLICATE_CONFLICT,
                f"report id {r.report_id} already accepted with other content",
                report_id=r.report_id,
            )
        links = chain.links
        if links:
            last = links[-1]
            follows = r.seq == last.seq + 1 and r.prev_digest == last.digest
        else:
            follows = r.seq == 1
        if not follows:  # check_link's own rule, for its reason and message
            check_link(f"observer {key[0]}/{key[1]}", chain.head(), r.seq, r.prev_digest)
        amends, retraction = "", False
        if isinstance(r, Report):
            amends, retraction = r.amends, bool(r.retracts)
            check_amendment(r, self._target(key, amends) if amends else None)
        key_id = self._key_ids.setdefault(verified.key_id, verified.key_id)
        link = _Link(r.seq, digest, key_id, *pos, r.report_id, amends, retraction)
        chain.links.append(link)
        chain.ids[r.report_id] = digest
        chain.add_state(key, link)
        self._hold(r.report_id, key)
        self._by_key.setdefault(key_id, set()).add(key)

    def _hold(self, report_id: str, key: ObserverKey) -> None:
        """Chain ``key`` holds an accepted report ``report_id``."""
        held = self._holders.get(report_id)
        if held is None:
            self._holders[report_id] = key
        elif isinstance(held, set):
            held.add(key)
        elif held != key:
            self._holders[report_id] = {held, key}

    def _holders_of(self, report_id: str) -> Iterable[ObserverKey]:
        """The chains holding an accepted report ``report_id``."""
        held = self._holders.get(report_id)
        if held is None:
            return ()
        return held if isinstance(held, set) else (held,)

    def _release(self, report_id: str, key: ObserverKey) -> None:
        """Chain ``key`` no longer holds an accepted report ``report_id``."""
        held = self._holders.get(report_id)
        if isinstance(held, set):
            held.discard(key)
            if len(held) == 1:
                self._holders[report_id] = next(iter(held))
            elif not held:
                del self._holders[report_id]
        elif held == key:
            del self._holders[report_id]

    def _target(self, key: ObserverKey, report_id: str) -> Amendable | None:
        """The accepted report ``report_id`` of chain ``key``, else of another chain (same
        organization first, then by chain), else None: what an amendment names."""
        own = self._chains.get(key)
        if own is not None and report_id in own.states:
            return own.states[report_id]
        others = sorted(self._holders_of(report_id), key=lambda k: (k[0] != key[0], k))
        for other in others:
            state = self._chains[other].states.get(report_id)
            if state is not None:
                return state
        return None

    def _cut_revoked(
        self,
        before: Mapping[tuple[str, bytes], Revocation],
        ring: KeyRing,
        at_epoch: int,
        touched: set[ObserverKey],
    ) -> list[VerdictChange]:
        """Cut the chains that a revocation new in ``ring`` reaches (module docstring)."""
        changes: list[VerdictChange] = []
        now = _revocation_map(ring)
        for k in sorted(now):
            rev = now[k]
            old = before.get(k)
            if old is not None and old.last_valid_seq <= rev.last_valid_seq:
                continue
            for observer in sorted(self._by_key.get(rev.key_id, ())):
                if observer[0] != rev.org:
                    continue  # another organization's accreditation of the key: not revoked
                chain = self._chains[observer]
                cut = next(
                    (
                        link.seq
                        for link in chain.links
                        if link.key_id == rev.key_id and link.seq > rev.last_valid_seq
                    ),
                    None,
                )
                if cut is None:
                    continue
                for link in chain.links[cut - 1 :]:
                    why = (
                        f"key revoked after seq {rev.last_valid_seq}"
                        if link.key_id == rev.key_id
                        else f"rests on seq {cut}, signed by a key revoked after seq"
                        f" {rev.last_valid_seq}"
                    )
                    changes.append(
                        VerdictChange(
                            link.pos, observer, link.seq, link.report_id, link.key_id, at_epoch, why
                        )
                    )
                for link in chain.links[cut - 1 :]:
                    self._release(link.report_id, observer)
                del chain.links[cut - 1 :]
                chain.rebuild_states(observer)
                touched.add(observer)
        return changes

    # -- decisions ---------------------------------------------------------------------------

    def _judge_decision(
        self, d: _Decision, ring: KeyRing, pending_keys: Container[bytes], deciders: set[str]
    ) -> Verdict:
        """One decision under ``ring`` at its epoch (its clock, its delivery lag, its position
        for node-key revocations); ``deferred`` when its key is unknown to ``ring`` and one of
        ``pending_keys``."""
        pos, e, value, org = d.pos, d.epoch, d.value, d.org
        if value is None:
            return Verdict(pos, e, Status.QUARANTINED, Reason.MALFORMED.value, _NO_VALUE)
        chain = self._decisions.get(org)
        if chain is not None and sha256(value) in chain.known:
            detail = f"decision seq {d.seq} of {org} is already accepted"
            return Verdict(pos, e, Status.QUARANTINED, Reason.REPLAYED.value, detail)
        try:
            verified = verify_decision(
                value, ring, topic_org=org, epoch=e, reference_ms=d.time_ms, limits=self._limits
            )
            decision = verified.decision
            _check_delivery_lag(decision.signed_at_ms, d.time_ms, self._mandate_at(e))
            head = None if chain is None else chain.head()
            check_link(f"decisions of {org}", head, decision.seq, decision.prev_digest)
        except VerificationError as exc:
            if exc.reason is Reason.UNKNOWN_KEY and d.key_id in pending_keys:
                detail = f"its key is accredited from epoch {e + 1}"
                return Verdict(pos, e, Status.DEFERRED, detail=detail)
            return Verdict(pos, e, Status.QUARANTINED, exc.reason.value, exc.message)
        except Exception as exc:  # a reader never crashes on input (see Reason.INTERNAL_ERROR)
            log.exception(
                "verifier_internal_error",
                extra={"topic": pos[0], "partition": pos[1], "offset": pos[2]},
            )
            return Verdict(pos, e, Status.QUARANTINED, Reason.INTERNAL_ERROR.value, repr(exc))
        if chain is None:
            chain = self._decisions[org] = _DecisionChain()
        chain.digests.append(verified.envelope_digest)
        chain.known.add(verified.envelope_digest)
        deciders.add(org)
        return Verdict(pos, e, Status.ACCEPTED, decision=verified)

    # -- state -------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The judge's whole state after the last epoch judged, as canonical JSON bytes.

        With :meth:`restore` (and the same root, topics and limits) a judge continues exactly
        where this one stands: store it with the verdicts of the epoch it follows.
        """
        state: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            # Links carry what they amend: a snapshot without it (made before amendments were
            # judged) cannot continue, as its chains do not say which reports were corrected.
            "amendments": 1,
            "config": self._config_digest().hex(),
            "epoch": self._epoch,
            "seal_digest": self._seal_digest.hex(),
            "time_ms": self._time_ms,
            "digest": self._digest.hex(),
            "sizes": sorted([t, p, s] for (t, p), s in self._sizes.items()),
            "versions": [[e, payload.hex()] for e, payload, _ in self._versions],
            "applied": [[a.envelope.hex(), a.root_key_id.hex()] for a in self._applied],
            "chains": [
                [
                    org,
                    obs,
                    [
                        [
                            ln.digest.hex(),
                            ln.key_id.hex(),
                            *ln.pos,
                            ln.report_id,
                            ln.amends,
                            int(ln.retraction),
                        ]
                        for ln in chain.links
                    ],
                    sorted([rid, d.hex()] for rid, d in chain.ids.items()),
                ]
                for (org, obs), chain in sorted(self._chains.items())
            ],
            "deferred": [
                [*d.pos, (d.value or b"").hex(), d.epoch, d.time_ms] for d in self._deferred
            ],
            "decisions": [
                [org, [d.hex() for d in chain.digests]]
                for org, chain in sorted(self._decisions.items())
            ],
            "deferred_decisions": [
                [*d.pos, (d.value or b"").hex(), d.epoch, d.time_ms]
                for d in self._deferred_decisions
            ],
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def restore(
        cls,
        snapshot: bytes,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        decryption_keys: Mapping[bytes, DecryptionKey] | None = None,
    ) -> FinalJudge:
        """A judge standing where :meth:`snapshot` was taken.

        The snapshot is the caller's own store (trusted like it): nothing in it is verified
        again.

        Raises:
            ConfigError: the snapshot is of another format or was made with another root,
                topics or limits.
        """
        judge = cls(root, topics, limits, decryption_keys=decryption_keys)
        try:
            s = json.loads(snapshot)
            ok = (
                s["format"] == SNAPSHOT_FORMAT
                and s.get("amendments") == 1
                and s["config"] == judge._config_digest().hex()
            )
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ConfigError(
                "judge snapshot",
                "not a snapshot of a judge with this root mandate, topics and limits",
                "resume with the configuration it was made with, or judge the log again from"
                " the first epoch",
            )
        judge._epoch = s["epoch"]
        judge._seal_digest = bytes.fromhex(s["seal_digest"])
        judge._time_ms = s["time_ms"]
        judge._digest = bytes.fromhex(s["digest"])
        judge._sizes = {(t, p): size for t, p, size in s["sizes"]}
        judge._versions = []
        for e, payload in s["versions"]:
            raw = bytes.fromhex(payload)
            judge._versions.append((e, raw, Mandate.decode(raw)))
        for env_hex, root_hex in s["applied"]:
            env = Envelope.decode(bytes.fromhex(env_hex))
            entry: TrustEntry
            if env.payload_type == PAYLOAD_REVOCATION:
                entry = Revocation.decode(env.payload)
            elif env.payload_type == PAYLOAD_ENCRYPTION_KEY:
                entry = EncryptionKey.decode(env.payload)
            else:
                entry = Accreditation.decode(env.payload)
            raw = env.encode()
            judge._applied.append(_Applied(entry, raw, bytes.fromhex(root_hex)))
            judge._applied_digests.add(sha256(raw))
        judge._ring = _build_ring(judge._versions[-1][2], judge._applied)
        for org, obs, links, ids in s["chains"]:
            observer = judge._observers.setdefault((org, obs), (org, obs))
            chain = judge._chains[observer] = _Chain()
            for i, (d, k, topic, partition, offset, rid, amends, retraction) in enumerate(links):
                key_id = bytes.fromhex(k)
                key_id = judge._key_ids.setdefault(key_id, key_id)
                link = _Link(
                    i + 1, bytes.fromhex(d), key_id, topic, partition, offset, rid, amends,
                    bool(retraction),
                )  # fmt: skip
                chain.links.append(link)
                chain.add_state(observer, link)
                judge._hold(rid, observer)
                judge._by_key.setdefault(link.key_id, set()).add(observer)
            chain.ids = {rid: bytes.fromhex(d) for rid, d in ids}
        for topic, p, o, v, e, t in s["deferred"]:
            value = bytes.fromhex(v)
            org = topics.org_of_report_topic(topic)
            assert org is not None  # deferred records come from report topics only
            judge._deferred.append(_Report((topic, p, o), value, org, _claims(value), e, t))
        for org, digests in s["decisions"]:
            decided = judge._decisions[org] = _DecisionChain([bytes.fromhex(d) for d in digests])
            decided.known = set(decided.digests)
        lim = judge._limits.max_record_bytes
        for topic, p, o, v, e, t in s["deferred_decisions"]:
            decider = topics.org_of_decision_topic(topic)
            assert decider is not None  # deferred decisions come from decisions topics only
            judge._deferred_decisions.append(
                _decision_record((topic, p, o), bytes.fromhex(v), decider, epoch=e, t=t, limit=lim)
            )
        return judge

    def _config_digest(self) -> bytes:
        lim = self._limits
        text = json.dumps(
            [
                encode(self._root).hex(),
                self._topics.prefix,
                lim.max_record_bytes,
                lim.max_clock_skew_ms,
            ]
        )
        return hashlib.sha256(text.encode()).digest()


def _accredits(ring: KeyRing, key_id: bytes) -> bool:
    try:
        ring.lookup(key_id)
    except VerificationError:
        return False
    return True
