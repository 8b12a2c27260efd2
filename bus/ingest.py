"""One verification path for nodes and auditors: record bytes -> accepted or quarantined.

Pure glue of :func:`bus.verify.verify_report` and the per-observer :class:`~bus.verify.ChainBook`
(follow-up policies run on accepted reports in :class:`bus.policy.PolicyEngine`). It never
raises on input: every record ends as exactly one :class:`~bus.store.node.Accepted` or
:class:`~bus.store.node.Quarantined` outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bus.errors import Reason, VerificationError
from bus.lifecycle import TrustTimeline
from bus.sealed import DecryptionKey, VerifiedSealed, is_sealed, verify_sealed_report
from bus.trust import KeyRing
from bus.verify import ChainBook, Limits, VerifiedReport, verify_report

if TYPE_CHECKING:
    pass

# stdlib logging (not structlog) keeps this module free of any I/O framework import.
log = logging.getLogger(__name__)


@dataclass
class Ingestor:
    """Judges report records in log order.

    Args:
        keyring: accreditations under the mandate (kept current by the caller).
        chain: chain heads and report-id idempotency.
        org_of_topic: maps a topic name to the organization whose topic it is (None: not a
            report topic).
        limits: verification limits.
        timeline: mandate versions over log time (None: ``keyring`` judges every record).
    """

    keyring: KeyRing
    chain: ChainBook
    org_of_topic: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    timeline: TrustTimeline | None = None
    # This organization's X25519 keys by key id, to read restricted reports sealed to it.
    decryption_keys: dict[bytes, DecryptionKey] = field(default_factory=dict)
    # (public key, raw) pairs whose signature worker processes already verified under the one
    # rule (bus.verify.preverify_signatures); set per batch by the node, empty otherwise.
    preverified: Container[tuple[bytes, bytes]] = frozenset()

    def judge(self, ref: RecordRef, raw: bytes | None, org: str | None) -> Outcome:
        """Verify one record and extend its observer's chain; never raises on bad input."""
        value = raw or b""
        if org is None:
            return Quarantined(ref, Reason.WRONG_TOPIC.value, "not a report topic", value)
        if raw is None:
            return Quarantined(ref, Reason.MALFORMED.value, "record has no value", value)
        keyring = self.keyring if self.timeline is None else self.timeline.at(ref.log_time_ms)
        try:
            if is_sealed(raw):
                vs = verify_sealed_report(
                    raw,
                    expected_org=org,
                    keyring=keyring,
                    reference_ms=ref.log_time_ms,
                    limits=self.limits,
                    keys=self.decryption_keys,
                )
                self.chain.accept_link(vs.sealed, vs.envelope_digest)
                return AcceptedSealed(ref, vs, raw)
            vr = verify_report(
                raw,
                expected_org=org,
                keyring=keyring,
                reference_ms=ref.log_time_ms,
                limits=self.limits,
                preverified=self.preverified,
            )
            self.chain.accept(vr)
        except VerificationError as exc:
            return Quarantined(ref, exc.reason.value, exc.message, value)
        except Exception as exc:  # a node never crashes on input (see Reason.INTERNAL_ERROR)
            log.exception(
                "verifier_internal_error",
                extra={"topic": ref.topic, "partition": ref.partition, "offset": ref.offset},
            )
            return Quarantined(ref, Reason.INTERNAL_ERROR.value, repr(exc), value)
        return Accepted(ref, vr, raw)


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Where a Kafka record sits in the log, plus the broker's timestamp and record key."""

    topic: str
    partition: int
    offset: int
    log_time_ms: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A record that verified and extended its chain."""

    ref: RecordRef
    verified: VerifiedReport
    raw: bytes


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A rejected record, kept with its reason code and raw bytes."""

    ref: RecordRef
    reason: str
    detail: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class AcceptedSealed:
    """A restricted report that verified and extended its chain (readable or not here)."""

    ref: RecordRef
    verified: VerifiedSealed
    raw: bytes


Outcome = Accepted | Quarantined | AcceptedSealed
