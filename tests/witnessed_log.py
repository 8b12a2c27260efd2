"""A small witnessed log built in memory, as six organization nodes would build it.

Signed reports in two partitions per organization; UN's witness core publishes checkpoints (at
multiples of 3) and the five others cosign them. Used by the export, audit and prove tests.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bus.checkpoint import verify_checkpoint
from bus.crypto import SigningKey
from bus.export import ExportHeader, ExportWriter, LogRecord
from bus.model import Role
from bus.witness import WitnessCore, WitnessPolicy
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from tests.mission import NOW_MS, Mission, make_mission

ORGS = [o for o, _ in ORGANIZATIONS]
PREFIX = "obus."


@dataclasses.dataclass
class Log:
    mission: Mission
    keys: dict[str, SigningKey]
    header: ExportHeader
    records: list[LogRecord]

    def reports(self) -> list[LogRecord]:
        return [r for r in self.records if r.section == "reports"]


def build_log(reports_per_observer: int = 6, *, cosign: bool = True) -> Log:
    m = make_mission()
    keys = {org: demo_key(f"test:node:{org}") for org in ORGS}
    for org, key in keys.items():
        m.accredit(f"{org}-node", org, key, Role.NODE)
    sc = m.scenario
    records = [
        LogRecord("mandate", f"{PREFIX}mandate", 0, 0, NOW_MS - 5000, None, sc.mandate_envelope)
    ]
    records += [
        LogRecord("registry", f"{PREFIX}registry", 0, i, NOW_MS - 4000, None, raw)
        for i, raw in enumerate(m.registry)
    ]
    cores = {
        org: WitnessCore(
            org=org,
            subject_id=f"{org}-node",
            key=keys[org],
            mandate_id=m.mandate_id,
            is_report_topic=lambda t: t.startswith(f"{PREFIX}reports."),
            policy=WitnessPolicy(checkpoint_every=3, checkpoint_interval_ms=10**12),
        )
        for org in ORGS
    }
    # Each observer writes into its own partition; after every round UN's witness publishes
    # the checkpoints due (at sizes 3 and 6 of every partition).
    parts: dict[tuple[str, int], list[bytes]] = {}
    notes: list[bytes] = []
    for round_ in range(reports_per_observer):
        for org in ORGS:
            for i in (1, 2):
                part = (f"{PREFIX}reports.{org}", i - 1)
                value = m.next_report(org, i)
                parts.setdefault(part, []).append(value)
                for core in cores.values():
                    core.append(*part, value)
        notes += [note for _, note in cores["un"].due(now_ms=round_)]
    if cosign:
        for i, note in enumerate(list(notes)):
            vc = verify_checkpoint(note, m.keyring, at_ms=NOW_MS, seq=i + 1)
            for org in ORGS[1:]:
                review = cores[org].review(vc, offset=i, now_ms=NOW_MS)
                assert review.cosignature is not None
                notes.append(review.cosignature)
    records += [
        LogRecord("checkpoints", f"{PREFIX}checkpoints", 0, i, NOW_MS - 1000, b"o", note)
        for i, note in enumerate(notes)
    ]
    for (topic, p), values in sorted(parts.items()):
        records += [
            LogRecord("reports", topic, p, o, NOW_MS, b"k", v) for o, v in enumerate(values)
        ]
    header = ExportHeader(NOW_MS, m.mandate_id, PREFIX, sc.mandate_envelope)
    return Log(m, keys, header, records)


def write(path: Path, header: ExportHeader, records: list[LogRecord]) -> Path:
    with path.open("wb") as f:
        w = ExportWriter(f, header)
        for r in records:
            w.write(r)
        w.finish()
    return path
