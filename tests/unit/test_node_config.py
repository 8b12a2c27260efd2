"""NodeConfig refuses unusable consumer batching settings, naming the key and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bus.errors import ConfigError
from nodes.cli.main import build_parser
from nodes.org_node.config import NodeConfig
from tests.mission import make_mission


def _config(**changes: int) -> NodeConfig:
    mandate = make_mission().scenario.mandate
    base = NodeConfig(org="un", bootstrap="127.0.0.1:9", db_path=Path("n.db"), mandate=mandate)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("fetch_min_bytes", 0, "--fetch-min-bytes"),
        ("fetch_min_bytes", -5, "--fetch-min-bytes"),
        ("fetch_max_wait_ms", -1, "--fetch-max-wait-ms"),
        ("fetch_max_wait_ms", 60_000, "--fetch-max-wait-ms"),
    ],
)
def test_bad_fetch_batching_names_key_and_fix(field: str, value: int, flag: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(**{field: value})
    assert field in err.value.key and flag in err.value.key
    assert str(value) in str(err.value) and "fix:" in str(err.value)


def test_cli_defaults_are_the_library_defaults() -> None:
    args = build_parser().parse_args(["node", "--org", "un", "--mandate", "m", "--db", "d"])
    defaults = {f.name: f.default for f in dataclasses.fields(NodeConfig)}
    assert args.fetch_min_bytes == defaults["fetch_min_bytes"] == 64 * 1024
    assert args.fetch_max_wait_ms == defaults["fetch_max_wait_ms"] == 50
    assert args.quarantine_quota_bytes == defaults["quarantine_quota_bytes"]
    # the edges are accepted: 1 byte (no batching) and no wait at all
    assert _config(fetch_min_bytes=1, fetch_max_wait_ms=0).fetch_max_wait_ms == 0
