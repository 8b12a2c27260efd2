"""Topic administration and log positions: creating the bus's topics, setting their configs on
topics that already existed, listing partitions, end offsets, describing a consumer group's
members and their assignments.
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
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberAssignment
from aiokafka.errors import (
    KafkaError,
    LeaderNotAvailableError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

from bus.errors import TransportError
from bus.kafka.client import KafkaSecurity, client_options, retrying
from bus.topics import TopicSpec

log = structlog.get_logger(__name__)

# How long one attempt of ensure_topics waits for every partition to have a leader.
LEADER_WAIT_S: Final = 10.0

# How long align_topic_configs waits for the brokers to describe the configs it set.
CONFIG_WAIT_S: Final = 10.0


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


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A config :func:`align_topic_configs` set on a topic: its value before (None: the broker
    described none) and the value of the topic's spec it has now."""

    topic: str
    name: str
    was: str | None
    now: str


async def align_topic_configs(
    bootstrap: str, specs: Sequence[TopicSpec], *, security: KafkaSecurity | None = None
) -> list[ConfigChange]:
    """Give every existing topic of ``specs`` the configs its spec names; returns what changed.

    :func:`ensure_topics` leaves a topic that already exists as it is, with whatever configs it
    was created with (by hand, or by an older release: a compacted registry or mandate topic,
    a retention limit). This sets each config the spec names whose value the brokers describe
    differently, with IncrementalAlterConfigs (operation SET): configs the spec does not name
    keep their values. Then it describes the topics again until every change is served (at
    most :data:`CONFIG_WAIT_S`). Topics that do not exist are skipped. Changing a config does
    not bring back records a former policy already removed.

    Needs the ALTER_CONFIGS permission on the topics (the super user on a cluster with ACLs).

    Raises:
        TransportError: the brokers refused a change (not retriable; the message names the
            topic and the broker's error, e.g. no permission), a change was not served after
            :data:`CONFIG_WAIT_S`, or the brokers did not answer (retriable errors are retried
            for :data:`RETRY_S`).
    """
    return await retrying(
        "aligning topic configs", lambda: _align_topic_configs(bootstrap, specs, security)
    )


async def _align_topic_configs(
    bootstrap: str, specs: Sequence[TopicSpec], security: KafkaSecurity | None
) -> list[ConfigChange]:
    admin = AIOKafkaAdminClient(**client_options(bootstrap, security))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = {s.name: dict(s.configs) for s in specs if s.name in existing and s.configs}
        if not wanted:
            return []
        current = await _describe_topic_configs(admin, wanted)
        changes = [
            ConfigChange(topic, name, current[topic].get(name), value)
            for topic, configs in sorted(wanted.items())
            for name, value in configs.items()
            if current[topic].get(name) != value
        ]
        if not changes:
            return []
        await _set_topic_configs(bootstrap, security, changes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIG_WAIT_S
        while True:
            # the controller commits a change before every broker's metadata has it
            served = await _describe_topic_configs(admin, wanted)
            pending = [c for c in changes if served[c.topic].get(c.name) != c.now]
            if not pending:
                break
            if loop.time() >= deadline:
                shown = ", ".join(
                    f"{c.topic} {c.name}={served[c.topic].get(c.name)!r}" for c in pending
                )
                raise TransportError(
                    f"the brokers accepted topic config changes but still describe {shown}"
                    f" after {CONFIG_WAIT_S:g} s",
                    retriable=True,
                )
            await asyncio.sleep(0.2)
        log.warning(
            "topic_configs_changed",
            changes=[f"{c.topic} {c.name}: {c.was} -> {c.now}" for c in changes],
        )
        return changes
    finally:
        await admin.close()


async def _describe_topic_configs(
    admin: AIOKafkaAdminClient, wanted: dict[str, dict[str, str]]
) -> dict[str, dict[str, str | None]]:
    """The brokers' values of the named configs of each topic (no retry).

    Raises:
        KafkaError: a per-topic error the brokers answered (its own class, so ``retrying``
            tries a retriable one again).
    """
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(names))
        for topic, names in wanted.items()
    ]
    out: dict[str, dict[str, str | None]] = {topic: {} for topic in wanted}
    for response in await admin.describe_configs(resources):
        for code, message, _type, name, entries in response.resources:
            if code:
                raise for_code(code)(f"describing the configs of {name}: {message}")
            if name in out:
                out[name] = {entry[0]: entry[1] for entry in entries}
    return out


# IncrementalAlterConfigs (API key 44), version 0: aiokafka 0.14 ships only the legacy
# AlterConfigs, which replaces a topic's whole config set (every config not sent falls back to
# the broker default: a retention of 7 days, for one). Version 0 is served by every broker
# since Kafka 2.3, Kafka 4.x included.
_SET: Final = 0  # AlterConfigOp.OpType.SET


class _IncrementalAlterConfigsResponseV0(Response):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "responses",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
            ),
        ),
    )


class _IncrementalAlterConfigsRequestV0(RequestStruct):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    RESPONSE_TYPE = _IncrementalAlterConfigsResponseV0
    SCHEMA = Schema(
        (
            "resources",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                (
                    "configs",
                    Array(
                        ("name", String("utf-8")),
                        ("config_operation", Int8),
                        ("value", String("utf-8")),
                    ),
                ),
            ),
        ),
        ("validate_only", Boolean),
    )


class _IncrementalAlterConfigs(Request[_IncrementalAlterConfigsRequestV0]):  # type: ignore[misc]
    API_KEY = 44

    def __init__(self, resources: list[tuple[int, str, list[tuple[str, int, str]]]]) -> None:
        self._resources = resources

    def build(
        self, request_struct_class: type[_IncrementalAlterConfigsRequestV0]
    ) -> _IncrementalAlterConfigsRequestV0:
        return request_struct_class(self._resources, False)


async def _set_topic_configs(
    bootstrap: str, security: KafkaSecurity | None, changes: Sequence[ConfigChange]
) -> None:
    """SET each change's config on its topic, in one request (no retry).

    Raises:
        KafkaError: a retriable per-topic error (``retrying`` tries again).
        TransportError: any other per-topic error, naming the topics and the broker's errors.
    """
    by_topic: dict[str, list[tuple[str, int, str]]] = {}
    for c in changes:
        by_topic.setdefault(c.topic, []).append((c.name, _SET, c.now))
    request = _IncrementalAlterConfigs(
        [(int(ConfigResourceType.TOPIC), topic, configs) for topic, configs in by_topic.items()]
    )
    client = AIOKafkaClient(**client_options(bootstrap, security))
    try:
        await client.bootstrap()
        response = await client.send(client.get_random_node(), request)
    finally:
        await client.close()
    refused: list[str] = []
    transient: list[tuple[type[KafkaError], str]] = []
    for code, message, _type, topic in response.responses:
        if code == 0:
            continue
        error = for_code(code)
        detail = f"{topic}: {error.__name__} (error {code})" + (f": {message}" if message else "")
        if error.retriable:
            transient.append((error, detail))
        else:
            refused.append(detail)
    if refused:
        raise TransportError(
            f"the brokers refused to change the configs of {'; '.join(refused)}",
            retriable=False,
        )
    if transient:
        raise transient[0][0](f"changing topic configs: {'; '.join(d for _, d in transient)}")


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
