"""Codec round trips and strict decoding (Hypothesis)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import BusError, Reason, VerificationError
from bus.model import (
    Accreditation,
    Attachment,
    Casualties,
    Category,
    Envelope,
    Location,
    Report,
    Revocation,
    Role,
    Signature,
    encode,
)
from bus.uuid7 import uuid7, uuid7_unix_ms

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
digests = st.binary(min_size=32, max_size=32)
times = st.integers(1, 2**47)
text = st.text(max_size=200)


@st.composite
def reports(draw: st.DrawFn) -> Report:
    seq = draw(st.integers(1, 2**40))
    return Report(
        report_id=uuid7(draw(st.integers(0, 2**48 - 1)), draw(st.binary(min_size=10, max_size=10))),
        mandate_id=draw(ids),
        zone=draw(ids),
        observer_id=draw(ids),
        org=draw(ids),
        seq=seq,
        prev_digest=b"" if seq == 1 else draw(digests),
        observed_at_ms=draw(times),
        signed_at_ms=draw(times),
        location=Location(
            draw(st.floats(-90, 90)), draw(st.floats(-180, 180)), draw(st.integers(0, 10**6)),
            draw(st.text(max_size=50)),
        ),
        category=draw(st.sampled_from(Category)),
        severity=draw(st.integers(1, 5)),
        confidence=draw(st.floats(0, 1)),
        sub_type=draw(st.text(max_size=64)),
        casualties=Casualties(*draw(st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 100))), draw(st.booleans())),
        narrative=draw(text),
        attachments=tuple(draw(st.lists(st.builds(Attachment, digests, st.integers(0, 2**40), st.just("image/jpeg"), st.text(max_size=20)), max_size=3))),
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(reports())
def test_report_round_trip_is_exact(report: Report) -> None:
    raw = encode(report)
    assert Report.decode(raw) == report
    assert encode(Report.decode(raw)) == raw


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=1, max_size=60),
    st.binary(max_size=300),
    st.lists(st.tuples(digests, st.binary(min_size=64, max_size=64)), min_size=1, max_size=4),
)
def test_envelope_round_trip(ptype: str, payload: bytes, sigs: list[tuple[bytes, bytes]]) -> None:
    env = Envelope(ptype, payload, tuple(Signature(k, s) for k, s in sigs))
    assert Envelope.decode(env.encode()) == env


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decoders_raise_only_bus_errors(data: bytes) -> None:
    for decode in (Envelope.decode, Report.decode, Accreditation.decode, Revocation.decode):
        with contextlib.suppress(BusError):
            decode(data)


def test_unknown_fields_are_refused() -> None:
    env = Envelope("t", b"p", (Signature(b"k" * 32, b"s" * 64),))
    with pytest.raises(VerificationError) as exc:
        Envelope.decode(env.encode() + b"\xf8\x01\x01")  # field 31, varint 1
    assert exc.value.reason is Reason.MALFORMED


def test_accreditation_role_and_key_length() -> None:
    acc = Accreditation("a", "un", Role.OBSERVER, b"k" * 32, 1, 2, 1, "m")
    assert Accreditation.decode(encode(acc)) == acc
    with pytest.raises(VerificationError):
        Accreditation("a", "un", Role.OBSERVER, b"k" * 31, 1, 2, 1, "m")


@given(st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10))
def test_uuid7_layout(ms: int, rand: bytes) -> None:
    u = uuid7(ms, rand)
    assert u[14] == "7" and u[19] in "89ab"
    assert uuid7_unix_ms(u) == ms


@pytest.mark.parametrize("label", ["shelling", "SHELLING", " armed_clash "])
def test_category_parse(label: str) -> None:
    assert Category.parse(label).label == label.strip().lower()


def test_category_parse_lists_allowed_values() -> None:
    with pytest.raises(VerificationError) as exc:
        Category.parse("bombing")
    assert "ceasefire_violation" in exc.value.message
