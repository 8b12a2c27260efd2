"""Report verification and the per-observer hash chain: pure, deterministic, fail closed.

``verify_report`` turns the raw bytes of one Kafka record into a :class:`VerifiedReport` or
raises :class:`~bus.errors.VerificationError` with a stable reason code; it never raises anything
else. Its only clock is ``reference_ms``, the "now" the caller judges at: *t_e* of the record's
sealed epoch for a final verdict (:mod:`bus.judge`), the node's own clock for a provisional one
(:mod:`bus.ingest`), the gateway's when it takes a report in. Nothing passes a broker
timestamp, which the operator sets.

``ChainBook`` holds each observer's chain head and decides, per record, whether it extends the
chain, repeats an envelope already stored (``replayed``), reuses a report id with other bytes
(``duplicate_conflict``), leaves a gap (``chain_gap``) or forks it (``chain_fork``), and, for a
correction or a retraction, whether it may amend its target (below).

Amendments
==========

A report amends an earlier one by naming it: ``corrects`` (a new version of the report) or
``retracts`` with a ``retraction_reason`` (schema version 3: the report is withdrawn and says
why). Both are ordinary signed reports that take the next place in the observer's chain, so
nothing is deleted and the original bytes stay in the log. :func:`check_amendment` is the one
rule, applied by the node's provisional verdicts (:class:`ChainBook`) and by the final judge
(:mod:`bus.judge`) alike, after the report verified and its chain link held:

* **Own chain only.** The target must be a report of the amending report's own chain (same
  organization, same observer id): another observer's is ``amend_other_observer``, an
  observer's of another organization ``amend_other_org``. An organization does not amend its
  observers' reports: a chain has one writer, the observer's accredited key, and a second
  writer (a supervisor role) would have to sign into that chain (forking it) or into another
  one whose order against the observer's is not fixed. An organization that must withdraw an
  observer's reports revokes the key (a revocation cuts the chain after ``last_valid_seq``,
  :mod:`bus.judge`).
* **Before it.** The target must be accepted before the amendment in the bus's canonical order
  (the final judge's epoch order); a target not (yet) accepted, or later, is
  ``amend_target_missing``. In one chain that means an earlier seq.
* **The latest version.** A correction of a correction is allowed: the versions form one
  line, resolved to the latest. Amending a version that already has a later one is
  ``amend_superseded`` (so the line never forks and the latest is always well defined).
* **Retractions are final.** Correcting or retracting a retracted report is
  ``amend_target_retracted``; retracting a retraction is ``retraction_of_retraction`` and
  correcting one ``correction_of_retraction``.

A restricted (sealed) report's content, and so any ``corrects`` or ``retracts`` in it, is
readable only by its recipients: no verdict may rest on it, so a sealed report never amends
(its inner fields are not judged) but may be the target of a plain amendment (its clear
fields name its chain). A refused amendment is quarantined like any refused report and does
not extend the chain; the observer signs again at that seq.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol

from bus.crypto import open_single, verify_pae
from bus.errors import Reason, VerificationError
from bus.model import (
    PAYLOAD_REPORT,
    Accreditation,
    Envelope,
    Report,
    Role,
    SealedReport,
    Zone,
    check_schema_allowed,
    sha256,
    unvalidated,
)
from bus.trust import KeyRing

# Largest record value accepted by default. Kafka's default message.max.bytes is 1 MiB; reports
# are small (bounded narrative, attachments travel by reference), so 256 KiB leaves headroom.
DEFAULT_MAX_RECORD_BYTES: Final = 256 * 1024
# How far a signed_at may run ahead of the time it is judged at: observers' device clocks drift.
DEFAULT_MAX_CLOCK_SKEW_MS: Final = 5 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Limits:
    """Verification limits; every node of a mandate should use the same values.

    The maximum delivery lag is not one of them: the mandate sets it, so that every reader
    agrees (:attr:`bus.model.Mandate.delivery_lag_ms`).
    """

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS

    def __post_init__(self) -> None:
        if self.max_record_bytes < 1024:
            raise ValueError("max_record_bytes must be at least 1024")
        if self.max_clock_skew_ms < 0:
            raise ValueError("max_clock_skew_ms must be >= 0")


@dataclass(frozen=True, slots=True)
class VerifiedReport:
    """A report whose signature, accreditation and mandate checks passed."""

    report: Report
    envelope_digest: bytes
    key_id: bytes


# See _new_head (below).
_new_verified: Callable[[Report, bytes, bytes], VerifiedReport] = unvalidated(VerifiedReport)


def verify_report(
    raw: bytes,
    *,
    expected_org: str,
    keyring: KeyRing,
    reference_ms: int,
    limits: Limits = Limits(),
    preverified: Container[tuple[bytes, bytes]] = frozenset(),
) -> VerifiedReport:
    """Verify one report record read from organization ``expected_org``'s topic.

    Args:
        raw: the record value exactly as read from Kafka.
        expected_org: organization whose topic the record was read from.
        keyring: accreditations and revocations under the current mandate.
        reference_ms: "now" for this record (module docstring): ``signed_at`` may run at
            most ``limits.max_clock_skew_ms`` ahead of it.
        limits: size and clock-skew limits.
        preverified: ``(public key, raw)`` pairs whose signature :func:`preverify_signatures`
            already found valid (see there); every other record is verified here.

    Returns:
        The verified report with the SHA-256 of ``raw`` (the chain digest) and the signer key id.

    Raises:
        VerificationError: the first check that fails, with its reason code
            (``schema_not_allowed`` for a schema version the mandate in ``keyring`` does not
            allow: under the final judge, the mandate in force at the record's epoch).
    """
    env, acc = open_observer_envelope(raw, PAYLOAD_REPORT, keyring, limits, preverified)
    report = Report.decode(env.payload)
    zone = check_claims(report, acc, expected_org=expected_org, keyring=keyring)
    mandate = keyring.mandate
    check_schema_allowed(report.schema_version, mandate)
    location = report.location
    if not zone.contains(location.lat, location.lon):
        raise VerificationError(
            Reason.OUTSIDE_ZONE,
            f"location ({location.lat}, {location.lon}) outside zone {zone.id}",
        )
    observed_at_ms, signed_at_ms = report.observed_at_ms, report.signed_at_ms
    not_before_ms, not_after_ms = mandate.not_before_ms, mandate.not_after_ms
    if not not_before_ms <= observed_at_ms <= not_after_ms:
        raise VerificationError(
            Reason.OUTSIDE_WINDOW,
            "observed_at_ms outside the mandate window",
            field="observed_at_ms",
        )
    if not not_before_ms <= signed_at_ms <= not_after_ms:
        raise VerificationError(
            Reason.OUTSIDE_WINDOW, "signed_at_ms outside the mandate window", field="signed_at_ms"
        )
    max_clock_skew_ms = limits.max_clock_skew_ms
    if signed_at_ms > reference_ms + max_clock_skew_ms:
        raise VerificationError(
            Reason.CLOCK_SKEW,
            f"signed_at is {signed_at_ms - reference_ms} ms after the time it is judged at",
        )
    if observed_at_ms > signed_at_ms + max_clock_skew_ms:
        raise VerificationError(
            Reason.INVALID_FIELD, "observed after it was signed", field="observed_at_ms"
        )
    return _new_verified(report, sha256(raw), env.signatures[0].key_id)


class Claims(Protocol):
    """The routing fields a report states in clear (plain and sealed reports alike)."""

    @property
    def observer_id(self) -> str: ...
    @property
    def org(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def signed_at_ms(self) -> int: ...
    @property
    def mandate_id(self) -> str: ...
    @property
    def zone(self) -> str: ...


def open_observer_envelope(
    raw: bytes,
    payload_type: str,
    keyring: KeyRing,
    limits: Limits,
    preverified: Container[tuple[bytes, bytes]] = frozenset(),
) -> tuple[Envelope, Accreditation]:
    """Size, then the single-signature rule (:func:`bus.crypto.open_single`) for a report.

    ``preverified`` skips the signature check as :func:`bus.crypto.open_single` explains.

    Raises:
        VerificationError: ``oversized``, ``malformed``, ``wrong_payload_type``,
            ``invalid_field``, ``unknown_key``, ``bad_signature``, ``malformed_key``.
    """
    if len(raw) > limits.max_record_bytes:
        raise VerificationError(
            Reason.OVERSIZED, f"{len(raw)} bytes > limit {limits.max_record_bytes}", size=len(raw)
        )
    return open_single(raw, payload_type, keyring.lookup, what="report", preverified=preverified)


def preverify_signatures(
    raws: Sequence[bytes], public_keys: Mapping[bytes, bytes]
) -> list[tuple[int, bytes]]:
    """Check the Ed25519 signatures of many records ahead of :func:`verify_report`.

    Meant to run in worker processes (the node's ``verify_workers``); the verdicts come from the
    one rule, :func:`bus.crypto.verify_pae`. Only positive verdicts are returned: anything that
    does not decode, carries other than one signature, names a key not in ``public_keys`` or
    does not verify is simply left out, and the ordinary sequential path judges it from scratch.

    Args:
        raws: record values.
        public_keys: key id -> raw public key (of the accreditations known when called).

    Returns:
        ``(index into raws, public key)`` of every record whose single signature verified;
        the caller passes ``{(public key, raws[index])}`` as ``preverified``.
    """
    ok: list[tuple[int, bytes]] = []
    for i, raw in enumerate(raws):
        try:
            env = Envelope.decode(raw)
            if len(env.signatures) != 1:
                continue
            sig = env.signatures[0]
            pk = public_keys.get(sig.key_id)
            if pk is None:
                continue
            verify_pae(pk, env.payload_type, env.payload, sig.sig)
        except VerificationError:
            continue
        ok.append((i, pk))
    return ok


def check_claims(
    claims: Claims, acc: Accreditation, *, expected_org: str, keyring: KeyRing
) -> Zone:
    """The signer is the claimed observer of the topic's organization, usable at that seq and
    time, under this mandate, in one of its zones.

    Returns:
        The mandate zone the report names.

    Raises:
        VerificationError: ``subject_mismatch``, ``wrong_org``, ``wrong_topic``, ``wrong_role``,
            ``key_expired``, ``key_revoked``, ``wrong_mandate``, ``outside_zone``.
    """
    if claims.observer_id != acc.subject_id:
        raise VerificationError(
            Reason.SUBJECT_MISMATCH,
            f"signed by {acc.org}/{acc.subject_id}, claims observer {claims.observer_id}",
        )
    if claims.org != acc.org:
        raise VerificationError(
            Reason.WRONG_ORG, f"claims org {claims.org!r}, key accredited by {acc.org!r}"
        )
    if claims.org != expected_org:
        raise VerificationError(
            Reason.WRONG_TOPIC, f"report of {claims.org!r} on the topic of {expected_org!r}"
        )
    keyring.check_usable(acc, role=Role.OBSERVER, at_ms=claims.signed_at_ms, seq=claims.seq)
    mandate = keyring.mandate
    if claims.mandate_id != mandate.mandate_id:
        raise VerificationError(Reason.WRONG_MANDATE, f"report for {claims.mandate_id!r}")
    zone = mandate.zone(claims.zone)
    if zone is None:
        raise VerificationError(Reason.OUTSIDE_ZONE, f"zone {claims.zone!r} is not in the mandate")
    return zone


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Last accepted position of an observer's chain."""

    seq: int
    digest: bytes


# Built for every record judged: straight-line constructors that only store the fields
# (bus.model.unvalidated; these classes have no __post_init__, so the objects are the same).
_new_head: Callable[[int, bytes], ChainHead] = unvalidated(ChainHead)


def check_link(who: str, head: ChainHead | None, seq: int, prev_digest: bytes) -> None:
    """The hash-chain rule: ``seq`` follows ``head`` by one and ``prev_digest`` names its digest.

    Args:
        who: how the chain is named in the error message (e.g. ``observer un-obs-1``).
        head: the chain's current head, None before its first link.

    Raises:
        VerificationError: ``chain_gap`` (seq beyond the next one), ``chain_fork`` (a second
            link at an earlier seq, or prev_digest not the head's digest).
    """
    expected_seq = 1 if head is None else head.seq + 1
    if seq > expected_seq:
        raise VerificationError(
            Reason.CHAIN_GAP,
            f"{who}: seq {seq} after {expected_seq - 1}",
            expected_seq=expected_seq,
        )
    if seq < expected_seq:
        raise VerificationError(
            Reason.CHAIN_FORK, f"{who}: a second report at seq {seq}", expected_seq=expected_seq
        )
    if head is not None and prev_digest != head.digest:
        raise VerificationError(
            Reason.CHAIN_FORK, f"{who}: prev_digest is not the digest of seq {head.seq}"
        )


class ChainLink(Protocol):
    """What the chain needs of a report: its id, observer, position and predecessor digest."""

    @property
    def report_id(self) -> str: ...
    @property
    def observer_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def prev_digest(self) -> bytes: ...


# (report_id) -> envelope digest already stored, or None.
DigestLookup = Callable[[str], bytes | None]


@dataclass(frozen=True, slots=True)
class Amendable:
    """What the amendment rule needs of an accepted report (a possible target).

    Args:
        org, observer_id: its chain.
        retraction: the report is itself a retraction.
        corrected_by: the id of the correction that superseded it ("": the latest version).
        retracted_by: the id of the retraction that withdrew it ("": not retracted).
    """

    org: str
    observer_id: str
    retraction: bool = False
    corrected_by: str = ""
    retracted_by: str = ""


# (org, observer id, report id) -> the accepted report with that id in that chain, else one
# in another chain (of the same organization first), else None.
AmendLookup = Callable[[str, str, str], Amendable | None]


def check_amendment(report: Report, target: Amendable | None) -> None:
    """The amendment rule (module docstring) for ``report`` against its target's state.

    Args:
        report: a verified plain report (nothing to check unless it corrects or retracts).
        target: what the caller's book holds of the report named, accepted before ``report``
            (None: nothing).

    Raises:
        VerificationError: ``amend_target_missing``, ``amend_other_org``,
            ``amend_other_observer``, ``retraction_of_retraction``,
            ``correction_of_retraction``, ``amend_target_retracted``, ``amend_superseded``.
    """
    rid = report.amends
    if not rid:
        return
    what = "retracts" if report.retracts else "corrects"
    if target is None:
        raise VerificationError(
            Reason.AMEND_TARGET_MISSING,
            f"{what} {rid}, which is not an accepted report before it",
            report_id=report.report_id,
            target=rid,
        )
    if target.org != report.org:
        raise VerificationError(
            Reason.AMEND_OTHER_ORG,
            f"{what} {rid}, a report of {target.org}/{target.observer_id}: only its own"
            " observer may amend it",
            target=rid,
        )
    if target.observer_id != report.observer_id:
        raise VerificationError(
            Reason.AMEND_OTHER_OBSERVER,
            f"{what} {rid}, a report of observer {target.observer_id}: only its own observer"
            " may amend it",
            target=rid,
        )
    if target.retraction:
        reason = (
            Reason.RETRACTION_OF_RETRACTION
            if report.retracts
            else (Reason.CORRECTION_OF_RETRACTION)
        )
        raise VerificationError(reason, f"{what} {rid}, which is a retraction", target=rid)
    if target.retracted_by:
        raise VerificationError(
            Reason.AMEND_TARGET_RETRACTED,
            f"{what} {rid}, which {target.retracted_by} retracted",
            target=rid,
        )
    if target.corrected_by:
        raise VerificationError(
            Reason.AMEND_SUPERSEDED,
            f"{what} {rid}, which {target.corrected_by} corrected: amend the latest version",
            target=rid,
        )


def amended(report: Report, target: Amendable) -> Amendable:
    """The target's state once ``report`` (which passed :func:`check_amendment`) amends it."""
    if report.retracts:
        return replace(target, retracted_by=report.report_id)
    return replace(target, corrected_by=report.report_id)


def _state(pending: Amendable | Report) -> Amendable:
    """A pending amendment state; an accepted plain report's own is its chain and whether it
    is a retraction (nothing amended it yet)."""
    if isinstance(pending, Amendable):
        return pending
    return Amendable(pending.org, pending.observer_id, retraction=bool(pending.retracts))


@dataclass(frozen=True, slots=True)
class ChainBatch:
    """What one batch judged through a :class:`ChainBook` changed and rested on.

    ``changed``: the new heads to store; ``bases``: every head a verdict of the batch rested
    on, as it was before the batch (None: none), for a store shared by several workers to check
    at commit time; ``report_ids``: the ids the batch accepted.
    """

    changed: dict[str, ChainHead]
    bases: dict[str, ChainHead | None]
    report_ids: tuple[str, ...]


class ChainBook:
    """Chain heads per observer plus report-id idempotency.

    ``lookup_digest`` asks the durable store for a report id; reports accepted through this
    book but not yet stored are remembered in memory until :meth:`flushed` (or, batch by
    batch, :meth:`seal` then :meth:`stored`: a node judges its next batch while the previous
    one is being committed).

    ``amendments`` asks the durable store for a target's state (module docstring,
    *Amendments*); the states this book changed but the store does not hold yet are kept in
    memory likewise. Without it (a reader that keeps no accepted reports, such as the
    gateway) corrections and retractions are not judged here: the nodes judge them.
    """

    def __init__(
        self,
        heads: dict[str, ChainHead],
        lookup_digest: DigestLookup,
        amendments: AmendLookup | None = None,
    ) -> None:
        self._heads = dict(heads)
        self._lookup = lookup_digest
        self._amendments = amendments
        # report id -> (its state, the id of the accepted report that set it): states not in
        # the store yet (a report accepted, or a target it amended). An accepted plain report
        # stands for its own first state (see _state), built only if something amends it.
        self._amend_pending: dict[str, tuple[Amendable | Report, str]] = {}
        self._pending: dict[str, bytes] = {}
        # Observers whose head a verdict rested on since the last flushed() (accepted or not),
        # with the head before the first change (None: no report before): what a shared
        # store checks at commit time.
        self._base: dict[str, ChainHead | None] = {}
        self._unsealed: list[str] = []  # ids accepted since the last seal()

    def head(self, observer_id: str) -> ChainHead | None:
        """The observer's chain head, or None before its first report."""
        return self._heads.get(observer_id)

    def accept(self, vr: VerifiedReport) -> None:
        """Extend the observer's chain with a verified report.

        Raises:
            VerificationError: ``replayed``, ``duplicate_conflict``, ``chain_gap``,
                ``chain_fork``, then the amendment refusals of :func:`check_amendment`.
        """
        r = vr.report
        self._accept(r, vr.envelope_digest, r if self._amendments is not None else None)

    def _target(self, r: Report, rid: str) -> Amendable | None:
        pending = self._amend_pending.get(rid)
        if pending is not None:
            return _state(pending[0])
        assert self._amendments is not None
        return self._amendments(r.org, r.observer_id, rid)

    def accept_link(self, r: ChainLink, envelope_digest: bytes) -> None:
        """Extend a chain with any verified report, plain or sealed (same rules as accept).

        Raises:
            VerificationError: ``replayed``, ``duplicate_conflict``, ``chain_gap``, ``chain_fork``.
        """
        self._accept(r, envelope_digest, None)
        if self._amendments is not None and isinstance(r, SealedReport):
            # a target like any report (its clear fields name its chain), never an amendment
            self._amend_pending[r.report_id] = (Amendable(r.org, r.observer_id), r.report_id)

    def _accept(self, r: ChainLink, envelope_digest: bytes, plain: Report | None) -> None:
        """The chain rules, then (``plain``: a plain report, amendments judged) the amendment
        rule; remembers what the acceptance changed."""
        report_id, observer_id, seq = r.report_id, r.observer_id, r.seq
        known = self._pending.get(report_id) or self._lookup(report_id)
        if known is not None:
            if known == envelope_digest:
                raise VerificationError(
                    Reason.REPLAYED,
                    f"report {report_id} is already stored",
                    report_id=report_id,
                )
            raise VerificationError(
                Reason.DUPLICATE_CONFLICT,
                f"report id {report_id} already stored with other content",
                report_id=report_id,
            )
        head = self._heads.get(observer_id)
        if observer_id not in self._base:  # this verdict rests on that head
            self._base[observer_id] = head
        # check_link's rule; its message is only built for a link that breaks it.
        if not (
            (seq == 1 and head is None)
            or (head is not None and seq == head.seq + 1 and r.prev_digest == head.digest)
        ):
            check_link(f"observer {observer_id}", head, seq, r.prev_digest)
        if plain is not None:
            target_id = plain.amends
            if target_id:
                target = self._target(plain, target_id)
                check_amendment(plain, target)
                if target is not None:
                    self._amend_pending[target_id] = (amended(plain, target), report_id)
            self._amend_pending[report_id] = (plain, report_id)
        self._heads[observer_id] = _new_head(seq, envelope_digest)
        self._pending[report_id] = envelope_digest
        self._unsealed.append(report_id)

    def flushed(self) -> None:
        """Forget in-memory report ids and changes once the store has committed them."""
        self._pending.clear()
        self._base.clear()
        self._unsealed.clear()
        self._amend_pending.clear()

    def seal(self) -> ChainBatch:
        """Close the batch judged since the last seal; its ids stay known until
        :meth:`stored`, and the next batch's verdicts rest on its heads."""
        batch = ChainBatch(self.changed(), self.bases(), tuple(self._unsealed))
        self._base.clear()
        self._unsealed.clear()
        return batch

    def stored(self, batch: ChainBatch) -> None:
        """A sealed batch is committed: the store answers for its ids from now on."""
        for report_id in batch.report_ids:
            self._pending.pop(report_id, None)
        ids = set(batch.report_ids)
        for rid in [k for k, (_, by) in self._amend_pending.items() if by in ids]:
            del self._amend_pending[rid]

    def reload(self, heads: dict[str, ChainHead]) -> None:
        """Start over from a store's heads, dropping everything not stored (a lost batch)."""
        self._heads = dict(heads)
        self._pending.clear()
        self._base.clear()
        self._unsealed.clear()
        self._amend_pending.clear()

    def changed(self) -> dict[str, ChainHead]:
        """Heads changed since the last :meth:`flushed`: what a batch commit writes."""
        out = {}
        for o, base in self._base.items():
            head = self._heads.get(o)
            if head is not None and head != base:
                out[o] = head
        return out

    def bases(self) -> dict[str, ChainHead | None]:
        """Every head a verdict since the last :meth:`flushed` rested on, as it was before
        (None: the observer had none): a report quarantined as a gap or fork depends on its
        observer's head as much as an accepted one."""
        return dict(self._base)

    def heads(self) -> dict[str, ChainHead]:
        """A copy of all chain heads."""
        return dict(self._heads)
