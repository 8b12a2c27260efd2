"""The dashboard in a real browser: Debian's headless Chromium, driven over the DevTools
protocol, shows what an operator must see; a screenshot is kept as a test artifact.

Two organization nodes run on the real broker (osce with its dashboard, un publishing
decisions the osce node shows), with sealers of two more organizations so that seals become
final. The browser logs in first (the dashboard refuses everything else without credentials).
Chromium is installed by ``make browser`` (part of ``make
test``); when it is missing this test fails with the command that installs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes.demo.cdp import Browser
from nodes.org_node.process import build_node
from tests.integration.test_followup import (
    dashboard_url,
    pattern_reports,
    read,
    running,
    sealers,
    until,
    world,
)
from tests.unit.test_dashboard_auth import PASSWORD, USER

pytestmark = [pytest.mark.kafka]
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"

# Visible text of one table's body rows (innerText honours CSS: hidden text is not returned).
_ROWS = (
    "[...document.querySelectorAll(%s)].filter(e => e.offsetParent !== null).map(e => e.innerText)"
)


async def test_operator_sees_reports_rejections_decisions_map_and_charts(
    kafka_bootstrap: str, tmp_path: Path, chromium: str
) -> None:
    # Sealers of eu and nato beside the two nodes: k = 4 organizations seal, so the final
    # rules of the policies fire.
    async with world(kafka_bootstrap, tmp_path) as w, sealers(w, "eu", "nato"):
        raws = await pattern_reports(w)
        osce, un = build_node(w.config("osce")), build_node(w.config("un"))
        db = tmp_path / "osce.db"
        async with running(osce, un):
            await until(
                lambda: read(db, lambda s: [d for d in s.peer_decisions() if d["org"] == "un"]),
                what="the osce node shows un's published decisions",
            )
            await until(lambda: read(db, lambda s: [
                d for d in s.own_decisions() if d.pub_state == "published"
            ]))  # fmt: skip
            url = dashboard_url(osce)
            async with Browser.launch(chromium) as browser:
                page = await browser.new_page()
                await page.goto(url)  # sent to the login page first
                assert await page.evaluate("location.pathname") == "/login"
                for field, value in (("user", USER), ("password", PASSWORD)):
                    await page.evaluate(
                        f"document.querySelector('#{field}').value = {json.dumps(value)}"
                    )
                await page.click("#login-button")
                title = await page.evaluate("document.title")
                feed = await page.evaluate(_ROWS % json.dumps("#feed tbody tr"))
                rejected = await page.evaluate(_ROWS % json.dumps("#quarantine-table tbody tr"))
                own = await page.evaluate(_ROWS % json.dumps("#own-decisions tbody tr"))
                peers = await page.evaluate(_ROWS % json.dumps("#peer-decisions tbody tr"))
                dots = await page.evaluate(
                    "[...document.querySelectorAll('#map circle.report')]"
                    ".filter(c => c.getBoundingClientRect().width > 0).length"
                )
                zones = await page.evaluate(
                    "[...document.querySelectorAll('#map g.zone')].map(g => g.textContent)"
                )
                resources = await page.evaluate(
                    "performance.getEntriesByType('resource').map(e => e.name)"
                )
                no_checkpoints = await page.evaluate("document.querySelector('#checkpoints')")
                seal_state = await page.evaluate(
                    "document.querySelector('#seal-state').dataset.state"
                )
                sealed_by = await page.evaluate(
                    "document.querySelector('#seals-table tbody tr.seal td:nth-child(3)').innerText"
                )
                shot = await page.screenshot(ARTIFACTS / "dashboard.png")
                # A person narrows the feed to one zone with the filter form.
                await page.evaluate("document.querySelector(\"[name='zone']\").value = 'north'")
                await page.click("#apply")
                north = await page.evaluate(_ROWS % json.dumps("#feed tbody tr"))
                heading = await page.evaluate("document.querySelector('#reports h2').innerText")
                search = await page.evaluate("location.search")
                await page.screenshot(ARTIFACTS / "dashboard-north.png")

    assert title == "OSCE node: observer-bus dashboard"
    # reports feed: one visible row per verified report, with its verification state
    assert len(feed) == len(raws)
    assert all(row.startswith("verified") for row in feed)
    # the rejected record, with its reason and what was wrong
    assert len(rejected) == 1
    assert "bad_signature" in rejected[0] and "signature does not verify" in rejected[0]
    # this organization's decision and its publication; the other organization's decision
    pattern = [r for r in own if "request_assessment_visit" in r]
    assert pattern and "published" in pattern[0] and "ceasefire-pattern" in pattern[0]
    assert peers and all(r.startswith("un") for r in peers)
    assert all("signature verified" in r for r in peers)
    # the map: every report drawn over the three zone outlines, nothing fetched from elsewhere
    assert dots == len(raws)
    assert [z.split(":")[0] for z in zones] == ["north", "east", "south"]
    assert resources == []  # no script, style sheet, font, tile or icon fetched at all
    # the seals panel, not a checkpoint panel: sealed over a final seal of k organizations
    assert no_checkpoints is None
    assert seal_state == "sealed"
    assert len(sealed_by.split(", ")) >= 4
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    # after the click: only north-zone reports (all of this mission's are in the north)
    assert "filtered" in heading and "zone=north" in search and len(north) == len(raws)
