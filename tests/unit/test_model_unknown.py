"""Forward-compatible reading of reports and the schema versions a mandate allows (pure).

A report may carry, after its known fields, fields of a newer schema version in the addition
range 100..199: the node keeps the exact bytes, shows the field numbers and judges the rest
strictly. The version the report states must be one the mandate in force allows.
"""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bus._pb.obus.v1 import report_pb2
from bus.errors import Reason, VerificationError
from bus.model import (
    ADDITION_FIELDS,
    MAX_SCHEMA_VERSION_BOUND,
    MAX_UNKNOWN_BYTES,
    SCHEMA_VERSION,
    Envelope,
    Mandate,
    Report,
    _scan_unknown,
    check_schema_allowed,
    encode,
    stamp_schema_version,
)
from bus.report_file import Identity, ReportFileError, parse_report
from bus.sign import ReportSigner
from bus.trust import KeyRing
from bus.verify import verify_report
from tests.mission import Mission, make_mission, raw_report_envelope

# One version past what this software knows: its fields are unknown here.
FUTURE = SCHEMA_VERSION + 1
HIGHEST_KNOWN = max(f.number for f in report_pb2.ObserverReport.DESCRIPTOR.fields)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _text(number: int, value: bytes) -> bytes:
    return _key(number, 2) + _varint(len(value)) + value


FIRST_FREE = max(HIGHEST_KNOWN + 1, ADDITION_FIELDS.start)
# Two fields of a future version: a string and a varint, in increasing order.
TAIL = _text(FIRST_FREE, b"future text") + _key(FIRST_FREE + 1, 0) + _varint(300)


def _allowing(m: Mission, low: int = 1, high: int = FUTURE) -> KeyRing:
    """A key ring of the mission's accreditations under a mandate allowing low..high."""
    mandate = dataclasses.replace(
        m.scenario.mandate, min_schema_version=low, max_schema_version=high
    )
    ring = KeyRing(mandate)
    for raw in m.scenario.accreditations:
        ring.apply(Envelope.decode(raw))
    return ring


def _future_payload(m: Mission, tail: bytes = TAIL, version: int = FUTURE) -> bytes:
    return encode(m.draft(schema_version=version)) + tail


# ---------------------------------------------------------------------------------------------
# Reading


def test_unknown_fields_of_a_newer_version_are_kept_and_shown() -> None:
    m = make_mission()
    payload = _future_payload(m)
    report = Report.decode(payload)
    assert report.unknown_fields == (FIRST_FREE, FIRST_FREE + 1)
    assert report.unknown_bytes == TAIL
    assert report.schema_version == FUTURE
    assert encode(report) == payload  # the signed bytes come back exactly
    assert report.narrative == "Impacts counted."  # the known fields are read as ever


def test_a_signed_report_with_unknown_fields_is_accepted_when_the_mandate_allows_its_version() -> (
    None
):
    m = make_mission()
    raw = raw_report_envelope(_future_payload(m), m.observer()[1])
    vr = verify_report(raw, expected_org="un", keyring=_allowing(m), reference_ms=m.now)
    assert vr.report.unknown_fields == (FIRST_FREE, FIRST_FREE + 1)


def test_a_version_the_mandate_does_not_allow_is_schema_not_allowed() -> None:
    m = make_mission()
    raw = raw_report_envelope(_future_payload(m), m.observer()[1])
    with pytest.raises(VerificationError) as err:
        verify_report(raw, expected_org="un", keyring=m.keyring, reference_ms=m.now)
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED
    assert "allows 1..1" in err.value.message
    # below the mandate's oldest version likewise
    old = raw_report_envelope(encode(m.draft(i=2)), m.observer(i=2)[1])
    with pytest.raises(VerificationError) as err:
        verify_report(old, expected_org="un", keyring=_allowing(m, 2, FUTURE), reference_ms=m.now)
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED


def test_unknown_fields_in_a_version_this_software_knows_are_schema_not_allowed() -> None:
    m = make_mission()
    with pytest.raises(VerificationError) as err:
        Report.decode(_future_payload(m, version=SCHEMA_VERSION))
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED
    assert str(FIRST_FREE) in err.value.message


def test_version_one_has_one_encoding() -> None:
    m = make_mission()
    assert report_pb2.ObserverReport.FromString(encode(m.draft())).schema_version == 0
    pb = m.draft().to_pb()
    pb.schema_version = 1
    with pytest.raises(VerificationError) as err:
        Report.decode(pb.SerializeToString())
    assert (err.value.reason, err.value.context.get("field")) == (
        Reason.INVALID_FIELD,
        "schema_version",
    )
    with pytest.raises(VerificationError):
        m.draft(schema_version=0)
    with pytest.raises(VerificationError):
        m.draft(schema_version=MAX_SCHEMA_VERSION_BOUND + 1)


@pytest.mark.parametrize(
    ("name", "tail"),
    [
        ("a field below the addition range", _key(60, 0) + b"\x01"),
        ("a field above the addition range", _key(ADDITION_FIELDS.stop, 0) + b"\x01"),
        ("a known field again", _key(HIGHEST_KNOWN, 0) + b"\x02"),
        ("out of order", _key(FIRST_FREE + 1, 0) + b"\x01" + _key(FIRST_FREE, 0) + b"\x01"),
        ("a varint field twice", _key(FIRST_FREE, 0) + b"\x01" + _key(FIRST_FREE, 0) + b"\x02"),
        ("a group", _key(FIRST_FREE, 3) + _key(FIRST_FREE, 4)),
        ("a varint not in its shortest form", _key(FIRST_FREE, 0) + b"\x81\x00"),
        (
            "a key not in its shortest form",
            bytes([*_key(FIRST_FREE, 0)[:-1], 0x80 | _key(FIRST_FREE, 0)[-1], 0]) + b"\x01",
        ),
        ("truncated length", _key(FIRST_FREE, 2) + b"\x05ab"),
        ("truncated fixed64", _key(FIRST_FREE, 1) + b"\x00" * 7),
        ("too large", _text(FIRST_FREE, b"x" * MAX_UNKNOWN_BYTES)),
    ],
)
def test_unacceptable_unknown_fields_are_malformed(name: str, tail: bytes) -> None:
    m = make_mission()
    with pytest.raises(VerificationError) as err:
        Report.decode(_future_payload(m, tail))
    assert err.value.reason is Reason.MALFORMED, name


def test_accepted_shapes_of_unknown_fields() -> None:
    m = make_mission()
    tail = (
        _text(FIRST_FREE, b"a")
        + _text(FIRST_FREE, b"b")  # a repeated string: consecutive, length-delimited
        + _key(FIRST_FREE + 1, 1) + b"\x00" * 8  # fixed64
        + _key(FIRST_FREE + 2, 5) + b"\x00" * 4  # fixed32
        + _key(ADDITION_FIELDS.stop - 1, 0) + b"\x00"  # the last number of the range
    )  # fmt: skip
    payload = _future_payload(m, tail)
    report = Report.decode(payload)
    assert report.unknown_fields == (
        FIRST_FREE,
        FIRST_FREE + 1,
        FIRST_FREE + 2,
        ADDITION_FIELDS.stop - 1,
    )
    assert encode(report) == payload


def test_unknown_fields_inside_a_known_message_stay_malformed() -> None:
    m = make_mission()
    pb = m.draft(schema_version=FUTURE).to_pb()
    inner = pb.location.SerializeToString() + _key(FIRST_FREE, 0) + b"\x01"
    head = report_pb2.ObserverReport()
    head.CopyFrom(pb)
    head.ClearField("location")
    # location (field 10) rebuilt with the extra field, in its place among the known fields
    raw = head.SerializeToString()
    at = raw.index(_key(11, 0))  # category follows location
    payload = raw[:at] + _text(10, inner) + raw[at:]
    with pytest.raises(VerificationError) as err:
        Report.decode(payload)
    assert err.value.reason is Reason.MALFORMED


def test_a_report_built_with_unknown_bytes_must_name_them() -> None:
    m = make_mission()
    with pytest.raises(VerificationError):
        m.draft(schema_version=FUTURE, unknown_bytes=TAIL)
    named = (FIRST_FREE, FIRST_FREE + 1)
    ok = m.draft(schema_version=FUTURE, unknown_bytes=TAIL, unknown_fields=named)
    assert ok.unknown_fields == named


# Fuzzed tails: _scan_unknown accepts exactly what protobuf's own parser reads as unknown
# fields meeting the rules, and names the same numbers.
_fields = st.tuples(st.integers(1, 260), st.sampled_from([0, 1, 2, 3, 5]), st.binary(max_size=12))


def _encode_field(number: int, wire: int, value: bytes) -> bytes:
    if wire == 0:
        return _key(number, 0) + _varint(int.from_bytes(value[:9] or b"\x00", "little"))
    if wire == 1:
        return _key(number, 1) + value[:8].ljust(8, b"\x00")
    if wire == 5:
        return _key(number, 5) + value[:4].ljust(4, b"\x00")
    if wire == 2:
        return _text(number, value)
    return _key(number, 3) + _key(number, 4)


def _oracle(tail: bytes, above: int) -> tuple[int, ...] | None:
    try:
        msg = report_pb2.ObserverReport.FromString(b"")
        msg.MergeFromString(tail)
    except DecodeError:
        return None
    if msg.ListFields():  # a known field
        return None
    unknown = UnknownFieldSet(msg)
    fields = [unknown[i] for i in range(len(unknown))]
    if any(f.wire_type in (3, 4) for f in fields):
        return None
    # the tail must be exactly the canonical encoding of what protobuf read (no overlong or
    # truncated varints)
    rebuilt = b"".join(
        _key(f.field_number, f.wire_type)
        + (
            _varint(f.data)
            if f.wire_type == 0
            else f.data.to_bytes(8 if f.wire_type == 1 else 4, "little")
            if f.wire_type in (1, 5)
            else _varint(len(f.data)) + f.data
        )
        for f in fields
    )
    if rebuilt != tail:
        return None
    seen = [(f.field_number, f.wire_type) for f in fields]
    numbers: list[int] = []
    for i, (number, wire) in enumerate(seen):
        if number not in ADDITION_FIELDS or number <= above or wire in (3, 4):
            return None
        if i and number < seen[i - 1][0]:
            return None
        if i and number == seen[i - 1][0] and not wire == seen[i - 1][1] == 2:
            return None
        if not numbers or numbers[-1] != number:
            numbers.append(number)
    return tuple(numbers)


@settings(max_examples=800, deadline=None)
@given(
    st.one_of(
        st.lists(_fields, max_size=5).map(lambda fs: b"".join(_encode_field(*f) for f in fs)),
        st.lists(_fields, max_size=5).map(
            lambda fs: b"".join(_encode_field(*f) for f in sorted(fs, key=lambda f: f[0]))
        ),
        st.binary(max_size=16),
    )
)
def test_scan_agrees_with_protobufs_unknown_field_parser(tail: bytes) -> None:
    expected = _oracle(tail, HIGHEST_KNOWN)
    try:
        got: tuple[int, ...] | None = _scan_unknown(tail, HIGHEST_KNOWN, "report")
    except VerificationError as exc:
        assert exc.reason is Reason.MALFORMED
        got = None
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(_fields, min_size=1, max_size=4))
@example([(100, 2, b"\x00")])  # field 100 is language since schema v2: judged as a language
@example([(FIRST_FREE, 2, b"x"), (FIRST_FREE + 1, 0, b"\x01")])
def test_fuzzed_future_reports_decode_to_their_exact_bytes_or_are_malformed(
    fields: list[tuple[int, int, bytes]],
) -> None:
    """Appended fields this software does not know decode to their exact bytes or are
    ``malformed``. A drawn number that *is* known here (1..HIGHEST_KNOWN: the addition range
    starts at 100, and versions 2 and 3 took 100..102) is parsed as that field, so its value
    may also be refused by that field's own rule (``invalid_field``, or ``schema_not_allowed``
    for a newer field in a version 1 report) or accepted as that field."""
    m = make_mission()
    tail = b"".join(_encode_field(*f) for f in sorted(fields, key=lambda f: f[0]))
    payload = _future_payload(m, tail)
    known = any(number <= HIGHEST_KNOWN for number, _, _ in fields)
    try:
        report = Report.decode(payload)
    except VerificationError as exc:
        if known and exc.reason in (Reason.INVALID_FIELD, Reason.SCHEMA_NOT_ALLOWED):
            return
        assert exc.reason is Reason.MALFORMED
        assert _oracle(tail, HIGHEST_KNOWN) is None
        return
    assert encode(report) == payload
    if not known:
        assert report.unknown_fields == _oracle(tail, HIGHEST_KNOWN)


# ---------------------------------------------------------------------------------------------
# The mandate's versions and the writers' gate


def test_a_mandate_without_schema_versions_keeps_its_bytes_and_allows_version_one() -> None:
    m = make_mission()
    mandate = m.scenario.mandate
    assert mandate.schema_versions == (1, 1)
    encoded = encode(mandate)
    assert Mandate.decode(encoded) == mandate
    raised = dataclasses.replace(mandate, max_schema_version=FUTURE)
    assert Mandate.decode(encode(raised)).schema_versions == (1, FUTURE)
    assert len(encode(raised)) > len(encoded)
    check_schema_allowed(1, mandate)
    with pytest.raises(VerificationError) as err:
        check_schema_allowed(FUTURE, mandate)
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED


@pytest.mark.parametrize(
    "changes",
    [
        {"min_schema_version": 3, "max_schema_version": 2},
        {"min_schema_version": 2},  # above the default newest (1)
        {"max_schema_version": MAX_SCHEMA_VERSION_BOUND + 1},
    ],
)
def test_impossible_schema_versions_in_a_mandate_are_invalid(changes: dict[str, int]) -> None:
    m = make_mission()
    with pytest.raises(VerificationError) as err:
        dataclasses.replace(m.scenario.mandate, **changes)  # type: ignore[arg-type]
    assert err.value.reason is Reason.INVALID_FIELD


def test_writers_state_the_lowest_version_the_mandate_allows() -> None:
    m = make_mission()
    report = m.draft()
    assert stamp_schema_version(report, m.scenario.mandate).schema_version == 1
    assert stamp_schema_version(report, None).schema_version == 1
    newer = dataclasses.replace(m.scenario.mandate, max_schema_version=FUTURE)
    assert stamp_schema_version(report, newer).schema_version == 1
    # a mandate that retired every version this software writes: nothing is signed
    retired = dataclasses.replace(newer, min_schema_version=FUTURE)
    with pytest.raises(VerificationError) as err:
        stamp_schema_version(report, retired)
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED
    signer = ReportSigner(m.observer()[1], mandate=retired)
    with pytest.raises(VerificationError):
        signer.sign(report)
    assert signer.head is None  # nothing signed, the chain did not move


def test_writers_never_emit_fields_they_do_not_know() -> None:
    m = make_mission()
    decoded = Report.decode(_future_payload(m))
    allowing = dataclasses.replace(m.scenario.mandate, max_schema_version=FUTURE)
    with pytest.raises(VerificationError) as err:
        stamp_schema_version(decoded, allowing)
    assert err.value.reason is Reason.INVALID_FIELD


# ---------------------------------------------------------------------------------------------
# Schema version 2: the narrative's language


def test_language_is_a_version_2_field() -> None:
    m = make_mission()
    report = m.draft(language="uk", schema_version=2)
    assert Report.decode(encode(report)) == report
    assert report.required_schema_version == 2
    with pytest.raises(VerificationError) as err:
        Report.decode(encode(m.draft(language="uk")))  # states version 1
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED
    assert "language" in err.value.message
    for bad in ("Ukrainian", "u", "uk_UA", "x" * 40):
        with pytest.raises(VerificationError) as err:
            m.draft(language=bad, schema_version=2)
        assert err.value.context.get("field") == "language", bad


def test_writers_use_language_only_once_the_mandate_allows_version_2() -> None:
    m = make_mission()
    draft = m.draft(language="uk")
    with pytest.raises(VerificationError) as err:
        stamp_schema_version(draft, m.scenario.mandate)
    assert (err.value.reason, err.value.context.get("field")) == (
        Reason.SCHEMA_NOT_ALLOWED,
        "language",
    )
    signer = ReportSigner(m.observer()[1], mandate=m.scenario.mandate)
    with pytest.raises(VerificationError):
        signer.sign(draft)
    assert signer.head is None
    allowing = dataclasses.replace(m.scenario.mandate, max_schema_version=2)
    raw = ReportSigner(m.observer()[1], mandate=allowing).sign(draft)
    report = Report.decode(Envelope.decode(raw).payload)
    assert (report.language, report.schema_version) == ("uk", 2)
    # a report without the new field stays version 1, readable by nodes of version 1
    plain = ReportSigner(m.observer(i=2)[1], mandate=allowing).sign(m.draft(i=2))
    assert Report.decode(Envelope.decode(plain).payload).schema_version == 1


def test_a_version_2_report_is_quarantined_until_the_mandate_allows_it() -> None:
    m = make_mission()
    raw = raw_report_envelope(encode(m.draft(language="uk", schema_version=2)), m.observer()[1])
    with pytest.raises(VerificationError) as err:
        verify_report(raw, expected_org="un", keyring=m.keyring, reference_ms=m.now)
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED
    vr = verify_report(raw, expected_org="un", keyring=_allowing(m, 1, 2), reference_ms=m.now)
    assert vr.report.language == "uk"


def _report_file(language: str) -> str:
    return (
        "zone: north\nobserved_at: 2026-10-31T23:00:00Z\n"
        "location: {lat: 48.2, lon: 38.0}\ncategory: shelling\nseverity: 3\nconfidence: 0.8\n"
        f"narrative: Обстріл з півночі.\nlanguage: {language}\n"
    )


def test_report_files_state_language_only_once_the_mandate_allows_version_2() -> None:
    m = make_mission()
    me = Identity("un-obs-1", "un", m.mandate_id)
    with pytest.raises(ReportFileError) as err:
        parse_report(_report_file("uk"), identity=me, now_ms=m.now, mandate=m.scenario.mandate)
    assert [p.field for p in err.value.problems] == ["language"]
    assert "allows 1..1" in str(err.value.problems[0])
    allowing = dataclasses.replace(m.scenario.mandate, max_schema_version=2)
    draft = parse_report(_report_file("uk"), identity=me, now_ms=m.now, mandate=allowing)
    report = draft.to_report(report_id=m.draft().report_id, signed_at_ms=m.now)
    assert (report.language, report.schema_version) == ("uk", 2)
    with pytest.raises(ReportFileError) as err:
        parse_report(_report_file("Ukrainian"), identity=me, now_ms=m.now, mandate=allowing)
    assert [p.field for p in err.value.problems] == ["language"]
