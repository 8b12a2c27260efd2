"""Delivery of the observer's outbox to its organization's gateway, and of the attachments.

Delivery (:func:`sync`): strictly oldest first, one report at a time (the gateway checks the
chain, so order matters); a failure that can heal (no connection, timeout, HTTP 429/5xx) is
retried with exponential backoff and full jitter (delay drawn uniformly from
``[0, min(cap, base * 2^n)]``, the "full jitter" of AWS's backoff study), a ``Retry-After``
is honoured, and so is ``unknown_key`` (the organization may not have published the
accreditation yet); a refusal (any other 4xx) is recorded with the gateway's reason code and
delivery moves on. Every outcome is written to the outbox before the next report is sent, so
``sync`` can be killed at any moment and run again.

Attachments are uploaded (``PUT /v1/attachments/<sha256 hex>``, the bytes as body) right after
their report's receipt and before the next report is sent: the gateway accepts only bytes that
a report it accepted references. An upload fails and heals like a report; a refusal (with the
gateway's reason) is recorded and does not stop delivery.

Each receipt is verified against the mandate and the gateway's node accreditation, fetched from
the gateway (``GET /v1/node``) and kept in the outbox so receipts can be checked offline later
(:func:`nodes.observer.device.check_receipts`).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog

from bus.errors import BusError, Reason, VerificationError
from bus.model import PAYLOAD_SEALED_REPORT, Envelope, Report, Role, SealedReport
from bus.receipt import verify_receipt
from bus.seal_proof import SealProof, check_receipt_inclusion
from bus.trust import KeyRing, decode_registry_record, verify_accreditation
from bus.verify import ChainHead
from nodes.observer.client import Answer, AnswerTooLarge, GatewayClient, Unreachable
from nodes.observer.device import Home, ObserverConfig, now_ms, receipt_keyring
from nodes.observer.outbox import (
    DELIVERED,
    PENDING,
    QUEUED,
    REFUSED,
    UPLOADED,
    Entry,
    Outbox,
    Upload,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits U(0, min(cap, base * 2^(n-1)))."""

    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, failures: int, rng: random.Random, retry_after_s: float | None) -> float:
        """Seconds to wait after ``failures`` consecutive failures (>= Retry-After if given)."""
        # The exponent is bounded: a sync retrying for days must not overflow a float.
        bound = min(self.cap_s, self.base_s * 2 ** min(max(0, failures - 1), 60))
        wait = rng.uniform(0, bound)
        return max(wait, retry_after_s or 0.0)


@dataclass
class SyncResult:
    """What one sync run did."""

    delivered: int = 0
    duplicates: int = 0  # answered 200: the gateway had it already (an earlier lost answer)
    rejected: int = 0
    failures: int = 0
    remaining: int = 0
    bad_receipts: int = 0
    uploaded: int = 0  # attachments the gateway confirmed
    uploaded_bytes: int = 0
    refused_uploads: int = 0
    remaining_uploads: int = 0
    held: int = 0  # queued after a refused report: re-signed before they are sent


@dataclass(frozen=True, slots=True)
class Waiting:
    """What :func:`sync` tells its ``progress`` callback before each wait for a retry."""

    error: str  # why the last attempt failed
    failures: int  # consecutive failures so far
    retry_in_s: float
    queued: int  # reports still to deliver
    elapsed_s: float
    budget_s: float  # max_seconds


async def fetch_node_accreditation(
    client: GatewayClient, home: Home, outbox: Outbox, config: ObserverConfig, *, at_ms: int
) -> None:
    """Fetch, verify and keep the gateway's node accreditation (for checking receipts).

    Raises:
        Unreachable: no answer.
        VerificationError: the accreditation does not verify, is not a NODE of our org.
    """
    answer = await client.node_accreditation()
    if answer.status != 200:
        raise Unreachable(f"GET /v1/node answered {answer.status}")
    mandate = home.load_mandate(now_ms=at_ms)
    acc = verify_accreditation(decode_registry_record(answer.body), mandate)
    if acc.role != Role.NODE or acc.org != config.org:
        raise VerificationError(
            Reason.WRONG_ROLE, f"gateway key is {acc.org}/{acc.role.name}, not {config.org}/NODE"
        )
    outbox.add_node_accreditation(acc.key_id, answer.body)


async def sync(
    home: Home,
    outbox: Outbox,
    client: GatewayClient,
    *,
    backoff: Backoff = Backoff(),
    max_seconds: float = 600.0,
    max_failures: int | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    progress: Callable[[Waiting], None] | None = None,
) -> SyncResult:
    """Deliver queued reports oldest first until none is left or the budget is spent.

    The attachments of a delivered report are uploaded before the next report is sent.

    Args:
        max_seconds: stop retrying after this long (the queue stays for the next sync).
        max_failures: stop after this many consecutive failures (``submit`` uses 1).
        progress: told before every wait for a retry (so a person offline for minutes sees
            why and until when).

    Returns:
        Counts of what happened; ``remaining`` queued reports (and ``remaining_uploads``
        attachments) are left for the next run.
    """
    config = home.load_config()
    rng = rng or random.Random()
    started = clock()
    deadline = started + max_seconds
    result = SyncResult()
    ring: KeyRing | None = None
    failures = 0
    while True:
        upload = outbox.next_upload()
        if upload is not None:
            answer, error = await _upload(home, outbox, client, upload, result)
            if error is None:
                failures = 0
                continue
        else:
            entry = outbox.next_deliverable()
            if entry is None:
                break
            answer, error, ring = await _deliver(
                home, outbox, client, config, entry, ring=ring, result=result
            )
            if error is None:
                failures = 0
                continue
        failures += 1
        result.failures += 1
        retry_s = None if answer is None else answer.retry_after_s
        wait = backoff.delay(failures, rng, retry_s)
        log.info("delivery_failed", error=error, failures=failures, retry_in_s=round(wait, 2))
        if (max_failures is not None and failures >= max_failures) or clock() + wait > deadline:
            break
        if progress is not None:
            queued = outbox.counts()[QUEUED] - len(outbox.held())
            progress(Waiting(str(error), failures, wait, queued, clock() - started, max_seconds))
        await sleep(wait)
    result.held = len(outbox.held())
    result.remaining = outbox.counts()[QUEUED]
    result.remaining_uploads = outbox.upload_counts()[PENDING]
    return result


async def _deliver(
    home: Home,
    outbox: Outbox,
    client: GatewayClient,
    config: ObserverConfig,
    entry: Entry,
    *,
    ring: KeyRing | None,
    result: SyncResult,
) -> tuple[Answer | None, str | None, KeyRing | None]:
    """Send one report; returns (answer, error or None once settled, key ring)."""
    bound = log.bind(report_id=entry.report_id, seq=entry.seq)
    answer: Answer | None = None
    try:
        answer = await client.submit(entry.envelope)
    except Unreachable as exc:
        error = str(exc)
    else:
        error = f"HTTP {answer.status}: {answer.error()[0]}"
    if answer is not None and answer.status in (200, 201):
        if ring is None or not _knows_signer(ring, answer.body):
            ring = await _refresh_ring(client, home, outbox, config)
        ok = _receipt_ok(ring, answer.body, entry.envelope)
        outbox.mark_delivered(
            entry.seq,
            receipt=answer.body,
            receipt_ok=ok,
            http_status=answer.status,
            now_ms=now_ms(),
        )
        result.delivered += 1
        result.duplicates += answer.status == 200
        result.bad_receipts += not ok
        bound.info("report_delivered", status=answer.status, receipt_ok=ok)
        return answer, None, ring
    if answer is not None and _is_refusal(answer):
        reason, detail = answer.error()
        outbox.mark_rejected(
            entry.seq,
            reason=reason,
            detail=detail,
            http_status=answer.status,
            now_ms=now_ms(),
            prev=_signed_on(entry.envelope),
        )
        result.rejected += 1
        held = len(outbox.held())
        bound.warning(
            "report_rejected", status=answer.status, reason=reason, detail=detail, held=held
        )
        return answer, None, ring
    outbox.record_failure(entry.seq, error)
    return answer, error, ring


def _signed_on(envelope: bytes) -> ChainHead | None:
    """The chain position a report was signed on: (seq - 1, its prev_digest), None at seq 1."""
    env = Envelope.decode(envelope)
    r: Report | SealedReport
    if env.payload_type == PAYLOAD_SEALED_REPORT:
        r = SealedReport.decode(env.payload)
    else:
        r = Report.decode(env.payload)
    return None if r.seq == 1 else ChainHead(r.seq - 1, r.prev_digest)


# An upload the observer cannot make: the bytes are no longer in the blob directory (removed
# by hand). Not a gateway reason code; recorded like a refusal so delivery goes on.
BLOB_MISSING: Final = "blob_missing"


async def _upload(
    home: Home, outbox: Outbox, client: GatewayClient, upload: Upload, result: SyncResult
) -> tuple[Answer | None, str | None]:
    """Upload one attachment; returns (answer, error or None once settled)."""
    bound = log.bind(report_id=upload.report_id, seq=upload.seq, sha256=upload.sha256.hex())
    try:
        data = home.blob(upload.sha256).read_bytes()
    except FileNotFoundError:
        outbox.finish_upload(
            upload.seq, upload.sha256, state=REFUSED, http_status=None, now_ms=now_ms(),
            reason=BLOB_MISSING, detail=f"{home.blob(upload.sha256)} is gone",
        )  # fmt: skip
        result.refused_uploads += 1
        bound.warning("attachment_refused", reason=BLOB_MISSING)
        return None, None
    answer: Answer | None = None
    try:
        answer = await client.put_attachment(upload.sha256, data)
    except Unreachable as exc:
        error = str(exc)
    else:
        error = f"HTTP {answer.status}: {answer.error()[0]}"
    if answer is not None and answer.status in (200, 201):
        outbox.finish_upload(
            upload.seq, upload.sha256, state=UPLOADED, http_status=answer.status,
            now_ms=now_ms(), release=home.release_blob,
        )  # fmt: skip
        result.uploaded += 1
        result.uploaded_bytes += len(data)
        bound.info("attachment_uploaded", status=answer.status, size=len(data))
        return answer, None
    if answer is not None and _is_refusal(answer):
        reason, detail = answer.error()
        outbox.finish_upload(
            upload.seq, upload.sha256, state=REFUSED, http_status=answer.status,
            now_ms=now_ms(), reason=reason, detail=detail, release=home.release_blob,
        )  # fmt: skip
        result.refused_uploads += 1
        bound.warning("attachment_refused", status=answer.status, reason=reason, detail=detail)
        return answer, None
    outbox.record_upload_failure(upload.seq, upload.sha256, error)
    return answer, error


# Refusals that heal by waiting: the gateway is busy, or the organization has not published
# this observer's accreditation yet (an observer may submit before it is accredited).
RETRY_REASONS: Final = frozenset({Reason.RATE_LIMITED.value, Reason.UNKNOWN_KEY.value})


def _is_refusal(answer: Answer) -> bool:
    # A 4xx is the gateway's verdict on the report, except 408/429 and the reasons above.
    if not 400 <= answer.status < 500 or answer.status in (408, 429):
        return False
    return answer.error()[0] not in RETRY_REASONS


def _knows_signer(ring: KeyRing, receipt: bytes) -> bool:
    try:
        ring.lookup(Envelope.decode(receipt).signatures[0].key_id)
    except (VerificationError, IndexError):
        return False
    return True


async def _refresh_ring(
    client: GatewayClient, home: Home, outbox: Outbox, config: ObserverConfig
) -> KeyRing:
    try:
        await fetch_node_accreditation(client, home, outbox, config, at_ms=now_ms())
    except (Unreachable, BusError) as exc:
        log.warning("node_accreditation_unavailable", error=str(exc))
    return receipt_keyring(home, outbox, at_ms=now_ms())


def _receipt_ok(ring: KeyRing, receipt: bytes, envelope: bytes) -> bool:
    try:
        verify_receipt(receipt, ring, envelope=envelope)
    except VerificationError as exc:
        log.warning("receipt_invalid", reason=exc.reason.value, detail=exc.message)
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Inclusion of receipted reports in the sealed log

VERIFIED: Final = "verified"
NOT_SEALED_YET: Final = "not_sealed_yet"
NOT_VERIFIED: Final = "refused"


@dataclass(frozen=True, slots=True)
class InclusionCheck:
    """One delivered report's inclusion: ``verified`` (with the organizations whose
    cosignatures count), ``not_sealed_yet``, or ``refused`` with a reason code."""

    seq: int
    report_id: str
    state: str
    reason: str = ""
    detail: str = ""
    epoch: int = 0
    orgs: tuple[str, ...] = ()


# A proof request the gateway answers "busy" (408, 429, 5xx) is asked again after its
# Retry-After (1 s when none), at most PROOF_ATTEMPTS times in all, and only while the wait asked
# for is short: a longer one (such as sealed_log_broken's) ends the check at once.
PROOF_ATTEMPTS: Final = 3
PROOF_MAX_WAIT_S: Final = 5.0


def _busy(answer: Answer) -> bool:
    return answer.status in (408, 429) or answer.status >= 500


async def _proof(
    client: GatewayClient, topic: str, partition: int, offset: int,
    sleep: Callable[[float], Awaitable[None]],
) -> Answer:  # fmt: skip
    """The gateway's answer to a proof request, asked again while it is briefly busy."""
    answer = await client.proof(topic, partition, offset)
    for _ in range(PROOF_ATTEMPTS - 1):
        wait = answer.retry_after_s or 1.0
        if not _busy(answer) or wait > PROOF_MAX_WAIT_S:
            break
        log.info("proof_busy", status=answer.status, reason=answer.error()[0], retry_in_s=wait)
        await sleep(wait)
        answer = await client.proof(topic, partition, offset)
    return answer


async def check_inclusion(
    home: Home,
    outbox: Outbox,
    client: GatewayClient,
    *,
    at_ms: int,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[InclusionCheck]:
    """For every delivered report, fetch the proof of the record its receipt names
    (``GET /v1/proofs/...``) and run the light check against the observer's mandate file
    (:func:`bus.seal_proof.check_receipt_inclusion`: the receipt verified first, then the
    proof is of that record and *k* organizations of the mandate cosigned its seal). Also
    once the mandate has ended: receipts are judged at their issue times and seals at *t_e*.

    A proof answer longer than the client reads is refused ``oversized``. A gateway briefly
    busy (408, 429, 5xx with a ``Retry-After`` of at most :data:`PROOF_MAX_WAIT_S`) is asked
    again, :data:`PROOF_ATTEMPTS` times in all.

    Raises:
        Unreachable: the gateway could not be reached, or stayed busy (a check not made is not
            a verdict).
    """
    mandate = home.load_mandate(now_ms=at_ms, archive=True)
    ring = receipt_keyring(home, outbox, at_ms=at_ms, archive=True)
    out = []
    for e in outbox.entries(DELIVERED):
        try:
            receipt = verify_receipt(e.receipt or b"", ring, envelope=e.envelope)
        except VerificationError as exc:
            out.append(InclusionCheck(e.seq, e.report_id, NOT_VERIFIED, exc.reason.value,
                                      f"receipt: {exc.message}"))  # fmt: skip
            continue
        try:
            answer = await _proof(client, receipt.topic, receipt.partition, receipt.offset,
                                  sleep)  # fmt: skip
        except AnswerTooLarge as exc:  # no proof is that long: the gateway's answer is refused
            out.append(InclusionCheck(e.seq, e.report_id, NOT_VERIFIED, Reason.OVERSIZED.value,
                                      str(exc)))  # fmt: skip
            continue
        reason, detail = answer.error() if answer.status != 200 else ("", "")
        if reason == Reason.RECORD_NOT_SEALED.value:
            out.append(InclusionCheck(e.seq, e.report_id, NOT_SEALED_YET, reason, detail))
            continue
        if answer.status != 200:
            if _busy(answer):
                raise Unreachable(f"GET proof answered {answer.status} {reason}: {detail}")
            out.append(InclusionCheck(e.seq, e.report_id, NOT_VERIFIED, reason, detail))
            continue
        try:
            proof = SealProof.from_json(json.loads(answer.body))
            orgs = check_receipt_inclusion(proof, receipt, mandate)
        except ValueError as exc:
            out.append(InclusionCheck(e.seq, e.report_id, NOT_VERIFIED, "malformed", str(exc)))
        except VerificationError as exc:
            out.append(
                InclusionCheck(e.seq, e.report_id, NOT_VERIFIED, exc.reason.value, exc.message)
            )
        else:
            out.append(InclusionCheck(e.seq, e.report_id, VERIFIED, epoch=proof.seal().epoch,
                                      orgs=tuple(sorted(orgs))))  # fmt: skip
    return out
