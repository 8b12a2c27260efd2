"""Append-only trust topics on a real broker: ``obus topics`` repairs a compacted registry and
mandate, and the gateway finds its node key among unkeyed registry records.

Attack: on a compacted registry, anyone who may write it (every organization, or the operator)
erases a revocation or an accreditation by publishing another record, or a null one, under its
record key, and the log cleaner removes it. No topic is compacted any more, and a cluster made
by an older release is repaired by ``obus topics``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bus.errors import ConfigError, TransportError
from bus.kafka.admin import align_topic_configs, ensure_topics
from bus.kafka.client import reliable_producer
from bus.model import Revocation, Role
from bus.sign import sign_revocation
from bus.topics import KEEP_FOREVER, LOG_APPEND_TIME, Topics, TopicSpec, standard_topics
from nodes.cli.main import main
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from nodes.gateway.service import Gateway, GatewayConfig
from tests.integration.test_observer_gateway import TrustSealer
from tests.mission import make_mission

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
# What an older release created the trust topics with; segment.ms is a config no spec names.
OLD_COMPACTED = (("cleanup.policy", "compact"), LOG_APPEND_TIME, *KEEP_FOREVER)
FOREIGN = ("segment.ms", "3600000")


async def _configs(bootstrap: str, names: Iterable[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for code, message, _type, name, entries in response.resources:
            assert code == 0, (name, message)
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


async def test_obus_topics_repairs_a_compacted_registry_and_mandate(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = Topics(f"ao{uuid.uuid4().hex[:10]}.")
    old = [
        TopicSpec(topics.registry, 1, (*OLD_COMPACTED, FOREIGN)),
        # the mandate topic also lost its retention: the broker default (7 days) applies
        TopicSpec(topics.mandate, 1, (("cleanup.policy", "compact"),)),
    ]
    await ensure_topics(kafka_bootstrap, old)
    before = await _configs(kafka_bootstrap, [topics.registry, topics.mandate])
    assert before[topics.registry]["cleanup.policy"] == "compact"
    assert before[topics.mandate]["retention.ms"] != "-1"

    argv = ["topics", "--orgs", "un,eu", "--partitions", "1", "--bootstrap", kafka_bootstrap,
            "--topic-prefix", topics.prefix]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert f"changed {topics.registry}: cleanup.policy compact -> delete" in out
    assert f"changed {topics.mandate}: cleanup.policy compact -> delete" in out
    assert f"changed {topics.mandate}: retention.ms " in out
    assert f"{topics.registry} was compacted" in out

    specs = standard_topics(topics, ["un", "eu"], partitions=1)
    after = await _configs(kafka_bootstrap, [s.name for s in specs])
    for spec in specs:  # the broker now serves every spec config, on every topic
        assert {k: after[spec.name][k] for k, _ in spec.configs} == dict(spec.configs), spec.name
        assert after[spec.name]["cleanup.policy"] == "delete", spec.name
    assert after[topics.registry][FOREIGN[0]] == FOREIGN[1]  # incremental: the rest is kept
    assert topics.seals in after

    # a second run finds nothing to change
    assert await asyncio.to_thread(main, argv) == 0
    assert "changed" not in capsys.readouterr().out
    assert await align_topic_configs(kafka_bootstrap, specs) == []


async def test_a_config_the_brokers_refuse_is_an_error_not_a_silence(kafka_bootstrap: str) -> None:
    name = f"ao{uuid.uuid4().hex[:10]}.registry"
    await ensure_topics(kafka_bootstrap, [TopicSpec(name, 1, OLD_COMPACTED)])
    with pytest.raises(TransportError, match=name) as caught:
        await align_topic_configs(
            kafka_bootstrap, [TopicSpec(name, 1, (("cleanup.policy", "erase"),))]
        )
    assert caught.value.retriable is False
    assert (await _configs(kafka_bootstrap, [name]))[name]["cleanup.policy"] == "compact"


async def test_gateway_finds_its_node_key_among_unkeyed_registry_records(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    m = make_mission(2)
    topics = Topics(f"ao{uuid.uuid4().hex[:10]}.")
    await ensure_topics(kafka_bootstrap, standard_topics(topics, ORGS, partitions=1))
    node_key = demo_key(f"append-only:{topics.prefix}")
    m.accredit("un-node-ao", "un", node_key, Role.NODE)
    producer = reliable_producer(kafka_bootstrap)
    await producer.start()
    try:
        for raw in m.registry:
            await producer.send_and_wait(topics.registry, raw)  # no record key
        # what used to shadow it on a compacted registry: a null record and a junk record
        # under the former compaction key of the node key's accreditation
        former_key = f"acc:{node_key.key_id.hex()}".encode()
        await producer.send_and_wait(topics.registry, None, key=former_key)
        await producer.send_and_wait(topics.registry, b"junk", key=former_key)
    finally:
        await producer.stop()

    sealer = TrustSealer(kafka_bootstrap, topics, m.scenario.mandate, tmp_path / "un.final.db")
    await sealer.seal()
    config = GatewayConfig(
        org="un", bootstrap=kafka_bootstrap, db_path=tmp_path / "gateway.db",
        mandate=m.scenario.mandate, node_key=node_key, topics=topics, final_db=sealer.path,
    )  # fmt: skip
    gateway = Gateway(config)
    await gateway.start()
    try:
        assert gateway.node is not None
        assert (gateway.node.subject_id, gateway.node.key_id) == ("un-node-ao", node_key.key_id)
        assert gateway.node_accreditation == m.registry[-1]
    finally:
        await gateway.stop()

    # UN revokes the node key: a gateway started later refuses to use it
    rev = Revocation("un", node_key.key_id, 0, m.now, "rotated", 1, m.mandate_id)
    producer = reliable_producer(kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.registry, sign_revocation(rev, m.scenario.org_roots["un"]).encode()
        )
    finally:
        await producer.stop()
    await sealer.seal()  # the revocation takes effect once sealed
    later = Gateway(dataclasses.replace(config, db_path=tmp_path / "later.db"))
    try:
        with pytest.raises(ConfigError, match="revoked by un"):
            await later.start()
    finally:
        await later.stop()  # its Kafka clients and trust reader started before the refusal
