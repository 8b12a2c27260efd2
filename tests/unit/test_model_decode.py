"""The fast decoders (Envelope.decode, Report.decode) judge every input as the plain ones did.

The decoders build their dataclasses without the generated ``__init__`` and then run each
``__post_init__`` once themselves, parse with ``FromString`` and compare against the plain
(non-deterministic) serialization when a message has no maps or extensions. The reference below
is the earlier implementation, word for word: public constructors for every object, a fresh
message plus ``ParseFromString``, ``SerializeToString(deterministic=True)``. For any bytes both
must return equal objects or raise the same error (reason, message, context). The reference
for reports also keeps an acceptable unknown tail (through ``_scan_unknown``, checked against
protobuf's own unknown-field parser in tests/unit/test_model_unknown.py) and reads
``schema_version``, as forward-compatible reading added them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus._pb.obus.v1 import envelope_pb2, receipt_pb2, report_pb2, sealed_pb2, trust_pb2
from bus.errors import Reason, VerificationError
from bus.model import (
    Accreditation,
    Attachment,
    Casualties,
    Category,
    Envelope,
    Location,
    Report,
    Role,
    Signature,
    _order_varies,
    _scan_unknown,
    encode,
)
from bus.uuid7 import uuid7

# ---------------------------------------------------------------------------------------------
# The reference: the decoders as they were before they were made fast.


def _reference_parse(cls: type[Message], data: bytes, what: str) -> Message:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise VerificationError(Reason.MALFORMED, f"{what} does not parse: {exc}") from exc
    msg.DiscardUnknownFields()
    if msg.SerializeToString(deterministic=True) != data:
        raise VerificationError(
            Reason.MALFORMED, f"{what} is not canonically encoded (unknown or repeated fields)"
        )
    return msg


def _reference_envelope(data: bytes) -> Envelope:
    pb = _reference_parse(envelope_pb2.SignedEnvelope, data, "envelope")
    assert isinstance(pb, envelope_pb2.SignedEnvelope)
    if not pb.payload_type:
        raise VerificationError(Reason.MALFORMED, "envelope has no payload_type")
    if not pb.signatures:
        raise VerificationError(Reason.MISSING_SIGNATURE, "envelope carries no signature")
    sigs = tuple(Signature(bytes(s.key_id), bytes(s.sig)) for s in pb.signatures)
    return Envelope(pb.payload_type, bytes(pb.payload), sigs)


def _reference_report(data: bytes) -> Report:
    tail: bytes = b""
    numbers: tuple[int, ...] = ()
    try:
        pb = _reference_parse(report_pb2.ObserverReport, data, "report")
    except VerificationError as exc:
        if "canonically" not in exc.message:
            raise
        pb = report_pb2.ObserverReport.FromString(data)
        pb.DiscardUnknownFields()
        known = pb.SerializeToString(deterministic=True)
        if not data.startswith(known):
            raise
        tail = data[len(known) :]
        numbers = _scan_unknown(tail, _HIGHEST_KNOWN, "report")
    assert isinstance(pb, report_pb2.ObserverReport)
    if pb.schema_version == 1:
        raise VerificationError(
            Reason.INVALID_FIELD,
            "schema_version: version 1 is written as 0 (left out)",
            field="schema_version",
        )
    if not pb.HasField("location"):
        raise VerificationError(Reason.INVALID_FIELD, "location: is required", field="location")
    try:
        category = Category(pb.category)
    except ValueError:
        raise VerificationError(
            Reason.INVALID_FIELD,
            f"category: {pb.category} is not a known category",
            field="category",
        ) from None
    report = Report(
        report_id=pb.report_id,
        mandate_id=pb.mandate_id,
        zone=pb.zone,
        observer_id=pb.observer_id,
        org=pb.org,
        seq=pb.seq,
        prev_digest=bytes(pb.prev_digest),
        observed_at_ms=pb.observed_at_ms,
        signed_at_ms=pb.signed_at_ms,
        location=Location(
            pb.location.lat, pb.location.lon, pb.location.precision_m, pb.location.place
        ),
        category=category,
        sub_type=pb.sub_type,
        severity=pb.severity,
        confidence=pb.confidence,
        casualties=Casualties(
            pb.casualties.killed,
            pb.casualties.injured,
            pb.casualties.missing,
            pb.casualties.civilian,
        ),
        narrative=pb.narrative,
        attachments=tuple(
            Attachment(bytes(a.sha256), a.size, a.media_type, a.name) for a in pb.attachments
        ),
        corrects=pb.corrects,
        language=pb.language,
        schema_version=pb.schema_version or 1,
        unknown_fields=numbers,
        unknown_bytes=tail,
    )
    report.check_stated_version()
    return report


_HIGHEST_KNOWN = max(f.number for f in report_pb2.ObserverReport.DESCRIPTOR.fields)
Outcome = tuple[object, ...]


def _outcome(decode: Callable[[bytes], object], data: bytes) -> Outcome:
    try:
        obj = decode(data)
    except VerificationError as exc:
        return ("error", exc.reason, exc.message, dict(exc.context))
    return ("ok", type(obj), obj, repr(obj))


def _same(data: bytes) -> Outcome:
    """Both report decoders and both envelope decoders agree on data; the report outcome."""
    assert _outcome(Envelope.decode, data) == _outcome(_reference_envelope, data)
    report = _outcome(Report.decode, data)
    assert report == _outcome(_reference_report, data)
    return report


# ---------------------------------------------------------------------------------------------
# Arbitrary protobuf messages, valid or not: every field over its whole wire range.

_uuid7s = st.builds(uuid7, st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10))
_ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
_strings = st.one_of(_ids, _texts, st.sampled_from(["", "UN", "a" * 64, "-x", "x\n"]))
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)
_i64 = st.integers(-(2**63), 2**63 - 1)
_doubles = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def _report_pbs(draw: st.DrawFn, with_tails: bool = True) -> bytes:
    valid_shape = draw(st.booleans())  # half the time: close to valid, so later checks run
    pb = report_pb2.ObserverReport(
        report_id=draw(_uuid7s if valid_shape else st.one_of(_uuid7s, _strings)),
        mandate_id=draw(_ids if valid_shape else _strings),
        zone=draw(_ids if valid_shape else _strings),
        observer_id=draw(_ids if valid_shape else _strings),
        org=draw(_ids if valid_shape else _strings),
        seq=draw(st.one_of(st.integers(0, 3), _u64)),
        prev_digest=draw(st.one_of(st.just(b""), st.binary(min_size=31, max_size=33))),
        observed_at_ms=draw(st.one_of(st.integers(-1, 2**45), _i64)),
        signed_at_ms=draw(st.one_of(st.integers(-1, 2**45), _i64)),
        # proto3 enums are open: unknown values parse
        category=draw(st.integers(0, 12)),  # type: ignore[arg-type]
        sub_type=draw(st.one_of(_texts, st.just("s" * 65))),
        severity=draw(st.one_of(st.integers(0, 6), _u32)),
        confidence=draw(st.one_of(st.floats(-0.5, 1.5), _doubles)),
        narrative=draw(st.one_of(_texts, st.just("n" * 20_001))),
        corrects=draw(st.one_of(st.just(""), _uuid7s, _strings)),
        schema_version=draw(st.one_of(st.just(0), st.integers(1, 3), _u32)),
        language=draw(st.one_of(st.just(""), st.sampled_from(["uk", "sr-Latn", "EN"]), _texts)),
    )
    if draw(st.integers(0, 9)):  # mostly present: location is required
        pb.location.lat = draw(st.one_of(st.floats(-91, 91), _doubles))
        pb.location.lon = draw(st.one_of(st.floats(-181, 181), _doubles))
        pb.location.precision_m = draw(st.one_of(st.integers(0, 10**6 + 1), _u32))
        pb.location.place = draw(st.one_of(_texts, st.just("p" * 201)))
    if draw(st.booleans()):
        pb.casualties.killed = draw(_u32)
        pb.casualties.injured = draw(_u32)
        pb.casualties.missing = draw(_u32)
        pb.casualties.civilian = draw(st.booleans())
    count = draw(st.one_of(st.integers(0, 3), st.sampled_from([64, 65])))
    for _ in range(count):
        att = pb.attachments.add()
        att.sha256 = draw(st.one_of(st.just(b"h" * 32), st.binary(max_size=33)))
        att.size = draw(_u64)
        att.media_type = draw(st.one_of(st.just("image/jpeg"), _texts, st.just("a/" + "b" * 126)))
        att.name = draw(st.one_of(_texts, st.just("f" * 256)))
    if draw(st.booleans()):  # let the ordering check after the others decide, sometimes
        pb.corrects = pb.report_id
    # sometimes fields this software does not know, acceptable or not
    tails = st.one_of(st.just(b""), st.binary(max_size=6), st.sampled_from(_TAILS))
    extra = draw(tails) if with_tails else b""
    return pb.SerializeToString(deterministic=True) + extra


# Unknown tails: acceptable (addition range, in order) and not (below it, out of order, a group).
_TAILS = [
    b"\xa2\x06\x02en",  # field 100, length-delimited
    b"\xa0\x06\x01\xaa\x06\x00",  # 100 varint, 101 empty string
    b"\xaa\x06\x00\xa2\x06\x00",  # 101 before 100
    b"\xa0\x06\x01\xa0\x06\x02",  # 100 twice as a varint
    b"\x98\x01\x01",  # field 19 (schema_version) a second time
    b"\xa3\x06\xa4\x06",  # field 100 as a group
    b"\xb8\x0c\x01",  # field 199
    b"\xc0\x0c\x01",  # field 200
]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_report_pbs())
def test_report_decode_agrees_with_reference_on_any_message(data: bytes) -> None:
    _same(data)


@st.composite
def _envelope_pbs(draw: st.DrawFn) -> bytes:
    pb = envelope_pb2.SignedEnvelope(
        payload_type=draw(st.one_of(st.just(""), _texts)), payload=draw(st.binary(max_size=64))
    )
    for _ in range(draw(st.integers(0, 3))):
        sig = pb.signatures.add()
        sig.key_id = draw(st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=33)))
        sig.sig = draw(st.one_of(st.binary(min_size=64, max_size=64), st.binary(max_size=65)))
    return pb.SerializeToString(deterministic=True)


@settings(max_examples=300, deadline=None)
@given(_envelope_pbs())
def test_envelope_decode_agrees_with_reference_on_any_message(data: bytes) -> None:
    assert _outcome(Envelope.decode, data) == _outcome(_reference_envelope, data)


# ---------------------------------------------------------------------------------------------
# Byte-level damage to valid encodings: the canonical check must judge as before.


def _valid_report() -> Report:
    return Report(
        report_id=uuid7(1_700_000_000_000, b"\x01" * 10),
        mandate_id="jmm-2026",
        zone="east",
        observer_id="osce-obs-1",
        org="osce",
        seq=300,
        prev_digest=b"\x07" * 32,
        observed_at_ms=1_700_000_000_000,
        signed_at_ms=1_700_000_000_500,
        location=Location(48.5, 37.25, 150, "checkpoint"),
        category=Category.SHELLING,
        severity=3,
        confidence=0.75,
        sub_type="artillery",
        casualties=Casualties(1, 2, 0, True),
        narrative="Shelling heard from the north.",
        attachments=(Attachment(b"\x05" * 32, 1234, "image/jpeg", "a.jpg"),),
    )


_REPORT_RAW = encode(_valid_report())
_ENVELOPE_RAW = Envelope(
    "application/vnd.obus.report.v1+protobuf", _REPORT_RAW, (Signature(b"k" * 32, b"s" * 64),)
).encode()


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([_REPORT_RAW, _ENVELOPE_RAW])))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "append"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        elif kind == "dup":
            end = draw(st.integers(at, min(len(data), at + 40)))
            data[end:end] = data[at:end]
        else:
            data += draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@settings(max_examples=1500, deadline=None)
@given(_damaged())
def test_damaged_bytes_are_judged_as_before(data: bytes) -> None:
    _same(data)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return bytes([number << 3 | wire_type]) + payload


def _loc_bytes(extra: bytes = b"") -> bytes:
    loc = report_pb2.Location(lat=1.0, lon=2.0).SerializeToString() + extra
    return _field(10, 2, bytes([len(loc)]) + loc)


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


def _named_cases() -> Iterator[tuple[str, bytes]]:
    base = report_pb2.ObserverReport.FromString(_REPORT_RAW)
    yield "unknown field at the end", _REPORT_RAW + _field(31, 0, b"\x01")
    yield "unknown field first", _field(31, 0, b"\x01") + _REPORT_RAW
    # location rewritten with an unknown field (number 9) inside the sub-message
    without_loc = report_pb2.ObserverReport()
    without_loc.CopyFrom(base)
    without_loc.ClearField("location")
    head = report_pb2.ObserverReport(
        report_id=base.report_id,
        mandate_id=base.mandate_id,
        zone=base.zone,
        observer_id=base.observer_id,
        org=base.org,
        seq=base.seq,
        prev_digest=base.prev_digest,
        observed_at_ms=base.observed_at_ms,
        signed_at_ms=base.signed_at_ms,
    ).SerializeToString()
    tail = report_pb2.ObserverReport(
        category=base.category,
        sub_type=base.sub_type,
        severity=base.severity,
        confidence=base.confidence,
        casualties=base.casualties,
        narrative=base.narrative,
        attachments=base.attachments,
    ).SerializeToString()
    yield "canonical rebuild", head + _loc_bytes() + tail
    yield "unknown field inside location", head + _loc_bytes(_field(9, 0, b"\x05")) + tail
    yield "location after category (wrong order)", head + tail + _loc_bytes()
    yield "seq twice", _REPORT_RAW + _field(6, 0, b"\x05")
    yield (
        "severity with a non-minimal varint",
        head + _loc_bytes() + _replace(tail, _field(13, 0, b"\x03"), _field(13, 0, b"\x83\x00")),
    )
    yield "explicit default (seq = 0)", _REPORT_RAW + _field(6, 0, b"\x00")
    yield "empty", b""
    yield "unknown field in an envelope", _ENVELOPE_RAW + _field(31, 0, b"\x01")
    yield (
        "unknown field in a signature",
        _replace(_ENVELOPE_RAW, b"\x1a\x64\x0a\x20", b"\x1a\x66\x28\x01\x0a\x20"),
    )


@pytest.mark.parametrize(("name", "data"), list(_named_cases()))
def test_named_encodings_are_judged_as_before(name: str, data: bytes) -> None:
    outcome = _same(data)
    if name == "canonical rebuild":
        assert outcome[0] == "ok", outcome
    elif name != "empty":
        assert outcome[:2] == ("error", Reason.MALFORMED), (name, outcome)
        assert _outcome(Envelope.decode, data)[:2] == ("error", Reason.MALFORMED), name


# ---------------------------------------------------------------------------------------------
# The pieces the fast path rests on.


def test_plain_serialization_is_canonical_only_without_maps_or_extensions() -> None:
    for module in (envelope_pb2, report_pb2, trust_pb2, receipt_pb2, sealed_pb2):
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            assert not _order_varies(descriptor), descriptor.full_name
    assert _order_varies(struct_pb2.Struct.DESCRIPTOR)  # a map field
    assert _order_varies(struct_pb2.Value.DESCRIPTOR)  # a map two levels down


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_report_pbs(with_tails=False))
def test_plain_and_deterministic_serialization_agree(data: bytes) -> None:
    pb = report_pb2.ObserverReport.FromString(data)
    assert pb.SerializeToString() == pb.SerializeToString(deterministic=True) == data


def test_each_check_runs_exactly_once_per_decoded_object(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}
    for cls in (Signature, Location, Attachment, Report):
        original = cls.__post_init__

        def counting(self: Any, _original: Callable[[Any], None] = original) -> None:
            calls[type(self).__name__] = calls.get(type(self).__name__, 0) + 1
            _original(self)

        monkeypatch.setattr(cls, "__post_init__", counting)
    report = Report.decode(_REPORT_RAW)
    Envelope.decode(_ENVELOPE_RAW)
    # A signature's two length checks run inline in Envelope.decode (its __post_init__ only
    # runs to raise, on a wrong length); the differential test above holds them to Signature(...)
    assert calls == {"Report": 1, "Location": 1, "Attachment": 1}
    assert report == _valid_report()
    assert type(report) is Report and type(report.location) is Location


def test_decoded_objects_stay_frozen() -> None:
    report = Report.decode(_REPORT_RAW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.seq = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.location.lat = 0.0  # type: ignore[misc]
    env = Envelope.decode(_ENVELOPE_RAW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.signatures[0].sig = b""  # type: ignore[misc]


def test_decoded_objects_are_ordinary_instances() -> None:
    report = Report.decode(_REPORT_RAW)
    env = Envelope.decode(_ENVELOPE_RAW)
    for obj, cls in (
        (report, Report),
        (report.location, Location),
        (report.casualties, Casualties),
        (report.attachments[0], Attachment),
        (env, Envelope),
        (env.signatures[0], Signature),
    ):
        assert type(obj) is cls
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert dataclasses.replace(obj) == obj
        assert hash(obj) == hash(dataclasses.replace(obj))
    assert repr(report) == repr(_valid_report())


def test_public_constructors_still_validate() -> None:
    good = _valid_report()
    for change, name in (
        ({"report_id": "x"}, "report_id"),
        ({"zone": "East"}, "zone"),
        ({"seq": 0}, "seq"),
        ({"severity": 6}, "severity"),
        ({"corrects": good.report_id}, "corrects"),
    ):
        with pytest.raises(VerificationError) as exc:
            dataclasses.replace(good, **change)
        assert exc.value.context["field"] == name
    with pytest.raises(VerificationError):
        Location(91.0, 0.0)
    with pytest.raises(VerificationError):
        Attachment(b"x" * 32, 1, "nomediatype")
    with pytest.raises(VerificationError):
        Signature(b"k" * 32, b"s" * 63)


def test_accreditation_key_id_is_computed_once_and_not_part_of_identity() -> None:
    acc = Accreditation("a", "un", Role.OBSERVER, b"k" * 32, 1, 2, 1, "m")
    assert acc.key_id == hashlib.sha256(b"k" * 32).digest()
    assert acc.key_id is acc.key_id
    other = dataclasses.replace(acc, public_key=b"j" * 32)
    assert other.key_id == hashlib.sha256(b"j" * 32).digest()
    assert "key_id" not in repr(acc)
    assert acc == Accreditation("a", "un", Role.OBSERVER, b"k" * 32, 1, 2, 1, "m")
    assert hash(acc) == hash(Accreditation("a", "un", Role.OBSERVER, b"k" * 32, 1, 2, 1, "m"))
    assert pickle.loads(pickle.dumps(acc)).key_id == acc.key_id
    assert Accreditation.decode(encode(acc)).key_id == acc.key_id
