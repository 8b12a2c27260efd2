"""Follow-up measurements: policy evaluation rate and dashboard response times.

    .venv/bin/python -m bench.followup [--reports 100000] [--store-reports 20000]

1. Policy evaluation: a sealed log of signed-report observations (the demo's scenario
   generator), 500 reports per epoch, fed through :func:`bus.policy.decide_all` (the final
   rules, epoch after epoch) with each organization's shipped policy. CPU time
   (``time.process_time``), best and median of 5 runs.
2. Dashboard: a node store with ``--store-reports`` verified reports, some quarantined records
   and the decisions of the OSCE policy, served by
   :class:`nodes.org_node.dashboard.server.Dashboard` on 127.0.0.1 (logged in through its
   reverse-proxy header mode, 127.0.0.1 trusted); wall-clock latency of each route over 30
   requests after one cold request (the cold one decodes every stored report once).
3. Ops: ``/metrics``, ``/readyz`` and ``/healthz`` of an :class:`nodes.runtime.ops.OpsServer`
   on the same store (the node's store families and its store check; no broker, no live
   status), on its own free port as in a node. The server computes readiness and metrics at
   most once a second: the first request pays the store scan, the 30 after it mostly read the
   cached answer, as a scraper's would.

Wall-clock numbers depend on the machine and its load; nothing asserts on them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bus.ingest import Accepted, Ingestor, Outcome, RecordRef
from bus.policy import Decision, Observation, PolicyEngine, SealRef, decide_all
from bus.policy_file import load_policy
from bus.store.node import NodeStore
from bus.trust import KeyRing
from bus.verify import ChainBook
from nodes.demo.scenario import ORGANIZATIONS, build_scenario, draft_report
from nodes.org_node.dashboard.auth import DashboardAuth
from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.metrics import node_families, store_snapshot
from nodes.org_node.dashboard.server import Dashboard
from nodes.runtime.ops import Check, Listen, OpsServer, store_writable

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "deploy" / "policies"
USER_HEADER = "X-Remote-User"  # the dashboard's reverse-proxy login, 127.0.0.1 trusted


def _log(n: int, now: int) -> list[tuple[SealRef, list[Observation]]]:
    """``n`` accepted reports as a sealed log: 500 per epoch, one second apart."""
    sc = build_scenario(now)
    rng = random.Random(1)
    epochs: list[tuple[SealRef, list[Observation]]] = []
    for i in range(n):
        if i % 500 == 0:
            e = len(epochs) + 1
            epochs.append((SealRef(e, rng.randbytes(32), now + 1000 * e), []))
        obs = rng.choice(sc.observers)
        r = draft_report(rng, obs, sc.mandate, now)
        epochs[-1][1].append(Observation(r, rng.randbytes(32)))
    return epochs


def bench_policy(n: int) -> None:
    now = int(time.time() * 1000)
    log = _log(n, now)
    print(f"policy evaluation, {n} reports, 500 per epoch (CPU time, best / median of 5):")
    for org, _ in ORGANIZATIONS:
        policy = load_policy(POLICIES / f"{org}.toml")
        times, decisions = [], 0
        for _ in range(5):
            t0 = time.process_time()
            decisions = len(decide_all(policy, log))
            times.append(time.process_time() - t0)
        print(
            f"  {org:5} {len(policy.rules)} rules: {n / min(times):>9,.0f} reports/s best,"
            f" {n / statistics.median(times):>9,.0f} median; {decisions} decisions"
        )


def _store(path: Path, n: int) -> None:
    now = int(time.time() * 1000)
    sc = build_scenario(now, observers_per_org=3)
    kr = KeyRing(sc.mandate)
    from bus.model import Envelope  # noqa: PLC0415

    for raw in sc.accreditations:
        kr.apply(Envelope.decode(raw))
    store = NodeStore(path)
    ing = Ingestor(kr, ChainBook({}, store.report_digest))
    rng = random.Random(2)
    policy = load_policy(POLICIES / "osce.toml")
    # Every rule acts on provisional verdicts here: the store has no sealer beside it.
    policy = dataclasses.replace(
        policy, rules=tuple(dataclasses.replace(r, verdicts="provisional") for r in policy.rules)
    )
    engine = PolicyEngine(policy)
    decisions: list[Decision] = []
    batch: list[Outcome] = []
    for i in range(n):
        obs = rng.choice(sc.observers)
        raw = sc.signers[obs.observer_id].sign(draft_report(rng, obs, sc.mandate, now))
        if i % 500 == 0:
            raw = raw[:-1] + bytes([raw[-1] ^ 1])  # some quarantined records
        out = ing.judge(RecordRef(f"obus.reports.{obs.org}", 0, i, now), raw, obs.org)
        batch.append(out)
        if isinstance(out, Accepted):
            decisions.extend(
                engine.on_stored(
                    Observation(out.verified.report, out.verified.envelope_digest), now
                )
            )
        if len(batch) == 1000:
            store.commit_batch(batch, ing.chain.heads(), [], {})
            ing.chain.flushed()
            batch = []
    store.commit_batch(batch, ing.chain.heads(), [], {})
    store.add_decisions(decisions)
    store.close()


async def _timed(
    http: aiohttp.ClientSession, base: str, routes: list[str], headers: dict[str, str]
) -> None:
    """Print each route's size, first (cold) and median/p95 latency over 30 more requests."""
    for route in routes:
        t0 = time.perf_counter()
        async with http.get(base + route, headers=headers) as r:
            body = await r.read()
            assert r.status == 200, (route, r.status, body[:300])
        cold = time.perf_counter() - t0
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            async with http.get(base + route, headers=headers) as r:
                body = await r.read()
                assert r.status == 200, (route, r.status, body[:300])
            times.append(time.perf_counter() - t0)
        times.sort()
        print(
            f"  GET /{route:15} {len(body) / 1024:8.0f} KiB"
            f"  first {cold * 1000:7.1f} ms"
            f"  median {statistics.median(times) * 1000:7.1f} ms"
            f"  p95 {times[int(len(times) * 0.95) - 1] * 1000:7.1f} ms"
        )


def _ops(db: Path, org: str) -> OpsServer:
    """An ops server on a free port of 127.0.0.1 over the store alone (what a node's serves,
    without a broker or live status)."""

    async def ready() -> list[Check]:
        return [await asyncio.to_thread(store_writable, "store", db)]

    async def families() -> list[Any]:
        snapshot = await asyncio.to_thread(store_snapshot, db, None, org)
        return node_families(snapshot, None)

    return OpsServer(
        Listen("127.0.0.1", 0), what=f"bench {org}", alive=lambda: Check("alive", True),
        ready=ready, families=families, broker=None,
    )  # fmt: skip


async def bench_dashboard(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "osce.db"
        t0 = time.perf_counter()
        _store(db, n)
        print(f"dashboard: store of {n} reports built in {time.perf_counter() - t0:.1f}s")
        sc = build_scenario(int(time.time() * 1000))
        auth = DashboardAuth(
            proxy_header=USER_HEADER, trusted_proxies=DashboardAuth.networks(["127.0.0.1"])
        )
        dash = Dashboard(
            DashboardConfig(
                "osce", db, sc.mandate, load_policy(POLICIES / "osce.toml"), port=0, auth=auth
            )
        )
        ops = _ops(db, "osce")
        await dash.start()
        try:
            if not await ops.start():
                raise SystemExit("the ops server could not listen on a free port")
            async with aiohttp.ClientSession() as http:
                routes = ["", "api/reports", "api/decisions", "api/trends", "api/quarantine",
                          "map.svg"]  # fmt: skip
                await _timed(http, dash.url, routes, {USER_HEADER: "bench"})
                print(f"ops: {ops.url}")
                await _timed(http, ops.url, ["metrics", "readyz", "healthz"], {})
        finally:
            await ops.stop()
            await dash.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=100_000)
    parser.add_argument("--store-reports", type=int, default=20_000)
    args = parser.parse_args()
    bench_policy(args.reports)
    asyncio.run(bench_dashboard(args.store_reports))


if __name__ == "__main__":
    main()
