"""Foreign exceptions stay at the edges: only the Kafka adapter (bus/kafka) knows aiokafka's
errors. It wraps them into bus.errors.TransportError (keeping ``retriable``), so everything
above it, every node and command, catches only the bus.errors tree."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADAPTER = REPO / "bus" / "kafka"


def _imports_kafka_errors(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (
                node.module == "aiokafka.errors"
                or (node.module == "aiokafka" and any(a.name == "errors" for a in node.names))
            )
        ):
            lines.append(node.lineno)
        if isinstance(node, ast.Import) and any(a.name == "aiokafka.errors" for a in node.names):
            lines.append(node.lineno)
    return lines


def test_only_the_kafka_adapter_imports_aiokafka_errors() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}"
        for root in ("bus", "nodes")
        for path in sorted((REPO / root).rglob("*.py"))
        if ADAPTER not in path.parents
        for line in _imports_kafka_errors(path)
    ]
    assert offenders == [], "wrap aiokafka errors in bus/kafka (kafka_errors/wrap): " + ", ".join(
        offenders
    )


def test_the_check_sees_an_import() -> None:
    """The check itself finds the import forms it looks for."""
    sample = REPO / "bus" / "kafka" / "client.py"
    assert _imports_kafka_errors(sample), "bus/kafka/client.py imports aiokafka.errors"
