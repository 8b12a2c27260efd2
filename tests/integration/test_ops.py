"""The ops port of a real ``obus node`` through a broker outage.

The node runs as a subprocess (``obus node``, JSON logs, ops on a free port) against a broker of
its own (this test stops and restarts it, so not the session's). Before the outage ``/readyz``
is 200 with every check ok and ``/metrics`` parses with prometheus-client's own parser; while
the broker is down ``/readyz`` is 503 naming ``broker_unreachable`` (``/healthz`` stays 200: the
process lives); after the broker is back on its port, ``/readyz`` is 200 again. The Kafka
client's error flood is cut to one event per state change: the log holds a handful of aiokafka
lines at most, alternating ``kafka_broker_unreachable`` / ``kafka_broker_reachable`` events, and
the reachable event counts what it suppressed (also ``obus_kafka_log_lines_suppressed_total``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.topics import Topics
from tests.kafka_broker import LocalKafka, free_ports
from tests.mission import live_mission
from tests.sealers import publish_records

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 120.0
OUTAGE_S = 20.0  # long enough for every client of the node to retry many times


async def _get(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


def _poll(
    proc: subprocess.Popen[bytes], log: Path, url: str, want: Callable[[int, str], bool], what: str
) -> tuple[int, str]:
    deadline = time.monotonic() + WAIT_S
    while True:
        assert proc.poll() is None, log.read_text()[-4000:]
        status, text = asyncio.run(_get(url))
        if want(status, text):
            return status, text
        assert time.monotonic() < deadline, f"{what}: last answer {status} {text[:2000]}"
        time.sleep(0.5)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"event": line, "logger": "?"})
    return out


def _up_again(kafka: LocalKafka, port: int) -> None:
    """Start the stopped broker again on its client port (a fresh controller port)."""
    (controller,) = free_ports(1)
    proc = kafka.run(
        "up", "--port", str(port), "--controller-port", str(controller),
        "--data-dir", str(kafka.data_dir), "--timeout", "120", "--exit-with", str(os.getpid()),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout


def test_readyz_follows_a_broker_outage_and_the_client_flood_is_one_event_per_change(
    tmp_path: Path,
) -> None:
    m = live_mission()
    kafka = LocalKafka(tmp_path / "kafka")
    kafka.start()
    try:
        port = kafka.port
        topics = Topics(f"ops{uuid.uuid4().hex[:10]}.")
        records = [(topics.mandate, m.scenario.mandate_envelope)]
        records += [(topics.registry, raw) for raw in m.scenario.accreditations]
        records += [(topics.reports("un"), m.next_report("un", 1)) for _ in range(5)]
        asyncio.run(publish_records(kafka.bootstrap, topics, records))
        (tmp_path / "mandate.bin").write_bytes(m.scenario.mandate_envelope)
        (ops_port,) = free_ports(1)
        log = tmp_path / "node.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nodes.cli", "node", "--org", "un",
                 "--mandate", str(tmp_path / "mandate.bin"), "--db", str(tmp_path / "un.db"),
                 "--bootstrap", kafka.bootstrap, "--topic-prefix", topics.prefix,
                 "--ops-listen", f"127.0.0.1:{ops_port}", "--ready-max-lag", "0",
                 "--no-seal", "--no-attachments"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        ops = f"http://127.0.0.1:{ops_port}"
        try:
            _, text = _poll(proc, log, f"{ops}/readyz", lambda s, _: s == 200, "ready at start")
            # --ready-max-lag 0: ready only once every report on the broker is stored
            ready = json.loads(text)
            assert ready["ready"] and ready["reasons"] == []
            assert set(ready["checks"]) == {
                "broker", "lag", "consumer_group", "sealer", "followup", "store",
            }  # fmt: skip
            _, metrics = _poll(
                proc, log, f"{ops}/metrics",
                lambda s, t: s == 200 and "obus_reports_verified_total 5.0" in t, "5 stored",
            )  # fmt: skip
            samples = _samples(metrics)
            assert samples[("obus_broker_reachable", ())] == 1.0
            assert samples[("obus_ready", ())] == 1.0
            assert samples[("obus_reports_verified_total", ())] == 5.0
            assert samples[("obus_ingest_records_total", (("outcome", "accepted"),))] == 5.0

            kafka.stop()  # its data dir stays: this test owns it
            down = time.monotonic()
            _, text = _poll(
                proc, log, f"{ops}/readyz",
                lambda s, t: s == 503 and "broker_unreachable" in t, "not ready in the outage",
            )  # fmt: skip
            body = json.loads(text)
            assert body["ready"] is False and "broker_unreachable" in body["reasons"]
            assert body["checks"]["broker"]["detail"]  # says what failed
            status, alive = asyncio.run(_get(f"{ops}/healthz"))
            assert status == 200 and json.loads(alive)["status"] == "ok"
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
            outage_s = time.monotonic() - down

            _up_again(kafka, port)
            _poll(proc, log, f"{ops}/readyz", lambda s, _: s == 200, "ready after the outage")
            # the outage ends (its event logged) at the second probe answer in a row
            _, metrics = _poll(
                proc, log, f"{ops}/metrics",
                lambda s, t: s == 200 and "obus_broker_state_changes_total 2.0" in t,
                "the outage closed",
            )  # fmt: skip
            after = _samples(metrics)
            assert after[("obus_broker_reachable", ())] == 1.0
            suppressed = after[("obus_kafka_log_lines_suppressed_total", ())]
            assert suppressed > 0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    finally:
        kafka.stop()
    events = _events(log)
    kafka_lines = [e for e in events if str(e.get("logger", "")).startswith("aiokafka")]
    changes = [
        e for e in events if e["event"] in ("kafka_broker_unreachable", "kafka_broker_reachable")
    ]
    kinds = [e["event"] for e in changes]
    print(
        f"outage {outage_s:.0f} s: {len(kafka_lines)} Kafka client lines logged,"
        f" {suppressed:.0f} suppressed, {len(changes)} state-change events:",
        [(e["event"], e.get("why", e.get("suppressed_lines"))) for e in changes],
    )
    # One event per change: the outage, then its end with what it suppressed.
    assert kinds == ["kafka_broker_unreachable", "kafka_broker_reachable"]
    assert changes[1]["suppressed_lines"] == suppressed > 0
    # The flood: a handful of client lines over the whole outage, not hundreds a second.
    assert len(kafka_lines) <= 20, [e.get("event") for e in kafka_lines]
