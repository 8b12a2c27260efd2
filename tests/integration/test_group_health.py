"""Health that does not lie, on a real broker: a foreign consumer that joins a node's consumer
group and takes partitions makes the node starved (/healthz 503 naming it, /metrics showing the
real lag of the partitions the node does not read); when it leaves, the node is healthy again.
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

from bus.store.node import NodeStore
from nodes.demo.scenario import ORGANIZATIONS
from nodes.org_node.process import build_node
from tests.integration.test_followup import dashboard_url, running, world
from tests.unit.test_dashboard_auth import jar, login

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
PARTITIONS = 2  # per organization's report topic (the world's topics)


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


def _lags(metrics: str) -> dict[tuple[str, int], float]:
    rx = re.compile(r'^obus_partition_lag_records\{partition="(\d+)",topic="([^"]+)"\} (\S+)$')
    return {
        (m[2], int(m[1])): float(m[3]) for line in metrics.splitlines() if (m := rx.match(line))
    }


async def test_foreign_member_in_the_group_starves_the_node_until_it_leaves(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with world(kafka_bootstrap, tmp_path) as w:
        node = build_node(w.config("un"))
        group = f"{w.topics.prefix}node.un"
        exist = len(ORGS) * PARTITIONS
        async with running(node), aiohttp.ClientSession(cookie_jar=jar()) as http:

            async def dashboard_up() -> bool:
                await asyncio.sleep(0)
                dash = None if node.extras is None else node.extras.dashboard
                return dash is not None and dash.port != 0

            await _poll(dashboard_up, "the dashboard listens")
            base = dashboard_url(node)
            await login(http, base)

            async def get(path: str) -> tuple[int, Any]:
                async with http.get(base + path) as r:
                    body = await (r.json() if "json" in r.content_type else r.text())
                    return r.status, body

            async def healthy() -> Any:
                status, body = await get("healthz")
                group_state = (body.get("node") or {}).get("group", {})
                parts = group_state.get("partitions", {})
                ok = status == 200 and parts.get("assigned_here") == exist
                return body if ok and not group_state.get("foreign_members") else None

            health = await _poll(healthy, "the node reads every partition alone")
            assert health["status"] == "ok"
            assert health["node"]["group"]["partitions"]["exist"] == exist

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
                    status, body = await get("healthz")
                    if status != 503 or body.get("status") != "starved":
                        return None
                    names = [m["client_id"] for m in body["foreign_members"]]
                    return body if names == ["intruder"] else None

                body = await _poll(starved, "/healthz says starved, naming the intruder")
                parts = body["partitions"]
                assert parts["exist"] == exist
                assert parts["assigned_foreign"] > 0
                assert parts["assigned_here"] + parts["assigned_foreign"] + parts["unassigned"] == (
                    exist
                )
                assert "intruder" in body["why"]
                # The store's org counts and the node's own counters stay in the answer.
                assert "reports_verified" in body and body["node"]["running"] is True

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

                async def metrics_show_real_lag() -> str | None:
                    status, text = await get("metrics")
                    lags = _lags(text)
                    shown = {tp: lags.get(tp) for tp in held}
                    ok = status == 200 and shown == {tp: float(n) for tp, n in real.items()}
                    return text if ok and "obus_node_starved 1.0" in text else None

                text = await _poll(metrics_show_real_lag, "/metrics shows the real lag")
                assert "obus_group_foreign_members 1.0" in text
                assert f"obus_partitions_existing {float(exist)}" in text
                assert len(_lags(text)) == exist
            finally:
                polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await polling
                await intruder.stop()  # leaves the group

            async def recovered() -> Any:
                status, body = await get("healthz")
                _, text = await get("metrics")
                lags = _lags(text)
                ok = status == 200 and body["status"] == "ok" and "obus_node_starved 0.0" in text
                return body if ok and len(lags) == exist and not any(lags.values()) else None

            health = await _poll(recovered, "healthy again once the intruder left")
            assert health["node"]["group"]["foreign_members"] == []
            assert health["node"]["group"]["partitions"]["assigned_here"] == exist
