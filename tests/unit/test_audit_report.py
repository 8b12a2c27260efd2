"""The audit report as evidence: its header, its encodings, its charts and its reason codes.

A sealed bus is built in memory (:mod:`tests.sealed_bus`), exported and audited with
``obus audit --from``; the header is checked against what the test recomputes itself (the
export file's SHA-256, the mandate's digest from its signed payload, the package's version, the
command line), every base64 field is decoded and compared with the bytes it names, and the
charts' geometry is read back from the SVG of the HTML page.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console

from bus.errors import Reason
from bus.model import Envelope
from bus.seal import cosign_seal, make_proposal
from bus.topics import Topics
from nodes.auditor.header import REDACTED, redact_argv
from nodes.auditor.judge import AuditResult, Violation
from nodes.auditor.report import CHAR, FONT_PX, render_html
from nodes.auditor.run import audit_export, render
from nodes.cli.main import main
from tests.mission import NOW_MS, make_mission
from tests.sealed_bus import SealedBus, build, final_seals, name, reference

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400_000
SVG = "{http://www.w3.org/2000/svg}"
# The widest a character of the charts' monospace font is drawn (0.6 em at FONT_PX).
GLYPH = 0.6 * FONT_PX


def _files(bus: SealedBus, tmp_path: Path) -> tuple[Path, Path]:
    log = bus.export(tmp_path / "log.jsonl")
    mandate = tmp_path / "mandate.bin"
    mandate.write_bytes(bus.m.scenario.mandate_envelope)
    return log, mandate


def _cli(bus: SealedBus, tmp_path: Path) -> tuple[int, list[str], dict[str, Any], str]:
    log, mandate = _files(bus, tmp_path)
    out, html = tmp_path / "audit.json", tmp_path / "audit.html"
    argv = ["audit", "--from", str(log), "--mandate", str(mandate), "--json-out", str(out),
            "--html-out", str(html)]  # fmt: skip
    code = main(argv)
    return code, argv, json.loads(out.read_text()), html.read_text()


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def test_header_names_time_tool_command_mandate_and_the_files_digest(tmp_path: Path) -> None:
    bus = build()
    before = dt.datetime.now(dt.UTC)
    code, argv, doc, page = _cli(bus, tmp_path)
    after = dt.datetime.now(dt.UTC)
    assert code == 1  # build() holds records that are not what their topics carry
    h = doc["header"]
    assert h["command"] == ["obus", *argv]
    assert h["tool"] == "observer-bus" and h["tool_version"] == version("observer-bus")
    for key in ("audit_started", "audit_finished"):
        t = dt.datetime.fromisoformat(h[key])
        assert before - dt.timedelta(milliseconds=1) <= t <= after
        assert h[key].endswith("Z") and len(h[key].split(".")[1]) == 4  # 3 digits of ms and Z
        assert int(t.timestamp() * 1000) == h[f"{key}_ms"]
    assert h["audit_started_ms"] <= h["audit_finished_ms"]
    # The export file: its SHA-256 recomputed from its bytes, in hex and base64.
    data = (tmp_path / "log.jsonl").read_bytes()
    src = h["source"]
    assert src["kind"] == "export" and src["path"] == str(tmp_path / "log.jsonl")
    assert src["size"] == len(data)
    assert src["sha256_hex"] == hashlib.sha256(data).hexdigest()
    assert _b64(src["sha256"]) == hashlib.sha256(data).digest()
    # The mandate: the SHA-256 of the payload its organizations signed.
    payload = Envelope.decode(bus.m.scenario.mandate_envelope).payload
    mandate = bus.m.scenario.mandate
    for key in ("root_mandate", "mandate_in_force"):
        ref = h[key]
        assert (ref["mandate_id"], ref["version"]) == (mandate.mandate_id, mandate.version)
        assert _b64(ref["digest"]) == hashlib.sha256(payload).digest()
        assert ref["digest_hex"] == hashlib.sha256(payload).hexdigest()
    assert "export file SHA-256" in h["encodings"]
    # The same header in the HTML page, with its legend.
    assert hashlib.sha256(data).hexdigest() in page
    assert src["sha256"] in page and h["root_mandate"]["digest"] in page
    assert h["audit_started"] in page and version("observer-bus") in page
    assert 'id="legend"' in page and "standard padded base64" in page


def test_the_command_line_never_shows_a_secret() -> None:
    argv = ["obus", "audit", "--passphrase", "hunter2", "--sasl-password=s3cret",
            "--sasl-password-file", "/run/pw", "--api-token", "t0k", "--mandate", "m.bin"]  # fmt: skip
    shown = redact_argv(argv)
    assert shown == ["obus", "audit", "--passphrase", REDACTED, f"--sasl-password={REDACTED}",
                     "--sasl-password-file", "/run/pw", "--api-token", REDACTED, "--mandate",
                     "m.bin"]  # fmt: skip
    assert not {"hunter2", "s3cret", "t0k"} & {w for a in shown for w in a.split("=")}


def test_base64_fields_decode_to_the_bytes_they_name(tmp_path: Path) -> None:
    """Seal digests, state digests and equivocating key ids, in base64, as the seal texts and
    obus node final-state give them."""
    bus = build()
    keys = bus.m.scenario.node_keys
    latest = bus.witness.latest
    assert latest is not None
    other = make_proposal(bus.witness.view(), latest, mandate_id=latest.mandate_id,
                          now_ms=bus.clock + 5)  # fmt: skip
    assert other is not None
    bus.seals.append(cosign_seal(other.text(), keys["eu"], name("eu"), now_ms=bus.clock))
    bus.seal()
    _, _, doc, page = _cli(bus, tmp_path)
    seals = final_seals(bus)
    epochs = doc["final"]["epochs"]
    assert [_b64(e["digest"]) for e in epochs] == [s.digest for s in seals]
    assert [_b64(e["prev_digest"]) for e in epochs] == [s.prev_digest for s in seals]
    _, reader = reference(bus)
    assert _b64(doc["final"]["state_digest"]) == reader.judge.digest
    assert _b64(doc["final_digest"]["state_digest"]) == reader.judge.digest
    (eq,) = doc["final"]["equivocations"]
    assert eq["org"] == "eu"
    for side in ("first", "second"):
        assert _b64(eq[side]["key_id"]) == keys["eu"].key_id
    for e in epochs:  # the HTML page shows the same text
        assert f"<code>{e['digest']}</code>" in page
        assert f"<code>{e['state_digest']}</code>" in page


def _bus_with_a_quiet_day() -> SealedBus:
    """Reports observed three days and one day before the mission's clock, none between."""
    m = make_mission(observers_per_org=1, now_ms=NOW_MS)
    bus = SealedBus(m, Topics("obus."), clock=NOW_MS)
    t, sc = bus.topics, m.scenario
    bus.put(t.mandate, sc.mandate_envelope, at_ms=NOW_MS - 5000)
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        bus.put(t.registry, raw, at_ms=NOW_MS - 4000)
    bus.seal()
    for back in (3, 3, 1):
        bus.put(t.reports("un"), m.next_report("un", 1, observed_at_ms=NOW_MS - back * DAY))
    bus.seal()
    return bus


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date().isoformat()


def test_a_day_without_reports_is_shown_with_zero(tmp_path: Path) -> None:
    code, _, doc, page = _cli(_bus_with_a_quiet_day(), tmp_path)
    assert code == 0
    first, quiet, last = (_day(NOW_MS - back * DAY) for back in (3, 2, 1))
    assert doc["reports_by_day"] == {first: 2, quiet: 0, last: 1}
    assert doc["reports_by_day_complete"] is True
    svg = _chart(page, "Verified reports per day (observed, UTC)")
    columns = {
        r.findtext(f"{SVG}title"): int(r.get("height", "-1")) for r in svg.iter(f"{SVG}rect")
    }
    assert columns[f"{quiet}: 0"] == 0
    assert columns[f"{first}: 2"] > columns[f"{last}: 1"] > 0
    assert list(columns) == [f"{first}: 2", f"{quiet}: 0", f"{last}: 1"]


def _chart(page: str, title: str) -> ET.Element:
    """The SVG element of the chart titled ``title`` in the HTML page."""
    start = page.index(f'<svg role="img" aria-label="{title}"')
    return ET.fromstring(page[start : page.index("</svg>", start) + len("</svg>")])


def _result_over(days: int, violations: list[Violation]) -> AuditResult:
    """A finished audit's result with reports on ``days`` consecutive days."""
    result = AuditResult(violations=violations)
    base = dt.date(2026, 1, 1)
    for i in range(days):
        result.by_day[(base + dt.timedelta(days=i)).isoformat()] = i % 7
        result.accepted["un"] += i % 7
    result.by_zone["a zone with a rather long name, longer than a label column"] = 3
    return result


def test_date_labels_never_overlap_and_every_label_is_inside_its_chart() -> None:
    for days in (1, 9, 31, 90, 400, 1500):
        page = render_html(_result_over(days, []))
        svg = _chart(page, "Verified reports per day (observed, UTC)")
        width = int(svg.get("width", "0"))
        ticks = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "tick"]
        assert ticks and ticks[0].text == "2026-01-01"
        boxes = [(float(t.get("x", "0")), GLYPH * len(t.text or "")) for t in ticks]
        for (x0, w0), (x1, _) in itertools.pairwise(boxes):
            assert x1 - x0 >= w0, f"{days} days: labels at {x0} and {x1} overlap"
        assert all(x >= 0 and x + w <= width for x, w in boxes)
        columns = list(svg.iter(f"{SVG}rect"))
        assert len(columns) == days  # every day, quiet ones too
        assert all(float(r.get("x", "0")) + float(r.get("width", "0")) <= width for r in columns)
    assert CHAR >= GLYPH


def test_reason_codes_in_full_in_the_html_charts() -> None:
    longest = max((r.value for r in Reason), key=len)
    violations = [
        Violation("obus.reports.un", 0, i, r.value, "detail") for i, r in enumerate(Reason)
    ]
    page = render_html(_result_over(3, violations))
    svg = _chart(page, "Violations by kind")
    labels = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "label"]
    assert {t.text for t in labels} == {r.value for r in Reason}
    for t in labels:  # right-aligned at x: the label's left edge stays inside the drawing
        assert float(t.get("x", "0")) - GLYPH * len(t.text or "") >= 0
        assert t.get("text-anchor") == "end"
    assert f'<code class="reason">{longest}</code>' in page
    zone = _chart(page, "Verified reports per zone")
    (label,) = [t for t in zone.iter(f"{SVG}text") if t.get("class") == "label"]
    assert float(label.get("x", "0")) - GLYPH * len(label.text or "") >= 0


def test_reason_codes_in_full_on_a_narrow_console_that_is_not_a_terminal() -> None:
    violations = [
        Violation("obus.reports.un", 0, i, r.value, "a long detail " * 8)
        for i, r in enumerate(Reason)
    ]
    out = io.StringIO()
    console = Console(file=out, width=60)
    assert not console.is_terminal
    render(_result_over(2, violations), console)
    text = out.getvalue()
    for r in Reason:
        assert f" {r.value} " in text, r.value
    assert "…" not in text


def test_reason_codes_header_and_digests_in_full_through_a_pipe(tmp_path: Path) -> None:
    bus = build()
    log, mandate = _files(bus, tmp_path)
    result = audit_export(log, bus.m.scenario.mandate)
    assert result.final is not None
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "obus"), "audit", "--from", str(log), "--mandate",
         str(mandate)],
        cwd=REPO, capture_output=True, text=True, check=False,
        env={**os.environ, "COLUMNS": "40"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "…" not in out
    for v in result.violations:
        assert f" {v.reason} " in out
    assert f"export SHA-256 (hex): {hashlib.sha256(log.read_bytes()).hexdigest()}\n" in out
    for e in result.final.epochs:
        assert base64.b64encode(e.digest).decode() in out
    assert f"command: obus audit --from {log} --mandate {mandate}\n" in out
