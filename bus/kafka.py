"""Thin Kafka adapter (aiokafka): topic names, producers, topic creation, replay to the end.

Only this module (and the nodes) import aiokafka. Foreign errors are wrapped in
:class:`~bus.errors.TransportError` with ``retriable`` taken from aiokafka's own flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bus.errors import TransportError
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


def reliable_producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer with acks=all: no loss, no duplicates from its own retries."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
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


def standard_topics(topics: Topics, orgs: Iterable[str], partitions: int = 3) -> list[TopicSpec]:
    """The topics of DESIGN section 4 for the given organizations."""
    specs: list[TopicSpec] = []
    for org in orgs:
        specs.append(TopicSpec(topics.reports(org), partitions, (LOG_APPEND_TIME,)))
        specs.append(TopicSpec(topics.decisions(org), 1, (LOG_APPEND_TIME,)))
    compacted = (("cleanup.policy", "compact"), LOG_APPEND_TIME)
    specs.append(TopicSpec(topics.registry, 1, compacted))
    specs.append(TopicSpec(topics.mandate, 1, compacted))
    specs.append(TopicSpec(topics.checkpoints, 1, (LOG_APPEND_TIME,)))
    specs.append(TopicSpec(topics.statements, 1, (LOG_APPEND_TIME,)))
    return specs


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], replication: int = 1) -> None:
    """Create missing topics; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [
            NewTopic(s.name, s.partitions, replication, topic_configs=dict(s.configs))
            for s in specs
            if s.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile: fine
                await admin.create_topics(new)
            log.info("topics_created", topics=[t.name for t in new])
        # Producing before every partition has a leader only earns NotLeaderForPartition
        # retries; wait (bounded) until the metadata shows a leader everywhere.
        names = [s.name for s in specs]
        for _ in range(100):
            described = await admin.describe_topics(names)
            if all(p["leader"] >= 0 for t in described for p in t["partitions"]) and all(
                t["partitions"] for t in described
            ):
                break
            await asyncio.sleep(0.1)
    except KafkaError as exc:
        raise wrap(exc, "creating topics") from exc
    finally:
        await admin.close()


async def topic_partitions(
    bootstrap: str, topic_names: Sequence[str] = (), pattern: str | None = None
) -> list[TopicPartition]:
    """Every partition of the named topics and of the existing topics matching pattern."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        names = set(topic_names)
        if pattern is not None:
            rx = re.compile(pattern)
            names |= {t for t in await admin.list_topics() if rx.match(t)}
        if not names:
            return []
        described = await admin.describe_topics(sorted(names))
    except KafkaError as exc:
        raise wrap(exc, "describing topics") from exc
    finally:
        await admin.close()
    return sorted(
        (TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]),
        key=lambda tp: (tp.topic, tp.partition),
    )


async def replay(
    bootstrap: str, topic_names: Sequence[str] = (), pattern: str | None = None
) -> AsyncIterator[Any]:
    """Yield every record of the topics from offset 0 up to the end offsets seen at the start.

    No consumer group is used: nothing is committed and nobody's position changes. Records of
    one partition come in offset order.
    """
    tps = await topic_partitions(bootstrap, topic_names, pattern)
    if not tps:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    try:
        await consumer.start()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        for tp in tps:
            if ends[tp] == 0:
                consumer.pause(tp)
        while remaining:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset < ends[tp]:
                        yield rec
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
                    consumer.pause(tp)
    except KafkaError as exc:
        raise wrap(exc, "replaying topics") from exc
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, pattern: str) -> dict[tuple[str, int], int]:
    """End offset of every partition of the topics matching pattern."""
    tps = await topic_partitions(bootstrap, pattern=pattern)
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        await consumer.start()
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): o for tp, o in ends.items()}
    except KafkaError as exc:
        raise wrap(exc, "reading end offsets") from exc
    finally:
        await consumer.stop()
