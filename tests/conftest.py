"""Shared fixtures.

Kafka: tests that talk to a broker request ``kafka_bootstrap`` and carry ``@pytest.mark.kafka``.
One broker serves the whole session; it starts only when the first such test runs, so unit
tests need neither Java nor Kafka. ``OBUS_BOOTSTRAP=host:port`` points the tests at a broker
you already run instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
import structlog

from tests.kafka_broker import LocalKafka

if TYPE_CHECKING:
    from tests.sealers import Fleet

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


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, for the browser tests; the test fails (never skips) without it."""
    from nodes.demo.cdp import find_chromium  # noqa: PLC0415

    path = find_chromium()
    if path is None:
        pytest.fail(
            "Debian's chromium is not installed, so this cannot be tested in a browser; run"
            " `make browser` (apt-get install -y chromium) or `make test`, which does it"
        )
    return path


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    """An empty :class:`tests.sealers.Fleet` of sealer tasks, every one stopped and awaited at
    the end of the test (imported here only when a test asks for it)."""
    from tests.sealers import Fleet  # noqa: PLC0415

    f = Fleet()
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test starts from the logging it found: a command run in-process (``main([...])``)
    configures the root logger with a handler on that test's captured stderr, which pytest
    closes after the test; left in place, it would make later tests' log lines fail."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
