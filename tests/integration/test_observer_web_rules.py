"""One source of truth for a report's rules: the web form's validation (validate.ts, run in
Debian's headless Chromium) refuses exactly the inputs the Python rules refuse, naming the same
fields.

Inputs are what an observer types into the form: boundary and invalid values of every field
(severity, confidence, coordinates and the zone's edges, precision, text lengths counted in
code points, casualties, the observation time against the clock and the mandate, zone and
category, attachments, the corrected report id, empty and missing fields), one field at a
time from a valid report, and then seeded random combinations of several. The Python side
reads the same input as a report file (:func:`bus.report_file.parse_report` with the mandate,
then the CLI's attachment-size rule ``nodes.observer.device._attachment_problems`` and the
report's own checks, :meth:`~bus.report_file.ReportDraft.to_report` and
:func:`~bus.model.encode`), where the form's text becomes the file's value as validate.ts
documents: JSON number syntax is a number, anything else stays text, empty is missing.
Observer ids at enrolment are compared the same way (``check_id`` and
``check_subject_namespace`` against the form's ``isObserverId``).

No broker: the page is served by the gateway's /app/ route alone.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import re
import time
from typing import Any

from bus.errors import VerificationError
from bus.model import Category, check_id, encode
from bus.report_file import Identity, ReportFileError, parse_report
from bus.trust import check_subject_namespace
from nodes.demo.cdp import Browser
from nodes.observer.device import _attachment_problems
from nodes.observer_web.export_rules import rules
from tests.integration.test_observer_web_crosslang import serving_form
from tests.mission import make_mission

_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
COMBINATIONS = 400
REPORT_ID = "0190a1b2-c3d4-7e5f-9a6b-000000000001"  # the id the Python side signs under
# The form's input ids (FormInput keys) and the report-file field each one fills.
_NUMERIC = {
    "severity": ("severity",),
    "confidence": ("confidence",),
    "lat": ("location", "lat"),
    "lon": ("location", "lon"),
    "precisionM": ("location", "precision_m"),
    "killed": ("casualties", "killed"),
    "injured": ("casualties", "injured"),
    "missing": ("casualties", "missing"),
}
_TEXT = {
    "place": ("location", "place"),
    "subType": ("sub_type",),
    "narrative": ("narrative",),
    "zone": ("zone",),
    "category": ("category",),
}

# Runs in the page: the form's validation of each input, the fields it names.
_VALIDATE = r"""
(async (args) => {
  const { core, validate } = globalThis.obus;
  const { mandate } = await core.verifyMandate(core.unb64(args.mandate), args.now);
  return args.cases.map((c) => {
    const input = { ...c, attachments: c.attachments.map((a) => ({ ...a, sha256: core.unhex(a.sha256) })) };
    const { draft, problems } = validate(input, mandate, args.now);
    return { ok: draft !== null, fields: [...new Set(problems.map((p) => p.field))].sort() };
  });
})
"""
_IDS = r"""
((args) => args.ids.map((id) => globalThis.obus.isObserverId(id, args.org)))
"""


def _typed(text: str) -> Any:
    """A number typed into the form, as a report file's value: JSON number syntax is a
    number (int without fraction or exponent), empty is missing, anything else stays text."""
    stripped = text.strip()
    if stripped == "":
        return None
    if _NUMBER.fullmatch(stripped):
        return json.loads(stripped)
    return text


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _document(case: dict[str, Any]) -> dict[str, Any]:
    """The report file the form's input stands for."""
    doc: dict[str, Any] = {}

    def put(path: tuple[str, ...], value: Any) -> None:
        if value is None:
            return
        target = doc
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    for name, path in _NUMERIC.items():
        put(path, _typed(case[name]))
    for name, path in _TEXT.items():
        value = case[name]
        put(path, None if name in ("zone", "category") and value == "" else value)
    put(("casualties", "civilian"), case["civilian"])
    if case["observedAt"].strip():
        put(("observed_at",), case["observedAt"] + "Z")
    if case["corrects"].strip():
        put(("corrects",), case["corrects"].strip())
    if case["attachments"]:
        doc["attachments"] = [
            {"sha256": a["sha256"], "size": a["size"], "media_type": a["mediaType"],
             "name": a["name"]}
            for a in case["attachments"]
        ]  # fmt: skip
    return doc


def _python_fields(case: dict[str, Any], identity: Identity, mandate: Any, now: int) -> list[str]:
    """The fields the Python rules name for this input ([] when they accept it)."""
    text = json.dumps(_document(case))
    try:
        draft = parse_report(text, identity=identity, now_ms=now, fmt="json", mandate=mandate)
    except ReportFileError as exc:
        return sorted({p.field for p in exc.problems})
    sizes = _attachment_problems(draft.attachments)
    if sizes:
        return sorted({p.field for p in sizes})
    try:
        encode(draft.to_report(report_id=REPORT_ID, signed_at_ms=now))
    except VerificationError as exc:
        return [str(exc.context.get("field", "(report)"))]
    return []


def _variants(now: int, mandate: Any) -> dict[str, list[Any]]:
    """Boundary and invalid values of each input (the first of each list is the valid base)."""
    zone = mandate.zones[0]
    limits = rules()["limits"]
    big = limits["attachment_bytes"]
    sha = "ab" * 32

    def att(**changes: Any) -> dict[str, Any]:
        return {"sha256": sha, "size": 1000, "mediaType": "image/jpeg", "name": "a.jpg", **changes}

    def texts(limit: int) -> list[str]:
        return ["", "x" * limit, "x" * (limit + 1), "é" * limit, "🙂" * limit,
                "🙂" * (limit + 1), "a\u0000b", " "]  # fmt: skip

    return {
        "zone": [zone.id, mandate.zones[-1].id, "nowhere", "", zone.id.upper(), f" {zone.id}"],
        "observedAt": [
            _iso(now - 3_600_000),
            _iso(now + 300_000),
            _iso(now + 301_000),
            _iso(mandate.not_before_ms),
            _iso(mandate.not_before_ms - 1000),
            _iso(mandate.not_after_ms + 1000),
            "",
            "garbage",
            "1969-12-31T23:59:59",
        ],
        "lat": [
            f"{(zone.min_lat + zone.max_lat) / 2}",
            f"{zone.min_lat}",
            f"{zone.max_lat}",
            f"{zone.min_lat - 1e-9}",
            "90",
            "-90",
            "90.0000001",
            "-90.5",
            "",
            "nan",
            "NaN",
            "1e2",
            " 48.1 ",
            "48,1",
            ".5",
            "0x30",
            "Infinity",
            "48.",
        ],
        "lon": [
            f"{(zone.min_lon + zone.max_lon) / 2}",
            f"{zone.min_lon}",
            f"{zone.max_lon}",
            f"{zone.max_lon + 1e-9}",
            "180",
            "-180",
            "180.0000001",
            "-181",
            "",
            "abc",
            "-0",
            "-0.0",
        ],
        "precisionM": [
            "25",
            "0",
            "1000000",
            "1000001",
            "-1",
            "",
            "2.0",
            "1e3",
            "007",
            " 5 ",
            "true",
            "null",
        ],
        "place": texts(200),
        "category": [
            Category.SHELLING.label,
            *[c.label for c in Category],
            "SHELLING",
            " shelling ",
            "Shelling",
            "shelling_x",
            "",
            "7",
            "armed clash",
        ],
        "subType": texts(64),
        "severity": [
            "3",
            "1",
            "5",
            "0",
            "6",
            "3.0",
            "2.5",
            "-1",
            "",
            " 3 ",
            "03",
            "1e0",
            "abc",
            "true",
            "9007199254740993",
            "\uff13",
            "-0",
        ],
        "confidence": [
            "0.5",
            "0",
            "1",
            "0.0",
            "1.0",
            "-0",
            "-0.0",
            "1.0000001",
            "1.00000000000000001",
            "",
            "NaN",
            "Infinity",
            "-1e-300",
            "1e-400",
            ".5",
            "5.",
            "0x1",
            "1,0",
            "1e400",
            "2",
        ],
        "killed": ["0", "1000000", "1000001", "-1", "", "1.5", "7", "1e1", "+1"],
        "injured": ["2", "0", "1000001", "-0", "x"],
        "missing": ["", "1000000", "-5", "3.0"],
        "civilian": [False, True],
        "narrative": texts(20_000),
        "attachments": [
            [],
            [att()],
            [att(size=big)],
            [att(size=big + 1)],
            [att() for _ in range(64)],
            [att() for _ in range(65)],
            [att(mediaType="IMAGE/PNG")],
            [att(mediaType="image")],
            [att(mediaType="a/" + "b" * 125)],
            [att(mediaType="a/" + "b" * 126)],
            [att(name="n" * 255)],
            [att(name="n" * 256)],
            [att(size=0, name="")],
            [att(), att(mediaType="x y/z", name="🙂" * 256)],
        ],
        "corrects": [
            "",
            "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
            " 0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b ",
            "0190A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2B",
            "0190a1b2-c3d4-4e5f-8a6b-7c8d9e0f1a2b",
            "not-a-uuid",
        ],
    }


def _cases(now: int, mandate: Any) -> list[dict[str, Any]]:
    variants = _variants(now, mandate)
    base = {k: v[0] for k, v in variants.items()}
    cases = [dict(base)]
    for key, values in variants.items():
        cases += [{**base, key: v} for v in values[1:]]
    rng = random.Random(16)
    # Several fields wrong at once: every problem is listed (an attachment too large for the
    # CLI is judged only once the file is otherwise valid, so combinations leave size alone).
    keys = [k for k in variants if k != "attachments"]
    for _ in range(COMBINATIONS):
        case = dict(base)
        for key in rng.sample(keys, rng.randint(2, 5)):
            case[key] = rng.choice(variants[key])
        cases.append(case)
    return cases


async def test_the_form_refuses_exactly_what_the_python_rules_refuse(chromium: str) -> None:
    now = (time.time_ns() // 1_000_000) // 1000 * 1000
    m = make_mission(1, now_ms=now)
    mandate = m.scenario.mandate
    identity = Identity("un-obs-web", "un", mandate.mandate_id)
    cases = _cases(now, mandate)
    ids = ["un-a", "un-", "un", "un-A", "un-" + "a" * 60, "un-" + "a" * 61, "osce-x", "un-x\n",
           "un-é", "-un-x", "un-x y", "un--", "un-_", "un-a-b_c9", ""]  # fmt: skip
    async with serving_form() as url, Browser.launch(chromium) as browser:
        page = await browser.new_page()
        await page.send("Emulation.setTimezoneOverride", timezoneId="UTC")
        await page.goto(url)
        assert await page.evaluate("typeof globalThis.obus.validate") == "function"
        args = {"mandate": base64.b64encode(m.scenario.mandate_envelope).decode(), "now": now}
        browser_out: list[dict[str, Any]] = []
        for start in range(0, len(cases), 100):
            batch = {**args, "cases": cases[start : start + 100]}
            browser_out += await page.evaluate(f"({_VALIDATE})({json.dumps(batch)})")
        id_out = await page.evaluate(f"({_IDS})({json.dumps({'ids': ids, 'org': 'un'})})")

    mismatches = []
    refused = 0
    for case, got in zip(cases, browser_out, strict=True):
        want = _python_fields(case, identity, mandate, now)
        refused += bool(want)
        if got["fields"] != want or got["ok"] is bool(want):
            short = {k: (v[:40] + "..." if isinstance(v, str) and len(v) > 40 else v)
                     for k, v in case.items() if k != "attachments"}  # fmt: skip
            mismatches.append((short, len(case["attachments"]), got, want))
    assert mismatches == [], "\n".join(map(str, mismatches[:20]))
    assert cases[0] and _python_fields(cases[0], identity, mandate, now) == []  # a valid base
    assert refused > len(cases) // 2  # most inputs are wrong somewhere

    for observer_id, form_ok in zip(ids, id_out, strict=True):
        try:
            check_id("observer_id", observer_id)
            check_subject_namespace(observer_id, "un")
            python_ok = True
        except VerificationError:
            python_ok = False
        assert form_ok is python_ok, observer_id
    print(f"\n{len(cases)} form inputs judged alike by the form and the Python rules"
          f" ({refused} refused), {len(ids)} observer ids")  # fmt: skip
