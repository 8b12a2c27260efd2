"""Report files written by people: the shipped example parses; every mistake names its field."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import Reason, VerificationError
from bus.model import Category, Report, encode
from bus.report_file import Identity, ReportFileError, parse_report
from bus.uuid7 import uuid7
from nodes.demo.scenario import build_scenario

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "report.yaml"
NOW_MS = 1_793_491_200_000 + 21 * 86_400_000  # 2026-11-22, three weeks after the example
MANDATE = build_scenario(NOW_MS).mandate
ME = Identity("un-obs-1", "un", MANDATE.mandate_id)


def doc() -> dict[str, object]:
    """The example file as data (comments dropped)."""
    loaded = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def parse(d: dict[str, object], fmt: str = "json") -> Report:
    text = json.dumps(d, default=str) if fmt == "json" else yaml.safe_dump(d)
    draft = parse_report(text, identity=ME, now_ms=NOW_MS, fmt=fmt, mandate=MANDATE)
    return draft.to_report(report_id=uuid7(NOW_MS), signed_at_ms=NOW_MS)


def test_the_shipped_example_parses_into_a_valid_report() -> None:
    draft = parse_report(EXAMPLE.read_text(), identity=ME, now_ms=NOW_MS, mandate=MANDATE)
    report = draft.to_report(report_id=uuid7(NOW_MS), signed_at_ms=NOW_MS)
    assert report.category is Category.SHELLING
    assert (report.zone, report.severity, report.casualties.injured) == ("north", 4, 2)
    assert (report.observer_id, report.org, report.mandate_id) == ("un-obs-1", "un", "jmm-2026")
    assert report.observed_at_ms == 1_793_491_200_000 + 6.5 * 3_600_000  # 06:30Z
    assert Report.decode(encode(report)) == report


def test_json_and_yaml_give_the_same_report() -> None:
    d = doc()
    d["observed_at"] = "2026-11-01T06:30:00+00:00"
    a, b = parse(d, "json"), parse(d, "yaml")
    assert (a.location, a.narrative, a.category) == (b.location, b.narrative, b.category)


def _set(path: str, value: object) -> dict[str, object]:
    d = doc()
    target = d
    *parents, last = path.split(".")
    for p in parents:
        target = target[p]  # type: ignore[assignment]
    if value is _DROP:
        del target[last]
    else:
        target[last] = value
    return d


_DROP = object()

# name: (document, field named in the problem, words the problem or allowed text contains)
BAD: dict[str, tuple[dict[str, object], str, str]] = {
    "severity too high": (_set("severity", 7), "severity", "1..5"),
    "severity as text": (_set("severity", "high"), "severity", "integer"),
    "severity yes/no": (_set("severity", True), "severity", "integer"),
    "severity missing": (_set("severity", _DROP), "severity", "required"),
    "category typo": (_set("category", "shellin"), "category", "ceasefire_violation"),
    "zone unknown": (_set("zone", "west"), "zone", "north, east, south"),
    "point outside zone": (_set("location.lat", 47.0), "location", "inside zone north"),
    "latitude impossible": (_set("location.lat", 123.0), "location.lat", "-90.0 .. 90.0"),
    "location missing": (_set("location", _DROP), "location", "required"),
    "location a string": (_set("location", "Riverford"), "location", "mapping"),
    "negative precision": (_set("location.precision_m", -5), "location.precision_m", "0..1,000,000"),
    "confidence percent": (_set("confidence", 90), "confidence", "0.0 .. 1.0"),
    "observed in the future": (_set("observed_at", "2027-01-01T00:00:00Z"), "observed_at", "up to now"),
    "observed without zone": (_set("observed_at", "2026-11-01T06:30:00"), "observed_at", "time zone"),
    "observed not a date": (_set("observed_at", "yesterday"), "observed_at", "ISO 8601"),
    "observed before mandate": (_set("observed_at", "2025-01-01T00:00:00Z"), "observed_at", "outside the mandate"),
    "negative killed": (_set("casualties.killed", -1), "casualties.killed", "integer 0"),
    "civilian maybe": (_set("casualties.civilian", "maybe"), "casualties.civilian", "true or false"),
    "narrative too long": (_set("narrative", "x" * 20_001), "narrative", "20,000"),
    "unknown field": (_set("weather", "rain"), "weather", "is not a known field"),
    "unknown location field": (_set("location.alt", 300), "location.alt", "lat, lon"),
    "client field seq": (_set("seq", 4), "seq", "filled in by the observer client"),
    "client field report id": (_set("report_id", "x"), "report_id", "remove it"),
    "someone else's file": (_set("observer_id", "un-obs-2"), "observer_id", "'un-obs-1'"),
    "other org": (_set("org", "osce"), "org", "'un'"),
    "corrects not an id": (_set("corrects", "the one from monday"), "corrects", "UUIDv7"),
    "attachment bad hash": (_set("attachments", [{"sha256": "abc", "size": 3, "media_type": "image/jpeg"}]), "attachments[0].sha256", "64 hex"),
    "attachment no size": (_set("attachments", [{"sha256": "a" * 64, "media_type": "image/jpeg"}]), "attachments[0].size", "required"),
    "attachment bad type": (_set("attachments", [{"sha256": "a" * 64, "size": 3, "media_type": "jpeg"}]), "attachments[0].media_type", "image/jpeg"),
    "attachment path here": (_set("attachments", [{"path": "a.jpg"}]), "attachments[0].path", "sha256 and size"),
    "attachments not a list": (_set("attachments", "a.jpg"), "attachments", "list"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD))
def test_each_mistake_names_its_field_and_what_is_allowed(name: str) -> None:
    d, field, words = BAD[name]
    with pytest.raises(ReportFileError) as info:
        parse(d)
    err = info.value
    assert err.reason is Reason.INVALID_FIELD
    assert isinstance(err, VerificationError)
    [problem] = [p for p in err.problems if p.field == field]
    assert words in f"{problem.problem}; allowed: {problem.allowed}", str(problem)
    assert str(problem) in err.diagnostics()


def test_every_problem_is_listed_at_once() -> None:
    d = _set("severity", 9)
    d["category"] = "riot"
    d["location"] = {"lat": 48.2}
    with pytest.raises(ReportFileError) as info:
        parse(d)
    fields = {p.field for p in info.value.problems}
    assert {"severity", "category", "location.lon"} <= fields
    assert info.value.message.splitlines()[0].endswith("3 problems")


@pytest.mark.parametrize(
    ("text", "fmt", "words"),
    [
        ("zone: north\n  bad: indent: here\n", "yaml", "not valid YAML"),
        ("{'zone': 1", "json", "not valid JSON"),
        ('{"zone": "north", "zone": "east"}', "json", "given twice"),
        ("zone: north\nzone: east\n", "yaml", "given twice"),
    ],
)
def test_unparseable_text_is_malformed_with_a_position(text: str, fmt: str, words: str) -> None:
    with pytest.raises(ReportFileError) as info:
        parse_report(text, identity=ME, now_ms=NOW_MS, fmt=fmt)
    assert info.value.reason is Reason.MALFORMED
    assert words in info.value.message


def test_a_list_is_not_a_report() -> None:
    with pytest.raises(ReportFileError, match="is a list"):
        parse_report("- a\n- b\n", identity=ME, now_ms=NOW_MS)


def test_attachment_by_path_is_hashed_by_the_resolver() -> None:
    d = _set("attachments", [{"path": "photos/crater.jpg"}])
    seen = []

    def resolve(path: str) -> tuple[bytes, int]:
        seen.append(path)
        return b"\x01" * 32, 1234

    draft = parse_report(
        json.dumps(d, default=str),
        identity=ME,
        now_ms=NOW_MS,
        fmt="json",
        mandate=MANDATE,
        resolve_path=resolve,
    )
    [att] = draft.attachments
    assert (att.sha256, att.size, att.media_type, att.name) == (
        b"\x01" * 32,
        1234,
        "image/jpeg",
        "crater.jpg",
    )
    assert seen == ["photos/crater.jpg"]


def test_unreadable_attachment_path_is_a_field_problem() -> None:
    def resolve(path: str) -> tuple[bytes, int]:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(ReportFileError, match=r"attachments\[0\].path: cannot be read"):
        parse_report(
            json.dumps(_set("attachments", [{"path": "gone.jpg"}]), default=str),
            identity=ME,
            now_ms=NOW_MS,
            fmt="json",
            resolve_path=resolve,
        )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_parses_or_raises_a_report_file_error(text: str) -> None:
    with contextlib.suppress(ReportFileError):
        parse_report(text, identity=ME, now_ms=NOW_MS, mandate=MANDATE)
