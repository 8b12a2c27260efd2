"""The HTML audit report in Debian's Chromium (DevTools protocol, :mod:`nodes.demo.cdp`), no broker:
a sealed log built in memory (:mod:`tests.sealed_bus`) with a quiet day and violations is
exported and audited with ``obus audit --from``, and the page is opened from the file. As laid
out by the browser, no chart label is clipped by its drawing and no two date labels overlap; the
header is shown; a screenshot is kept as ``var/test-artifacts/audit-report.png``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from bus.errors import Reason
from bus.topics import Topics
from nodes.cli.main import main
from nodes.demo.cdp import Browser
from tests.mission import NOW_MS, make_mission
from tests.sealed_bus import SealedBus

ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
DAY = 86_400_000

# Every chart's text boxes as laid out: [chart title, class, text, left, right, svg left, svg
# right], and every tick's box per chart.
_BOXES = """(() => [...document.querySelectorAll('svg[role=img]')].flatMap(svg => {
  const s = svg.getBoundingClientRect();
  return [...svg.querySelectorAll('text')].map(t => {
    const r = t.getBoundingClientRect();
    return [svg.getAttribute('aria-label'), t.getAttribute('class'), t.textContent,
            r.left, r.right, s.left, s.right];
  });
}))()"""


def _log(tmp_path: Path) -> tuple[Path, Path]:
    """Twenty-five days of reports (the mandate began thirty days ago), a quiet day every fifth, and a report on EU's topic that is not
    one (a violation)."""
    m = make_mission(observers_per_org=1, now_ms=NOW_MS)
    bus = SealedBus(m, Topics("obus."), clock=NOW_MS)
    t, sc = bus.topics, m.scenario
    bus.put(t.mandate, sc.mandate_envelope, at_ms=NOW_MS - 5000)
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        bus.put(t.registry, raw, at_ms=NOW_MS - 4000)
    bus.seal()
    for back in range(25, 0, -1):
        for _ in range(0 if back % 5 == 2 else back % 4 + 1):
            org = "un" if back % 2 else "osce"
            bus.put(t.reports(org), m.next_report(org, 1, observed_at_ms=NOW_MS - back * DAY))
    bus.put(t.reports("eu"), b"not a report at all")
    bus.seal()
    log = bus.export(tmp_path / "log.jsonl")
    mandate = tmp_path / "mandate.bin"
    mandate.write_bytes(sc.mandate_envelope)
    return log, mandate


async def test_audit_report_in_a_browser(tmp_path: Path, chromium: str) -> None:
    log, mandate = _log(tmp_path)
    html = tmp_path / "audit.html"
    code = main(["audit", "--from", str(log), "--mandate", str(mandate), "--html-out", str(html)])
    assert code == 1
    async with Browser.launch(chromium) as browser:
        page = await browser.new_page()
        await page.goto(html.as_uri())
        header = await page.evaluate("document.getElementById('header').innerText")
        assert "export SHA-256 (hex)" in header and "mandate in force" in header
        boxes = await page.evaluate(_BOXES)
        assert {b[2] for b in boxes if b[1] == "label"} >= {Reason.MALFORMED.value, "un", "osce"}
        for chart, _, text, left, right, s_left, s_right in boxes:
            assert s_left - 0.5 <= left and right <= s_right + 0.5, f"{chart}: {text!r} clipped"
        ticks = [b for b in boxes if b[1] == "tick"]
        assert len(ticks) >= 2
        for a, b in itertools.pairwise(ticks):
            assert a[4] <= b[3], f"date labels {a[2]} and {b[2]} overlap"
        days = await page.evaluate(
            "document.querySelectorAll('svg[aria-label^=\"Verified reports per day\"] rect').length"
        )
        assert days == 25  # every day, the quiet ones as empty columns
        # Reason codes in the violations table: each on one line, in full.
        reasons = await page.evaluate(
            "[...document.querySelectorAll('code.reason')].map(c => [c.textContent,"
            " c.getClientRects().length, c.scrollWidth <= c.clientWidth + 1])"
        )
        assert [Reason.MALFORMED.value, 1, True] in reasons
        assert all(lines == 1 and whole for _, lines, whole in reasons)
        shot = await page.screenshot(ARTIFACTS / "audit-report.png")
        assert shot.startswith(b"\x89PNG")
