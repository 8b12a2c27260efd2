"""For every decoder and verifier: any bytes give a verified object or a BusError, nothing else.

The targets (tests/fuzz_targets.py) cover every decoder and verifier of bus/: envelopes,
reports, mandates, accreditations, revocations, receipts, sealed reports, encryption keys,
decisions, statements, seals and signed notes, Merkle proofs, log exports, mandate
ceremony files, report files and policies. Inputs are random bytes or mutated valid seeds
(bit flips, cuts, insertions, truncation), so they get past the first length check. The long
run of the same targets is ``make fuzz``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_targets import SEEDS, TARGETS, run


@st.composite
def inputs(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=800))
    data = bytearray(draw(st.sampled_from(SEEDS["bytes"])))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == 0 and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=inputs())
def test_verified_object_or_bus_error_never_anything_else(name: str, data: bytes) -> None:
    run(TARGETS[name], data)


def test_every_present_decoder_is_a_target() -> None:
    assert len(TARGETS) >= 40


# Inputs that once broke the invariant (found by make fuzz), kept as named regressions.
REGRESSIONS = {
    "yaml_timestamp_day_out_of_range": (
        "report_file_yaml",
        b"category: shelling\nobserved_at: 2026-10-35T23:00:00Z\nlocation: {lat: 96.2}\n",
    ),
    "yaml_unhashable_key": ("report_file_yaml", b"? [a, b]\n: 1\n"),
    "yaml_deep_nesting": ("report_file_yaml", b"[" * 50_000),
    "json_deep_nesting": ("report_file_json", b"[" * 50_000),
    "seal_root_not_ascii": ("seal", "obus-seal/v1/jmm\n1\n1\n1\nAQE\u2014\n".encode()),
    "vkey_not_ascii": ("vkey", "un/un-obs-1+01234567+AQ\u2014".encode()),
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_fuzz_findings_stay_fixed(case: str) -> None:
    target, data = REGRESSIONS[case]
    run(TARGETS[target], data)
