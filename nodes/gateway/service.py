"""An organization's ingest gateway: what it accepts from observers, what it refuses and why.

Observers send signed reports, and the attachments those reports reference; :class:`Gateway`
judges each request and answers with a :class:`Reply` saying what became of it
(:class:`Outcome`), independent of HTTP. :mod:`nodes.gateway.http` serves it (and lists the HTTP
status of every answer), :mod:`nodes.gateway.kafka` is its Kafka edge and
:mod:`nodes.gateway.store` its SQLite file.

A report, plain or restricted (a sealed report, :mod:`bus.sealed`: encrypted to chosen
organizations, which the gateway cannot read), is published (acks=all) and answered with a
signed receipt (see :mod:`bus.receipt`)
when it verifies, its observer is within its rate (a token bucket per observer) and it extends
its observer's chain; the same bytes again get the same receipt. Of a restricted report the
gateway checks what it can without decrypting: the signature over the sealed payload, the
observer's accreditation, the clear fields (mandate, zone, organization, times), the recipients'
keys (each the organization's current encryption key), the chain and the rate; the content is
its recipients' to judge, and any attachment it references is not uploaded here (the gateway
cannot see the reference). Anything else is refused with a
stable reason code of :class:`bus.errors.Reason`, or answered ``unavailable`` when Kafka did not
confirm (nothing is wrong with the input: retry). Once the mandate has ended, a new report is
refused (``mandate_expired``, naming the end): nothing more is signed or published under it.

An attachment is published when a report of this organization, already published here,
references its SHA-256 and size (README "Attachments"). No authentication is needed: the bytes
are bound by hash to a report signed by an accredited observer of this organization, so only
bytes such an observer committed to are ever published; repeating an upload is answered from
the store. The chunks go to ``<prefix>attachments.<org>``
(:func:`bus.kafka.attachments.publish_attachment`); a crash between publishing them and
recording them only means they are published again on the next upload, and nodes drop
identical chunks.

Verification is :func:`bus.verify.verify_report` with this organization as the expected one and
the gateway's clock as the reference, against the **final trust state of the organization's
node** (:mod:`nodes.gateway.trust`): the mandate version in force and the key ring the node's
final judge holds after the newest final seal, read from the node's final store
(``final_db``) and the trust topics, refreshed every ``registry_refresh_s`` and at once when a
report names a key not known yet. The mandate file only names the mandate (and, as version 1,
the root the final judge starts from: ``root``); a root rotated out accredits nothing here, and
gateways started from different mandate files judge alike. Before the first final seal the
gateway publishes nothing: reports are answered 503 ``not_sealed_yet`` (retry). The node key
must be accredited by this organization with role NODE, unrevoked, in that trust state;
``GET /v1/node`` serves the record that accredits it. The per-observer chain is checked with
:class:`~bus.verify.ChainBook` against what this gateway already published; chains are keyed by
observer id, not by key, so a report signed by the observer's new key (accredited for the same
observer id, the old one revoked) continues the chain where the old key left it. A correction
or retraction is judged there too, by the amendment rule every node applies
(:func:`bus.verify.check_amendment`) against the reports this gateway published, so an
observer learns at submission what the nodes would quarantine. The gateway holds its own
organization's chains only: a target it never published is ``amend_target_missing`` here,
including another organization's report, which the nodes name ``amend_other_org``.

Crash safety (exactly once on the topic). The gateway keeps a small SQLite file: every report it
accepted (id, digest, envelope, state, position, receipt), the chain heads, and per partition a
*watermark*. Before producing, it commits the report in state ``publishing`` together with the
new chain head (the intent); after Kafka confirms, it commits ``published`` with the position
and the signed receipt. The idempotent producer removes duplicates from its own retries, but
only within one producer session, so a report left ``publishing`` (process killed, or a send
that failed with an unknown outcome) is resolved by **reading the topic back**: every record
from the partition's watermark to the current end is hashed, and a record with the report's
exact digest is taken as the publication (its real position goes into the receipt); only a
report not found is produced again. This runs at start-up before the gateway listens, and
in-session whenever a retry meets an unresolved report. The watermark bounds the scan: it moves
up (to just past the highest confirmed offset) only at moments when no report at all is
``publishing``, so no unconfirmed record can lie below it. Assumes one gateway process per
organization (the topic's only writer, DESIGN §4).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog

from bus.attachment import CHUNK_OVERHEAD_BYTES, AttachmentLimits, check_upload, parse_hex_digest
from bus.crypto import SigningKey
from bus.errors import (
    ConfigError,
    Reason,
    SealedRootMismatchError,
    StoreError,
    TransportError,
    VerificationError,
)
from bus.kafka.client import KafkaSecurity
from bus.model import Accreditation, Mandate, Receipt, Role, check_id, sha256
from bus.receipt import ObserverHead, sign_head, sign_receipt
from bus.sealed import HPKE_INFO, VerifiedSealed, is_sealed, verify_sealed_report
from bus.topics import Topics
from bus.trust import KeyRing
from bus.verify import DEFAULT_MAX_RECORD_BYTES, ChainBook, Limits, VerifiedReport, verify_report
from nodes.gateway.kafka import GatewayKafka, Position, ProofReader, TrustReader
from nodes.gateway.proofs import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MIN_CATCH_UP_S,
    LogBrokenError,
    ProofBook,
)
from nodes.gateway.store import PUBLISHED, PUBLISHING, GatewayStore, Row
from nodes.gateway.trust import NOT_SEALED_YET, SEALED_LOG_BROKEN, SealedTrust
from nodes.runtime.files import ended_on, mandate_ended

log = structlog.get_logger(__name__)

UNAVAILABLE: Final = "unavailable"  # not a Reason: nothing wrong with the input, retry
RECEIPT_CONTENT_TYPE: Final = "application/protobuf"
JSON_CONTENT_TYPE: Final = "application/json"
# The HPKE suite of restricted reports (bus/sealed.py), as RFC 9180 names it.
HPKE_SUITE_NAME: Final = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway needs; built by the CLI, never read from the environment here.

    ``exit_after_publishes`` is fault injection for crash tests: the process exits abruptly
    (``os._exit``, like SIGKILL) right after Kafka confirmed that many publications and before
    the gateway recorded the last one, the worst moment for exactly-once.
    """

    org: str
    bootstrap: str
    db_path: Path
    mandate: Mandate
    node_key: SigningKey
    topics: Topics = field(default_factory=Topics)
    # The organization's node's final store (obus node --final-db): the gateway's trust state.
    # Required to start; None is refused by Gateway.start naming --final-db.
    final_db: Path | None = None
    # Version 1 of the mandate, the root the final judge starts from (None: ``mandate``, which
    # must then be version 1).
    root: Mandate | None = None
    limits: Limits = field(default_factory=Limits)
    host: str = "127.0.0.1"
    port: int = 8480
    max_body_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # Per observer: a burst covers a day of reports delivered after coming back online;
    # the rate covers steady work. Both far above any person's writing speed.
    rate_per_s: float = 10.0
    burst: int = 500
    # How often the trust topics and the node's final store are read for new final seals.
    registry_refresh_s: float = 1.0
    exit_after_publishes: int | None = None
    # Attachments: size limit and chunk size (bus/attachment.py).
    attachments: AttachmentLimits = field(default_factory=AttachmentLimits)
    # How the gateway authenticates to the brokers (None: PLAINTEXT); see
    # bus.kafka.client.KafkaSecurity.
    security: KafkaSecurity | None = None
    # Slow and abusive clients (nodes/gateway/http.py, README "Gateway: TLS and limits"). A
    # connection must finish a request's headers within header_timeout_s of opening (or of its
    # previous answer); a body that stops arriving for body_timeout_s is dropped. The limit
    # sits above the idle connections the gateway must hold (10,000); beyond it a connection is
    # answered 503 at once and closed.
    header_timeout_s: float = 20.0
    body_timeout_s: float = 30.0
    max_connections: int = 16_384
    # HTTPS with this PEM certificate (chain) and unencrypted PEM private key; both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Inclusion proofs (nodes/gateway/proofs.py): served at once at most, and how often the log
    # is read forward on their behalf.
    proof_max_concurrent: int = DEFAULT_MAX_CONCURRENT
    proof_min_catch_up_s: float = DEFAULT_MIN_CATCH_UP_S

    def __post_init__(self) -> None:
        if self.max_body_bytes > self.limits.max_record_bytes:
            raise ConfigError(
                "max_body_bytes",
                f"{self.max_body_bytes} exceeds the verifier's record limit",
                f"use at most {self.limits.max_record_bytes}",
            )
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ConfigError("rate", "rate_per_s must be > 0 and burst >= 1", "fix the limits")
        timeouts = {
            "--header-timeout": self.header_timeout_s,
            "--body-timeout": self.body_timeout_s,
        }
        for flag, seconds in timeouts.items():
            if not 0 < seconds < math.inf:
                raise ConfigError(flag, f"{seconds} is not a number of seconds > 0", "pass N > 0")
        if self.root is not None and self.root.mandate_id != self.mandate.mandate_id:
            raise ConfigError(
                "--root-mandate",
                f"is mandate {self.root.mandate_id!r}; the gateway runs"
                f" {self.mandate.mandate_id!r}",
                "pass version 1 of the same mandate",
            )
        if self.max_connections < 1:
            raise ConfigError(
                "--max-connections", f"{self.max_connections} is below 1", "pass N >= 1"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (
                ("--tls-cert", "--tls-key") if self.tls_key is None else ("--tls-key", "--tls-cert")
            )
            raise ConfigError(
                missing, f"{given} is given without {missing}", "give both or neither"
            )


class Outcome(enum.Enum):
    """What became of a request (:mod:`nodes.gateway.http` gives each its status)."""

    PUBLISHED = "published"  # published now
    KNOWN = "known"  # published before: the answer given then
    REFUSED = "refused"  # refused with a reason code
    UNAVAILABLE = "unavailable"  # Kafka did not confirm (or a topic is missing): retry


def error_body(reason: str, detail: str) -> bytes:
    """The JSON body of every refusal and failure: ``{"reason": code, "detail": text}``."""
    return json.dumps({"reason": reason, "detail": detail}).encode()


@dataclass(frozen=True, slots=True)
class Reply:
    """The gateway's answer to one request, independent of the web framework.

    ``body`` is a receipt, the JSON of a published attachment, or an :func:`error_body`;
    ``reason`` is the code of a refusal; ``retry_after_s`` (when not 0) says how long to wait
    before trying again.
    """

    outcome: Outcome
    body: bytes
    content_type: str = RECEIPT_CONTENT_TYPE
    reason: Reason | None = None
    retry_after_s: float = 0

    @classmethod
    def refused(cls, exc: VerificationError, retry_after_s: float = 0) -> Reply:
        """A refusal with the error's reason code."""
        body = error_body(exc.reason.value, exc.message)
        return cls(Outcome.REFUSED, body, JSON_CONTENT_TYPE, exc.reason, retry_after_s)

    @classmethod
    def unavailable(cls, detail: str, retry_after_s: float, why: str = UNAVAILABLE) -> Reply:
        """Nothing is wrong with the input, but it could not be published now; ``why`` is the
        body's reason (``unavailable``, ``not_sealed_yet``, ``sealed_log_broken``)."""
        body = error_body(why, detail)
        return cls(Outcome.UNAVAILABLE, body, JSON_CONTENT_TYPE, retry_after_s=retry_after_s)


class TokenBuckets:
    """A token bucket per key: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, float(burst)
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now_s: float) -> float:
        """Take a token; returns 0 on success, else the seconds until one is available."""
        tokens, last = self._state.get(key, (self._burst, now_s))
        tokens = min(self._burst, tokens + (now_s - last) * self._rate)
        if tokens >= 1:
            self._state[key] = (tokens - 1, now_s)
            return 0.0
        self._state[key] = (tokens, now_s)
        return (1 - tokens) / self._rate


def node_accreditation(
    trust: SealedTrust, *, org: str, key_id: bytes
) -> tuple[bytes, Accreditation]:
    """The accreditation of the node key ``key_id`` in the final trust state ``trust``.

    Returns:
        The registry record accrediting it under the mandate in force (served to observers,
        who verify it themselves) and the accreditation.

    Raises:
        ConfigError: the key is not accredited in that trust state (or by no record that
            verifies under the mandate in force: accredited only by a rotated-out root); it is
            accredited to another organization or with another role than NODE; or ``org``
            revoked it.
    """
    fix = (
        f"publish an accreditation of key {key_id.hex()} with role NODE, signed by the {org}"
        f" root key, on the registry, and wait for it to be sealed"
    )
    found = trust.accreditation_record(key_id)
    if found is None:
        raise ConfigError(
            "node key",
            f"is not accredited in the final trust state after epoch {trust.epoch}",
            fix,
        )
    raw, acc = found
    if acc.org != org or acc.role != Role.NODE:
        raise ConfigError("node key", f"accredited as {acc.org}/{acc.role.name}", fix)
    for rev in trust.keyring.revocations():
        if rev.key_id == key_id and rev.org == org:
            raise ConfigError(
                "node key",
                f"revoked by {org} (revocation serial {rev.serial}: {rev.reason!r})",
                f"use another node key: {fix}",
            )
    return raw, acc


class Gateway:
    """The gateway's logic; :class:`~nodes.gateway.kafka.GatewayKafka` connects it to Kafka and
    :func:`nodes.gateway.http.make_app` puts HTTP in front of it."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.topic = config.topics.reports(config.org)
        self.attachment_topic = config.topics.attachments(config.org)
        self.store = GatewayStore(config.db_path)
        self.root = config.root or config.mandate
        self.trust = SealedTrust(
            self.root, config.topics, config.limits, watch_key=config.node_key.key_id
        )
        self.chain = self._chain_book()
        self.buckets = TokenBuckets(config.rate_per_s, config.burst)
        self.node_accreditation: bytes = b""
        self.node: Accreditation | None = None
        self._log = log.bind(org=config.org, topic=self.topic)
        self.kafka = GatewayKafka(
            bootstrap=config.bootstrap,
            security=config.security,
            org=config.org,
            topic=self.topic,
            attachment_topic=self.attachment_topic,
            chunk_bytes=config.attachments.chunk_bytes,
            log=self._log,
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: set[str] = set()
        self._confirmed: dict[int, int] = {}
        self._published_here = 0
        self._refresher: asyncio.Task[None] | None = None
        self._attachments_ok = False
        self._attachment_locks: dict[bytes, asyncio.Lock] = {}
        self._trust_reader: TrustReader | None = None
        self._trust_broken: str | None = None  # why the trust state stopped (sealed log broken)
        self._not_ready = f"no final seal judged yet: {config.org}'s node has not sealed"
        self._recovered = False
        self.proofs = ProofBook(self.root, config.topics, self.topic, config.limits)
        self._proof_reader = ProofReader(
            bootstrap=config.bootstrap, security=config.security, book=self.proofs,
            min_interval_s=config.proof_min_catch_up_s,
        )  # fmt: skip
        self._proofs_active = 0

    @property
    def keyring(self) -> KeyRing:
        """The key ring in force (the final trust state's; empty before the first seal)."""
        return self.trust.keyring

    @property
    def mandate(self) -> Mandate:
        """The mandate version in force (version 1 before the first seal)."""
        return self.trust.mandate

    @property
    def ready(self) -> bool:
        """Whether the gateway holds a final trust state in which its node key is usable and has
        resolved what it left unpublished: only then does it publish."""
        return self.node is not None and self._recovered and self._trust_broken is None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the node's final store, read the trust state, connect, and (once a final seal
        is judged) check this node's accreditation and resolve pending reports.

        Raises:
            ConfigError: ``final_db`` is missing, unreadable or of another root; the root is not
                version 1; the node key is not accredited by this organization as NODE in the
                final trust state.
            TransportError: Kafka is unreachable.
        """
        cfg = self.config
        if cfg.final_db is None:
            raise ConfigError(
                "--final-db",
                "is missing: the gateway judges with its node's final trust state",
                "pass the final store of this organization's node (obus node --final-db FILE)",
            )
        if self.root.version != 1:
            raise ConfigError(
                "--root-mandate",
                f"the mandate file is version {self.root.version}; the final trust state is"
                " judged from version 1",
                "pass --root-mandate FILE (version 1 of this mandate)",
            )
        self._trust_reader = TrustReader(
            bootstrap=cfg.bootstrap, security=cfg.security, topics=cfg.topics, trust=self.trust,
            final_db=cfg.final_db, root=self.root,
        )  # fmt: skip
        await self._trust_reader.start()
        await self._trust_reader.catch_up()
        await self.kafka.start()
        await self._check_attachment_topic()
        if self.trust.sealed:
            self.node_accreditation, self.node = node_accreditation(
                self.trust, org=cfg.org, key_id=cfg.node_key.key_id
            )
            await self._recover_once()
        else:
            self._log.warning("gateway_waiting_for_first_seal", final_db=str(cfg.final_db))
        self._refresher = asyncio.create_task(self._refresh_trust_forever())
        self._log.info(
            "gateway_started", epoch=self.trust.epoch, accredited_keys=len(self.keyring),
            node_id=None if self.node is None else self.node.subject_id, **self.store.counts(),
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop the Kafka clients and close the store."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.kafka.stop()
        await self._proof_reader.stop()
        if self._trust_reader is not None:
            await self._trust_reader.stop()
        self.store.close()
        self._log.info("gateway_stopped", published_here=self._published_here)

    async def _check_attachment_topic(self) -> bool:
        """Whether the attachments topic exists and takes a chunk record (cached once true).

        Raises:
            ConfigError: the topic's max.message.bytes is smaller than a chunk record.
            TransportError: the broker cannot be asked.
        """
        if self._attachments_ok:
            return True
        limit = await self.kafka.attachment_message_limit()
        if limit is None:
            self._log.warning("attachments_topic_missing", attachment_topic=self.attachment_topic)
            return False
        need = self.config.attachments.chunk_bytes + CHUNK_OVERHEAD_BYTES
        if limit < need:
            raise ConfigError(
                "attachments.chunk_bytes",
                f"chunk records of up to {need} bytes exceed {self.attachment_topic}'s"
                f" max.message.bytes = {limit}",
                f"use chunks of at most {limit - CHUNK_OVERHEAD_BYTES} bytes, or raise the"
                " topic's max.message.bytes",
            )
        self._attachments_ok = True
        return True

    async def _recover_once(self) -> None:
        if not self._recovered:
            await self.recover()
            self._recovered = True

    async def refresh_trust(self) -> int:
        """Read new trust records and final seals; how many epochs were judged. Re-checks the
        node key when the trust state moved; never raises (failures are logged and leave the
        trust state where it was)."""
        assert self._trust_reader is not None
        if self._trust_broken is not None:
            return 0
        try:
            judged = await self._trust_reader.catch_up()
        except SealedRootMismatchError as exc:
            self._trust_broken = exc.message
            self._log.error("sealed_log_broken", **exc.context)
            return 0
        except (TransportError, StoreError) as exc:
            self._log.warning("trust_refresh_failed", error=repr(exc))
            return 0
        if judged:
            self._log.info(
                "trust_state_updated", epoch=self.trust.epoch, judged=judged,
                mandate_version=self.mandate.version, accredited_keys=len(self.keyring),
            )  # fmt: skip
            self._check_node_key()
            if self.node is not None:
                try:
                    await self._recover_once()
                except TransportError as exc:
                    self._log.warning("recovery_failed", error=repr(exc))
        return judged

    def _check_node_key(self) -> None:
        cfg = self.config
        try:
            self.node_accreditation, self.node = node_accreditation(
                self.trust, org=cfg.org, key_id=cfg.node_key.key_id
            )
        except ConfigError as exc:
            # logged each time the trust state moves (at most once per final seal)
            self._log.error("node_key_unusable", epoch=self.trust.epoch, error=exc.message)
            self.node_accreditation, self.node = b"", None

    async def _refresh_trust_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.registry_refresh_s)
            await self.refresh_trust()

    def not_ready(self) -> Reply:
        """The answer while the gateway does not publish (see :attr:`ready`)."""
        if self._trust_broken is not None:
            return Reply.unavailable(self._trust_broken, retry_after_s=60, why=SEALED_LOG_BROKEN)
        if not self.trust.sealed:
            return Reply.unavailable(self._not_ready, retry_after_s=5, why=NOT_SEALED_YET)
        if self.node is None:
            return Reply.unavailable(
                f"the node key of {self.config.org} is not usable in the final trust state after"
                f" epoch {self.trust.epoch}",
                retry_after_s=30,
            )
        return Reply.unavailable("resolving earlier publications", retry_after_s=1)

    # -- the request -------------------------------------------------------------------------

    async def submit(self, body: bytes) -> Reply:
        """Judge and publish one envelope (see the module docstring for the answers)."""
        digest = sha256(body)
        known = self.store.by_digest(digest)
        if known is not None and known.state == PUBLISHED and known.receipt is not None:
            return await self._again(known)
        if not self.ready:
            return self.not_ready()
        if known is not None:
            return await self._again(known)
        mandate = self.mandate
        if mandate_ended(mandate):
            return self.refuse(
                VerificationError(
                    Reason.MANDATE_EXPIRED,
                    f"mandate {mandate.mandate_id} ended on {ended_on(mandate)}: this gateway"
                    " publishes no new report",
                    not_after_ms=mandate.not_after_ms,
                )
            )
        try:
            vr = await self._verify(body)
        except VerificationError as exc:
            return self.refuse(exc)
        report = vr.report if isinstance(vr, VerifiedReport) else vr.sealed
        attachments = vr.report.attachments if isinstance(vr, VerifiedReport) else ()
        wait = self.buckets.take(report.observer_id, time.monotonic())
        if wait > 0:
            return self.refuse(
                VerificationError(Reason.RATE_LIMITED, "too many reports; slow down"),
                retry_after_s=wait,
            )
        async with self._lock(report.observer_id):
            known = self.store.by_digest(digest)
            if known is not None:  # a concurrent duplicate got here first
                return await self._again(known)
            unresolved = self.store.pending(report.observer_id)
            if unresolved and not await self._resolve(unresolved):
                return Reply.unavailable("Kafka unavailable", retry_after_s=1)
            try:
                if isinstance(vr, VerifiedReport):
                    self.chain.accept(vr)  # the chain, then the amendment rule
                else:
                    self.chain.accept_link(report, vr.envelope_digest)
            except VerificationError as exc:
                return self.refuse(exc)
            row = Row(report.report_id, report.observer_id, report.seq, digest, body,
                      PUBLISHING, None)  # fmt: skip
            plain = vr.report if isinstance(vr, VerifiedReport) else None
            try:
                self.store.record_intent(
                    row, _now_ms(), attachments,
                    amends=plain.amends if plain else "",
                    retraction=bool(plain and plain.retracts),
                )  # fmt: skip
            except StoreError:
                self.chain = self._chain_book()
                raise
            self.chain.flushed()
            receipt = await self._publish(row)
            if receipt is None:
                return Reply.unavailable("Kafka did not confirm", retry_after_s=1)
            return Reply(Outcome.PUBLISHED, receipt)

    def _chain_book(self) -> ChainBook:
        """The chains as this gateway published them, with the amendment rule judged against
        the reports it published (its organization's: see the module docstring)."""
        org = self.config.org
        return ChainBook(
            self.store.heads(),
            self.store.digest_of,
            amendments=lambda _org, _observer, rid: self.store.amendable(org, rid),
        )

    def clock(self) -> dict[str, int]:
        """``GET /v1/time``: this gateway's clock and the skew the nodes allow a report's
        ``signed_at`` ahead of the time it is judged at (so a device can check its own clock
        before signing)."""
        return {"now_ms": _now_ms(), "max_skew_ms": self.config.limits.max_clock_skew_ms}

    def observer_head(self, observer_id: str) -> Reply:
        """``GET /v1/observers/{id}/head``: the observer's chain head accepted here, signed by
        the node key (:func:`bus.receipt.sign_head`); a new device continues the chain from it.

        The head is the last report this gateway accepted for the observer (published, or
        being published: a report left ``publishing`` is published by recovery, never
        dropped), whatever key signed it: chains are keyed by (organization, observer id).
        """
        try:
            check_id("observer_id", observer_id)
        except VerificationError as exc:
            return self.refuse(exc)
        if self.node is None:
            return self.not_ready()
        head = self.store.heads_of(observer_id)
        seq, digest = (0, b"") if head is None else (head.seq, head.digest)
        key = self.config.node_key
        statement = ObserverHead(self.config.org, observer_id, seq, digest, _now_ms(), key.key_id)
        doc = sign_head(statement, key)
        return Reply(Outcome.KNOWN, json.dumps(doc).encode(), JSON_CONTENT_TYPE)

    def recipients(self) -> Reply:
        """``GET /v1/recipients``: each organization's current encryption key for restricted
        reports in the final trust state (the key nodes decrypt with), with its key id, serial
        and validity, and the HPKE suite (:mod:`bus.sealed`)."""
        if not self.trust.sealed:
            return self.not_ready()
        out = []
        for o in self.mandate.organizations:
            ek = self.keyring.encryption_key(o.org)
            if ek is None:
                continue
            out.append({
                "org": ek.org,
                "key_id_b64": base64.b64encode(ek.key_id).decode(),
                "public_key_b64": base64.b64encode(ek.public_key).decode(),
                "serial": ek.serial,
                "not_before_ms": ek.not_before_ms,
                "not_after_ms": ek.not_after_ms,
            })  # fmt: skip
        doc = {
            "suite": HPKE_SUITE_NAME,
            "info": HPKE_INFO.decode(),
            "mandate_id": self.mandate.mandate_id,
            "epoch": self.trust.epoch,
            "recipients": out,
        }
        return Reply(Outcome.KNOWN, json.dumps(doc).encode(), JSON_CONTENT_TYPE)

    async def proof(self, topic: str, partition: str, offset: str) -> Reply:
        """``GET /v1/proofs/{topic}/{partition}/{offset}``: the inclusion proof of a report
        published here against the first final seal that covers it, in the JSON form of
        :meth:`bus.seal_proof.SealProof.to_json` (:mod:`nodes.gateway.proofs`).

        Refusals: ``malformed`` (partition or offset not a decimal integer), ``wrong_topic``
        (not this organization's reports topic), ``record_missing`` (no report published here
        at that position, or the partition not read that far yet), ``record_not_sealed`` (no
        final seal covers it yet; both with ``Retry-After``); ``unavailable`` when too many
        proofs are being served or Kafka failed, ``sealed_log_broken`` when the log contradicts
        a final seal or lost a record.
        """
        try:
            p, o = _index(partition, "partition"), _index(offset, "offset")
        except VerificationError as exc:
            return self.refuse(exc)
        if topic != self.topic:
            return self.refuse(
                VerificationError(
                    Reason.WRONG_TOPIC,
                    f"this gateway proves records of {self.topic} only (obus audit prove proves"
                    " any record of the bus)",
                )
            )
        value = self.store.envelope_at(p, o)
        if value is None:
            return self.refuse(
                VerificationError(
                    Reason.RECORD_MISSING,
                    f"no report published through this gateway at {topic}[{p}]@{o}",
                )
            )
        if self._proofs_active >= self.config.proof_max_concurrent:
            return Reply.unavailable("too many proofs being served; retry", retry_after_s=1)
        self._proofs_active += 1
        try:
            await self._proof_reader.ensure(lambda: self.proofs.covered(p, o))
            proof = self.proofs.prove(p, o, value)
        except TransportError as exc:
            self._log.warning("proof_read_failed", error=repr(exc))
            return Reply.unavailable("Kafka unavailable", retry_after_s=1)
        except LogBrokenError as exc:
            self._log.error("proof_log_broken", detail=str(exc))
            return Reply.unavailable(str(exc), retry_after_s=60, why=SEALED_LOG_BROKEN)
        except VerificationError as exc:
            wait = 5 if exc.reason in (Reason.RECORD_NOT_SEALED, Reason.RECORD_MISSING) else 0
            return self.refuse(exc, retry_after_s=wait)
        finally:
            self._proofs_active -= 1
        self._log.info("proof_served", partition=p, offset=o, epoch=proof.seal().epoch)
        return Reply(Outcome.KNOWN, json.dumps(proof.to_json()).encode(), JSON_CONTENT_TYPE)

    def attachment_limit(self, hex_digest: str) -> tuple[int, Reply | None]:
        """Before reading an upload's body: how many bytes to accept, or the refusal.

        The limit is the largest size a published report gives this SHA-256 (never more than
        ``attachments.max_bytes``), so an upload nobody committed to is refused unread.
        """
        try:
            digest = parse_hex_digest(hex_digest)
        except VerificationError as exc:
            return 0, self.refuse(exc)
        answer = self.store.attachment_answer(digest)
        if answer is not None:
            return 0, Reply(Outcome.KNOWN, answer, JSON_CONTENT_TYPE)
        refs = self.store.attachment_refs(digest)
        if not refs:
            return 0, self.refuse(
                VerificationError(
                    Reason.ATTACHMENT_UNREFERENCED,
                    f"no report of {self.config.org} published here references {hex_digest}",
                )
            )
        return min(self.config.attachments.max_bytes, max(r.size for r in refs)), None

    async def put_attachment(self, hex_digest: str, body: bytes) -> Reply:
        """Check and publish one attachment (see the module docstring for the answers)."""
        max_bytes = self.config.attachments.max_bytes
        try:
            digest = parse_hex_digest(hex_digest)
            ref = check_upload(
                hex_digest, body, self.store.attachment_refs(digest), max_bytes=max_bytes
            )
        except VerificationError as exc:
            return self.refuse(exc)
        async with self._attachment_locks.setdefault(digest, asyncio.Lock()):
            answer = self.store.attachment_answer(digest)
            if answer is not None:
                return Reply(Outcome.KNOWN, answer, JSON_CONTENT_TYPE)
            if not await self._check_attachment_topic():
                return Reply.unavailable(f"{self.attachment_topic} does not exist", retry_after_s=5)
            try:
                # As for reports: never wrap in a timeout (the producer's own timeouts decide).
                where = await self.kafka.publish_attachment(body)
            except TransportError as exc:
                self._log.warning("attachment_publish_failed", sha256=hex_digest, error=repr(exc))
                return Reply.unavailable("Kafka did not confirm", retry_after_s=1)
            doc = {
                "sha256": hex_digest, "size": len(body), "media_type": ref.media_type,
                "topic": where.topic, "partition": where.partition, "chunks": where.chunks,
                "first_offset": where.first_offset, "last_offset": where.last_offset,
            }  # fmt: skip
            answer = json.dumps(doc).encode()
            self.store.record_attachment(digest, len(body), answer, _now_ms())
            self._log.info("attachment_published", **doc)
            return Reply(Outcome.PUBLISHED, answer, JSON_CONTENT_TYPE)

    async def _verify(self, body: bytes) -> VerifiedReport | VerifiedSealed:
        if len(body) > self.config.max_body_bytes:
            raise VerificationError(
                Reason.OVERSIZED, f"{len(body)} bytes > limit {self.config.max_body_bytes}"
            )
        for attempt in (1, 2):
            try:
                if is_sealed(body):  # restricted: the clear fields and signature, no content
                    return verify_sealed_report(
                        body, expected_org=self.config.org, keyring=self.keyring,
                        reference_ms=_now_ms(), limits=self.config.limits,
                    )  # fmt: skip
                return verify_report(
                    body,
                    expected_org=self.config.org,
                    keyring=self.keyring,
                    reference_ms=_now_ms(),
                    limits=self.config.limits,
                )
            except VerificationError as exc:
                if exc.reason is not Reason.UNKNOWN_KEY or attempt == 2:
                    raise
                if not await self.refresh_trust():  # maybe sealed a moment ago
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def refuse(self, exc: VerificationError, retry_after_s: float = 0) -> Reply:
        """The refusal for a verification error (logged with its reason)."""
        self._log.info("report_refused", reason=exc.reason.value, detail=exc.message)
        return Reply.refused(exc, retry_after_s)

    async def _again(self, row: Row) -> Reply:
        if row.state == PUBLISHED and row.receipt is not None:
            self._log.info("report_duplicate", report_id=row.report_id, observer_id=row.observer_id)
            return Reply(Outcome.KNOWN, row.receipt)
        async with self._lock(row.observer_id):
            fresh = self.store.by_digest(row.digest)
            if fresh is not None and fresh.state == PUBLISHED and fresh.receipt is not None:
                return Reply(Outcome.KNOWN, fresh.receipt)
            if not await self._resolve(self.store.pending(row.observer_id)):
                return Reply.unavailable("Kafka unavailable", retry_after_s=1)
            fresh = self.store.by_digest(row.digest)
            assert fresh is not None and fresh.receipt is not None
            return Reply(Outcome.KNOWN, fresh.receipt)

    def _lock(self, observer_id: str) -> asyncio.Lock:
        return self._locks.setdefault(observer_id, asyncio.Lock())

    # -- publishing ----------------------------------------------------------------------------

    async def _publish(self, row: Row) -> bytes | None:
        """Produce, then record the publication; None when Kafka did not confirm."""
        self._inflight.add(row.report_id)
        try:
            # Never wrap this await in a timeout: cancelling it would not cancel the batch,
            # and a later re-publish could double it. The producer's own timeouts decide.
            at = await self.kafka.publish_report(
                row.envelope, report_id=row.report_id, observer_id=row.observer_id
            )
        except TransportError as exc:
            self._log.warning("publish_failed", report_id=row.report_id, error=repr(exc))
            return None
        finally:
            self._inflight.discard(row.report_id)
        self._published_here += 1
        if self.config.exit_after_publishes == self._published_here:
            self._log.warning("fault_injection_exit", report_id=row.report_id)
            os._exit(86)
        return self._record(row, at)

    def _record(self, row: Row, at: Position) -> bytes:
        assert self.node is not None
        receipt = sign_receipt(
            Receipt(
                report_id=row.report_id,
                envelope_digest=row.digest,
                topic=self.topic,
                partition=at.partition,
                offset=at.offset,
                logged_at_ms=max(at.logged_at_ms, 0),
                issued_at_ms=_now_ms(),
                org=self.config.org,
                node_id=self.node.subject_id,
                node_key_id=self.config.node_key.key_id,
                observer_id=row.observer_id,
                seq=row.seq,
                mandate_id=self.config.mandate.mandate_id,
            ),
            self.config.node_key,
        )
        self._confirmed[at.partition] = max(self._confirmed.get(at.partition, -1), at.offset)
        self.store.mark_published(row.report_id, at.partition, at.offset, receipt, self._confirmed)
        self._log.info(
            "report_published", report_id=row.report_id, observer_id=row.observer_id,
            seq=row.seq, partition=at.partition, offset=at.offset,
        )  # fmt: skip
        return receipt

    # -- recovery ------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Resolve every report left ``publishing``, then raise the watermarks to the end.

        Raises:
            TransportError: Kafka is unreachable (the gateway must not serve then).
        """
        pending = self.store.pending()
        if pending and not await self._resolve(pending):
            raise TransportError(
                "recovering: could not resolve pending publications", retriable=False
            )
        if not self.store.pending():
            self.store.set_watermarks(await self.kafka.end_offsets())

    async def _resolve(self, rows: list[Row]) -> bool:
        """Find each row on the topic (by digest) or produce it again; False on Kafka trouble."""
        rows = [r for r in rows if r.report_id not in self._inflight]
        if not rows:
            return True
        try:
            found = await self._scan({r.digest for r in rows})
        except TransportError as exc:
            self._log.warning("resolve_scan_failed", error=repr(exc))
            return False
        for r in rows:
            if r.digest in found:
                at = found[r.digest]
                self._log.warning(
                    "pending_found_on_topic", report_id=r.report_id, partition=at.partition,
                    offset=at.offset,
                )  # fmt: skip
                self._record(r, at)
            else:
                self._log.warning("pending_not_on_topic_republishing", report_id=r.report_id)
                if await self._publish(r) is None:
                    return False
        return True

    async def _scan(self, digests: set[bytes]) -> dict[bytes, Position]:
        """Where the records with these digests lie on the topic, reading from the watermarks.

        Raises:
            TransportError: see :meth:`~nodes.gateway.kafka.GatewayKafka.find`.
        """
        return await self.kafka.find(digests, self.store.watermarks())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _index(text: str, name: str) -> int:
    """A partition or offset from a URL path: ASCII decimal digits, below 2^63.

    Raises:
        VerificationError: ``malformed``.
    """
    if not (text.isascii() and text.isdecimal() and len(text) <= 19) or int(text) >= 2**63:
        raise VerificationError(Reason.MALFORMED, f"{name} must be a decimal integer, not"
                                f" {text[:30]!r}")  # fmt: skip
    return int(text)
