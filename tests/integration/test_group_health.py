"""Health that does not lie, on a real broker: a foreign consumer that joins a node's consumer
group and takes partitions makes the node starved (the ops port's ``/readyz`` 503 with the
``consumer_group`` check failing as ``starved`` and naming it, ``/metrics`` showing the real
lag of the partitions the node does not read); when it leaves, the node is ready again.

The node runs with its ops server on a free port and its process's broker watch, and without
a dashboard: health and metrics need no login and no access to reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bus.store.node import NodeStore
from nodes.demo.scenario import ORGANIZATIONS
from nodes.org_node.process import NodeOps, build_node
from nodes.runtime.broker_watch import BrokerWatch
from nodes.runtime.ops import Listen
from tests.integration.test_followup import running, world

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
PARTITIONS = 2  # per organization's report topic (the world's topics)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _poll(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 120) -> Any:
    """Await check() until it returns something truthy, within a bounded deadline."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                last = await check()
                if last:
                    return last
                await asyncio.sleep(0.3)
    except TimeoutError:
        pytest.fail(f"{what}: still not so after {timeout_s:g} s (last: {last!r})")


def _samples(text: str) -> Samples:
    """Every sample of an exposition text, parsed by prometheus-client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _lags(samples: Samples) -> dict[tuple[str, int], float]:
    """``obus_partition_lag_records`` by (topic, partition): every report partition."""
    out = {}
    for (name, labels), value in samples.items():
        if name == "obus_partition_lag_records":
            by = dict(labels)
            out[(by["topic"], int(by["partition"]))] = value
    return out


def _one(samples: Samples, name: str) -> float | None:
    return samples.get((name, ()))


async def test_foreign_member_in_the_group_starves_the_node_until_it_leaves(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with world(kafka_bootstrap, tmp_path) as w, BrokerWatch(kafka_bootstrap, None) as watch:
        node = build_node(
            w.config("un", http_port=None), ops=NodeOps(Listen("127.0.0.1", 0)), broker=watch
        )
        group = f"{w.topics.prefix}node.un"
        exist = len(ORGS) * PARTITIONS
        async with running(node), aiohttp.ClientSession() as http:

            async def ops_up() -> str | None:
                await asyncio.sleep(0)
                ops = None if node.extras is None else node.extras.ops
                return None if ops is None else str(ops.url)

            base = await _poll(ops_up, "the ops server listens")

            async def get(path: str) -> tuple[int, Any]:
                async with http.get(base + path) as r:
                    body = await (r.json() if "json" in r.content_type else r.text())
                    return r.status, body

            async def metrics() -> Samples:
                status, text = await get("metrics")
                assert status == 200, text
                return _samples(text)

            async def ready_alone() -> Any:
                status, body = await get("readyz")
                samples = await metrics()
                alone = (
                    _one(samples, "obus_partitions_assigned") == exist
                    and _one(samples, "obus_group_foreign_members") == 0
                )
                return body if status == 200 and alone else None

            ready = await _poll(ready_alone, "the node is ready and reads every partition alone")
            assert ready["ready"] is True and ready["reasons"] == []
            assert ready["checks"]["consumer_group"] == {"ok": True, "reason": "", "detail": ""}
            assert ready["checks"]["broker"]["ok"] is True

            # An outsider joins the node's group under another client id and keeps polling.
            intruder = AIOKafkaConsumer(
                bootstrap_servers=kafka_bootstrap,
                group_id=group,
                client_id="intruder",
                enable_auto_commit=False,
                auto_offset_reset="latest",
            )
            await intruder.start()
            intruder.subscribe(pattern=w.topics.reports_pattern)

            async def poll_forever() -> None:
                while True:
                    await intruder.getmany(timeout_ms=200)

            polling = asyncio.create_task(poll_forever())
            try:

                async def intruder_holds_partitions() -> set[TopicPartition]:
                    await asyncio.sleep(0)
                    return set(intruder.assignment())

                await _poll(intruder_holds_partitions, "the intruder gets partitions")
                # One report on every partition: the intruder's share is never stored here.
                for org in ORGS:
                    for p in range(PARTITIONS):
                        raw = w.m.next_report(org, p + 1)
                        await w.producer.send_and_wait(w.topics.reports(org), raw, partition=p)

                async def starved() -> Any:
                    status, body = await get("readyz")
                    check = body["checks"]["consumer_group"]
                    if status != 503 or check["reason"] != "starved":
                        return None
                    return body if "(intruder@" in check["detail"] else None

                body = await _poll(starved, "/readyz says starved, naming the intruder")
                assert body["ready"] is False and "starved" in body["reasons"]
                assert body["checks"]["consumer_group"]["ok"] is False
                # the other checks still answer for themselves: the broker is reachable
                assert body["checks"]["broker"]["ok"] is True
                detail = body["checks"]["consumer_group"]["detail"]
                counts = re.search(
                    r"of (\d+) report partitions .*: (\d+) assigned to foreign members .*"
                    r", (\d+) assigned to no member$",
                    detail,
                )
                assert counts is not None, detail
                assert int(counts[1]) == exist
                foreign, unassigned = int(counts[2]), int(counts[3])
                assert foreign > 0
                # the process lives: liveness stays 200 while the node is not ready
                status, health = await get("healthz")
                assert status == 200 and health["status"] == "ok"

                # /metrics: the real lag of every partition the intruder holds (end offset
                # minus the store's position), not just of the partitions the node reads.
                held = {(tp.topic, tp.partition) for tp in intruder.assignment()}
                ends = await intruder.end_offsets([TopicPartition(t, p) for t, p in held])
                store = NodeStore(w.tmp / "un.db", read_only=True)
                try:
                    positions = store.positions()
                finally:
                    store.close()
                real = {tp: ends[TopicPartition(*tp)] - positions.get(tp, 0) for tp in held}
                assert all(n >= 1 for n in real.values())

                async def metrics_show_real_lag() -> Samples | None:
                    samples = await metrics()
                    lags = _lags(samples)
                    shown = {tp: lags.get(tp) for tp in held}
                    ok = shown == {tp: float(n) for tp, n in real.items()}
                    return samples if ok and _one(samples, "obus_node_starved") == 1 else None

                samples = await _poll(metrics_show_real_lag, "/metrics shows the real lag")
                assert _one(samples, "obus_group_foreign_members") == 1
                assert _one(samples, "obus_partitions_existing") == exist
                assert len(_lags(samples)) == exist
                here = _one(samples, "obus_partitions_assigned")
                assert here is not None and here + foreign + unassigned == exist
                assert samples[("obus_ready_check", (("check", "consumer_group"),))] == 0
                assert _one(samples, "obus_ready") == 0
            finally:
                polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await polling
                await intruder.stop()  # leaves the group

            async def recovered() -> Any:
                status, body = await get("readyz")
                samples = await metrics()
                lags = _lags(samples)
                ok = (
                    status == 200
                    and _one(samples, "obus_node_starved") == 0
                    and _one(samples, "obus_group_foreign_members") == 0
                    and _one(samples, "obus_partitions_assigned") == exist
                )
                return body if ok and len(lags) == exist and not any(lags.values()) else None

            ready = await _poll(recovered, "ready again once the intruder left")
            assert ready["checks"]["consumer_group"]["ok"] is True
            assert ready["checks"]["lag"]["ok"] is True
