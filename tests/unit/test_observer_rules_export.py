"""The web form's rules (nodes/observer_web/export_rules.py) are the Python checks' own bounds.

Every range and length the form receives is tried on the Python side at its edge: the bound
itself passes the report-file reader and the model's checks, one step beyond is refused naming
the field. A bound changed in :mod:`bus.model` or :mod:`bus.report_file` moves the form's rule
with it; a bound written a second time in the exporter would fail here when the two drift
apart. (The browser test tests/integration/test_observer_web_rules.py runs the form's own code.)
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
import yaml

from bus.crypto import SigningKey, verify_pae
from bus.errors import Reason, VerificationError
from bus.model import Attachment, Location
from bus.receipt import ObserverHead, head_payload, sign_head
from bus.report_file import Identity, ReportFileError, parse_report
from bus.trust import check_subject_namespace
from nodes.observer.device import ObserverConfig, accreditation_request
from nodes.observer_web.export_rules import rules
from tests.unit.test_report_file import EXAMPLE, NOW_MS

LIMITS: dict[str, Any] = rules()["limits"]
ME = Identity("un-obs-1", "un", "jmm-2026")


def _example() -> dict[str, Any]:
    loaded = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _problems(doc: dict[str, Any]) -> set[str]:
    """Fields the report-file reader names for ``doc`` (no mandate: no zone to bound a point)."""
    try:
        parse_report(json.dumps(doc, default=str), identity=ME, now_ms=NOW_MS, fmt="json")
    except ReportFileError as exc:
        return {p.field for p in exc.problems}
    return set()


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_example())
    target = doc
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return doc


# limit name -> the report-file fields it bounds, and the smallest step past an edge
RANGES: dict[str, tuple[list[tuple[str, ...]], float]] = {
    "severity": ([("severity",)], 1),
    "confidence": ([("confidence",)], 1e-9),
    "lat": ([("location", "lat")], 1e-9),
    "lon": ([("location", "lon")], 1e-9),
    "precision_m": ([("location", "precision_m")], 1),
    "casualties": ([("casualties", k) for k in ("killed", "injured", "missing")], 1),
}


@pytest.mark.parametrize("name", sorted(RANGES))
def test_each_exported_range_is_the_report_file_readers_range(name: str) -> None:
    low, high = LIMITS[name]
    paths, step = RANGES[name]
    for path in paths:
        field = ".".join(path)
        assert _problems(_with(path, low)) == set(), (field, low)
        assert _problems(_with(path, high)) == set(), (field, high)
        assert _problems(_with(path, low - step)) == {field}, (field, low - step)
        assert _problems(_with(path, high + step)) == {field}, (field, high + step)


def test_exported_text_lengths_are_the_readers_and_the_models() -> None:
    place = LIMITS["place_chars"]
    assert _problems(_with(("location", "place"), "p" * place)) == set()
    assert _problems(_with(("location", "place"), "p" * (place + 1))) == {"location.place"}
    Location(0.0, 0.0, 0, "p" * place)
    with pytest.raises(VerificationError) as caught:
        Location(0.0, 0.0, 0, "p" * (place + 1))
    assert (caught.value.reason, caught.value.context.get("field")) == (
        Reason.INVALID_FIELD,
        "location.place",
    )

    name = LIMITS["attachment_name_chars"]
    attachment = {"sha256": "ab" * 32, "size": 10, "media_type": "image/jpeg"}
    ok = _with(("attachments",), [{**attachment, "name": "n" * name}])
    long = _with(("attachments",), [{**attachment, "name": "n" * (name + 1)}])
    assert _problems(ok) == set()
    assert _problems(long) == {"attachments[0].name"}

    media = LIMITS["media_type_chars"]
    fits = "image/" + "x" * (media - len("image/"))
    Attachment(b"\x00" * 32, 10, fits, "photo.jpg")
    with pytest.raises(VerificationError, match="is not a media type"):
        Attachment(b"\x00" * 32, 10, fits + "x", "photo.jpg")
    too_long = _with(("attachments",), [{**attachment, "media_type": fits + "x"}])
    assert _problems(too_long) == {"attachments[0]"}


def test_exported_location_edges_are_the_models() -> None:
    low_lat, high_lat = LIMITS["lat"]
    low_lon, high_lon = LIMITS["lon"]
    Location(low_lat, low_lon, LIMITS["precision_m"][1])
    Location(high_lat, high_lon, LIMITS["precision_m"][0])
    for lat, lon, precision in (
        (high_lat + 1e-9, 0.0, 0),
        (0.0, low_lon - 1e-9, 0),
        (0.0, 0.0, LIMITS["precision_m"][1] + 1),
    ):
        with pytest.raises(VerificationError) as caught:
            Location(lat, lon, precision)
        assert caught.value.reason is Reason.INVALID_FIELD


def test_exported_request_version_and_namespace_are_the_ones_written_and_checked() -> None:
    exported = rules()
    key = SigningKey.generate()
    config = ObserverConfig("un-obs-1", "un", "jmm-2026", "https://127.0.0.1:1")
    request = accreditation_request(config, key, NOW_MS)
    assert request["version"] == exported["accreditation_request"]["version"]
    assert request["type"] == exported["accreditation_request"]["type"]
    separator = exported["subject_namespace_separator"]
    check_subject_namespace(f"un{separator}obs-1", "un")
    with pytest.raises(VerificationError) as caught:
        check_subject_namespace("unobs-1", "un")
    assert caught.value.reason is Reason.WRONG_ORG


def test_exported_head_payload_type_verifies_a_gateways_signed_head() -> None:
    node_key = SigningKey.generate()
    head = ObserverHead("un", "un-obs-1", 3, b"\x01" * 32, NOW_MS, node_key.key_id)
    signed = sign_head(head, node_key)
    payload = head_payload(
        org="un", observer_id="un-obs-1", seq=3, digest=b"\x01" * 32, as_of_ms=NOW_MS,
        node_key_id=node_key.key_id,
    )  # fmt: skip
    signature = base64.b64decode(signed["signature_b64"])
    verify_pae(node_key.public_key, rules()["observer_head"]["payload_type"], payload, signature)
    with pytest.raises(VerificationError):
        verify_pae(node_key.public_key, rules()["payload_types"]["receipt"], payload, signature)
