"""A sealed bus built in memory, as nodes would build it (no broker), for the auditor's tests.

:class:`SealedBus` holds partitions of records and the seals topic; one honest witness view of
it all (a :class:`bus.bus_reader.BusReader`) proposes each seal, and the organizations' node keys
(the proposer's too) cosign it (:meth:`SealedBus.seal`), so the seals topic holds real proposals and
cosignatures whose finality a reader derives itself. :func:`build` makes the log the auditor's
tests use; :meth:`SealedBus.records` gives it as export lines in any partition order, and
:func:`reference` the final verdicts of a bus reader fed it directly.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bus.bus_reader import BusReader, BusUpdate
from bus.epoch import FinalSeal, PartitionRef
from bus.export import ExportHeader, ExportWriter, LogRecord, section_of
from bus.note import key_name
from bus.seal import SealProposal, cosign_seal, sign_proposal
from bus.topics import Topics
from nodes.demo.scenario import node_subject
from tests.mission import NOW_MS, Mission, make_mission

Rows = dict[tuple[str, int, int], tuple[int, str, str]]
"""Final verdicts by position: (epoch, status, reason)."""


def name(org: str) -> str:
    """The key name of an organization's node key in signed notes."""
    return key_name(org, node_subject(org))


@dataclass
class SealedBus:
    """A bus in memory: partitions, the seals topic, and one honest witness view of it all."""

    m: Mission
    topics: Topics = field(default_factory=lambda: Topics("obus."))
    parts: dict[PartitionRef, list[bytes | None]] = field(default_factory=lambda: defaultdict(list))
    times: dict[PartitionRef, list[int]] = field(default_factory=lambda: defaultdict(list))
    seals: list[bytes] = field(default_factory=list)
    clock: int = NOW_MS
    witness: BusReader = field(init=False)
    _fed: dict[PartitionRef, int] = field(default_factory=dict)
    _seals_fed: int = 0

    def __post_init__(self) -> None:
        self.witness = BusReader(self.m.scenario.mandate, self.topics)

    @property
    def orgs(self) -> list[str]:
        return [o.org for o in self.m.scenario.mandate.organizations]

    @property
    def registry(self) -> PartitionRef:
        return (self.topics.registry, 0)

    def put(
        self, topic: str, value: bytes | None, partition: int = 0, at_ms: int | None = None
    ) -> int:
        """Append a record logged at ``at_ms`` (default: the bus's clock); returns its
        offset."""
        ref = (topic, partition)
        self.parts[ref].append(value)
        self.times[ref].append(self.clock if at_ms is None else at_ms)
        return len(self.parts[ref]) - 1

    def catch_up(self) -> None:
        """The witness reads every record and seals record it has not read yet."""
        for ref, values in sorted(self.parts.items()):
            start = self._fed.get(ref, 0)
            if start < len(values):
                self.witness.offer_records(ref, start, values[start:])
                self._fed[ref] = len(values)
        for off in range(self._seals_fed, len(self.seals)):
            self.witness.offer_seal(off, self.seals[off])
        self._seals_fed = len(self.seals)

    def seal(self, cosigners: list[str] | None = None) -> SealProposal:
        """The next epoch's turn-taking proposer proposes, ``cosigners`` (default: every
        organization, the proposer included, since proposing is no vote) cosign in that order;
        returns the proposal."""
        self.catch_up()
        self.clock += 1000
        epoch = self.witness.chain.open_epoch
        proposer = self.orgs[epoch % len(self.orgs)]
        p = self.witness.propose(org=proposer, now_ms=self.clock)
        assert p is not None and p.epoch == epoch
        keys = self.m.scenario.node_keys
        self.seals.append(sign_proposal(p, keys[proposer], name(proposer)))
        for org in cosigners if cosigners is not None else self.orgs:
            self.seals.append(cosign_seal(p.text(), keys[org], name(org), now_ms=self.clock))
        self.catch_up()
        return p

    def records(self, order: str = "forward") -> list[LogRecord]:
        """Every record as export lines, in section order; inside a section, partitions one
        after the other (``forward``: sorted, ``reverse``: the other way round) or interleaved
        record by record (``interleaved``)."""
        by_section: dict[str, list[PartitionRef]] = defaultdict(list)
        for ref in sorted(self.parts):
            section = section_of(self.topics, ref[0])
            assert section is not None
            by_section[section].append(ref)
        out = [
            LogRecord("seals", self.topics.seals, 0, o, self.clock, None, v)
            for o, v in enumerate(self.seals)
        ]
        for section in ("mandate", "registry", "reports", "decisions", "statements", "attachments"):
            refs = by_section[section]
            if order == "reverse":
                refs = refs[::-1]
            lines = [
                [
                    LogRecord(section, ref[0], ref[1], o, self.times[ref][o], None, v)
                    for o, v in enumerate(self.parts[ref])
                ]
                for ref in refs
            ]
            if order == "interleaved":
                longest = max((len(x) for x in lines), default=0)
                out += [x[i] for i in range(longest) for x in lines if i < len(x)]
            else:
                out += [r for x in lines for r in x]
        return out

    def export(self, path: Path, records: list[LogRecord] | None = None, version: int = 2) -> Path:
        """Write the log (or ``records``) as an export file of ``version``."""
        sc = self.m.scenario
        header = ExportHeader(self.clock, sc.mandate.mandate_id, self.topics.prefix,
                              sc.mandate_envelope, version)  # fmt: skip
        with path.open("wb") as f:
            w = ExportWriter(f, header)
            for r in self.records() if records is None else records:
                w.write(r)
            w.finish()
        return path


def build(
    *,
    topics: Topics | None = None,
    split_chains: bool = False,
    junk: bool = True,
    unsealed: int = 2,
    now_ms: int = NOW_MS,
) -> SealedBus:
    """Four epochs: the mandate and the trust records; reports of UN and OSCE observers; more
    reports and, with ``junk``, records that are not what their topics carry (a decision, a
    statement, an attachment chunk, a report on EU's topic); more reports. Then ``unsealed``
    reports nobody sealed. Each observer writes one partition of its organization's topic
    unless ``split_chains`` (then the partition is random). The mission's clock, and the first
    seal's time, is ``now_ms``."""
    m = make_mission(observers_per_org=1, now_ms=now_ms)
    bus = SealedBus(m, topics or Topics("obus."), clock=now_ms)
    t, sc = bus.topics, bus.m.scenario
    rng = random.Random(3)
    bus.put(t.mandate, sc.mandate_envelope, at_ms=now_ms - 5000)
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        bus.put(t.registry, raw, at_ms=now_ms - 4000)
    bus.seal()

    def reports(n: int) -> None:
        for _ in range(n):
            org = rng.choice(["un", "osce"])
            partition = rng.randrange(2) if split_chains else {"un": 0, "osce": 1}[org]
            bus.put(t.reports(org), bus.m.next_report(org, 1), partition)

    reports(6)
    bus.seal()
    reports(4)
    if junk:
        bus.put(t.decisions("un"), b"a decision record")
        bus.put(t.statements, b"a statement record")
        bus.put(t.attachments("un"), b"an attachment chunk", 1)
        bus.put(t.reports("eu"), b"not a report at all")
    bus.seal()
    reports(3)
    bus.seal()
    reports(unsealed)
    return bus


def reference(bus: SealedBus) -> tuple[Rows, BusReader]:
    """A bus reader fed the log directly (every seals record, then every partition): each
    record's final (epoch, status, reason), and the reader."""
    reader = BusReader(bus.m.scenario.mandate, bus.topics)
    rows: Rows = {}

    def take(update: BusUpdate) -> None:
        for ev in update.epochs:
            for v in ev.verdicts:
                rows[v.pos] = (v.epoch, v.status.value, v.reason)
            for c in ev.changes:
                rows[c.pos] = (rows[c.pos][0], c.status.value, "")

    for off, raw in enumerate(bus.seals):
        take(reader.offer_seal(off, raw))
    for ref, values in sorted(bus.parts.items()):
        take(reader.offer_records(ref, 0, values))
    return rows, reader


def final_seals(bus: SealedBus) -> list[FinalSeal]:
    """The final seals of the bus, in epoch order, as an honest reader derives them."""
    reader = BusReader(bus.m.scenario.mandate, bus.topics)
    out = [s for off, raw in enumerate(bus.seals) for s in reader.offer_seal(off, raw).finals]
    for ref, values in sorted(bus.parts.items()):
        out += reader.offer_records(ref, 0, values).finals
    assert [s.epoch for s in out] == list(range(1, len(out) + 1))
    return out
