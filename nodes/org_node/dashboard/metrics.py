"""``GET /metrics``: the store's counts and a running node's live status in Prometheus text format.

The families are built afresh for each scrape from the read model's snapshot
(:meth:`~nodes.org_node.dashboard.read_model.ReadModel.metrics`) and the node's status, and
exported through a one-shot collector on a private registry. Counters (``_total``) count since
the process started and only go up; gauges say where things stand.

Sealing (while the node runs a sealer): ``obus_seal_*`` from the sealer's status, and
``obus_verdict_changes`` (by ``kind``: report, board) from the final store joined to the node's:
records whose final verdict differs from the provisional one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _OneShot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _group_families(group: dict[str, Any]) -> list[Metric]:
    """Who reads the report partitions, and real lag on every one (absent while unknown)."""
    if group.get("state") not in ("ok", "starved"):
        return []
    parts = group["partitions"]
    lag = GaugeMetricFamily(
        "obus_partition_lag_records",
        "Records on the broker not yet in the store, every report partition (whoever reads it)",
        labels=["topic", "partition"],
    )
    for key, n in sorted(group["lag"].items()):
        topic, _, part = key.rpartition("/")
        lag.add_metric([topic, part], n)
    return [
        GaugeMetricFamily(
            "obus_partitions_existing",
            "Partitions of the topics matching the report pattern",
            parts["exist"],
        ),
        GaugeMetricFamily(
            "obus_partitions_assigned",
            "Report partitions assigned to this node's own workers",
            parts["assigned_here"],
        ),
        GaugeMetricFamily(
            "obus_group_foreign_members",
            "Members of the node's consumer group whose client id is not the node's own",
            len(group["foreign_members"]),
        ),
        lag,
        GaugeMetricFamily(
            "obus_node_starved",
            "1 when a partition no worker of this node reads holds records not yet stored",
            int(group["state"] == "starved"),
        ),
    ]


def _seal_families(seal: dict[str, Any]) -> list[Metric]:
    """The sealer's progress, what it published, and its alarms."""
    counters = (
        ("obus_seal_epochs_judged", "Epochs the sealer judged", "epochs_judged"),
        (
            "obus_seal_proposals_published",
            "Seal proposals this node published",
            "proposals_published",
        ),
        (
            "obus_seal_cosignatures_published",
            "Seal cosignatures this node published",
            "cosignatures_published",
        ),
        (
            "obus_seal_equivocations",
            "Organizations found signing two seal texts for one epoch",
            "equivocations",
        ),
        (
            "obus_seal_rounds_opened",
            "Voting rounds opened because a split vote left no text of the round before able"
            " to become final",
            "rounds_opened",
        ),
    )
    gauges = (
        ("obus_seal_final_epoch", "The newest epoch with a final seal", "final_epoch"),
        ("obus_seal_open_epoch", "The epoch being sealed now", "open_epoch"),
        ("obus_seal_open_round", "The voting round of the epoch being sealed now", "open_round"),
        ("obus_seal_buffered_records", "Records read and waiting for a final seal", "buffered"),
    )
    fams: list[Metric] = [
        CounterMetricFamily(name, doc, int(seal.get(key, 0))) for name, doc, key in counters
    ]
    fams += [GaugeMetricFamily(name, doc, int(seal.get(key, 0))) for name, doc, key in gauges]
    fams.append(
        GaugeMetricFamily(
            "obus_seal_alarm",
            "1 while a sealed record was found altered or deleted (judging stopped)",
            int(bool(seal.get("alarm"))),
        )
    )
    return fams


def metrics_text(m: dict[str, Any], status: dict[str, Any] | None) -> bytes:
    """Prometheus exposition text of the store's counts and the node's live status."""
    fams: list[Metric] = []
    consumed = CounterMetricFamily(
        "obus_records_consumed", "Records read and stored, by topic kind", labels=["kind"]
    )
    for kind, n in sorted(m["consumed"].items()):
        consumed.add_metric([kind], n)
    fams.append(consumed)
    fams.append(
        CounterMetricFamily(
            "obus_reports_verified", "Report records that verified and were stored", m["verified"]
        )
    )
    q = CounterMetricFamily(
        "obus_records_quarantined", "Report records quarantined, by reason", labels=["reason"]
    )
    for reason, n in sorted(m["quarantined"].items()):
        q.add_metric([reason], n)
    fams.append(q)
    b = CounterMetricFamily(
        "obus_board_records_rejected",
        "Decision and statement records rejected, by reason",
        labels=["reason"],
    )
    for reason, n in sorted(m["board_rejected"].items()):
        b.add_metric([reason], n)
    fams.append(b)
    d = CounterMetricFamily(
        "obus_decisions",
        "This organization's decisions, by rule, priority and publication state",
        labels=["rule", "priority", "publication"],
    )
    for rule, prio, state, n in m["decisions"]:
        d.add_metric([rule, prio, state], n)
    fams.append(d)
    p = CounterMetricFamily(
        "obus_peer_decisions", "Verified published decisions of other organizations", labels=["org"]
    )
    for org, n in sorted(m["peers"].items()):
        p.add_metric([org], n)
    fams.append(p)
    s = GaugeMetricFamily("obus_statements", "Joint statements, by state", labels=["state"])
    for state in ("pending", "valid"):
        s.add_metric([state], m["statements"].get(state, 0))
    fams.append(s)
    if m.get("verdict_changes") is not None:
        vc = GaugeMetricFamily(
            "obus_verdict_changes",
            "Records whose final verdict differs from this node's provisional one, by kind",
            labels=["kind"],
        )
        for kind, n in sorted(m["verdict_changes"].items()):
            vc.add_metric([kind], n)
        fams.append(vc)
    if status is not None and status.get("seal") is not None:
        fams.extend(_seal_families(status["seal"]))
    if status is not None:
        lag = GaugeMetricFamily(
            "obus_consumer_lag",
            "Report records on the broker not yet stored (last fetch)",
            labels=["topic", "partition"],
        )
        for key, n in sorted(status.get("lag", {}).items()):
            topic, _, part = key.rpartition("/")
            lag.add_metric([topic, part], n)
        fams.append(lag)
        fams.append(
            GaugeMetricFamily(
                "obus_consumer_lag_records",
                "Sum of obus_consumer_lag",
                sum(status.get("lag", {}).values()),
            )
        )
        fams.extend(_group_families(status.get("group") or {}))
        f = status.get("followup", {})
        fams.append(
            GaugeMetricFamily(
                "obus_policy_pending_reports",
                "Final epochs the sealer stored that this node's final rules have not evaluated"
                " yet (their reports not all in the node's store yet, or not reached)",
                f.get("pending", 0),
            )
        )
        fams.append(
            CounterMetricFamily(
                "obus_policy_late_records",
                "Finally accepted reports the final rules could not evaluate: this node"
                " quarantined the record and did not keep all of its bytes",
                f.get("late", 0),
            )
        )
        fams.append(
            GaugeMetricFamily(
                "obus_followup_running", "1 while the follow-up runs", int(status.get("running", 0))
            )
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneShot(fams))
    return generate_latest(registry)
