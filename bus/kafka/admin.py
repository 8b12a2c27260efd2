"""Topic administration and log positions: creating the bus's topics, listing partitions,
end offsets, describing a consumer group's members and their assignments.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberAssignment
from aiokafka.errors import (
    KafkaError,
    LeaderNotAvailableError,
    TopicAlreadyExistsError,
    for_code,
)

from bus.errors import TransportError
from bus.kafka.client import KafkaSecurity, client_options, retrying
from bus.topics import TopicSpec

log = structlog.get_logger(__name__)

# How long one attempt of ensure_topics waits for every partition to have a leader.
LEADER_WAIT_S: Final = 10.0


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


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One member of a consumer group as the group coordinator describes it.

    ``client_id`` is what the member's client chose to call itself: a label, not an identity
    (the brokers' ACLs decide which principals may join a group at all).
    """

    member_id: str
    client_id: str
    client_host: str
    partitions: frozenset[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A consumer group's state (``Stable``, ``PreparingRebalance``, ``Empty``...) and members."""

    state: str
    members: tuple[GroupMember, ...]


async def describe_group(admin: AIOKafkaAdminClient, group_id: str) -> GroupDescription:
    """The group's state, members and each member's assigned partitions, through an admin client
    the caller keeps open (no retry).

    Raises:
        KafkaError: as aiokafka's admin client, or the coordinator's error for the group.
    """
    state = "Dead"
    members: list[GroupMember] = []
    for response in await admin.describe_consumer_groups([group_id]):
        for group in response.groups:
            error_code, name, group_state, protocol_type, _protocol, group_members = group[:6]
            if name != group_id:
                continue
            if error_code:
                raise for_code(error_code)(f"describing consumer group {group_id}")
            state = group_state
            for member_id, client_id, client_host, _meta, raw_assignment in group_members:
                parts: frozenset[tuple[str, int]] = frozenset()
                if raw_assignment and protocol_type == ConsumerProtocol.PROTOCOL_TYPE:
                    assignment = ConsumerProtocolMemberAssignment.decode(raw_assignment)
                    parts = frozenset(
                        (topic, p)
                        for topic, partitions in assignment.assignment
                        for p in partitions
                    )
                members.append(GroupMember(member_id, client_id, client_host, parts))
    return GroupDescription(state, tuple(sorted(members, key=lambda m: m.member_id)))
