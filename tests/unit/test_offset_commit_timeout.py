"""Kafka group-offset commits never stall a loop, and a part's bug still stops the others.

aiokafka's ``consumer.commit()`` retries retriable errors (coordinator unknown, broker down)
without limit. The node and the attachment reassembler commit group offsets only
for operators' lag tooling (each resumes from its own store), so a commit still running after
``OFFSET_COMMIT_TIMEOUT_S`` is given up like a failed one: a warning, and the loop goes on.
No broker: the consumers are fakes whose commit never returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from bus.errors import StoreError
from nodes.org_node import ingest as org_node
from nodes.org_node import process
from nodes.org_node.attachments import AttachmentNode, AttachmentNodeConfig
from nodes.org_node.config import NodeConfig
from nodes.org_node.ingest import OrgNode
from nodes.org_node.process import build_node, run_node
from nodes.runtime import consumer as runtime_consumer
from nodes.runtime.broker_watch import BrokerWatch
from tests.logcapture import capture_all_logs
from tests.mission import make_mission

TOPIC = "obus.reports.un"
TP = TopicPartition(TOPIC, 0)
TIMEOUT_S = 0.05  # OFFSET_COMMIT_TIMEOUT_S of nodes.runtime.consumer, shortened for the tests
# A hang guard (100 x TIMEOUT_S), not a speed figure: without the bound these calls never
# return. What proves the bound is that the hanging commit was cancelled (asserted below).
BOUND_S = 5.0


class HangingConsumer:
    """A consumer whose commit never returns (aiokafka retrying while the broker is away)."""

    def __init__(self, assigned: set[TopicPartition], records: dict[Any, list[Any]]) -> None:
        self.assigned = assigned
        self.records = records
        self.commits: list[dict[TopicPartition, int]] = []
        self.cancelled = 0

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def getmany(self, *_tps: TopicPartition, **_kwargs: Any) -> dict[Any, list[Any]]:
        out, self.records = self.records, {}
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class FailingConsumer(HangingConsumer):
    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)
        raise KafkaConnectionError("broker away")


@pytest.fixture(autouse=True)
def _short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime_consumer.OFFSET_COMMIT_TIMEOUT_S == 10.0
    monkeypatch.setattr(runtime_consumer, "OFFSET_COMMIT_TIMEOUT_S", TIMEOUT_S)


class NoTrustFollower:
    """Stands in for the registry reader, which would open a Kafka consumer."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        pass

    async def catch_up(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(org_node, "TrustFollower", NoTrustFollower)


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_all_logs() as captured:
        yield captured


def _warnings(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "offset_commit_failed"]


# -- the node ----------------------------------------------------------------------------------


def _node(tmp_path: Path, consumer: HangingConsumer) -> OrgNode:
    m = make_mission()
    node = build_node(NodeConfig("un", "127.0.0.1:1", tmp_path / "node.db", m.scenario.mandate))
    node._consumer = cast(Any, consumer)
    node._stored = {(TOPIC, 0): 7}
    return node


@pytest.mark.parametrize("consumer_type", [HangingConsumer, FailingConsumer])
async def test_node_commit_is_bounded(
    tmp_path: Path, logs: list[MutableMapping[str, Any]], consumer_type: type[HangingConsumer]
) -> None:
    consumer = consumer_type({TP}, {})
    node = _node(tmp_path, consumer)
    try:
        await asyncio.wait_for(node._commit_offsets(force=True), BOUND_S)
        assert consumer.commits == [{TP: 7}]
        assert consumer.cancelled == (consumer_type is HangingConsumer)
        [warning] = _warnings(logs)
        assert warning["log_level"] == "warning" and warning["partitions"] == 1
        # the next stored batch commits again
        node._stored = {(TOPIC, 0): 9}
        await asyncio.wait_for(node._commit_offsets(force=True), BOUND_S)
        assert consumer.commits[-1] == {TP: 9}
    finally:
        node.store.close()
        node._writer.close()


# -- the attachment reassembler ----------------------------------------------------------------


@pytest.mark.parametrize("consumer_type", [HangingConsumer, FailingConsumer])
async def test_attachment_commit_is_bounded(
    tmp_path: Path, logs: list[MutableMapping[str, Any]], consumer_type: type[HangingConsumer]
) -> None:
    node = AttachmentNode(
        AttachmentNodeConfig("un", "127.0.0.1:1", tmp_path / "a.db", tmp_path / "blobs", None)
    )
    atp = TopicPartition("obus.attachments.un", 0)
    node._positions = {(atp.topic, 0): 3}
    consumer = consumer_type({atp}, {})
    try:
        await asyncio.wait_for(node._commit(cast(Any, consumer)), BOUND_S)
    finally:
        node.store.close()
    assert consumer.commits == [{atp: 3}]
    assert len(_warnings(logs)) == 1


# -- run_node ------------------------------------------------------------------------------------


class Buggy:
    """A part whose run() fails with something that is not a BusError (a bug)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.stopped = False

    async def run(self) -> None:
        await asyncio.sleep(0)
        raise self.exc

    def stop(self) -> None:
        self.stopped = True


class Waiting:
    """A part that works until stop()."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()

    async def run(self) -> None:
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.parametrize(
    "exc", [RuntimeError("a bug"), StoreError("disk full")], ids=["bug", "bus_error"]
)
async def test_run_node_stops_every_part_when_one_fails(
    monkeypatch: pytest.MonkeyPatch, logs: list[MutableMapping[str, Any]], exc: Exception
) -> None:
    buggy = Buggy(exc)
    watches: list[BrokerWatch | None] = []

    def failing_node(_config: NodeConfig, **kwargs: Any) -> Buggy:
        watches.append(kwargs["broker"])
        return buggy

    monkeypatch.setattr(process, "build_node", failing_node)
    # the other part of the process: the attachment reassembler, working until stopped
    reassembler = Waiting()
    monkeypatch.setattr(process, "config_for_node", lambda _config, _limits: None)
    monkeypatch.setattr(process, "AttachmentNode", lambda _config: reassembler)
    # The process's broker watch is real: it probes an address where no broker listens (the
    # probe fails at once) and must be stopped with the parts.
    config = cast(
        NodeConfig,
        SimpleNamespace(
            org="un",
            bootstrap="127.0.0.1:1",
            security=None,
            attachments=object(),
            ingest_only=False,
        ),
    )
    loop = asyncio.get_running_loop()
    try:
        code = await asyncio.wait_for(run_node(config), BOUND_S)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    assert code == 1
    assert reassembler._stop.is_set() and buggy.stopped
    # the node got the process's broker watch, and it stopped with the parts: its log gate is
    # off every handler and no probe task is left
    [watch] = watches
    assert watch is not None and watch._task is None
    assert not any(watch.gate in h.filters for h in logging.getLogger().handlers)
    [failed] = [e for e in logs if e["event"] == "node_failed"]
    assert failed["log_level"] == "error" and failed["org"] == "un"
    # a bug is logged with its traceback; a BusError with its diagnostics only
    assert failed.get("exc_info", False) is (not isinstance(exc, StoreError))
