"""A node's provisional verdicts: record bytes -> accepted or quarantined, the moment it reads them.

Pure glue of :func:`bus.verify.verify_report` and the per-observer :class:`~bus.verify.ChainBook`
(follow-up policies run on accepted reports in :class:`bus.policy.PolicyEngine`). It never
raises on input: every record ends as exactly one :class:`~bus.store.node.Accepted` or
:class:`~bus.store.node.Quarantined` outcome.

These verdicts are **provisional**: the final ones are made in the sealed order on the sealed
clock *t_e* (:mod:`bus.judge`), and the node's sealer compares the two. A provisional verdict is
the node's best guess of the final one, from what the node knows when it reads the record:

* **Trust:** the key ring of the newest mandate version the node has applied, with the registry
  as read so far (:attr:`bus.lifecycle.TrustTimeline.current`, kept in :attr:`Ingestor.keyring`
  by the caller).
* **Clock:** the node's own clock when it judges (:attr:`Ingestor.clock`), which stands for the
  *t_e* of the epoch the record will be sealed in: ``signed_at <= now + max_clock_skew_ms``
  (``clock_skew``, :class:`bus.verify.Limits`).
* **No delivery lag.** The maximum delivery lag (``signed_at >= t_e - lag``, the mandate's) is
  the final judge's alone: against this node's clock it would refuse every record a node reads
  long after it was logged (a node joining late, catching up on a backlog, or in archive
  mode), and each of those refusals would then change at finality. A report beyond the lag is
  accepted here and ``delivery_lag`` finally (the sealer logs the change).

The broker's timestamp of a record (:attr:`RecordRef.log_time_ms`) decides none of this: a
hostile operator sets it (CreateTime topics, or the broker's clock). It is kept as information
only (when the broker says it appended the record).

A quarantined outcome never carries more of a record than a stored row may keep
(:func:`kept_of`): a value larger than the record limit is judged ``oversized`` on its length
alone, before anything reads it, and goes on as its size, its SHA-256 and its first
:data:`QUARANTINE_PREFIX_BYTES` (README "Quarantine limits and quotas").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Final

from bus.errors import Reason, VerificationError
from bus.model import sha256, unvalidated
from bus.sealed import DecryptionKey, VerifiedSealed, is_sealed, verify_sealed_report
from bus.trust import KeyRing
from bus.verify import ChainBook, Limits, VerifiedReport, verify_report

# stdlib logging (not structlog) keeps this module free of any I/O framework import.
log = logging.getLogger(__name__)

# What a quarantine row keeps of a record larger than its limit: the first 4 KiB, enough to
# show what it was (an envelope's first fields, the start of a text or of a file's header);
# its exact size and SHA-256 stand for the rest. A constant of the core, so every node keeps
# the same bytes of the same record.
QUARANTINE_PREFIX_BYTES: Final = 4096


def kept_of(value: bytes, limit: int) -> bytes:
    """What a quarantine row keeps of a record's value: all of it when it is at most ``limit``
    bytes, else its first :data:`QUARANTINE_PREFIX_BYTES` (and never more than ``limit``).

    A slice of at most that many bytes is the only copy made of a larger value.
    """
    if len(value) <= limit:
        return value
    return value[: min(QUARANTINE_PREFIX_BYTES, limit)]


def wall_clock_ms() -> int:
    """This machine's clock, in milliseconds since the epoch (a node's "now")."""
    return time.time_ns() // 1_000_000


@dataclass
class Ingestor:
    """Judges report records as they are read (module docstring: provisional verdicts).

    Args:
        keyring: the trust the node knows now: the newest applied mandate version and the
            registry as read (kept current by the caller, e.g. from
            :attr:`bus.lifecycle.TrustTimeline.current` before each batch).
        chain: chain heads and report-id idempotency.
        org_of_topic: maps a topic name to the organization whose topic it is (None: not a
            report topic).
        limits: verification limits.
        clock: "now" in milliseconds, read once per record when it is judged (default: this
            machine's clock).
    """

    keyring: KeyRing
    chain: ChainBook
    org_of_topic: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    # This organization's X25519 keys by key id, to read restricted reports sealed to it.
    decryption_keys: dict[bytes, DecryptionKey] = field(default_factory=dict)
    # (public key, raw) pairs whose signature worker processes already verified under the one
    # rule (bus.verify.preverify_signatures); set per batch by the node, empty otherwise.
    preverified: Container[tuple[bytes, bytes]] = frozenset()
    clock: Callable[[], int] = wall_clock_ms

    def judge(self, ref: RecordRef, raw: bytes | None, org: str | None) -> Outcome:
        """Verify one record and extend its observer's chain; never raises on bad input."""
        value = raw or b""
        limit = self.limits.max_record_bytes
        if org is None:
            return Quarantined.bounded(ref, Reason.WRONG_TOPIC, "not a report topic", value, limit)
        if raw is None:
            return Quarantined.bounded(ref, Reason.MALFORMED, "record has no value", value, limit)
        if len(raw) > limit:
            # On its length alone, before any parsing, preverified lookup or copy: the value
            # the consumer decompressed goes no further than its size, digest and prefix.
            detail = f"{len(raw)} bytes > limit {limit}"
            return Quarantined.bounded(ref, Reason.OVERSIZED, detail, raw, limit)
        keyring, now = self.keyring, self.clock()
        try:
            if is_sealed(raw):
                vs = verify_sealed_report(
                    raw,
                    expected_org=org,
                    keyring=keyring,
                    reference_ms=now,
                    limits=self.limits,
                    keys=self.decryption_keys,
                )
                self.chain.accept_link(vs.sealed, vs.envelope_digest)
                return AcceptedSealed(ref, vs, raw)
            vr = verify_report(
                raw,
                expected_org=org,
                keyring=keyring,
                reference_ms=now,
                limits=self.limits,
                preverified=self.preverified,
            )
            self.chain.accept(vr)
        except VerificationError as exc:
            return Quarantined.bounded(ref, exc.reason, exc.message, raw, limit)
        except Exception as exc:  # a node never crashes on input (see Reason.INTERNAL_ERROR)
            log.exception(
                "verifier_internal_error",
                extra={"topic": ref.topic, "partition": ref.partition, "offset": ref.offset},
            )
            return Quarantined.bounded(ref, Reason.INTERNAL_ERROR, repr(exc), raw, limit)
        return _new_accepted(ref, vr, raw)


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Where a Kafka record sits in the log, plus the broker's timestamp and record key.

    ``log_time_ms`` is information only (when the broker says it appended the record, stored
    as such): the operator sets it, so no node verdict reads it.
    """

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
    """A rejected record, kept with its reason code, what is kept of its bytes, its size and
    its SHA-256.

    ``raw`` is what a quarantine row keeps of the value (:func:`kept_of`: all of it within the
    record limit, else its prefix); ``size`` and ``sha256`` describe the whole value. Built with
    ``size``/``sha256`` left None, ``raw`` is the whole value and they are derived from it
    (:attr:`value_size`, :attr:`value_sha256`); stores bound such an outcome themselves.
    """

    ref: RecordRef
    reason: str
    detail: str
    raw: bytes
    size: int | None = None
    sha256: bytes | None = None

    @classmethod
    def bounded(
        cls, ref: RecordRef, reason: Reason | str, detail: str, value: bytes, limit: int
    ) -> Quarantined:
        """The outcome for ``value`` keeping at most :func:`kept_of` of it (its exact size and
        SHA-256 computed over the whole value, which is read once and never copied)."""
        code = reason.value if isinstance(reason, Reason) else reason
        return cls(ref, code, detail, kept_of(value, limit), len(value), sha256(value))

    @property
    def value_size(self) -> int:
        """Size of the whole record value in bytes."""
        return len(self.raw) if self.size is None else self.size

    @property
    def value_sha256(self) -> bytes:
        """SHA-256 of the whole record value."""
        return sha256(self.raw) if self.sha256 is None else self.sha256


@dataclass(frozen=True, slots=True)
class AcceptedSealed:
    """A restricted report that verified and extended its chain (readable or not here)."""

    ref: RecordRef
    verified: VerifiedSealed
    raw: bytes


Outcome = Accepted | Quarantined | AcceptedSealed

# Built for every record read: straight-line constructors that only store the fields
# (bus.model.unvalidated). Neither class has a __post_init__, so the objects are exactly
# those of their own __init__, at about half the cost.
record_ref: Callable[[str, int, int, int, bytes | None], RecordRef] = unvalidated(RecordRef)
"""``RecordRef(topic, partition, offset, log_time_ms, key)``, every argument positional."""
_new_accepted: Callable[[RecordRef, VerifiedReport, bytes], Accepted] = unvalidated(Accepted)
