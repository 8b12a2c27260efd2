"""The dashboard's security headers: every route carries them, the page's policy allows its own
inline style sheet (by hash) and nothing external, and no script may run. No broker: the store is
filled through the node's verification path, as in test_dashboard_reads_only."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import aiohttp

from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.server import Dashboard, page_csp
from tests.mission import make_mission
from tests.unit.test_dashboard_auth import dashboard_auth, jar, logged_in
from tests.unit.test_dashboard_reads_only import _fill

COMMON = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _directives(csp: str) -> dict[str, str]:
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in (x.strip() for x in csp.split(";"))}


async def test_every_route_carries_the_security_headers(tmp_path: Path) -> None:
    db = tmp_path / "un.db"
    _fill(db)
    mandate = make_mission().scenario.mandate
    dash = Dashboard(
        DashboardConfig(org="un", db_path=db, mandate=mandate, port=0, auth=dashboard_auth())
    )
    paths = sorted(
        {info["path"] for r in dash.app().router.routes() if "path" in (info := r.get_info())}
    )
    await dash.start()
    try:
        async with aiohttp.ClientSession(cookie_jar=jar()) as anonymous:
            # Refusals carry them too.
            for path in ["/", "/api/reports"]:
                async with anonymous.get(dash.url.rstrip("/") + path) as resp:
                    assert resp.status == 401
                    for name, value in COMMON.items():
                        assert resp.headers.get(name) == value, (path, name)
        async with logged_in(dash.url) as http:
            for path in [*paths, "/no-such-route"]:
                async with http.get(dash.url.rstrip("/") + path) as resp:
                    for name, value in COMMON.items():
                        assert resp.headers.get(name) == value, (path, name)
                    csp = _directives(resp.headers["Content-Security-Policy"])
                    assert csp["default-src"] == "'none'", path
                    assert csp["frame-ancestors"] == "'none'", path
                    assert "script-src" not in csp, path  # default-src 'none': no script
                    if path in ("/", "/login"):
                        page = await resp.text()
                        styles = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
                        assert styles, "the page has its inline style sheet"
                        want = {
                            "'sha256-"
                            + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
                            + "'"
                            for s in styles
                        }
                        assert set(csp["style-src"].split()) == want
                        assert "<script" not in page
                        assert "unsafe" not in resp.headers["Content-Security-Policy"]
    finally:
        await dash.stop()


def test_a_page_without_style_allows_no_style() -> None:
    assert _directives(page_csp("<html></html>"))["style-src"] == "'none'"


def test_a_changed_style_sheet_changes_the_hash() -> None:
    a = _directives(page_csp("<style>p{color:red}</style>"))["style-src"]
    b = _directives(page_csp("<style>p{color:blue}</style>"))["style-src"]
    assert a != b
