"""The dashboard on a real day, in a real browser: Debian's headless Chromium (nodes/demo/cdp.py)
logs in, pages and filters 20,000 reports, opens a report's detail with its photo, and is
refused without credentials. Screenshots and the first page's weight and time to render are
kept under var/test-artifacts/.

No broker: the store of 20,000 reports is written by the node's own ingest code and its photo by
the node's attachment store (tests/unit/test_dashboard_reports.py, build_day); the dashboard
serves it on a free 127.0.0.1 port.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bus.model import sha256
from nodes.demo.cdp import Browser, Page
from nodes.org_node.dashboard.server import Dashboard
from tests.unit.test_dashboard_auth import PASSWORD, USER
from tests.unit.test_dashboard_reports import Day, build_day

REPORTS = 20_000
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"

# Report ids of the feed's rows, as shown (innerText honours CSS: hidden rows are not listed).
_FEED_IDS = (
    "[...document.querySelectorAll('#feed tbody tr.report')]"
    ".filter(e => e.offsetParent !== null).map(e => e.dataset.reportId)"
)
# The navigation's own timing and size (Navigation Timing Level 2), in ms and bytes.
_TIMING = """(() => { const n = performance.getEntriesByType('navigation')[0];
  return {bytes: n.encodedBodySize, transfer: n.transferSize, response_ms: n.responseEnd - n.startTime,
          dom_ms: n.domComplete - n.startTime, load_ms: n.loadEventEnd - n.startTime,
          height_px: document.documentElement.scrollHeight,
          resources: performance.getEntriesByType('resource').map(e => e.name)}; })()"""


@pytest.fixture
async def day_served(tmp_path: Path) -> AsyncIterator[tuple[Day, Dashboard]]:
    day = build_day(tmp_path, REPORTS)
    dash = Dashboard(day.config())
    await dash.start()
    try:
        yield day, dash
    finally:
        await dash.stop()


async def _fill_and_submit(page: Page, values: dict[str, str], button: str) -> None:
    """Set form fields (inputs and selects) by id or name, then click ``button``."""
    for name, value in values.items():
        sel = json.dumps(f"#{name}, [name='{name}']")
        await page.evaluate(f"document.querySelector({sel}).value = {json.dumps(value)}")
    await page.click(button)


async def test_a_day_of_reports_in_the_browser(
    day_served: tuple[Day, Dashboard], chromium: str
) -> None:
    day, dash = day_served
    base = dash.url.rstrip("/")
    newest = [d.report_id for d in reversed(day.drafts)]
    shots: dict[str, int] = {}
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/", "/api/reports", "/api/reports.csv", f"/reports/{day.photo_id}"):
            async with anonymous.get(base + path, allow_redirects=False) as resp:
                assert resp.status == 401, path
    async with Browser.launch(chromium) as browser:
        page = await browser.new_page()
        # Without credentials: the page sends the browser to the login page; the API refuses.
        await page.goto(dash.url)
        assert await page.evaluate("location.pathname") == "/login"
        await page.goto(base + "/api/reports")
        refused = json.loads(await page.evaluate("document.body.innerText"))
        assert refused["reason"] == "login_required"
        await page.goto(base + "/login")
        await _fill_and_submit(page, {"user": USER, "password": "wrong"}, "#login-button")
        assert "wrong user name or password" in await page.evaluate("document.body.innerText")
        shots["login-refused"] = len(await page.screenshot(ARTIFACTS / "dashboard-day-login.png"))

        # Log in: back on the dashboard, the newest 50 of 20,000 reports.
        await _fill_and_submit(page, {"user": USER, "password": PASSWORD}, "#login-button")
        assert await page.evaluate("location.pathname") == "/"
        timing: dict[str, Any] = await page.evaluate(_TIMING)
        first = await page.evaluate(_FEED_IDS)
        shots["first-page"] = len(await page.screenshot(ARTIFACTS / "dashboard-day.png"))
        # A warm reload (the read model's index is built): what an operator sees after.
        await page.goto(dash.url)
        warm: dict[str, Any] = await page.evaluate(_TIMING)

        # Page: older reports, exactly the next 50.
        await page.click("#next-page")
        second = await page.evaluate(_FEED_IDS)

        # Filter: zone east, severity 4 and up, text "depot".
        await page.goto(dash.url)
        await _fill_and_submit(
            page, {"zone": "east", "min_severity": "4", "text": "depot"}, "#apply"
        )
        filtered = await page.evaluate(_FEED_IDS)
        query = await page.evaluate("location.search")
        shots["filtered"] = len(await page.screenshot(ARTIFACTS / "dashboard-day-filtered.png"))
        await page.click("#next-page")
        filtered_2 = await page.evaluate(_FEED_IDS)
        map_dots = await page.evaluate("document.querySelectorAll('#map circle.report').length")

        # The report with the photo: its detail page, its photo decoded from this server.
        await page.goto(f"{base}/?org=nato&text=report%2015%3A")
        await page.click(f"tr[data-report-id='{day.photo_id}'] td a")
        assert await page.evaluate("location.pathname") == f"/reports/{day.photo_id}"
        photo = await page.evaluate(
            "(() => { const i = document.querySelector('figure.attachment img');"
            " return [i.complete, i.naturalWidth, i.naturalHeight,"
            " i.closest('figure').dataset.check, i.closest('figure').dataset.sha256]; })()"
        )
        facts = await page.evaluate("document.querySelector('#envelope-facts').innerText")
        shots["detail"] = len(await page.screenshot(ARTIFACTS / "dashboard-day-detail.png"))
        detail_resources = await page.evaluate(
            "performance.getEntriesByType('resource').map(e => e.name)"
        )

    want = [
        d.report_id
        for d in reversed(day.drafts)
        if d.zone == "east" and d.severity >= 4 and "depot" in d.narrative
    ]
    assert first == newest[:50]
    assert second == newest[50:100]
    assert filtered == want[:50] and filtered_2 == want[50:100]
    assert "zone=east" in query and "min_severity=4" in query and "text=depot" in query
    assert map_dots == len(filtered_2)
    assert photo == [True, 96, 64, "verified", sha256(day.photo).hex()]
    draft = next(d for d in day.drafts if d.report_id == day.photo_id)
    assert draft.observer_id in facts and draft.prev_digest.hex() in facts
    assert detail_resources == [f"{base}/attachments/{sha256(day.photo).hex()}"]
    assert timing["resources"] == [] and warm["resources"] == []  # nothing else is fetched
    assert all(n > 10_000 for n in shots.values())
    measured = {
        "reports_in_store": REPORTS,
        "first_page": {k: v for k, v in timing.items() if k != "resources"},
        "reload": {k: v for k, v in warm.items() if k != "resources"},
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard-day.json").write_text(json.dumps(measured, indent=2) + "\n")
    print(json.dumps(measured))
