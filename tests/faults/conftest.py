"""Fixtures of the fault tests (``make test-faults``; marker ``faults``, outside ``make test``).

One three-node KRaft cluster (deploy/local/cluster.sh) serves the session; every test starts
with all three nodes running and its own topic prefix. One signed report stream is generated
per session and published by each test to its own topics.

``OBUS_FAULT_RECORDS`` sets the stream's length (default 100000); every test module carries
``pytestmark = pytest.mark.faults``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.faults.harness import Stream, make_stream
from tests.kafka_cluster import LocalKafkaCluster

FAULT_RECORDS = int(os.environ.get("OBUS_FAULT_RECORDS", "100000"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalKafkaCluster]:
    """Three combined broker+controller nodes, RF 3, min.insync.replicas=2."""
    with LocalKafkaCluster(brokers=3) as c:
        yield c


@pytest.fixture
def healthy_cluster(cluster: LocalKafkaCluster) -> LocalKafkaCluster:
    """The session cluster with every node running (a test may have killed one)."""
    for node in list(cluster.frozen):
        cluster.thaw(node)
    cluster.restart()
    return cluster


@pytest.fixture(scope="session")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    return make_stream(FAULT_RECORDS, tmp_path_factory.mktemp("stream"))


@pytest.fixture
def small_stream(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    return make_stream(
        int(os.environ.get("OBUS_CRASH_RECORDS", "6000")), tmp_path_factory.mktemp("small")
    )
