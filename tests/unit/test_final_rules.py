"""The follow-up's final rules: reports whose final verdict is accepted, read from the node's final
store in the judge's order and from the node's own store by position, decide exactly as a
replay of the sealed log; an epoch waits until the node holds its reports (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.ingest import Ingestor, Outcome, Quarantined, RecordRef
from bus.judge import EpochVerdicts, Status
from bus.model import Category, encode, sha256
from bus.policy import Observation, SealRef, decide_all
from bus.policy_file import parse_policy
from bus.store.final import FinalStore
from bus.store.final_reads import FinalReads
from bus.store.node import NodeStore
from bus.verify import ChainBook, VerifiedReport
from nodes.org_node.followup import FinalSource, FollowUp, FollowUpConfig
from tests.mission import Mission, make_mission
from tests.sealed_log import NOW_MS, OPS, TOPICS, SealedLog, generate

UN, OSCE = TOPICS.reports("un"), TOPICS.reports("osce")
HOUR = 3_600_000

POLICY = """
org = "eu"
[[rule]]
name = "pattern"
categories = ["ceasefire_violation"]
window_hours = 12
count_at_least = 3
distinct_observers_at_least = 2
action = "visit"
publish = true
[[rule]]
name = "each"
categories = ["ceasefire_violation"]
action = "note"
[[rule]]
name = "each-now"
categories = ["ceasefire_violation"]
action = "note-now"
verdicts = "provisional"
"""


def _final_store(path: Path, log: SealedLog, epochs: list[EpochVerdicts]) -> None:
    if path.exists():
        path.unlink()
    store = FinalStore(path)
    store.check_identity("eu", log.root.mandate_id, sha256(encode(log.root)))
    store.record(epochs, log.seals[: len(epochs)])
    store.close()


def _accepted(epochs: list[EpochVerdicts]) -> list[tuple[str, int, int]]:
    """Accepted report positions in the judge's listing order."""
    return [
        v.pos
        for ev in epochs
        for v in ev.verdicts
        if v.status is Status.ACCEPTED and v.report is not None
    ]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ops=st.lists(st.sampled_from(OPS), max_size=40))
def test_the_final_store_gives_accepted_reports_in_the_judges_order(
    tmp_path_factory: pytest.TempPathFactory, seed: int, ops: list[str]
) -> None:
    log = generate(seed, ops)
    _, epochs = log.judge()
    path = tmp_path_factory.mktemp("final") / "eu.final.db"
    _final_store(path, log, epochs)
    reads = FinalReads(path)
    try:
        got = [(r.topic, r.partition, r.offset) for r in reads.accepted_reports(1, len(epochs))]
        refs = reads.seal_refs(1, len(epochs))
    finally:
        reads.close()
    assert got == _accepted(epochs)
    assert refs == [SealRef(s.epoch, s.digest, s.time_ms) for s in log.seals[: len(epochs)]]


def _pattern_log(m: Mission) -> SealedLog:
    """Epoch 1: the root and the observers' accreditations; epoch 2: two ceasefire violations;
    epoch 3: two more, by another organization (the window fills at the third)."""
    log = SealedLog(m.scenario.mandate)
    log.put(TOPICS.mandate, m.scenario.mandate_envelope)
    for raw in m.scenario.accreditations:
        log.put(TOPICS.registry, raw)
    log.seal(NOW_MS)
    base = NOW_MS - 2 * HOUR
    cv = {"category": Category.CEASEFIRE_VIOLATION}
    log.put(UN, m.next_report("un", 1, observed_at_ms=base, **cv))
    log.put(UN, m.next_report("un", 2, observed_at_ms=base + 1, **cv))
    log.seal()
    log.put(OSCE, m.next_report("osce", 1, observed_at_ms=base + 2, **cv))
    log.put(OSCE, m.next_report("osce", 2, observed_at_ms=base + 3, **cv), partition=1)
    log.seal()
    return log


def _store_node(db: Path, m: Mission, log: SealedLog, upto_epoch: int, cut: set[int]) -> None:
    """The node's store holding the report records of epochs 2..``upto_epoch`` as its ingest
    would (the records at offsets in ``cut`` of osce's partition 0 quarantined with only a
    prefix kept)."""
    ing = Ingestor(m.keyring, ChainBook({}, lambda _rid: None), clock=lambda: NOW_MS)
    outcomes: list[Outcome] = []
    positions: dict[tuple[str, int], int] = {}
    seal = log.seals[upto_epoch - 1]
    for (topic, part), values in sorted(log.partitions.items()):
        org = TOPICS.org_of_report_topic(topic)
        if org is None:
            continue
        for off, raw in enumerate(values[: seal.size((topic, part))]):
            assert raw is not None
            ref = RecordRef(topic, part, off, NOW_MS)
            if topic == OSCE and part == 0 and off in cut:
                outcomes.append(Quarantined(ref, "unknown_key", "not yet", raw[:40], len(raw),
                                            sha256(raw)))  # fmt: skip
            else:
                outcomes.append(ing.judge(ref, raw, org))
            positions[(topic, part)] = off + 1
    store = NodeStore(db)
    store.commit_batch(outcomes, ing.chain.heads(), [], positions)
    store.close()


def _replay(log: SealedLog, epochs: list[EpochVerdicts]) -> list[tuple[SealRef, list[Observation]]]:
    out = []
    for ev in epochs:
        seal = log.seals[ev.epoch - 1]
        obs = [
            Observation(v.report.report, v.report.envelope_digest)
            for v in ev.verdicts
            if v.status is Status.ACCEPTED and isinstance(v.report, VerifiedReport)
        ]
        out.append((SealRef(seal.epoch, seal.digest, seal.time_ms), obs))
    return out


def _followup(tmp: Path, m: Mission, log: SealedLog) -> FollowUp:
    return FollowUp(
        FollowUpConfig(
            "eu", "127.0.0.1:9", tmp / "eu.db", m.scenario.mandate, parse_policy(POLICY),
            final=FinalSource(tmp / "eu.final.db", log.root),
        )
    )  # fmt: skip


def test_final_rules_decide_as_a_replay_of_the_sealed_log_and_wait_for_the_node(
    tmp_path: Path,
) -> None:
    m = make_mission()
    log = _pattern_log(m)
    _, epochs = log.judge()
    _final_store(tmp_path / "eu.final.db", log, epochs)
    expected = decide_all(parse_policy(POLICY), _replay(log, epochs))
    assert [d.rule for d in expected] == ["each", "each", "pattern", "each", "each"]
    _store_node(tmp_path / "eu.db", m, log, upto_epoch=2, cut=set())  # epoch 3 not read yet
    f = _followup(tmp_path, m, log)
    store = NodeStore(tmp_path / "eu.db")
    try:
        first = f._read_final(store)
        assert first == [d for d in expected if d.seal_epoch <= 2]
        assert f.pending == 1  # epoch 3 waits for the ingest loop
        assert f._read_final(store) == []
    finally:
        store.close()
    (tmp_path / "eu.db").unlink()
    _store_node(tmp_path / "eu.db", m, log, upto_epoch=3, cut=set())
    store = NodeStore(tmp_path / "eu.db")
    try:
        assert first + f._read_final(store) == expected
        assert f.pending == 0 and f.late == 0
        [pattern] = [d for d in expected if d.rule == "pattern"]
        assert pattern.seal_epoch == 3 and pattern.seal_digest == log.seals[2].digest
        assert pattern.decided_at_ms == log.seals[2].time_ms
        assert len(pattern.evidence) == 3
        # The provisional rule acted at once on what the node stored, naming no seal.
        now = f._read_store(store)
        assert [d.rule for d in now] == ["each-now"] * 4 and not any(d.final for d in now)
    finally:
        store.close()


def test_a_final_report_the_node_quarantined_is_read_from_its_row_when_kept_whole(
    tmp_path: Path,
) -> None:
    """The ingest loop quarantined two reports that the final judge accepted: one row keeps the
    whole record and the final rules read it; the other keeps a prefix: left out, counted."""
    m = make_mission()
    log = _pattern_log(m)
    _, epochs = log.judge()
    _final_store(tmp_path / "eu.final.db", log, epochs)
    _store_node(tmp_path / "eu.db", m, log, upto_epoch=3, cut={0})
    f = _followup(tmp_path, m, log)
    store = NodeStore(tmp_path / "eu.db")
    try:
        got = f._read_final(store)
    finally:
        store.close()
    assert f.late == 1 and f.pending == 0
    replay = _replay(log, epochs)
    osce_first = replay[2][1][0]
    kept = [(seal, [o for o in obs if o is not osce_first]) for seal, obs in replay]
    assert got == decide_all(parse_policy(POLICY), kept)
    assert all(osce_first.report.report_id not in d.report_ids for d in got)


def test_another_record_at_the_judged_position_is_not_read_as_that_report(tmp_path: Path) -> None:
    """The node holds other bytes where the judge accepted UN's first report (a split view):
    they are not read as that report, which is left out and counted."""
    m = make_mission()
    log = _pattern_log(m)
    _, epochs = log.judge()
    _final_store(tmp_path / "eu.final.db", log, epochs)
    _store_node(tmp_path / "eu.db", m, log, upto_epoch=3, cut=set())
    other = m.next_report("un", 1, category=Category.CEASEFIRE_VIOLATION)
    store = NodeStore(tmp_path / "eu.db")
    store._db.execute(
        'UPDATE reports SET envelope = ? WHERE topic = ? AND "offset" = 0', (other, UN)
    )
    f = _followup(tmp_path, m, log)
    try:
        got = f._read_final(store)
    finally:
        store.close()
    assert f.late == 1
    replay = _replay(log, epochs)
    judged = replay[1][1][0]
    kept = [(seal, [o for o in obs if o is not judged]) for seal, obs in replay]
    assert got == decide_all(parse_policy(POLICY), kept)
    assert all(judged.report.report_id not in d.report_ids for d in got)
