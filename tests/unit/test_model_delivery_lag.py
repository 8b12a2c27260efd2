"""The mandate's maximum delivery lag: its codec, its bounds, and `obus mandate draft`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import ceremony
from bus._pb.obus.v1 import trust_pb2
from bus.errors import Reason, VerificationError
from bus.model import (
    DEFAULT_MAX_DELIVERY_LAG_MS,
    MAX_DELIVERY_LAG_BOUND_MS,
    Mandate,
    encode,
)
from nodes.cli.main import main
from tests.mission import make_mission

DAY_MS = 86_400_000
ROOT = make_mission().scenario.mandate


def test_the_default_is_seven_days_and_is_not_encoded() -> None:
    assert ROOT.max_delivery_lag_ms == 0
    assert ROOT.delivery_lag_ms == DEFAULT_MAX_DELIVERY_LAG_MS == 7 * DAY_MS
    assert MAX_DELIVERY_LAG_BOUND_MS == 90 * DAY_MS
    # A mandate that leaves the lag unset keeps the bytes (and digest) it had before the field.
    pb = trust_pb2.Mandate.FromString(encode(ROOT))
    assert "max_delivery_lag_ms" not in {f.name for f, _ in pb.ListFields()}
    pb.ClearField("max_delivery_lag_ms")
    assert pb.SerializeToString(deterministic=True) == encode(ROOT)
    explicit_zero = encode(ROOT) + b"\x48\x00"
    with pytest.raises(VerificationError) as exc:
        Mandate.decode(explicit_zero)
    assert exc.value.reason is Reason.MALFORMED  # one mandate, one byte form


@given(st.integers(1, MAX_DELIVERY_LAG_BOUND_MS))
def test_a_lag_round_trips(lag: int) -> None:
    m = dataclasses.replace(ROOT, max_delivery_lag_ms=lag)
    raw = encode(m)
    assert raw != encode(ROOT)
    assert Mandate.decode(raw) == m
    assert Mandate.decode(raw).delivery_lag_ms == lag


@pytest.mark.parametrize("lag", [-1, MAX_DELIVERY_LAG_BOUND_MS + 1, 2**64 - 1])
def test_a_lag_out_of_bounds_is_refused(lag: int) -> None:
    with pytest.raises(VerificationError) as exc:
        dataclasses.replace(ROOT, max_delivery_lag_ms=lag)
    assert exc.value.reason is Reason.INVALID_FIELD
    assert exc.value.context["field"] == "max_delivery_lag_ms"
    if lag >= 0:  # the same from the wire
        pb = trust_pb2.Mandate.FromString(encode(ROOT))
        pb.max_delivery_lag_ms = lag
        with pytest.raises(VerificationError) as exc:
            Mandate.decode(pb.SerializeToString(deterministic=True))
        assert exc.value.reason is Reason.INVALID_FIELD


# -- obus mandate draft -------------------------------------------------------------------------

DESCRIPTION = """\
mandate_id = "lag-2026"
threshold = 1
not_before = "2026-01-01T00:00:00Z"
not_after = "2099-01-01T00:00:00Z"
{extra}

[[zones]]
id = "north"
min_lat = 48.0
min_lon = 37.5
max_lat = 48.6
max_lon = 38.5

[[organizations]]
org = "un"
root_public_key = "{key}"
"""


def _draft(tmp_path: Path, extra: str) -> tuple[int, Path]:
    desc = tmp_path / "m.toml"
    desc.write_text(
        DESCRIPTION.format(extra=extra, key=ROOT.organizations[0].root_public_key.hex())
    )
    out = tmp_path / "m.draft"
    return main(["mandate", "draft", str(desc), "--out", str(out)]), out


@pytest.mark.parametrize(
    ("extra", "lag"),
    [
        ("", 0),
        ('max_delivery_lag = "14d"', 14 * DAY_MS),
        ('max_delivery_lag = "36h"', 36 * 3_600_000),
        ('max_delivery_lag = "90d"', MAX_DELIVERY_LAG_BOUND_MS),
        ("max_delivery_lag_ms = 1000", 1000),
        ('max_delivery_lag = "0d"', 0),
    ],
)
def test_draft_reads_the_lag_from_the_description(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, lag: int
) -> None:
    code, out = _draft(tmp_path, extra)
    assert code == 0
    mandate = ceremony.Draft.decode(out.read_bytes()).mandate
    assert mandate.max_delivery_lag_ms == lag
    assert f"max delivery lag: {mandate.delivery_lag_ms} ms" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('max_delivery_lag = "91d"', "max_delivery_lag"),
        ('max_delivery_lag = "7 days"', "max_delivery_lag"),
        ('max_delivery_lag = "-1d"', "max_delivery_lag"),
        ("max_delivery_lag = 7", "max_delivery_lag"),
        ('max_delivery_lag_ms = "7d"', "max_delivery_lag_ms"),
        ("max_delivery_lag_ms = 7776000001", "max_delivery_lag_ms"),
        ('max_delivery_lag = "7d"\nmax_delivery_lag_ms = 1', "max_delivery_lag_ms"),
    ],
)
def test_draft_refuses_a_lag_it_cannot_read_or_above_the_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, key: str
) -> None:
    code, out = _draft(tmp_path, extra)
    assert code == 2
    err = capsys.readouterr().err
    assert f"config {key}:" in err and "Traceback" not in err
    assert not out.exists()


def test_a_rotation_changes_the_lag_and_otherwise_carries_it_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    previous = tmp_path / "v1.bin"
    previous.write_bytes(make_mission().scenario.mandate_envelope)
    v2 = tmp_path / "v2.draft"
    argv = ["mandate", "draft", "--previous", str(previous), "--out", str(v2)]
    assert main([*argv, "--max-delivery-lag", "30d"]) == 0
    raised = ceremony.Draft.decode(v2.read_bytes()).mandate
    assert (raised.version, raised.max_delivery_lag_ms) == (2, 30 * DAY_MS)
    assert raised == dataclasses.replace(ROOT, version=2, max_delivery_lag_ms=30 * DAY_MS)
    assert main([*argv, "--max-delivery-lag", "100d"]) == 2
    assert "config --max-delivery-lag:" in capsys.readouterr().err
    v1_lagged = dataclasses.replace(ROOT, max_delivery_lag_ms=30 * DAY_MS)
    assert ceremony.next_version(v1_lagged, ceremony.RotationChanges()).max_delivery_lag_ms == (
        30 * DAY_MS
    )
