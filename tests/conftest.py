"""Shared fixtures.

Kafka: tests that talk to a broker request ``kafka_bootstrap`` and carry ``@pytest.mark.kafka``.
One broker serves the whole session; it starts only when the first such test runs, so unit
tests need neither Java nor Kafka. ``OBUS_BOOTSTRAP=host:port`` points the tests at a broker
you already run instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.kafka_broker import LocalKafka

KAFKA_FIXTURES = ("kafka_bootstrap", "local_kafka")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if any(name in fixtures for name in KAFKA_FIXTURES) and not item.get_closest_marker(
            "kafka"
        ):
            raise pytest.UsageError(
                f"{item.nodeid} uses a Kafka broker fixture; mark it @pytest.mark.kafka"
            )


@pytest.fixture(scope="session")
def local_kafka() -> Iterator[LocalKafka | None]:
    """The broker this session started (stopped at session end), or None with OBUS_BOOTSTRAP."""
    if os.environ.get("OBUS_BOOTSTRAP"):
        yield None
        return
    kafka = LocalKafka()
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka | None) -> str:
    """``host:port`` of a Kafka broker shared by the whole test session."""
    if local_kafka is None:
        return os.environ["OBUS_BOOTSTRAP"]
    return local_kafka.bootstrap
