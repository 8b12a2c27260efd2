"""Thin Kafka adapter (aiokafka): topic names, producers, topic creation, replay to the end.

Only this module (and the nodes) import aiokafka. Foreign errors are wrapped in
:class:`~bus.errors.TransportError` with ``retriable`` taken from aiokafka's own flag.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    LeaderNotAvailableError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.helpers import create_ssl_context

from bus.attachment import TOPIC_MAX_MESSAGE_BYTES
from bus.errors import ConfigError, TransportError
from bus.model import (
    PAYLOAD_ENCRYPTION_KEY,
    PAYLOAD_REVOCATION,
    Accreditation,
    EncryptionKey,
    Envelope,
    Revocation,
)

log = structlog.get_logger(__name__)

CLOUDEVENTS_SPEC: Final = "1.0"
REPORT_EVENT_TYPE: Final = "org.obus.report.v1"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under a configurable prefix (default ``obus.``)."""

    prefix: str = "obus."

    def reports(self, org: str) -> str:
        """Topic carrying one organization's observers' reports."""
        return f"{self.prefix}reports.{org}"

    def decisions(self, org: str) -> str:
        """Topic carrying one organization's published decisions."""
        return f"{self.prefix}decisions.{org}"

    @property
    def registry(self) -> str:
        """Compacted topic of accreditations and revocations (one partition: one order)."""
        return f"{self.prefix}registry"

    @property
    def mandate(self) -> str:
        """Compacted topic of mandate versions."""
        return f"{self.prefix}mandate"

    @property
    def checkpoints(self) -> str:
        """Signed Merkle checkpoints."""
        return f"{self.prefix}checkpoints"

    @property
    def statements(self) -> str:
        """Joint statements: drafts and co-signatures (one partition: one order)."""
        return f"{self.prefix}statements"

    @property
    def decisions_pattern(self) -> str:
        """Regex matching every organization's decisions topic."""
        return "^" + re.escape(f"{self.prefix}decisions.") + r"[a-z0-9_-]+$"

    def org_of_decision_topic(self, topic: str) -> str | None:
        """Organization id of a decisions topic, or None for any other topic."""
        head = f"{self.prefix}decisions."
        return topic[len(head) :] if topic.startswith(head) else None

    @property
    def reports_pattern(self) -> str:
        """Regex matching every organization's report topic."""
        return "^" + re.escape(f"{self.prefix}reports.") + r"[a-z0-9_-]+$"

    def org_of_report_topic(self, topic: str) -> str | None:
        """Organization id of a report topic, or None for any other topic."""
        head = f"{self.prefix}reports."
        return topic[len(head) :] if topic.startswith(head) else None

    def attachments(self, org: str) -> str:
        """Topic carrying the attachment chunks of one organization's observers."""
        return f"{self.prefix}attachments.{org}"

    @property
    def attachments_pattern(self) -> str:
        """Regex matching every organization's attachments topic."""
        return "^" + re.escape(f"{self.prefix}attachments.") + r"[a-z0-9_-]+$"


SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# SCRAM keeps passwords off the wire and out of the brokers (salted keys in the metadata log);
# PLAIN is accepted for brokers that only offer it, and should only ever run over TLS.
SASL_MECHANISMS: Final = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How a client authenticates to the brokers; ``None`` wherever it is accepted: PLAINTEXT.

    Args:
        protocol: one of :data:`SECURITY_PROTOCOLS`.
        sasl_mechanism: one of :data:`SASL_MECHANISMS` (SASL_* protocols only).
        username: the SASL principal, e.g. the organization id (SASL_* only).
        password: its password (SASL_* only; never shown by ``repr``).
        ssl_cafile: CA bundle that signed the brokers' certificates (SSL, SASL_SSL).
        ssl_certfile: client certificate for mutual TLS (SSL only), with ``ssl_keyfile``.
        ssl_keyfile: its private key.

    Raises:
        ConfigError: a missing or contradictory setting (the message names the fix).
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                "security_protocol",
                f"{self.protocol!r} is unknown",
                f"use one of {SECURITY_PROTOCOLS}",
            )
        sasl = self.protocol.startswith("SASL_")
        if sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    "sasl_mechanism",
                    f"{self.sasl_mechanism!r} is not supported",
                    f"use one of {SASL_MECHANISMS}",
                )
            if not self.username or not self.password:
                raise ConfigError(
                    "sasl_username",
                    f"{self.protocol} needs a username and a password",
                    "give --sasl-username and --sasl-password-file (or OBUS_SASL_PASSWORD)",
                )
        elif self.sasl_mechanism or self.username or self.password:
            raise ConfigError(
                "security_protocol",
                f"SASL credentials given but the protocol is {self.protocol}",
                "use SASL_PLAINTEXT or SASL_SSL",
            )
        if not self.protocol.endswith("SSL") and (
            self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        ):
            raise ConfigError(
                "ssl_cafile",
                f"TLS files given but the protocol is {self.protocol}",
                "use SASL_SSL or SSL",
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError(
                "ssl_certfile", "a client certificate needs its key and vice versa", "give both"
            )

    def options(self) -> dict[str, Any]:
        """aiokafka client keyword arguments (security_protocol, sasl_*, ssl_context)."""
        opts: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.startswith("SASL_"):
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.username
            opts["sasl_plain_password"] = self.password
        if self.protocol.endswith("SSL"):
            opts["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return opts


def client_options(bootstrap: str, security: KafkaSecurity | None = None) -> dict[str, Any]:
    """Keyword arguments every aiokafka client of this process is built with."""
    return {"bootstrap_servers": bootstrap, **(security.options() if security else {})}


def report_headers(report_id: str, org: str, observer_id: str) -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers for generic tooling. Readers never trust headers."""
    return [
        ("ce_specversion", CLOUDEVENTS_SPEC.encode()),
        ("ce_id", report_id.encode()),
        ("ce_type", REPORT_EVENT_TYPE.encode()),
        ("ce_source", f"/obus/{org}/{observer_id}".encode()),
        ("content-type", b"application/protobuf"),
    ]


def registry_key(envelope_payload_type: str, key_id: bytes) -> bytes:
    """Record key on the compacted registry: one slot per (kind, key id).

    Accreditations and revocations of one key live in different slots, so compaction can never
    let a revocation erase the accreditation it refers to (or the reverse).
    """
    kind = "rev" if envelope_payload_type == PAYLOAD_REVOCATION else "acc"
    if envelope_payload_type == PAYLOAD_ENCRYPTION_KEY:
        kind = "enc"  # an organization's X25519 key (restricted reports), keyed by its key id
    return f"{kind}:{key_id.hex()}".encode()


def registry_record_key(raw: bytes) -> bytes:
    """The compaction key of a registry envelope (see :func:`registry_key`).

    Raises:
        VerificationError: the bytes are not an accreditation or revocation envelope.
    """
    env = Envelope.decode(raw)
    if env.payload_type == PAYLOAD_REVOCATION:
        return registry_key(env.payload_type, Revocation.decode(env.payload).key_id)
    if env.payload_type == PAYLOAD_ENCRYPTION_KEY:
        return registry_key(env.payload_type, EncryptionKey.decode(env.payload).key_id)
    return registry_key(env.payload_type, Accreditation.decode(env.payload).key_id)


def wrap(exc: BaseException, what: str) -> TransportError:
    """A TransportError for a foreign exception, keeping aiokafka's retriable flag."""
    retriable = bool(getattr(exc, "retriable", False))
    return TransportError(f"{what}: {exc!r}", retriable=retriable)


# How long admin and offset look-ups retry retriable errors (a dead or frozen broker that the
# bootstrap list or a stale metadata snapshot still names). The controller fences a silent
# broker after broker.session.timeout.ms (Kafka default 9 s), after which metadata stops
# naming it; 60 s covers that several times and still bounds every call.
RETRY_S: Final = 60.0
_T = TypeVar("_T")


async def retrying(what: str, op: Callable[[], Awaitable[_T]], *, within_s: float = RETRY_S) -> _T:
    """Run ``op`` again while it fails with a retriable Kafka error, for at most ``within_s``.

    Raises:
        TransportError: a non-retriable error, or a retriable one after ``within_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    delay = 0.2
    while True:
        try:
            return await op()
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or loop.time() + delay > deadline:
                raise wrap(exc, what) from exc
            log.warning("kafka_retry", what=what, error=repr(exc), delay_s=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def reliable_producer(
    bootstrap: str, *, security: KafkaSecurity | None = None, **overrides: Any
) -> AIOKafkaProducer:
    """An idempotent producer with acks=all: no loss, no duplicates from its own retries."""
    options: dict[str, Any] = {
        **client_options(bootstrap, security),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "request_timeout_ms": 30_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partitions and topic-level configs."""

    name: str
    partitions: int
    configs: tuple[tuple[str, str], ...] = ()


# The broker stamps every record with its own append time: the one clock all readers share,
# used for clock-skew checks so every node and every replay judges a record identically.
LOG_APPEND_TIME: Final = ("message.timestamp.type", "LogAppendTime")


# Every topic keeps every record, whatever the broker defaults (log.retention.hours=168, i.e.
# 7 days, on a stock broker): auditors replay each log from offset 0 and verify the hash chains
# from seq 1, witnesses hash every record into their Merkle trees, and a node that joins late
# must read everything. Compacted topics (registry, mandate) carry them too: harmless, and it
# says explicitly that compaction is their only cleanup.
KEEP_FOREVER: Final = (("retention.ms", "-1"), ("retention.bytes", "-1"))

# Attachment chunks (bus/attachment.py): every record up to 1 MiB, whatever the broker default.
ATTACHMENT_TOPIC_CONFIGS: Final = (
    LOG_APPEND_TIME,
    ("max.message.bytes", str(TOPIC_MAX_MESSAGE_BYTES)),
    *KEEP_FOREVER,
)


def standard_topics(topics: Topics, orgs: Iterable[str], partitions: int = 3) -> list[TopicSpec]:
    """The topics of DESIGN section 4 for the given organizations.

    Every one is created with ``retention.ms=-1`` and ``retention.bytes=-1`` (:data:`KEEP_FOREVER`):
    the broker never deletes a record of them.
    """
    plain = (LOG_APPEND_TIME, *KEEP_FOREVER)
    specs: list[TopicSpec] = []
    for org in orgs:
        specs.append(TopicSpec(topics.reports(org), partitions, plain))
        specs.append(TopicSpec(topics.decisions(org), 1, plain))
        specs.append(TopicSpec(topics.attachments(org), partitions, ATTACHMENT_TOPIC_CONFIGS))
    compacted = (("cleanup.policy", "compact"), *plain)
    specs.append(TopicSpec(topics.registry, 1, compacted))
    specs.append(TopicSpec(topics.mandate, 1, compacted))
    specs.append(TopicSpec(topics.checkpoints, 1, plain))
    specs.append(TopicSpec(topics.statements, 1, plain))
    return specs


async def ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    replication: int = 1,
    *,
    security: KafkaSecurity | None = None,
) -> None:
    """Create missing topics; existing ones are left as they are (their configs too).

    Returns once every partition of ``specs`` has a leader.

    Raises:
        TransportError: the brokers refused to create a topic (the message names the topic and
            the broker's error; ``retriable`` False: e.g. a replication factor above the number
            of brokers, or no CREATE permission), partitions still had no leader after
            :data:`RETRY_S`, or the brokers did not answer (retriable errors are retried for
            :data:`RETRY_S`).
    """
    await retrying(
        "creating topics", lambda: _ensure_topics(bootstrap, specs, replication, security)
    )


# How long one attempt of ensure_topics waits for every partition to have a leader.
LEADER_WAIT_S: Final = 10.0


async def _ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    replication: int,
    security: KafkaSecurity | None,
) -> None:
    admin = AIOKafkaAdminClient(**client_options(bootstrap, security))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [
            NewTopic(s.name, s.partitions, replication, topic_configs=dict(s.configs))
            for s in specs
            if s.name not in existing
        ]
        if new:
            response = await admin.create_topics(new)
            created = _created_topics(response)
            if created:
                log.info("topics_created", topics=created)
        # Producing before every partition has a leader only earns NotLeaderForPartition
        # retries; wait (bounded) until the metadata shows a leader everywhere.
        names = [s.name for s in specs]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_WAIT_S
        while True:
            described = await admin.describe_topics(names)
            leaderless: list[str] = []
            for t in described:
                if not t["partitions"]:
                    leaderless.append(f"{t['topic']} (no partitions in the metadata yet)")
                leaderless += [
                    f"{t['topic']}[{p['partition']}]" for p in t["partitions"] if p["leader"] < 0
                ]
            if not leaderless:
                break
            if loop.time() >= deadline:
                # retriable: retrying() tries again until RETRY_S, then raises TransportError
                raise LeaderNotAvailableError(
                    f"no leader after {LEADER_WAIT_S:g} s for {', '.join(leaderless)}"
                )
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def _created_topics(response: Any) -> list[str]:
    """Names the CreateTopics response reports as created.

    aiokafka returns the broker's per-topic error codes instead of raising them. A topic that
    already exists (created meanwhile by another node) is fine.

    Raises:
        KafkaError: a retriable per-topic error (``retrying`` tries again).
        TransportError: any other per-topic error, naming the topics and the broker's errors.
    """
    created: list[str] = []
    refused: list[str] = []
    transient: list[tuple[type[KafkaError], str]] = []
    for topic, code, *rest in response.topic_errors:
        if code == 0:
            created.append(topic)
            continue
        if code == TopicAlreadyExistsError.errno:  # 36: created meanwhile
            continue
        error = for_code(code)
        detail = f"{topic}: {error.__name__} (error {code})"
        if rest and rest[0]:
            detail += f": {rest[0]}"
        if error.retriable:
            transient.append((error, detail))
        else:
            refused.append(detail)
    if refused:
        raise TransportError(f"the brokers refused to create {'; '.join(refused)}", retriable=False)
    if transient:
        raise transient[0][0](f"creating {'; '.join(d for _, d in transient)}")
    return created


async def topic_partitions(
    bootstrap: str,
    topic_names: Sequence[str] = (),
    pattern: str | None = None,
    *,
    security: KafkaSecurity | None = None,
) -> list[TopicPartition]:
    """Every partition of the named topics and of the existing topics matching pattern.

    Raises:
        TransportError: see :func:`ensure_topics`.
    """

    async def describe() -> list[TopicPartition]:
        admin = AIOKafkaAdminClient(**client_options(bootstrap, security))
        try:
            await admin.start()
            return await partitions_of(admin, topic_names, pattern)
        finally:
            await admin.close()

    return await retrying("describing topics", describe)


async def partitions_of(
    admin: AIOKafkaAdminClient, topic_names: Sequence[str] = (), pattern: str | None = None
) -> list[TopicPartition]:
    """:func:`topic_partitions` through an admin client the caller keeps open (no retry).

    For callers that ask again and again (the follow-up, every second): one connection, one
    TLS handshake and one SASL login, instead of one per call.

    Raises:
        KafkaError: as aiokafka's admin client.
    """
    names = set(topic_names)
    if pattern is not None:
        rx = re.compile(pattern)
        names |= {t for t in await admin.list_topics() if rx.match(t)}
    if not names:
        return []
    described = await admin.describe_topics(sorted(names))
    return sorted(
        (TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]),
        key=lambda tp: (tp.topic, tp.partition),
    )


# Read-ahead of a replay (auditor, exports): per partition and per fetch request.
REPLAY_PARTITION_FETCH_BYTES: Final = 256 * 1024
REPLAY_FETCH_BYTES: Final = 4 * 1024 * 1024

# A read up to the end offsets gives up when, for this long, no partition it still reads moved
# (a fetch neither returned records nor advanced a position): a broker that answers every fetch
# with nothing must not hang a replay forever. Generous, since a leader election after a broker
# failure stalls fetches for up to broker.session.timeout.ms (9 s) plus the metadata refresh.
READ_STALL_S: Final = 60.0


async def read_until(
    consumer: AIOKafkaConsumer,
    ends: Mapping[TopicPartition, int],
    *,
    stall_s: float = READ_STALL_S,
    max_records: int = 2000,
) -> AsyncIterator[Any]:
    """Yield the records of ``ends``' partitions from their current positions up to the end
    offsets (exclusive); records of one partition come in offset order.

    The consumer must have the partitions assigned and positioned (seek or seek_to_beginning);
    it should be built with ``auto_offset_reset="earliest"`` so that records deleted under the
    read (retention, delete-records) move it to the new log start, not past what is left.
    A partition is done when its position reaches its end offset, whether records or a log start
    offset moved it there (all records below the end deleted: nothing to return); finished
    partitions are paused.

    Raises:
        TransportError: no progress for ``stall_s`` (not retriable; the message names every
            unfinished topic-partition with its position and end), or a position could not be
            read within ``stall_s``.
    """
    loop = asyncio.get_running_loop()

    async def position(tp: TopicPartition) -> int:
        try:
            async with asyncio.timeout(stall_s):
                return int(await consumer.position(tp))
        except TimeoutError:
            raise TransportError(
                f"reading {tp.topic}[{tp.partition}] up to offset {ends[tp]}: no position "
                f"after {stall_s:g} s",
                retriable=True,
            ) from None

    positions: dict[TopicPartition, int] = {}
    for tp in sorted(ends):
        positions[tp] = await position(tp)
        if positions[tp] >= ends[tp]:
            consumer.pause(tp)
    remaining = {tp for tp in ends if positions[tp] < ends[tp]}
    stalled_since: float | None = None
    while remaining:
        fetched_at = loop.time()
        batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=max_records)
        for tp, records in batch.items():
            end = ends[tp]
            for rec in records:
                if rec.offset >= end:
                    break
                yield rec
        progressed = False
        for tp in sorted(remaining):
            before, now = positions[tp], await position(tp)
            if now != before:
                progressed = True
                positions[tp] = now
                # offsets skipped (no record at the old position): deleted, or compacted?
                records = batch.get(tp)
                first = records[0].offset if records else now
                if first > before:
                    await _warn_if_deleted(consumer, tp, before)
            if now >= ends[tp]:
                remaining.discard(tp)
                consumer.pause(tp)
        if progressed:
            stalled_since = None
        elif stalled_since is None:
            stalled_since = fetched_at
        elif loop.time() - stalled_since >= stall_s:
            stuck = ", ".join(
                f"{tp.topic}[{tp.partition}] at position {positions[tp]} of end {ends[tp]}"
                for tp in sorted(remaining)
            )
            raise TransportError(
                f"reading up to the end offsets made no progress for {stall_s:g} s: {stuck}",
                retriable=False,
            )


async def _warn_if_deleted(consumer: AIOKafkaConsumer, tp: TopicPartition, before: int) -> None:
    """Log when a position jumped because the records after it were deleted under the read.

    A compacted batch or a transaction marker moves a position without records too; only a log
    start offset above the old position means deleted records.
    """
    try:
        starts = await consumer.beginning_offsets([tp])
    except KafkaError as exc:
        log.warning("replay_log_start_unknown", topic=tp.topic, partition=tp.partition,
                    error=repr(exc))  # fmt: skip
        return
    if starts[tp] > before:
        log.warning(
            "replay_records_deleted_during_read", topic=tp.topic, partition=tp.partition,
            from_offset=before, log_start_offset=starts[tp],
        )  # fmt: skip


async def replay(
    bootstrap: str,
    topic_names: Sequence[str] = (),
    pattern: str | None = None,
    *,
    security: KafkaSecurity | None = None,
    stall_s: float = READ_STALL_S,
) -> AsyncIterator[Any]:
    """Yield every record of the topics from their log start up to the end offsets seen at the
    start.

    No consumer group is used: nothing is committed and nobody's position changes. Records of
    one partition come in offset order. Topics keep every record (:data:`KEEP_FOREVER`), so the
    log start is offset 0; where it is not (records deleted by retention or delete-records),
    the records below it are gone: the replay says so in a ``replay_log_start_above_zero``
    warning (topic, partition, log start offset) and returns what is left, so a reader's gap
    detection (chain seq gaps, missing offsets) is explained, not hidden.

    Raises:
        TransportError: Kafka failed, or the replay made no progress for ``stall_s``
            (see :func:`read_until`).
    """
    tps = await topic_partitions(bootstrap, topic_names, pattern, security=security)
    if not tps:
        return
    consumer = AIOKafkaConsumer(
        **client_options(bootstrap, security),
        enable_auto_commit=False,
        group_id=None,
        # records deleted under the replay: go on from the new log start, not from the end
        auto_offset_reset="earliest",
        # Bounded read-ahead: a replay of a long log must not hold megabytes per partition
        # (the defaults, 1 MiB per partition and 50 MiB per fetch, made the auditor's peak
        # memory grow with the log). Kafka still returns a record larger than these.
        max_partition_fetch_bytes=REPLAY_PARTITION_FETCH_BYTES,
        fetch_max_bytes=REPLAY_FETCH_BYTES,
    )
    try:
        await consumer.start()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            if starts[tp] > 0:
                log.warning(
                    "replay_log_start_above_zero", topic=tp.topic, partition=tp.partition,
                    log_start_offset=starts[tp], end_offset=ends[tp],
                )  # fmt: skip
        async for rec in read_until(consumer, ends, stall_s=stall_s):
            yield rec
    except KafkaError as exc:
        raise wrap(exc, "replaying topics") from exc
    finally:
        await consumer.stop()


async def end_offsets(
    bootstrap: str, pattern: str, *, security: KafkaSecurity | None = None
) -> dict[tuple[str, int], int]:
    """End offset of every partition of the topics matching pattern."""
    tps = await topic_partitions(bootstrap, pattern=pattern, security=security)
    if not tps:
        return {}

    async def read() -> dict[tuple[str, int], int]:
        consumer = AIOKafkaConsumer(**client_options(bootstrap, security), group_id=None)
        try:
            await consumer.start()
            ends = await consumer.end_offsets(tps)
            return {(tp.topic, tp.partition): o for tp, o in ends.items()}
        finally:
            await consumer.stop()

    return await retrying("reading end offsets", read)
