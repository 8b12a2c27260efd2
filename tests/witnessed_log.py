"""A small sealed log in export form (format version 3), as six organization nodes would build it.

Signed reports in two partitions per organization, the mandate and the registry (observers'
and node keys' accreditations); after the trust records and after every round of reports, the
turn-taking proposer proposes a seal and every organization's node key cosigns it
(:class:`tests.sealed_bus.SealedBus`). Used by tests that need an export file to read: the CLI's
error paths and archive mode. ``NOW_MS`` and ``make_mission`` are read when the log is built, so
a test may move the whole log in time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bus.crypto import SigningKey
from bus.export import ExportHeader, ExportWriter, LogRecord
from nodes.demo.scenario import ORGANIZATIONS
from tests.mission import NOW_MS, Mission, make_mission
from tests.sealed_bus import SealedBus

ORGS = [o for o, _ in ORGANIZATIONS]
PREFIX = "obus."


@dataclasses.dataclass
class Log:
    """The mission, its node keys, the export header, every record in export order, and the
    bus in memory (to seal more)."""

    mission: Mission
    keys: dict[str, SigningKey]
    header: ExportHeader
    records: list[LogRecord]
    bus: SealedBus

    def reports(self) -> list[LogRecord]:
        """The report records."""
        return [r for r in self.records if r.section == "reports"]


def build_log(reports_per_observer: int = 6) -> Log:
    """The log: trust records, then ``reports_per_observer`` rounds of one report by each of
    two observers of every organization, each round sealed by all six organizations."""
    m = make_mission()
    bus = SealedBus(m, clock=NOW_MS)
    t, sc = bus.topics, m.scenario
    bus.put(t.mandate, sc.mandate_envelope)
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        bus.put(t.registry, raw)
    bus.seal()
    for _ in range(reports_per_observer):
        for org in ORGS:
            for i in (1, 2):
                bus.put(t.reports(org), m.next_report(org, i), i - 1)
        bus.seal()
    header = ExportHeader(bus.clock, m.mandate_id, PREFIX, sc.mandate_envelope)
    return Log(m, dict(sc.node_keys), header, bus.records(), bus)


def write(path: Path, header: ExportHeader, records: list[LogRecord]) -> Path:
    """Write ``records`` as an export file under ``header``."""
    with path.open("wb") as f:
        w = ExportWriter(f, header)
        for r in records:
            w.write(r)
        w.finish()
    return path
