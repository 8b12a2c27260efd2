"""Every Kafka client the bus opens carries the caller's SASL/TLS settings.

`obus` accepts ``--security-protocol`` and the ``--sasl-*`` options on every command, and the
deployments (deploy/compose, deploy/k8s) run the nodes against SASL_SSL listeners. A client
built without them connects in PLAINTEXT and fails there, or, worse, silently works against a
broker that still has a plaintext listener. This test reads the source of ``bus/`` and
``nodes/`` and fails on any client constructor or client-opening helper called without the
settings; the local demos (plaintext broker by construction) are the only exception.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Local demos run their own PLAINTEXT broker (nodes.demo.mission.LocalBroker) and nothing else.
EXEMPT = {"nodes/demo/mission.py", "nodes/demo/trust_mission.py", "nodes/demo/sealing.py"}
CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}
# Helpers that open clients (called by bare name); each takes ``security=`` and must get it.
HELPERS = {
    "reliable_producer", "replay", "topic_partitions", "ensure_topics", "end_offsets",
    "RegistryFollower", "TrustFollower", "topic_message_limit", "apply_acls", "describe_acls",
}  # fmt: skip


def _name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _problems(source: str, rel: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node)
        where = f"{rel}:{node.lineno} {name}()"
        if name in CLIENTS:
            spread = [k.value for k in node.keywords if k.arg is None]
            ok = any(
                isinstance(v, ast.Call) and _name(v) == "client_options" and len(v.args) >= 2
                for v in spread
            )
            # bus.kafka.client.reliable_producer builds its options with client_options first.
            ok = ok or (
                rel == "bus/kafka/client.py" and any(isinstance(v, ast.Name) for v in spread)
            )
            if not ok:
                out.append(f"{where}: build it with **client_options(bootstrap, security)")
        elif name in HELPERS and isinstance(node.func, ast.Name):  # not consumer.end_offsets
            given = {k.arg: k.value for k in node.keywords}
            if "security" not in given:
                out.append(f"{where}: pass security=")
            elif isinstance(given["security"], ast.Constant):
                out.append(f"{where}: security= is a constant, not the caller's settings")
    return out


def test_every_kafka_client_carries_the_security_settings() -> None:
    files = [
        p
        for d in ("bus", "nodes")
        for p in sorted((REPO / d).rglob("*.py"))
        if "_pb" not in p.parts and p.relative_to(REPO).as_posix() not in EXEMPT
    ]
    assert len(files) > 40
    problems = [
        p
        for f in files
        for p in _problems(f.read_text(encoding="utf-8"), f.relative_to(REPO).as_posix())
    ]
    assert problems == []


def test_the_check_sees_a_client_without_settings() -> None:
    probe = (
        "from aiokafka import AIOKafkaConsumer\n"
        "from bus.kafka.client import client_options, replay\n"
        "a = AIOKafkaConsumer(bootstrap_servers='x')\n"
        "b = AIOKafkaConsumer(**client_options('x'))\n"
        "c = AIOKafkaConsumer(**client_options('x', sec))\n"
        "d = replay('x', ['t'])\n"
        "e = replay('x', ['t'], security=None)\n"
        "f = replay('x', ['t'], security=sec)\n"
        "g = consumer.end_offsets(tps)\n"
    )
    found = _problems(probe, "nodes/probe.py")
    assert [p.split(" ", 1)[0].rsplit(":", 1)[1] for p in found] == ["3", "4", "6", "7"]
