"""Workers of one organization sharing one store: a batch commits only against unchanged state.

Two :class:`NodeStore` connections on one SQLite file play two ingest workers (``obus node
--ingest-only``). Each judges a batch with its own :class:`ChainBook` and commits with the
positions and chain heads it started from; whoever commits second over changed state gets
:class:`StoreConflictError`, stores nothing, reloads and judges again. The result must equal
what one worker reading the same records alone would have stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import StoreConflictError, StoreError
from bus.ingest import Ingestor, Outcome
from bus.store.node import NodeStore
from bus.verify import ChainBook
from tests.mission import Mission, make_mission, ref

TOPIC = "obus.reports.un"
TP = (TOPIC, 0)


class Worker:
    """One worker's view: its store connection, chain book and believed positions."""

    def __init__(self, path: Path, mission: Mission) -> None:
        self.store = NodeStore(path)
        self.mission = mission
        self.chain = ChainBook(self.store.chain_heads(), self.store.report_digest)
        self.positions = self.store.positions()

    def judge(self, records: list[tuple[int, bytes]]) -> tuple[list[Outcome], dict, dict]:  # type: ignore[type-arg]
        ing = Ingestor(self.mission.keyring, self.chain, clock=self.mission.clock)
        start = self.positions.get(TP, 0)
        outs = [ing.judge(ref(offset=o), raw, "un") for o, raw in records if o >= start]
        touched = {TP: records[-1][0] + 1}
        return outs, touched, {TP: start}

    def commit(self, outs: list[Outcome], touched: dict, started: dict) -> None:  # type: ignore[type-arg]
        self.store.commit_batch(
            outs,
            self.chain.changed(),
            [],
            touched,
            expect_positions=started,
            expect_heads=self.chain.bases(),
        )
        self.chain.flushed()
        self.positions.update(touched)

    def reload(self) -> None:
        self.positions = self.store.positions()
        self.chain.reload(self.store.chain_heads())


def _records(m: Mission, n: int, observer: int = 1) -> list[bytes]:
    return [m.next_report("un", observer) for _ in range(n)]


def test_second_commit_over_a_moved_partition_conflicts_and_stores_nothing(
    tmp_path: Path,
) -> None:
    m = make_mission()
    raws = _records(m, 6)
    log = list(enumerate(raws))
    a, b = Worker(tmp_path / "n.db", m), Worker(tmp_path / "n.db", m)
    # Both read offsets 0-3 (the partition moved from a to b before a committed).
    batch_a, batch_b = a.judge(log[:4]), b.judge(log[:4])
    a.commit(*batch_a)
    with pytest.raises(StoreConflictError, match="stored up to 4, the batch started at 0"):
        b.commit(*batch_b)
    assert a.store.count_reports() == 4
    # b starts again from the store and goes on where a stopped: nothing twice, nothing lost.
    b.reload()
    b.commit(*b.judge(log[:6]))
    assert b.store.count_reports() == 6
    assert b.store.positions() == {TP: 6}
    assert b.store.chain_heads()["un-obs-1"].seq == 6
    assert b.store.quarantine_rows() == []


def test_stale_chain_head_conflicts_even_on_another_partition(tmp_path: Path) -> None:
    # One observer's reports on two partitions (a misbehaving producer): the worker that
    # commits second judged the chain against a head that has moved.
    m = make_mission()
    r1, r2, r3 = _records(m, 3)
    a, b = Worker(tmp_path / "n.db", m), Worker(tmp_path / "n.db", m)
    a.commit(*a.judge([(0, r1)]))
    b.reload()
    outs_a = a.judge([(1, r2)])  # seq 2 on partition 0
    ing = Ingestor(m.keyring, b.chain, clock=m.clock)
    out_b = ing.judge(ref("obus.reports.un", 0), r2, "un")  # b also judged seq 2 (elsewhere)
    a.commit(*outs_a)
    with pytest.raises(StoreConflictError, match="chain head of un-obs-1"):
        b.store.commit_batch(
            [out_b],
            b.chain.changed(),
            [],
            {("obus.reports.un", 1): 1},
            expect_positions={("obus.reports.un", 1): 0},
            expect_heads=b.chain.bases(),
        )
    b.reload()
    assert b.chain.head("un-obs-1") is not None
    assert b.chain.head("un-obs-1").seq == 2  # type: ignore[union-attr]
    a.commit(*a.judge([(1, r2), (2, r3)]))
    assert a.store.chain_heads()["un-obs-1"].seq == 3


def test_report_id_stored_by_another_worker_is_a_conflict(tmp_path: Path) -> None:
    m = make_mission()
    (r1,) = _records(m, 1)
    a, b = Worker(tmp_path / "n.db", m), Worker(tmp_path / "n.db", m)
    outs_b = Ingestor(m.keyring, b.chain, clock=m.clock).judge(ref("obus.reports.un", 7), r1, "un")
    b_bases = b.chain.bases()
    a.commit(*a.judge([(0, r1)]))
    with pytest.raises(StoreConflictError):
        # Partition and head checks alone would pass here (b's head base is what a had
        # before); the report id is the conflict.
        b.store.commit_batch(
            [outs_b], {}, [], {("obus.reports.un", 5): 8},
            expect_positions={("obus.reports.un", 5): 0}, expect_heads={},
        )  # fmt: skip
    assert b_bases == {"un-obs-1": None}
    assert a.store.count_reports() == 1
    assert a.store.positions() == {TP: 1}


def test_conflict_is_a_store_error_and_checks_are_opt_in(tmp_path: Path) -> None:
    assert issubclass(StoreConflictError, StoreError)
    m = make_mission()
    a = Worker(tmp_path / "n.db", m)
    outs, touched, _ = a.judge(list(enumerate(_records(m, 2))))
    # Without expectations (a single node, the old call) nothing extra is checked.
    a.store.commit_batch(outs, a.chain.changed(), [], touched)
    assert a.store.count_reports() == 2


def test_interleaved_workers_end_as_one_serial_reader(tmp_path: Path) -> None:
    """Two workers taking turns on overlapping windows of two observers' log, committing in
    an order where every second commit races: the store ends exactly as one reader's."""
    m = make_mission()
    pairs = zip(_records(m, 10, 1), _records(m, 10, 2), strict=True)
    raws = [r for pair in pairs for r in pair]
    raws.insert(7, b"junk")  # a bad record is kept, once
    log = list(enumerate(raws))
    a, b = Worker(tmp_path / "n.db", m), Worker(tmp_path / "n.db", m)
    conflicts = 0
    turn = 0
    while a.store.positions().get(TP, 0) < len(log):
        w = (a, b)[turn % 2]
        other = (a, b)[(turn + 1) % 2]
        turn += 1
        start = w.positions.get(TP, 0)
        window = log[start : start + 5]
        if not window:
            w.reload()
            continue
        mine = w.judge(window)
        if turn % 3 == 0:  # the other worker gets in first with its own view
            o_start = other.positions.get(TP, 0)
            o_window = log[o_start : o_start + 3]
            if o_window:
                try:
                    other.commit(*other.judge(o_window))
                except StoreConflictError:
                    conflicts += 1
                    other.reload()
        try:
            w.commit(*mine)
        except StoreConflictError:
            conflicts += 1
            w.reload()
    solo = Worker(tmp_path / "solo.db", m)
    solo.commit(*solo.judge(log))
    assert conflicts > 0
    assert a.store.accepted_digests() == solo.store.accepted_digests()
    assert [r[2:4] for r in a.store.quarantine_rows()] == [(7, "malformed")]
    assert a.store.chain_heads() == solo.store.chain_heads()
    assert a.store.count_reports() == 20


def test_a_gap_judged_on_a_stale_head_is_fenced_too(tmp_path: Path) -> None:
    # b's verdict "chain gap" rests on a head that a extended meanwhile: b changed no head,
    # but its batch must not commit that verdict.
    m = make_mission()
    r1, r2, r3 = _records(m, 3)
    a, b = Worker(tmp_path / "n.db", m), Worker(tmp_path / "n.db", m)
    out_b = Ingestor(m.keyring, b.chain, clock=m.clock).judge(ref("obus.reports.un", 0), r3, "un")
    assert getattr(out_b, "reason", None) == "chain_gap"
    assert b.chain.changed() == {}
    a.commit(*a.judge([(0, r1), (1, r2)]))
    with pytest.raises(StoreConflictError, match="chain head of un-obs-1"):
        b.store.commit_batch(
            [out_b], b.chain.changed(), [], {("obus.reports.un", 1): 1},
            expect_positions={("obus.reports.un", 1): 0}, expect_heads=b.chain.bases(),
        )  # fmt: skip
    b.reload()
    again = Ingestor(m.keyring, b.chain, clock=m.clock).judge(ref("obus.reports.un", 0), r3, "un")
    assert type(again).__name__ == "Accepted"
