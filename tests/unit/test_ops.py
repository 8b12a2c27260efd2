"""The ops server (nodes/runtime/ops.py), the broker watch and its log gate
(nodes/runtime/broker_watch.py), and the node's readiness rule (nodes/org_node/health.py)."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from bus.errors import ConfigError
from nodes.demo.scenario import demo_key
from nodes.gateway.http import GatewayServer
from nodes.gateway.service import GatewayConfig
from nodes.org_node.health import node_checks
from nodes.runtime import ops as ops_module
from nodes.runtime.broker_watch import BrokerWatch, KafkaLogGate, connection_failure
from nodes.runtime.ops import (
    Check,
    GatewayOps,
    Listen,
    OpsServer,
    RequestMetrics,
    parse_listen,
    store_writable,
)
from tests.kafka_broker import free_ports
from tests.mission import make_mission
from tests.sealed_log import TOPICS

# -- listen addresses ----------------------------------------------------------------------------


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9464") == Listen("127.0.0.1", 9464)
    assert parse_listen(":0") == Listen("127.0.0.1", 0)
    assert parse_listen("[::1]:9464") == Listen("::1", 9464)
    assert parse_listen("0.0.0.0:80", explicit=False) == Listen("0.0.0.0", 80, explicit=False)
    assert str(Listen("::1", 1)) == "[::1]:1"
    for bad in ("9464", "host:", "a:b:c", "h:99999", "h:-1", ""):
        with pytest.raises(ConfigError) as err:
            parse_listen(bad)
        assert err.value.key == "--ops-listen"


# -- the log gate --------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def lines() -> Iterator[_Lines]:
    handler = _Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _flood(n: int) -> None:
    conn = logging.getLogger("aiokafka.conn")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    for i in range(n):
        conn.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
        coordinator.warning("Heartbeat failed for group %s: coordinator (node %s)", "g", i)


def test_the_outage_flood_is_one_event_per_change_with_the_suppressed_count(
    lines: _Lines,
) -> None:
    clock = [100.0]
    gate = KafkaLogGate(clock=lambda: clock[0])
    with capture_logs() as events:
        gate.install()
        logging.getLogger("aiokafka.consumer").warning("Topic t not found in cluster metadata")
        gate.reachable()  # the first probe: no event (nothing changed from an outage)
        _flood(200)  # 400 lines: the first turns the state, the rest are counted
        logging.getLogger("nodes.org_node.ingest").warning("our own line")
        clock[0] += 50.0
        gate.reachable()  # reachable at once, the outage still open ...
        assert gate.state().reachable is True
        _flood(3)  # ... while the clients reconnect: counted, no new outage
        gate.unreachable("probe: no answer within 5 s")  # the same outage goes on
        gate.reachable()
        clock[0] += 5.0
        gate.reachable()  # a second answer in a row ends it
        _flood(2)
        gate.unreachable("probe: no answer within 5 s")  # already unreachable: no event
        gate.uninstall()
    kafka = [line for line in lines.lines if line.startswith("aiokafka")]
    # only the warning that says nothing about connections passed
    assert kafka == ["aiokafka.consumer: Topic t not found in cluster metadata"]
    assert "nodes.org_node.ingest: our own line" in lines.lines
    changes = [e for e in events if e["event"].startswith("kafka_broker_")]
    assert [e["event"] for e in changes] == [
        "kafka_broker_unreachable",
        "kafka_broker_reachable",
        "kafka_broker_unreachable",
        "kafka_broker_unreachable_at_exit",
    ]
    assert "Unable connect to node with id 1" in changes[0]["why"]
    assert changes[1]["suppressed_lines"] == 399 + 6 and changes[1]["outage_s"] == 50.0
    assert changes[3]["suppressed_lines"] == 3
    state = gate.state()
    assert state.suppressed_total == 408 and state.changes_total == 3
    # uninstalled: aiokafka's lines pass again
    _flood(1)
    assert len([line for line in lines.lines if line.startswith("aiokafka")]) == 3


def test_what_counts_as_a_connection_failure() -> None:
    def rec(name: str, level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    assert connection_failure(rec("aiokafka.conn", logging.ERROR, "Unable connect to node 1"))
    assert connection_failure(
        rec("aiokafka", logging.WARNING, "Failed fetch messages from 1: [Error 7] RequestTimedOut")
    )
    assert not connection_failure(rec("aiokafka", logging.INFO, "Unable connect to node 1"))
    assert not connection_failure(rec("nodes.x", logging.ERROR, "connection refused"))
    assert not connection_failure(rec("aiokafka", logging.WARNING, "Topic t not found"))


async def test_the_probe_names_an_unreachable_broker_and_the_watch_follows(lines: _Lines) -> None:
    (port,) = free_ports(1)  # nobody listens there
    watch = BrokerWatch(f"127.0.0.1:{port}", None, timeout_s=2.0)
    with capture_logs() as events:
        assert await watch.check() is False
    state = watch.state()
    assert state.reachable is False and f"127.0.0.1:{port}" in state.why
    assert watch.probes_total == 1 and watch.probe_failures_total == 1
    assert [e["event"] for e in events if e["event"].startswith("kafka_")] == [
        "kafka_broker_unreachable"
    ]


# -- store writable ------------------------------------------------------------------------------


def _db(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    return path


def test_store_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(tmp_path / "s.db")
    assert store_writable("store", db) == Check("store", True)
    missing = store_writable("store", tmp_path / "none.db")
    assert (missing.ok, missing.reason) == (False, "store_missing")
    full = store_writable("store", db, min_free_bytes=1 << 62)
    assert (full.ok, full.reason) == (False, "disk_full")
    monkeypatch.setattr(ops_module, "STORE_LOCK_TIMEOUT_S", 0.1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the store's write lock
    try:
        wedged = store_writable("store", db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (wedged.ok, wedged.reason) == (False, "store_not_writable")
    assert "locked" in wedged.detail
    assert store_writable("store", db).ok  # nothing was written meanwhile
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone()
    assert rows == (0,)


# -- the server ----------------------------------------------------------------------------------


class _Process:
    """What a process gives its ops server: checks it can turn, families it counts."""

    def __init__(self) -> None:
        self.alive = Check("alive", True)
        self.checks = [Check("store", True), Check("lag", True)]
        self.fail: Exception | None = None
        self.evaluations = 0
        self.renders = 0

    async def ready(self) -> list[Check]:
        self.evaluations += 1
        if self.fail is not None:
            raise self.fail
        return list(self.checks)

    async def families(self) -> list[Metric]:
        self.renders += 1
        return [CounterMetricFamily("obus_things", "Things done", 7)]


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[_Process, OpsServer]]:
    monkeypatch.setattr(ops_module, "CACHE_S", 0.0)  # every request evaluates afresh
    proc = _Process()
    server = OpsServer(
        Listen("127.0.0.1", 0), what="test", alive=lambda: proc.alive, ready=proc.ready,
        families=proc.families, broker=None,
    )  # fmt: skip
    assert await server.start()
    try:
        yield proc, server
    finally:
        await server.stop()


async def _get(url: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_healthz_readyz_and_metrics(served: tuple[_Process, OpsServer]) -> None:
    proc, server = served
    status, text, _ = await _get(server.url + "healthz")
    assert status == 200 and json.loads(text)["status"] == "ok"
    status, text, _ = await _get(server.url + "readyz")
    body = json.loads(text)
    assert (status, body["ready"], body["reasons"]) == (200, True, [])
    assert body["checks"]["lag"] == {"ok": True, "reason": "", "detail": ""}

    proc.checks[1] = Check("lag", False, "lagging", "12000 records not yet stored (bound 10000)")
    status, text, _ = await _get(server.url + "readyz")
    body = json.loads(text)
    assert (status, body["ready"], body["reasons"]) == (503, False, ["lagging"])
    assert body["checks"]["lag"]["detail"].startswith("12000 records")

    status, text, headers = await _get(server.url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["obus_things"].type == "counter"
    assert fams["obus_things"].samples[0].name == "obus_things_total"
    assert fams["obus_ready"].samples[0].value == 0.0
    checks = {s.labels["check"]: s.value for s in fams["obus_ready_check"].samples}
    assert checks == {"store": 1.0, "lag": 0.0}
    assert "process_cpu_seconds" in fams  # the standard process families

    proc.alive = Check("alive", False, "part_failed", "sealer-un: stopped")
    status, text, _ = await _get(server.url + "healthz")
    assert status == 503 and json.loads(text)["status"] == "part_failed"
    status, _, _ = await _get(server.url + "elsewhere")
    assert status == 404


async def test_a_check_that_raises_is_a_failed_check(served: tuple[_Process, OpsServer]) -> None:
    proc, server = served
    proc.fail = RuntimeError("store vanished")
    status, text, _ = await _get(server.url + "readyz")
    body = json.loads(text)
    assert status == 503 and body["reasons"] == ["check_failed"]
    assert "store vanished" in body["checks"]["checks"]["detail"]


async def test_requests_share_one_evaluation_per_cache_period() -> None:
    proc = _Process()
    server = OpsServer(
        Listen("127.0.0.1", 0), what="test", alive=lambda: proc.alive, ready=proc.ready,
        families=proc.families, broker=None,
    )  # fmt: skip
    assert await server.start()
    try:
        for _ in range(5):
            assert (await _get(server.url + "readyz"))[0] == 200
            assert (await _get(server.url + "metrics"))[0] == 200
    finally:
        await server.stop()
    assert (proc.evaluations, proc.renders) == (1, 1)


async def test_a_taken_address_named_by_the_operator_stops_the_start() -> None:
    first = OpsServer(
        Listen("127.0.0.1", 0), what="a", alive=lambda: Check("alive", True),
        ready=_Process().ready, families=_Process().families, broker=None,
    )  # fmt: skip
    assert await first.start()
    try:
        taken = Listen("127.0.0.1", first.port)
        named = OpsServer(
            taken, what="b", alive=lambda: Check("alive", True), ready=_Process().ready,
            families=_Process().families, broker=None,
        )  # fmt: skip
        with pytest.raises(ConfigError) as err:
            await named.start()
        assert err.value.key == "--ops-listen"
        default = OpsServer(
            Listen("127.0.0.1", first.port, explicit=False), what="c",
            alive=lambda: Check("alive", True), ready=_Process().ready,
            families=_Process().families, broker=None,
        )  # fmt: skip
        with capture_logs() as events:
            assert await default.start() is False  # runs on without ops, and says so
        assert [e["event"] for e in events] == ["ops_port_unavailable"]
    finally:
        await first.stop()


# -- request metrics (the gateway's public port) -------------------------------------------------


async def test_request_metrics_count_answers_by_route_status_and_reason() -> None:
    metrics = RequestMetrics("obus_gateway", timed=("POST", "/v1/reports", 201))

    async def post(request: web.Request) -> web.Response:
        if (await request.read()) == b"bad":
            body = json.dumps({"reason": "bad_signature", "detail": "no"}).encode()
            return web.Response(status=403, body=body, content_type="application/json")
        return web.Response(status=201, body=b"receipt")

    async def proof(_: web.Request) -> web.Response:
        return web.json_response({"reason": "record_not_sealed", "detail": "later"}, status=404)

    app = web.Application(middlewares=[metrics.middleware])
    app.router.add_post("/v1/reports", post)
    app.router.add_get("/v1/proofs/{topic}/{partition}/{offset}", proof)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for body in (b"ok", b"ok", b"bad"):
                async with s.post(f"{url}/v1/reports", data=body) as resp:
                    await resp.read()
            for i in range(3):  # distinct paths, one route
                async with s.get(f"{url}/v1/proofs/t/0/{i}") as resp:
                    await resp.read()
            async with s.get(f"{url}/no/such/{'x' * 50}") as resp:
                assert resp.status == 404
    finally:
        await runner.cleanup()
    samples = _samples(metrics.families())
    assert samples[("obus_gateway_requests_total", ("/v1/reports", "POST", "201", ""))] == 2
    assert samples[("obus_gateway_requests_total", ("/v1/reports", "POST", "403", "bad_signature"))] == 1  # fmt: skip
    proofs = ("/v1/proofs/{topic}/{partition}/{offset}", "GET", "404", "record_not_sealed")
    assert samples[("obus_gateway_requests_total", proofs)] == 3
    assert samples[("obus_gateway_requests_total", ("unmatched", "GET", "404", ""))] == 1
    assert samples[("obus_gateway_publish_latency_seconds_count", ())] == 2
    assert samples[("obus_gateway_publish_latency_seconds_bucket", ("+Inf",))] == 2


_ORDER = ("route", "method", "status", "reason", "le")


def _samples(fams: list[Metric]) -> dict[tuple[str, tuple[str, ...]], float]:
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415
    from prometheus_client.registry import Collector  # noqa: PLC0415

    class _Fams(Collector):
        def collect(self) -> list[Metric]:
            return fams

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fams())
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(s.labels[k] for k in _ORDER if k in s.labels)): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


# -- the node's readiness rule -------------------------------------------------------------------


def _status(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "group": {
            "state": "ok",
            "lag": {"t/0": 3, "t/1": 4},
            "why": "",
            "partitions": {"exist": 2},
        },
        "seal": {"alarm": None},
        "running": True,
    }
    return {**status, **changes}


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_caught_up_node_is_ready() -> None:
    checks = _by_name(node_checks(_status(), max_lag=7))
    assert all(c.ok for c in checks.values())
    assert set(checks) == {"lag", "consumer_group", "sealer", "followup"}
    assert checks["lag"].detail == "7 records behind"


def test_what_makes_a_node_not_ready() -> None:
    lagging = _by_name(node_checks(_status(), max_lag=6))["lag"]
    assert (lagging.ok, lagging.reason) == (False, "lagging")
    starved = _status(
        group={
            "state": "starved",
            "lag": {},
            "why": "2 of 4 partitions ...",
            "partitions": {"exist": 4},
        }
    )
    group = _by_name(node_checks(starved, max_lag=6))["consumer_group"]
    assert (group.ok, group.reason, group.detail) == (False, "starved", "2 of 4 partitions ...")
    unknown = _status(group={"state": "unknown", "why": "no answer within 15 s"})
    lag = _by_name(node_checks(unknown, max_lag=6))["lag"]
    assert (lag.ok, lag.reason, lag.detail) == (False, "lag_unknown", "no answer within 15 s")
    fork = _status(seal={"alarm": {"reason": "seal_fork", "detail": "two final texts"}})
    sealer = _by_name(node_checks(fork, max_lag=9))["sealer"]
    assert (sealer.ok, sealer.reason) == (False, "seal_fork")
    broken = _status(seal={"alarm": {"reason": "sealed_root_mismatch", "detail": "altered"}})
    sealer = _by_name(node_checks(broken, max_lag=9))["sealer"]
    assert (sealer.ok, sealer.reason) == (False, "sealed_log_broken")
    assert sealer.detail == "sealed_root_mismatch: altered"
    empty = _status(group={"state": "ok", "lag": {}, "why": "", "partitions": {"exist": 0}})
    lag = _by_name(node_checks(empty, max_lag=9))["lag"]
    assert (lag.ok, lag.reason) == (False, "no_report_partitions")
    stopped = _by_name(node_checks(_status(running=False), max_lag=9))["followup"]
    assert (stopped.ok, stopped.reason) == (False, "followup_stopped")
    no_sealer = _by_name(node_checks(_status(seal=None), max_lag=9))["sealer"]
    assert no_sealer.ok and no_sealer.detail == "no sealer"


# -- the gateway's ops -----------------------------------------------------------------------------


async def test_gateway_ops_say_why_a_gateway_is_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway before its first seal, with no broker: not ready, naming both reasons, and its
    metrics parse (requests, publish queue, trust epoch)."""
    monkeypatch.setattr(ops_module, "CACHE_S", 0.0)  # answers after the probe's verdict below
    (dead,) = free_ports(1)
    cfg = GatewayConfig(
        org="un", bootstrap=f"127.0.0.1:{dead}", db_path=tmp_path / "gw.db",
        mandate=make_mission(1).scenario.mandate, node_key=demo_key("ops-unit"),
        topics=TOPICS, final_db=tmp_path / "un.final.db",
    )  # fmt: skip
    server = GatewayServer(cfg)
    ops = GatewayOps(Listen("127.0.0.1", 0), bootstrap=cfg.bootstrap, security=None)
    with capture_logs():
        await ops.start(server)
        try:
            assert ops.server is not None
            await ops.watch.check()  # the probe's verdict, whatever the first one's timing
            status, text, _ = await _get(ops.server.url + "readyz")
            _, metrics, _ = await _get(ops.server.url + "metrics")
        finally:
            await ops.stop()
            server.gateway.store.close()
    body = json.loads(text)
    assert status == 503 and body["process"] == "gateway un"
    assert body["reasons"] == ["broker_unreachable", "not_sealed_yet"]
    assert body["checks"]["store"]["ok"] is True
    fams = {f.name: f for f in text_string_to_metric_families(metrics)}
    reports = {s.labels["state"]: s.value for s in fams["obus_gateway_reports"].samples}
    assert reports == {"publishing": 0.0, "published": 0.0}
    assert fams["obus_gateway_trust_epoch"].samples[0].value == 0.0
    assert fams["obus_gateway_ready"].samples[0].value == 0.0
    assert fams["obus_gateway_publish_latency_seconds"].type == "histogram"
    assert fams["obus_broker_reachable"].samples[0].value == 0.0
