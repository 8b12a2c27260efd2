"""The dashboard only reads the node's store: every route, every method, the file unchanged.

No broker: the store is filled through the node's own verification path (Ingestor ->
NodeStore.commit_batch), then the dashboard serves it on a free 127.0.0.1 port. Routes are
taken from the application's router, so a route added later is covered without editing this.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from bus.ingest import Ingestor
from bus.store.node import NodeStore
from bus.verify import ChainBook
from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.server import Dashboard
from tests.mission import make_mission, ref
from tests.unit.test_dashboard_auth import dashboard_auth, logged_in

WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _fill(db: Path) -> int:
    """Five verified reports of two observers and one rejected record; returns reports."""
    m = make_mission()
    store = NodeStore(db)
    ing = Ingestor(m.keyring, ChainBook(store.chain_heads(), store.report_digest), clock=m.clock)
    raws = [m.next_report("un", 1 + i % 2) for i in range(5)]
    outs = [ing.judge(ref(offset=i), raw, "un") for i, raw in enumerate(raws)]
    outs.append(ing.judge(ref(offset=5), b"not an envelope", "un"))
    store.commit_batch(outs, ing.chain.heads(), [], {("obus.reports.un", 0): 6})
    store.close()
    # Everything into the main file, so that its bytes are the whole store.
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return len(raws)


def _fingerprint(db: Path) -> tuple[str, int]:
    wal = db.with_name(db.name + "-wal")
    return hashlib.sha256(db.read_bytes()).hexdigest(), wal.stat().st_size if wal.exists() else 0


async def test_every_route_reads_and_nothing_is_written(tmp_path: Path) -> None:
    db = tmp_path / "un.db"
    reports = _fill(db)
    before = _fingerprint(db)
    mandate = make_mission().scenario.mandate
    dash = Dashboard(
        DashboardConfig(org="un", db_path=db, mandate=mandate, port=0, auth=dashboard_auth())
    )
    paths = sorted(
        {
            info["path"]
            for route in dash.app().router.routes()
            if route.method == "GET" and "path" in (info := route.get_info())
        }
    )
    await dash.start()
    try:
        async with logged_in(dash.url) as http:
            async with http.get(dash.url + "api/reports?limit=1") as resp:
                one = (await resp.json())["reports"][0]["report_id"]
            # The routes with a report id in their path, for a report of the store.
            paths += [f"/reports/{one}", f"/api/reports/{one}"]
            got: dict[str, int] = {}
            for path in paths:
                async with http.get(dash.url.rstrip("/") + path) as resp:
                    got[path] = resp.status
                    body = await resp.read()
                    assert body, path
                for method in WRITE_METHODS:
                    if method == "POST" and path in ("/login", "/logout"):
                        continue  # a login writes nothing either: the fingerprint below
                    async with http.request(method, dash.url.rstrip("/") + path) as resp:
                        assert resp.status == 405, (method, path, resp.status)
            async with http.get(dash.url + "api/reports") as resp:
                feed = (await resp.json())["reports"]
            async with http.get(dash.url + "api/quarantine") as resp:
                quarantine = await resp.json()
    finally:
        await dash.stop()

    # Every route answered from the store (none fell back to 503 "store unavailable")...
    assert {"/", "/api/reports", "/api/quarantine", "/api/reports.csv"} <= set(paths)
    assert got == dict.fromkeys(paths, 200)
    assert len(feed) == reports
    assert "malformed" in str(quarantine)
    # ... and the store is byte for byte what the node left.
    assert _fingerprint(db) == before


def test_dashboard_connection_refuses_writes(tmp_path: Path) -> None:
    db = tmp_path / "un.db"
    _fill(db)
    store = NodeStore(db, read_only=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._db.execute("DELETE FROM reports")  # the connection the dashboard reads with
    finally:
        store.close()
