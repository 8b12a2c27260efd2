"""The dashboard shows a corrected and a retracted report (no browser, no broker): the feed's
rows, the /api/reports JSON, the page's rows and the detail page's links, over a node store its
own Ingestor and NodeStore.commit_batch wrote."""

from __future__ import annotations

from pathlib import Path

from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.reports_view import ReportsView, dashboard_params, feed_row
from nodes.org_node.dashboard.server import Dashboard
from tests.unit.test_corrections import REASON, Bus
from tests.unit.test_dashboard_auth import dashboard_auth, logged_in


def _bus(tmp_path: Path) -> tuple[Bus, dict[str, str]]:
    bus = Bus(tmp_path)
    ids = {}
    _, ids["a"] = bus.report(severity=2)
    _, ids["c"] = bus.report(corrects=ids["a"], severity=4)
    _, ids["b"] = bus.report()
    _, ids["r"] = bus.report(retracts=ids["b"], retraction_reason=REASON)
    assert set(bus.provisional().values()) == {"accepted"}
    return bus, ids


def _config(bus: Bus) -> DashboardConfig:
    return DashboardConfig(
        org="un",
        db_path=bus.store_path,
        mandate=bus.log.root,
        port=0,
        final_db=None,
        auth=dashboard_auth(),
    )


def test_feed_rows_say_corrected_by_and_retracted(tmp_path: Path) -> None:
    bus, ids = _bus(tmp_path)
    view = ReportsView(_config(bus))
    listed = view.page(*dashboard_params({})).rows
    reasons = view.retraction_reasons(listed)
    feed = {r.report_id: feed_row(r, reasons) for r in listed}
    rows = {i: f["row"] for i, f in feed.items()}
    assert rows[ids["a"]].corrected_by == ids["c"]
    assert rows[ids["c"]].corrects == ids["a"] and rows[ids["c"]].corrected_by == ""
    assert (rows[ids["b"]].retracted_by, feed[ids["b"]]["retracted_because"]) == (ids["r"], REASON)
    assert (rows[ids["r"]].retracts, rows[ids["r"]].retraction_reason) == (ids["b"], REASON)
    # the retracted report itself is still listed: nothing is deleted
    assert feed[ids["b"]]["own_state"] == "verified"


async def test_api_and_page_show_a_corrected_and_a_retracted_report(tmp_path: Path) -> None:
    bus, ids = _bus(tmp_path)
    dash = Dashboard(_config(bus))
    await dash.start()
    try:
        async with logged_in(dash.url) as http:
            async with http.get(f"{dash.url}api/reports") as resp:
                assert resp.status == 200
                api = {r["report_id"]: r for r in (await resp.json())["reports"]}
            async with http.get(dash.url) as resp:
                page = await resp.text()
            async with http.get(f"{dash.url}reports/{ids['a']}") as resp:
                detail = await resp.text()
    finally:
        await dash.stop()
    assert api[ids["a"]]["corrected_by"] == ids["c"]
    assert api[ids["b"]]["retracted_by"] == ids["r"]
    assert f"corrected by <code>{ids['c']}</code>" in page
    assert f"retracted: {REASON}" in page
    assert f'corrected by <a href="/reports/{ids["c"]}">' in detail
