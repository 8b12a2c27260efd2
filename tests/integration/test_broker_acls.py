"""Broker security: the secure local cluster enforces exactly the ACL model of bus/acl.py.

Three KRaft nodes (deploy/local/cluster.sh --secure): SASL/SCRAM-SHA-512 for clients and
between brokers, SASL/PLAIN on the controller listener, StandardAuthorizer, super user admin.
The admin creates the topics and applies :func:`bus.acl.acl_model`; then each organization
logs in as itself with aiokafka (SASL_PLAINTEXT, SCRAM-SHA-512) and tries to write every topic
and read every topic. What the broker answers must equal what the model says, request by
request: all 30 cross-organization report writes (6 x 5) and 30 decision writes denied with
TopicAuthorizationFailedError, every own and shared write and every read allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from bus.acl import Operation, Resource, acl_model, allows, consumer_groups
from bus.attachment import AttachmentLimits
from bus.kafka.acl import apply_acls, describe_acls
from bus.kafka.admin import ensure_topics
from bus.kafka.client import KafkaSecurity, client_options, reliable_producer
from bus.model import Envelope, Report, Role
from bus.store.node import NodeStore
from bus.topics import Topics, registry_record_key, report_headers, standard_topics
from bus.witness import WitnessPolicy
from nodes.auditor.run import audit
from nodes.demo.scenario import demo_key
from nodes.org_node.attachments import AttachmentNode, config_for_node
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node
from nodes.org_node.witness import Witness, WitnessConfig
from tests.kafka_cluster import LocalKafkaCluster
from tests.mission import make_mission

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(900)]
ORGS = ("un", "osce", "eu", "nato", "csto", "sco")
TOPICS = Topics()  # the real names: obus.reports.un, obus.registry, ...
SPECS = standard_topics(TOPICS, ORGS, partitions=1)
NAMES = [s.name for s in SPECS]
CALL_S = 60  # bound of every single client call


@pytest.fixture(scope="module")
def secure_cluster() -> Iterator[LocalKafkaCluster]:
    with LocalKafkaCluster(brokers=3, secure=True, users=ORGS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def prepared(secure_cluster: LocalKafkaCluster) -> LocalKafkaCluster:
    """The admin (super user) creates the topics and applies the model."""
    admin = secure_cluster.security("admin")

    async def setup() -> None:
        async with asyncio.timeout(300):
            await ensure_topics(secure_cluster.bootstrap, SPECS, replication=3, security=admin)
            await apply_acls(secure_cluster.bootstrap, acl_model(TOPICS, ORGS), security=admin)

    asyncio.run(setup())
    return secure_cluster


async def _try_write(bootstrap: str, security: KafkaSecurity | None, topic: str) -> str:
    """'ok', 'denied' (TopicAuthorizationFailedError) or the repr of anything else."""
    producer = AIOKafkaProducer(
        **client_options(bootstrap, security), acks="all", enable_idempotence=True,
        request_timeout_ms=30_000,
    )  # fmt: skip
    try:
        async with asyncio.timeout(CALL_S):
            await producer.start()
            await producer.send_and_wait(topic, b"probe", key=b"k")
    except TopicAuthorizationFailedError:
        return "denied"
    except (KafkaError, TimeoutError) as exc:
        return repr(exc)
    else:
        return "ok"
    finally:
        await producer.stop()


async def test_admin_applied_exactly_the_model(prepared: LocalKafkaCluster) -> None:
    rules, others = await describe_acls(prepared.bootstrap, security=prepared.security("admin"))
    assert rules == set(acl_model(TOPICS, ORGS))
    assert others == []


async def test_writes_are_allowed_exactly_where_the_model_allows_them(
    prepared: LocalKafkaCluster,
) -> None:
    model = acl_model(TOPICS, ORGS)
    outcomes = {}
    for org in ORGS:
        sec = prepared.security(org)
        results = await asyncio.gather(*(_try_write(prepared.bootstrap, sec, t) for t in NAMES))
        outcomes.update({(org, t): r for t, r in zip(NAMES, results, strict=True)})
    expected = {
        (org, t): "ok" if allows(model, org, Operation.WRITE, Resource.TOPIC, t) else "denied"
        for org in ORGS
        for t in NAMES
    }
    assert outcomes == expected
    cross = [
        (org, other, kind)
        for org in ORGS
        for other in ORGS
        if other != org
        for kind in ("reports", "decisions")
        if outcomes[(org, f"obus.{kind}.{other}")] == "denied"
    ]
    cross_reports = [c for c in cross if c[2] == "reports"]
    print(f"\nFIGURES acl: cross-org report writes denied {len(cross_reports)}/30, "
          f"cross-org decision writes denied {len(cross) - len(cross_reports)}/30, "
          f"allowed writes {sum(v == 'ok' for v in outcomes.values())}")  # fmt: skip
    assert len(cross_reports) == 30
    assert len(cross) == 60


async def test_every_organization_reads_every_topic(prepared: LocalKafkaCluster) -> None:
    # the admin writes one record to every topic, so each read has something to find
    producer = AIOKafkaProducer(**client_options(prepared.bootstrap, prepared.security("admin")))
    async with asyncio.timeout(CALL_S):
        await producer.start()
        try:
            for name in NAMES:
                await producer.send_and_wait(name, b"for-everyone", key=b"k")
        finally:
            await producer.stop()
    read: dict[str, set[str]] = {}
    for org in ORGS:
        consumer = AIOKafkaConsumer(
            **client_options(prepared.bootstrap, prepared.security(org)), group_id=None,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )  # fmt: skip
        try:
            async with asyncio.timeout(CALL_S * 2):
                await consumer.start()
                tps = [TopicPartition(t, 0) for t in NAMES]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                seen: set[str] = set()
                while seen != set(NAMES):
                    batch = await consumer.getmany(timeout_ms=1000)
                    seen |= {tp.topic for tp, recs in batch.items() if recs}
                read[org] = seen
        finally:
            await consumer.stop()
    assert read == {org: set(NAMES) for org in ORGS}
    print(f"\nFIGURES acl: reads allowed {sum(map(len, read.values()))}/{len(ORGS) * len(NAMES)}")


async def test_own_consumer_groups_only(prepared: LocalKafkaCluster) -> None:
    tp = TopicPartition(TOPICS.reports("un"), 0)

    async def commit_as(org: str, group: str) -> str:
        consumer = AIOKafkaConsumer(
            **client_options(prepared.bootstrap, prepared.security(org)), group_id=group,
            enable_auto_commit=False,
        )  # fmt: skip
        try:
            async with asyncio.timeout(CALL_S):
                await consumer.start()
                consumer.assign([tp])
                await consumer.commit({tp: 0})
        except GroupAuthorizationFailedError:
            return "denied"
        except (KafkaError, TimeoutError) as exc:
            return repr(exc)
        else:
            return "ok"
        finally:
            await consumer.stop()

    for org, other in zip(ORGS, ORGS[1:] + ORGS[:1], strict=True):
        for _, group in consumer_groups(TOPICS, org)[:2]:
            assert await commit_as(org, group) == "ok", (org, group)
        assert await commit_as(org, f"obus.{org}.analytics") == "ok"
        assert await commit_as(org, f"obus.node.{other}") == "denied", (org, other)


async def test_organizations_create_nothing_and_strangers_get_nothing(
    prepared: LocalKafkaCluster,
) -> None:
    admin = AIOKafkaAdminClient(**client_options(prepared.bootstrap, prepared.security("un")))
    try:
        async with asyncio.timeout(CALL_S):
            await admin.start()
            response = await admin.create_topics([NewTopic("obus.reports.rogue", 1, 3)])
        (error,) = response.to_object()["topic_errors"]
        assert error["error_code"] == TopicAuthorizationFailedError.errno
    finally:
        await admin.close()

    wrong = KafkaSecurity(
        protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", username="un",
        password="not-the-password",
    )  # fmt: skip
    assert (await _try_write(prepared.bootstrap, wrong, TOPICS.reports("un"))) != "ok"


async def test_a_whole_node_and_the_auditor_work_logged_in_as_their_organization(
    prepared: LocalKafkaCluster, tmp_path: Path
) -> None:
    """Every client of a full node (ingest, trust follower, follow-up, attachment reassembler,
    witness) and of the auditor logs in as the organization, under its ACLs: a client built
    without the node's SASL settings cannot even connect to this cluster."""
    un = prepared.security("un")
    m = make_mission()
    node_key = demo_key("acls:node:un")
    m.accredit("un-node", "un", node_key, Role.NODE)
    raws = [m.next_report("un", 1) for _ in range(4)] + [m.next_report("un", 2)]
    producer = reliable_producer(prepared.bootstrap, security=un)
    async with asyncio.timeout(120):
        await producer.start()
        try:
            for raw in [*m.scenario.accreditations, *m.registry]:
                await producer.send_and_wait(TOPICS.registry, raw, key=registry_record_key(raw))
            for raw in raws:
                rep = Report.decode(Envelope.decode(raw).payload)
                await producer.send_and_wait(
                    TOPICS.reports("un"), raw, key=rep.observer_id.encode(),
                    headers=report_headers(rep.report_id, rep.org, rep.observer_id),
                )  # fmt: skip
        finally:
            await producer.stop()

    cfg = NodeConfig(
        org="un", bootstrap=prepared.bootstrap, db_path=tmp_path / "un.db",
        mandate=m.scenario.mandate, topics=TOPICS, security=un, node_key=node_key,
        poll_timeout_ms=200,
    )  # fmt: skip
    node = build_node(cfg)
    witness = Witness(
        WitnessConfig(
            org="un", bootstrap=prepared.bootstrap, db_path=tmp_path / "un.witness.db",
            mandate=m.scenario.mandate, node_key=node_key, topics=TOPICS, security=un,
            policy=WitnessPolicy(checkpoint_every=1, checkpoint_interval_ms=200),
            poll_timeout_ms=100,
        )
    )  # fmt: skip
    reassembler = AttachmentNode(config_for_node(cfg, AttachmentLimits()))
    parts: list[Any] = [node, witness, reassembler]
    tasks = [asyncio.create_task(p.run()) for p in parts]
    ours = {Report.decode(Envelope.decode(r).payload).report_id for r in raws}

    def stored() -> set[str]:
        store = NodeStore(cfg.db_path, read_only=True)
        try:
            return ours & set(store.report_ids())
        finally:
            store.close()

    try:
        async with asyncio.timeout(180):
            while not (
                cfg.db_path.exists()
                and stored() == ours
                and node.extras is not None
                and node.extras.followup.started.is_set()
                and witness.counts["checkpoints_published"] >= 1
            ):
                failed = [t for t in tasks if t.done()]
                if failed:
                    await failed[0]  # raises what stopped it
                    raise AssertionError(f"{failed[0]} stopped early")
                await asyncio.sleep(0.2)
    finally:
        for p in parts:
            p.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r for r in results if r is not None] == []  # every part stopped cleanly

    result = await audit(prepared.bootstrap, m.scenario.mandate, topics=TOPICS, security=un)
    assert result.accepted["un"] >= len(raws)
