"""A node's Prometheus families: its store's counts and its live status, served by the ops
server's ``/metrics`` (:mod:`nodes.runtime.ops`, wired in :mod:`nodes.org_node.process`).

:func:`store_snapshot` reads the counts from the node's store (and its final store) through
read-only connections; :func:`node_families` turns them and the node's status
(:meth:`nodes.org_node.process.NodeExtras.status`) into families, built afresh for each scrape.

Conventions: counters only go up and end in ``_total`` (store counts that only grow, or counts
since the process started); states are gauges. Decisions in particular: ``obus_decisions``
(gauge, by ``state``: local, pending, signed, published) says where they stand, and
``obus_decisions_published_total`` (counter) only grows, so ``rate()`` works on it.

Sealing (while the node runs a sealer): ``obus_seal_*`` from the sealer's status, and
``obus_verdict_changes`` (by ``kind``: report, board) from the final store joined to the node's:
records whose final verdict differs from the provisional one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.store.node import NodeStore
from nodes.org_node.dashboard.final_view import open_final_view


def store_snapshot(db_path: Path, final_db: Path | None, org: str) -> dict[str, Any]:
    """The store counts :func:`node_families` exports (blocking: call it in a worker thread).

    Raises:
        StoreError: the node store cannot be opened.
    """
    store = NodeStore(db_path, read_only=True)
    try:
        positions = store.positions()
        snapshot: dict[str, Any] = {
            "verified": store.count_reports(),
            "quarantined": store.quarantine_counts(),
            "board_rejected": dict(Counter(r for *_, r, _ in store.board_rejected())),
            "decisions": store.decision_counts(),
            "peers": {o: n for o, n in store.peer_decision_counts().items() if o != org},
            "statements": Counter(
                "valid" if len(s["signed_by"]) >= int(str(s["threshold"])) else "pending"
                for s in store.statements()
            ),
            "consumed": {
                "reports": sum(o for (t, _), o in positions.items() if ".reports." in t),
                "board": sum(o for (t, _), o in positions.items() if ".reports." not in t),
            },
        }
    finally:
        store.close()
    changes = None
    if final_db is not None:
        with open_final_view(db_path, final_db) as view:
            # a sealer runs and has judged nothing yet: no change so far
            changes = {"report": 0, "board": 0} if view is None else view.changed_counts()
    snapshot["verdict_changes"] = changes
    return snapshot


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


def node_families(m: dict[str, Any], status: dict[str, Any] | None) -> list[Metric]:
    """The families of a store snapshot (:func:`store_snapshot`) and the node's live status
    (None: a store alone)."""
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
    d = GaugeMetricFamily(
        "obus_decisions",
        "This organization's decisions, by rule, priority and publication state (local,"
        " pending, signed, published)",
        labels=["rule", "priority", "state"],
    )
    published: Counter[tuple[str, str]] = Counter()
    for rule, prio, state, n in m["decisions"]:
        d.add_metric([rule, prio, state], n)
        if state == "published":
            published[(rule, prio)] += n
    fams.append(d)
    pub = CounterMetricFamily(
        "obus_decisions_published",
        "This organization's decisions published on its decisions topic, by rule and priority",
        labels=["rule", "priority"],
    )
    for (rule, prio), n in sorted(published.items()):
        pub.add_metric([rule, prio], n)
    fams.append(pub)
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
            "obus_consumer_partition_lag_records",
            "Report records on the broker not yet stored, per partition this process reads"
            " (as of its last fetch; the group check measures every partition)",
            labels=["topic", "partition"],
        )
        for key, n in sorted(status.get("lag", {}).items()):
            topic, _, part = key.rpartition("/")
            lag.add_metric([topic, part], n)
        fams.append(lag)
        fams.append(
            GaugeMetricFamily(
                "obus_consumer_lag_records",
                "Sum of obus_consumer_partition_lag_records",
                sum(status.get("lag", {}).values()),
            )
        )
        node = status.get("node") or {}
        ingest = CounterMetricFamily(
            "obus_ingest_records",
            "Report records judged and stored since the process started, by outcome",
            labels=["outcome"],
        )
        for outcome in ("accepted", "quarantined"):
            ingest.add_metric([outcome], node.get(outcome, 0))
        fams.append(ingest)
        fams.append(
            CounterMetricFamily(
                "obus_reports_revoked_after_acceptance",
                "Accepted reports marked revoked by a later revocation, since the process started",
                node.get("revoked_after_acceptance", 0),
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
    return fams


def metrics_text(m: dict[str, Any], status: dict[str, Any] | None) -> bytes:
    """:func:`node_families` alone in Prometheus exposition text (a private registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneShot(node_families(m, status)))
    return generate_latest(registry)
