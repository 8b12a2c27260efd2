"""Archive mode on a real Kafka broker: a mission whose mandate ended 35 days ago, its log still
on the bus.

``obus log export``, live ``obus audit`` and ``obus audit --from`` work on it and say so; ``obus
node`` starts on it, stores the reports, serves its dashboard, makes its decisions and publishes
none (nothing on its decisions topic), saying why. Every command runs as a person runs it (a
subprocess of ``python -m nodes.cli``); each test has its own topic prefix.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bus.ceremony import format_time_ms
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.kafka.replay import replay
from bus.model import Category, Envelope, Report, Role
from bus.store.node import NodeStore
from bus.topics import Topics, report_headers, standard_topics
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from nodes.org_node.dashboard.auth import hash_password
from nodes.runtime.files import write_key
from tests.mission import Mission, make_mission
from tests.unit.test_dashboard_auth import PASSWORD, USER, logged_in

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[2]
ORGS = [o for o, _ in ORGANIZATIONS]
DAY_MS = 86_400_000
PAST = time.time_ns() // 1_000_000 - 400 * DAY_MS  # the mission's "now": it ended 35 days ago
REPORTS = 4


@dataclass
class Ended:
    """An ended mission on the broker, and its files."""

    bootstrap: str
    topics: Topics
    m: Mission
    mandate: Path
    node_key: Path

    @property
    def end(self) -> str:
        return format_time_ms(self.m.scenario.mandate.not_after_ms)

    async def obus(self, *args: str, timeout_s: float = 180) -> tuple[int, str]:
        """Run ``obus ARGS`` to its end; returns the exit code and its output."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodes.cli", *args, "--topic-prefix", self.topics.prefix,
            cwd=REPO, env=_env(self.bootstrap), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
        return proc.returncode or 0, out.decode(errors="replace")


def _env(bootstrap: str) -> dict[str, str]:
    return {**os.environ, "OBUS_BOOTSTRAP": bootstrap, "OBUS_LOG_JSON": "1"}


async def _ended_mission(bootstrap: str, tmp: Path) -> Ended:
    """Publish what the mission logged: its mandate, registry (with UN's node key) and reports
    UN's policy escalates and publishes (shelling, severity 5)."""
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    m = make_mission(observers_per_org=1, now_ms=PAST)
    key = demo_key("it:archive:un-node")
    m.accredit("un-node", "un", key, Role.NODE)
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=1))
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        mandate = m.scenario.mandate
        await producer.send_and_wait(
            topics.mandate, m.scenario.mandate_envelope,
            key=f"{mandate.mandate_id}:{mandate.version}".encode(),
        )  # fmt: skip
        for raw in m.registry:
            await producer.send_and_wait(topics.registry, raw)
        for i in range(REPORTS):
            org = ("un", "osce")[i % 2]
            raw = m.next_report(org, 1, category=Category.SHELLING, severity=5)
            rep = Report.decode(Envelope.decode(raw).payload)
            await producer.send_and_wait(
                topics.reports(org), raw, key=rep.observer_id.encode(),
                headers=report_headers(rep.report_id, rep.org, rep.observer_id),
            )  # fmt: skip
    finally:
        await producer.stop()
    (tmp / "mandate.bin").write_bytes(m.scenario.mandate_envelope)
    write_key(tmp / "un-node.key", key)
    return Ended(bootstrap, topics, m, tmp / "mandate.bin", tmp / "un-node.key")


async def test_log_export_and_live_audit_of_an_ended_mission(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    e = await _ended_mission(kafka_bootstrap, tmp_path)
    notice = f"ended on {e.end}: archive mode, read-only"
    export = tmp_path / "log.jsonl"
    code, out = await e.obus("log", "export", str(export), "--mandate", str(e.mandate))
    assert code == 0, out
    assert notice in out and f"{REPORTS} reports" in out
    code, out = await e.obus("audit", "--mandate", str(e.mandate))
    assert code == 0, out
    assert notice in out and "VERDICT: every sealed record verified" in out
    code, out = await e.obus("audit", "--from", str(export), "--mandate", str(e.mandate))
    assert code == 0, out
    assert notice in out and "VERDICT: every sealed record verified" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "event" in doc:
            out.append(doc)
    return out


async def _until(check: Callable[[], Any], what: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = check()
        except Exception:  # noqa: BLE001 - the store may not exist yet
            got = None
        if got:
            return got
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting until {what}")


def _read(db: Path, fn: Callable[[NodeStore], Any]) -> Any:
    store = NodeStore(db, read_only=True)
    try:
        return fn(store)
    finally:
        store.close()


async def test_node_on_an_ended_mandate_stores_and_serves_but_publishes_no_decision(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    e = await _ended_mission(kafka_bootstrap, tmp_path)
    db, log, port = tmp_path / "un.db", tmp_path / "node.log", _free_port()
    # The mission's log was never sealed (no quorum of sealers ran while it was live): the
    # UN's rules act on provisional verdicts here, so that the node decides at all.
    policy = tmp_path / "un.toml"
    text = (REPO / "deploy" / "policies" / "un.toml").read_text(encoding="utf-8")
    policy.write_text(
        text.replace("[[rule]]\n", '[[rule]]\nverdicts = "provisional"\n'), encoding="utf-8"
    )
    # The dashboard lets in its users only: one operator, cheaply hashed (tests check logic).
    users = tmp_path / "dashboard-users"
    users.write_text(f"{USER}:{hash_password(PASSWORD, log2_n=4)}\n", encoding="utf-8")
    argv = [
        sys.executable, "-m", "nodes.cli", "node", "--org", "un", "--mandate", str(e.mandate),
        "--db", str(db), "--policy", str(policy),
        "--node-key", str(e.node_key), "--http-port", str(port), "--no-attachments",
        "--dashboard-users", str(users), "--topic-prefix", e.topics.prefix,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=_env(kafka_bootstrap), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        await _until(lambda: _read(db, lambda s: s.count_reports()) == REPORTS, "reports stored")
        await _until(lambda: _read(db, lambda s: s.own_decisions()), "un decides")
        said = await _until(
            lambda: [
                ev for ev in _events(log) if ev["event"] == "decisions_unpublished_mandate_ended"
            ],
            "the follow-up says why it publishes nothing",
        )
        assert said[0]["ended"] == e.end
        summary = f"http://127.0.0.1:{port}/api/summary"
        async with aiohttp.ClientSession() as anon, anon.get(summary) as resp:
            assert resp.status == 401  # archive mode serves its operators, not everybody
            assert (await resp.json())["reason"] == "login_required"
        async with logged_in(summary) as http, http.get(summary) as resp:
            assert resp.status == 200
            assert (await resp.json())["mandate"]["id"] == e.m.scenario.mandate.mandate_id
        assert proc.returncode is None, log.read_text()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0, log.read_text()
    events = {ev["event"]: ev for ev in _events(log)}
    assert events["archive_mode"]["ended"] == e.end
    # The sealer starts without a signing key: it judges the seals made before the end and
    # proposes and cosigns nothing.
    assert events["sealer_started"]["witness"] is False
    assert events["followup_started"]["archive"] is True
    # Decided, stored and shown, never signed or sent: nothing on the decisions topic.
    decisions = _read(db, lambda s: s.own_decisions())
    assert decisions and all(sd.decision.publish for sd in decisions)
    assert all(sd.pub_state != "published" and sd.pub_envelope is None for sd in decisions)
    published = [r async for r in replay(kafka_bootstrap, [e.topics.decisions("un")])]
    assert published == []
    assert [r async for r in replay(kafka_bootstrap, [e.topics.seals])] == []
