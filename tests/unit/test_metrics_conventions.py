"""A node's /metrics families (nodes/org_node/dashboard/metrics.py) follow Prometheus
conventions, checked with prometheus-client's own parser: counters end in ``_total``, units are
in names, states are gauges; decisions are a gauge by state plus a published counter that only
grows as decisions move from pending to published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bus.store.node import NodeStore
from nodes.org_node.dashboard.metrics import metrics_text, store_snapshot


def _snapshot(decisions: list[tuple[str, str, str, int]]) -> dict[str, Any]:
    return {
        "consumed": {"reports": 12, "board": 3},
        "verified": 10,
        "quarantined": {"bad_signature": 2},
        "board_rejected": {"malformed": 1},
        "decisions": decisions,
        "peers": {"osce": 4},
        "statements": {"pending": 1},
        "verdict_changes": {"report": 1, "board": 0},
    }


def _status() -> dict[str, Any]:
    return {
        "node": {"accepted": 10, "quarantined": 2, "revoked_after_acceptance": 1},
        "lag": {"obus.reports.un/0": 3, "obus.reports.un/1": 0},
        "group": {
            "state": "ok",
            "why": "",
            "partitions": {"exist": 2, "assigned_here": 2},
            "foreign_members": [],
            "lag": {"obus.reports.un/0": 3, "obus.reports.un/1": 0},
        },
        "followup": {"pending": 0, "late": 0},
        "seal": {"epochs_judged": 4, "final_epoch": 4, "open_epoch": 5, "alarm": None},
        "running": True,
    }


def _families(decisions: list[tuple[str, str, str, int]]) -> dict[str, Any]:
    text = metrics_text(_snapshot(decisions), _status()).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _values(fam: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for s in fam.samples:
        assert isinstance(s, Sample)
        out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_family_follows_the_naming_conventions() -> None:
    fams = _families([("surge", "high", "pending", 2)])
    for name, fam in fams.items():
        assert name.startswith("obus_"), name
        for s in fam.samples:
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            else:
                assert not s.name.endswith("_total"), s.name  # a _total is never a gauge
    kinds = {n: f.type for n, f in fams.items()}
    assert kinds["obus_decisions"] == "gauge"
    assert kinds["obus_decisions_published"] == "counter"
    assert kinds["obus_records_consumed"] == "counter"
    assert kinds["obus_ingest_records"] == "counter"
    assert kinds["obus_consumer_partition_lag_records"] == "gauge"
    assert kinds["obus_partition_lag_records"] == "gauge"
    assert kinds["obus_seal_epochs_judged"] == "counter"
    assert kinds["obus_seal_final_epoch"] == "gauge"
    lag = _values(fams["obus_consumer_partition_lag_records"])
    key = (
        "obus_consumer_partition_lag_records",
        (("partition", "0"), ("topic", "obus.reports.un")),
    )
    assert lag[key] == 3.0


def test_published_decisions_only_go_up_as_decisions_move_from_pending() -> None:
    before = _families([("surge", "high", "pending", 3)])
    after = _families([("surge", "high", "pending", 1), ("surge", "high", "published", 2)])
    labels = (("priority", "high"), ("rule", "surge"))
    pending = ("obus_decisions", (*labels, ("state", "pending")))
    assert _values(before["obus_decisions"])[pending] == 3.0
    assert _values(after["obus_decisions"])[pending] == 1.0  # a state: it may go down
    published = ("obus_decisions_published_total", labels)
    assert published not in _values(before["obus_decisions_published"])
    assert _values(after["obus_decisions_published"])[published] == 2.0


def test_store_snapshot_reads_a_real_store(tmp_path: Path) -> None:
    db = tmp_path / "un.db"
    NodeStore(db).close()  # a fresh store, with its schema
    snapshot = store_snapshot(db, tmp_path / "un.final.db", "un")
    assert snapshot["verified"] == 0 and snapshot["decisions"] == []
    assert snapshot["consumed"] == {"reports": 0, "board": 0}
    assert snapshot["verdict_changes"] == {"report": 0, "board": 0}  # sealer, nothing judged
    assert store_snapshot(db, None, "un")["verdict_changes"] is None  # no sealer
    text = metrics_text(snapshot, None).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"obus_reports_verified", "obus_verdict_changes"} <= names
