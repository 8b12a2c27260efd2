"""Broker security: the secure local cluster speaks only TLS and enforces exactly the ACL
model of bus/acl.py.

Three KRaft nodes (deploy/local/cluster.sh --secure): every listener SASL_SSL, with a CA and a
broker certificate the script made for its data dir; SASL/SCRAM-SHA-512 for clients and between
brokers, SASL/PLAIN on the controller listener, StandardAuthorizer, super user admin. The admin
creates the topics and applies :func:`bus.acl.acl_model`; then each organization logs in as
itself with aiokafka (SASL_SSL, SCRAM-SHA-512, the cluster's CA) and tries to write every topic
and read every topic. What the broker answers must equal what the model says, request by
request: all 30 cross-organization report writes (6 x 5) and 30 decision writes denied with
TopicAuthorizationFailedError, every own and shared write and every read allowed. Clients in the
clear (PLAINTEXT, SASL_PLAINTEXT) and clients trusting another CA are turned away.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import ssl
import stat
import subprocess
import sys
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from bus.acl import Operation, Pattern, Resource, acl_model, allows, consumer_groups
from bus.attachment import AttachmentLimits
from bus.errors import TransportError
from bus.kafka.acl import apply_acls, describe_acls
from bus.kafka.admin import ensure_topics
from bus.kafka.client import KafkaSecurity, client_options, kafka_errors, reliable_producer
from bus.model import Envelope, Report, Role
from bus.store.final import FinalStore
from bus.store.node import NodeStore
from bus.topics import Topics, report_headers, standard_topics
from nodes.auditor.run import audit
from nodes.demo.scenario import demo_key
from nodes.org_node.attachments import AttachmentNode, config_for_node
from nodes.org_node.config import NodeConfig, SealSettings
from nodes.org_node.process import build_node
from nodes.org_node.sealer import Sealer, SealerConfig
from tests.kafka_broker import REPO
from tests.kafka_cluster import LocalKafkaCluster
from tests.mission import live_mission

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


def _another_ca(subject: x509.Name) -> bytes:
    """A self-signed CA certificate (PEM) with the given name and a key of its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


async def _list_topics(bootstrap: str, security: KafkaSecurity | None) -> list[str]:
    """Connect and list the topics, through the adapter's error wrapping (bounded)."""
    admin = AIOKafkaAdminClient(**client_options(bootstrap, security))
    try:
        async with asyncio.timeout(CALL_S):
            with kafka_errors("listing topics"):
                await admin.start()
                return list(await admin.list_topics())
    finally:
        await admin.close()


def test_the_cluster_made_its_own_ca_and_broker_certificate(
    secure_cluster: LocalKafkaCluster,
) -> None:
    """cluster.sh made a CA and one broker certificate for IP 127.0.0.1 and DNS localhost, kept
    the keys private and dropped the CA's key; every broker presents that certificate over
    TLS 1.3; `cluster.sh status` (its probe) gets through TLS; `up` again keeps the CA."""
    assert secure_cluster.data_dir is not None and secure_cluster.cafile is not None
    secrets = secure_cluster.data_dir / "secrets"
    assert secure_cluster.cafile == secrets / "ca.crt"
    ca = x509.load_pem_x509_certificate(secure_cluster.cafile.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    props = (secrets / "broker-tls.properties").read_text().splitlines()
    password = dict(line.split("=", 1) for line in props)["keystore_password"]
    _, leaf, chain = pkcs12.load_key_and_certificates(
        (secrets / "broker.p12").read_bytes(), password.encode()
    )
    assert leaf is not None
    leaf.verify_directly_issued_by(ca)
    assert chain == [ca]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("broker.p12", "broker-tls.properties", "admin.password", "un.password"):
        assert stat.S_IMODE((secrets / name).stat().st_mode) & 0o077 == 0, name
    assert sorted(p.name for p in secrets.iterdir() if p.suffix in (".p12", ".crt")) == [
        "broker.p12",
        "ca.crt",
    ]  # the CA's own keystore is gone: nothing else can ever be signed by it

    context = ssl.create_default_context(cafile=str(secure_cluster.cafile))
    der = leaf.public_bytes(serialization.Encoding.DER)
    for port in secure_cluster.ports:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=CALL_S) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.3"
            assert tls.getpeercert(binary_form=True) == der

    secure_cluster.run("status")
    before = secure_cluster.cafile.read_bytes()
    secure_cluster.restart()
    assert secure_cluster.cafile.read_bytes() == before


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
async def test_clients_in_the_clear_are_refused(
    secure_cluster: LocalKafkaCluster, protocol: str
) -> None:
    """A client that does not start TLS gets nothing, not even with the right password: the
    brokers close the connection and the client fails with a TransportError (no hang)."""
    security = None
    if protocol == "SASL_PLAINTEXT":
        security = KafkaSecurity(
            protocol=protocol, sasl_mechanism="SCRAM-SHA-512", username="un",
            password=secure_cluster.password("un"),
        )  # fmt: skip
    with pytest.raises(TransportError, match="listing topics"):
        await _list_topics(secure_cluster.bootstrap, security)
    await _list_topics(secure_cluster.bootstrap, secure_cluster.security("un"))  # TLS gets in


async def test_a_client_trusting_another_ca_fails_the_handshake(
    secure_cluster: LocalKafkaCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CA of the same name but another key: the client refuses every broker's certificate
    and fails with a TransportError (no hang); the log names the certificate failure."""
    assert secure_cluster.cafile is not None
    real = x509.load_pem_x509_certificate(secure_cluster.cafile.read_bytes())
    other = tmp_path / "other-ca.crt"
    other.write_bytes(_another_ca(real.subject))
    security = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="un",
        password=secure_cluster.password("un"), ssl_cafile=str(other),
    )  # fmt: skip
    with (
        caplog.at_level(logging.ERROR, logger="aiokafka"),
        pytest.raises(TransportError, match="listing topics"),
    ):
        await _list_topics(secure_cluster.bootstrap, security)
    refused = {
        port
        for port in secure_cluster.ports
        for r in caplog.records
        if f":{port}" in r.getMessage() and "CERTIFICATE_VERIFY_FAILED" in r.getMessage()
    }
    assert refused == set(secure_cluster.ports), [r.getMessage() for r in caplog.records]


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


def test_the_cli_checks_the_acls_over_tls(prepared: LocalKafkaCluster) -> None:
    """What an operator types (the Makefile's cluster-up SECURE=1 applies the same way)."""
    assert prepared.data_dir is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBUS_")}
    proc = subprocess.run(
        [
            sys.executable, "-m", "nodes.cli", "acls", "check", "--orgs", ",".join(ORGS),
            "--bootstrap", prepared.bootstrap, "--security-protocol", "SASL_SSL",
            "--ssl-cafile", str(prepared.cafile), "--sasl-username", "admin",
            "--sasl-password-file", str(prepared.data_dir / "secrets" / "admin.password"),
        ],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ACLs match the model" in proc.stdout


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
        for pattern, group in consumer_groups(TOPICS, org):
            if pattern is Pattern.LITERAL:
                assert await commit_as(org, group) == "ok", (org, group)
        assert await commit_as(org, f"obus.{org}.analytics") == "ok"
        assert await commit_as(org, f"obus.node.{other}") == "denied", (org, other)
        # the group of the checkpoint witness that seals replaced is nobody's any more
        assert await commit_as(org, f"obus.witness.{org}") == "denied", org


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
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="un",
        password="not-the-password", ssl_cafile=str(prepared.cafile),
    )  # fmt: skip
    assert (await _try_write(prepared.bootstrap, wrong, TOPICS.reports("un"))) != "ok"


async def test_a_whole_node_and_the_auditor_work_logged_in_as_their_organization(
    prepared: LocalKafkaCluster, tmp_path: Path
) -> None:
    """Every client of a full node (ingest, trust follower, follow-up, attachment reassembler,
    sealer) and of the auditor logs in as the organization over TLS, under its ACLs: a client
    built without the node's SASL_SSL settings cannot even connect to this cluster. Sealers of
    k - 1 more organizations, each logged in as itself, cosign with the UN's so that the bus is
    sealed and the auditor's verdicts are final."""
    un = prepared.security("un")
    m = live_mission()
    node_key = demo_key("acls:node:un")
    m.accredit("un-node", "un", node_key, Role.NODE)
    # Node keys of k organizations: only then can a seal become final.
    others = {org: demo_key(f"acls:node:{org}") for org in ORGS[1 : m.scenario.mandate.threshold]}
    for org, key in others.items():
        m.accredit(f"{org}-node", org, key, Role.NODE)
    raws = [m.next_report("un", 1) for _ in range(4)] + [m.next_report("un", 2)]
    producer = reliable_producer(prepared.bootstrap, security=un)
    async with asyncio.timeout(120):
        await producer.start()
        try:
            for raw in [*m.scenario.accreditations, *m.registry]:
                await producer.send_and_wait(TOPICS.registry, raw)
            positions = []
            for raw in raws:
                rep = Report.decode(Envelope.decode(raw).payload)
                md = await producer.send_and_wait(
                    TOPICS.reports("un"), raw, key=rep.observer_id.encode(),
                    headers=report_headers(rep.report_id, rep.org, rep.observer_id),
                )  # fmt: skip
                positions.append((md.topic, md.partition, md.offset))
        finally:
            await producer.stop()

    cfg = NodeConfig(
        org="un", bootstrap=prepared.bootstrap, db_path=tmp_path / "un.db",
        mandate=m.scenario.mandate, topics=TOPICS, security=un, node_key=node_key,
        poll_timeout_ms=200,
        seal=SealSettings(
            root=m.scenario.mandate, db_path=tmp_path / "un.final.db", node_key=node_key,
            interval_ms=200,
        ),
    )  # fmt: skip
    node = build_node(cfg)
    reassembler = AttachmentNode(config_for_node(cfg, AttachmentLimits()))
    sealers = [
        Sealer(
            SealerConfig(
                org=org, bootstrap=prepared.bootstrap, db_path=tmp_path / f"{org}.final.db",
                root=m.scenario.mandate, node_key=key, topics=TOPICS, interval_ms=200,
                takeover_ms=200, poll_timeout_ms=100, security=prepared.security(org),
            )
        )
        for org, key in others.items()
    ]  # fmt: skip
    parts: list[Any] = [node, reassembler, *sealers]
    tasks = [asyncio.create_task(p.run()) for p in parts]
    ours = {Report.decode(Envelope.decode(r).payload).report_id for r in raws}

    def stored() -> set[str]:
        store = NodeStore(cfg.db_path, read_only=True)
        try:
            return ours & set(store.report_ids())
        finally:
            store.close()

    def final() -> list[str]:
        """The UN's final verdicts on its reports, as far as its sealer judged them."""
        if not (tmp_path / "un.final.db").exists():
            return []
        store = FinalStore(tmp_path / "un.final.db", read_only=True)
        try:
            verdicts = [store.verdict(*pos) for pos in positions]
        finally:
            store.close()
        return [str(v["status"]) for v in verdicts if v is not None]

    try:
        async with asyncio.timeout(180):
            while not (
                cfg.db_path.exists()
                and stored() == ours
                and node.extras is not None
                and node.extras.followup.started.is_set()
                # the seals topic written and read under each organization's ACLs: every
                # report finally judged under a final seal (the reports of the epoch that
                # sealed their observers' accreditations are judged in the next one)
                and len(final()) == len(raws)
                and "deferred" not in final()
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
    assert result.final is not None and result.final.last_epoch >= 1
    assert final() == ["accepted"] * len(raws)
    assert result.accepted["un"] >= len(raws)
