"""Corrections and retractions: every rule a named test, judged alike by a node's provisional
verdicts (Ingestor + ChainBook over a real NodeStore) and by the final judge over the sealed log
in several reading orders; the links stored by both stores; policies counting a line once and a
retracted one never; and a property over random schedules of amendments (pure, no broker)."""

from __future__ import annotations

import csv
import dataclasses
import io
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bus.errors import Reason, VerificationError
from bus.ingest import Accepted, Ingestor, Quarantined, RecordRef
from bus.judge import EpochVerdicts, FinalJudge, RecordPos, Status
from bus.model import Envelope, Mandate, Report, Revocation, stamp_schema_version
from bus.policy import Evaluator, Observation, Policy, Rule, window_counts
from bus.report_file import Identity, ReportFileError, parse_report
from bus.sealed_reader import SealedReader
from bus.sign import sign_mandate, sign_revocation
from bus.store.final import FinalStore
from bus.store.node import NodeStore
from bus.store.report_query import ReportQuery, parse_params
from bus.trust import KeyRing
from bus.uuid7 import uuid7
from bus.verify import ChainBook
from nodes.org_node.export import Format, write_reports
from tests.mission import NOW_MS, Mission, make_mission
from tests.sealed_log import TOPICS, SealedLog, project

FOUR = ["un", "osce", "eu", "nato"]
REASON = "wrong village: the impacts were in Eastbrook"


def _allowing_v3(m: Mission) -> Mandate:
    return dataclasses.replace(m.scenario.mandate, max_schema_version=3)


class Bus:
    """One mission's log (root allowing schema versions 1..3) with the records in log order,
    judged finally (sealed) and provisionally (a node reading them in log order)."""

    def __init__(self, tmp_path: Path, m: Mission | None = None) -> None:
        self.m = m or make_mission()
        root = _allowing_v3(self.m)
        self.log = SealedLog(root)
        self.log.put(
            TOPICS.mandate,
            sign_mandate(root, [self.m.scenario.org_roots[o] for o in FOUR]).encode(),
        )
        for raw in self.m.scenario.accreditations:
            self.log.put(TOPICS.registry, raw)
        self.log.seal(NOW_MS)
        self.keyring = KeyRing(root)
        for raw in self.m.scenario.accreditations:
            self.keyring.apply(Envelope.decode(raw))
        self.order: list[tuple[RecordPos, str, bytes]] = []  # log order: (pos, org, raw)
        self.store_path = tmp_path / "node.db"
        self.store = NodeStore(self.store_path)
        self.ids: dict[RecordPos, str] = {}

    def put(self, raw: bytes, org: str = "un", partition: int = 0) -> RecordPos:
        pos = self.log.put(TOPICS.reports(org), raw, partition)
        self.order.append((pos, org, raw))
        self.ids[pos] = Report.decode(Envelope.decode(raw).payload).report_id
        return pos

    def sign(self, org: str = "un", i: int = 1, **changes: object) -> bytes:
        return self.m.next_report(org, i, **changes)

    def report(self, org: str = "un", i: int = 1, **changes: object) -> tuple[RecordPos, str]:
        pos = self.put(self.sign(org, i, **changes), org)
        return pos, self.ids[pos]

    def provisional(self) -> dict[RecordPos, str]:
        """A node's verdicts reading the log in log order, one committed batch per record."""
        chain = ChainBook(
            self.store.chain_heads(), self.store.report_digest, self.store.amendment_of
        )
        ing = Ingestor(self.keyring, chain, clock=self.m.clock)
        out: dict[RecordPos, str] = {}
        for pos, org, raw in self.order:
            topic, partition, offset = pos
            o = ing.judge(RecordRef(topic, partition, offset, NOW_MS), raw, org)
            self.store.commit_batch(
                [o], chain.changed(), [], {(topic, partition): offset + 1}, stored_at_ms=NOW_MS
            )
            chain.flushed()
            out[pos] = (
                "accepted"
                if isinstance(o, Accepted)
                else (o.reason if isinstance(o, Quarantined) else "sealed")
            )
        return out

    def final(self) -> tuple[dict[RecordPos, str], list[EpochVerdicts]]:
        """The final verdicts, the same through readers in several orders."""
        self.log.seal()
        _, reference = self.log.judge()
        for run in _reader_runs(self.log):
            assert [project(v) for v in run] == [project(v) for v in reference]
        says = {
            v.pos: v.reason or v.status.value
            for ev in reference
            for v in ev.verdicts
            if v.pos[0] not in {TOPICS.mandate, TOPICS.registry}
        }
        return says, reference

    def both(self) -> dict[RecordPos, str]:
        """The verdicts, checked to be the same provisionally and finally."""
        provisional = self.provisional()
        final, _ = self.final()
        assert provisional == final
        return final


def _reader_runs(log: SealedLog) -> list[list[EpochVerdicts]]:
    """The same log through readers fed in reversed and interleaved partition orders."""
    runs = []
    refs = sorted(log.partitions)
    for order, seals_first in ((list(reversed(refs)), True), (refs[1::2] + refs[::2], False)):
        reader = SealedReader(log.root, TOPICS)
        out: list[EpochVerdicts] = []
        if seals_first:
            for s in log.seals:
                out += reader.offer_final_seal(s)
        for ref in order:
            for offset, value in enumerate(log.partitions[ref]):
                out += reader.offer_record(ref, offset, value)
        if not seals_first:
            for s in log.seals:
                out += reader.offer_final_seal(s)
        runs.append(out)
    return runs


# -- the rules --------------------------------------------------------------------------------


def test_correction_by_the_same_observer_is_accepted_and_linked(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    a, a_id = bus.report(severity=3)
    c, c_id = bus.report(corrects=a_id, severity=5)
    assert bus.both() == {a: "accepted", c: "accepted"}
    target = bus.store.amendment_of("un", "un-obs-1", a_id)
    assert target is not None and (target.corrected_by, target.retracted_by) == (c_id, "")
    assert bus.store.amendments() == [
        {"report_id": c_id, "target": a_id, "kind": "correction", "reason": ""}
    ]


def test_correction_of_another_observers_report_is_refused(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    a, a_id = bus.report("un", 1)
    c, _ = bus.report("un", 2, corrects=a_id)
    assert bus.both() == {a: "accepted", c: Reason.AMEND_OTHER_OBSERVER.value}


def test_correction_of_another_organizations_report_is_refused(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    a, a_id = bus.report("un", 1)
    # sealed first: in one epoch EU's chains come before UN's, and the target would be missing
    bus.log.seal()
    r, _ = bus.report("eu", 1, retracts=a_id, retraction_reason=REASON)
    c, _ = bus.report("eu", 1, corrects=a_id)
    says = bus.both()
    assert says[a] == "accepted"
    assert says[r] == Reason.AMEND_OTHER_ORG.value
    # a refused record does not extend the chain: the observer's next report (signed after
    # it, at seq 2) is a gap until the observer signs again at seq 1
    assert says[c] == Reason.CHAIN_GAP.value


def test_correction_of_a_report_that_exists_nowhere_is_refused(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    c, _ = bus.report(corrects=uuid7(NOW_MS, b"\x01" * 10))
    assert bus.both() == {c: Reason.AMEND_TARGET_MISSING.value}


def test_a_target_later_in_the_canonical_order_is_missing(tmp_path: Path) -> None:
    """The target sits earlier in the log (its own partition, first) but later in the one
    order (seq 3 after the correction's seq 2): missing at every reader alike."""
    bus = Bus(tmp_path)
    first, _ = bus.report()
    later = bus.m.draft(narrative="the later report")
    c_raw = bus.sign(corrects=later.report_id)  # seq 2 names seq 3's id, signed ahead
    t_raw = bus.m.signer().sign(later)  # seq 3
    t = bus.put(t_raw, partition=1)  # logged before the correction
    c = bus.put(c_raw)
    says = bus.both()
    assert says[first] == "accepted"
    assert says[c] == Reason.AMEND_TARGET_MISSING.value
    assert says[t] == Reason.CHAIN_GAP.value  # it rests on the refused correction


def test_correction_of_a_correction_resolves_to_the_latest(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    a, a_id = bus.report(severity=2)
    c1, c1_id = bus.report(corrects=a_id, severity=3)
    c2, c2_id = bus.report(corrects=c1_id, severity=4)
    stale, _ = bus.report(corrects=a_id, severity=5)  # not the latest version
    says = bus.both()
    assert [says[p] for p in (a, c1, c2)] == ["accepted"] * 3
    assert says[stale] == Reason.AMEND_SUPERSEDED.value
    chain = [bus.store.amendment_of("un", "un-obs-1", rid) for rid in (a_id, c1_id, c2_id)]
    assert [t.corrected_by for t in chain if t is not None] == [c1_id, c2_id, ""]


def test_retraction_keeps_the_original_and_says_why(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    a, a_id = bus.report()
    r, r_id = bus.report(retracts=a_id, retraction_reason=REASON)
    assert bus.both() == {a: "accepted", r: "accepted"}
    target = bus.store.amendment_of("un", "un-obs-1", a_id)
    assert target is not None and target.retracted_by == r_id
    assert bus.store.amendments() == [
        {"report_id": r_id, "target": a_id, "kind": "retraction", "reason": REASON}
    ]
    # nothing is deleted: the original's envelope is still stored, byte for byte
    assert bus.log.partitions[(TOPICS.reports("un"), 0)][0] in list(bus.store.envelopes())


def test_retraction_of_a_retraction_is_refused(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    _, a_id = bus.report()
    _, r_id = bus.report(retracts=a_id, retraction_reason=REASON)
    rr, _ = bus.report(retracts=r_id, retraction_reason="changed my mind")
    assert bus.both()[rr] == Reason.RETRACTION_OF_RETRACTION.value


def test_correcting_a_retraction_is_refused(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    _, a_id = bus.report()
    _, r_id = bus.report(retracts=a_id, retraction_reason=REASON)
    c, _ = bus.report(corrects=r_id)
    assert bus.both()[c] == Reason.CORRECTION_OF_RETRACTION.value


def test_correcting_or_retracting_a_retracted_report_is_refused(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    _, a_id = bus.report()
    bus.report(retracts=a_id, retraction_reason=REASON)
    c, _ = bus.report(corrects=a_id)
    assert bus.both()[c] == Reason.AMEND_TARGET_RETRACTED.value


def test_retracting_a_retracted_report_again_is_refused(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    _, a_id = bus.report()
    bus.report(retracts=a_id, retraction_reason=REASON)
    again, _ = bus.report(retracts=a_id, retraction_reason="twice")
    assert bus.both()[again] == Reason.AMEND_TARGET_RETRACTED.value


def test_a_retraction_needs_version_3_in_the_mandate() -> None:
    m = make_mission()
    a_id = m.draft().report_id
    draft = m.draft(retracts=a_id, retraction_reason=REASON)
    allows_2 = dataclasses.replace(m.scenario.mandate, max_schema_version=2)
    with pytest.raises(VerificationError) as err:
        stamp_schema_version(draft, allows_2)
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED
    assert stamp_schema_version(draft, _allowing_v3(m)).schema_version == 3


def _retraction_file(target: str, extra: str = "") -> str:
    return (
        "zone: north\nobserved_at: 2026-10-31T23:00:00Z\n"
        "location: {lat: 48.2, lon: 38.0}\ncategory: shelling\nseverity: 3\nconfidence: 0.8\n"
        f"retracts: {target}\n{extra}"
    )


def test_report_files_write_a_retraction_only_once_the_mandate_allows_version_3() -> None:
    m = make_mission()
    me = Identity("un-obs-1", "un", m.mandate_id)
    target = m.draft().report_id
    text = _retraction_file(target, f"retraction_reason: '{REASON}'\n")
    allows_2 = dataclasses.replace(m.scenario.mandate, max_schema_version=2)
    with pytest.raises(ReportFileError) as err:
        parse_report(text, identity=me, now_ms=m.now, mandate=allows_2)
    assert [p.field for p in err.value.problems] == ["retracts"]
    draft = parse_report(text, identity=me, now_ms=m.now, mandate=_allowing_v3(m))
    report = draft.to_report(report_id=m.draft().report_id, signed_at_ms=m.now)
    assert (report.retracts, report.retraction_reason, report.schema_version) == (
        target,
        REASON,
        3,
    )
    # a retraction says why, and never corrects at the same time
    for extra, field in (("", "retraction_reason"), (f"corrects: {target}\n", "retracts")):
        bad = _retraction_file(target, extra)
        with pytest.raises(ReportFileError) as err:
            parse_report(bad, identity=me, now_ms=m.now, mandate=_allowing_v3(m))
        assert field in [p.field for p in err.value.problems]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"retracts": "x"}, "retracts"),
        ({"retracts": "SAME"}, "retracts"),
        ({"retracts": "OTHER"}, "retraction_reason"),
        ({"retracts": "OTHER", "retraction_reason": REASON, "corrects": "OTHER"}, "retracts"),
        ({"retraction_reason": REASON}, "retraction_reason"),
        ({"retracts": "OTHER", "retraction_reason": "x" * 501}, "retraction_reason"),
    ],
)
def test_the_shape_of_a_retraction_is_checked(changes: dict[str, str], field: str) -> None:
    m = make_mission()
    base = m.draft()
    other = m.draft().report_id
    values = {
        k: base.report_id if v == "SAME" else other if v == "OTHER" else v
        for k, v in changes.items()
    }
    with pytest.raises(VerificationError) as err:
        dataclasses.replace(base, **values)  # type: ignore[arg-type]
    assert (err.value.reason, err.value.context.get("field")) == (Reason.INVALID_FIELD, field)


def test_a_revocation_cut_takes_the_amendment_along(tmp_path: Path) -> None:
    """A correction withdrawn by a revocation no longer supersedes its target: the target is
    the latest version again, and the final store drops the link."""
    bus = Bus(tmp_path)
    _, a_id = bus.report()
    bus.report(corrects=a_id)  # seq 2
    bus.log.seal()
    _, key = bus.m.observer("un", 1)
    rev = Revocation("un", key.key_id, 1, NOW_MS, "lost", 7, bus.m.mandate_id)
    bus.log.put(TOPICS.registry, sign_revocation(rev, bus.m.scenario.org_roots["un"]).encode())
    bus.log.seal()
    judge, out = bus.log.judge()
    assert [c.seq for ev in out for c in ev.changes] == [2]
    final = FinalStore(tmp_path / "final.db")
    final.record(out, bus.log.seals)
    assert final.amendments("un", "un-obs-1", a_id)["corrected_by"] == ""
    restored = FinalJudge.restore(judge.snapshot(), bus.log.root, TOPICS)
    assert restored.digest == judge.digest


def test_the_final_store_holds_the_links(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    _, a_id = bus.report()
    _, c_id = bus.report(corrects=a_id)
    _, b_id = bus.report()
    _, r_id = bus.report(retracts=b_id, retraction_reason=REASON)
    _, out = bus.final()
    final = FinalStore(tmp_path / "final.db")
    final.record(out, bus.log.seals)
    assert final.amendments("un", "un-obs-1", a_id)["corrected_by"] == c_id
    assert final.amendments("un", "un-obs-1", b_id) == {
        "corrected_by": "",
        "retracted_by": r_id,
        "retraction_reason": REASON,
    }
    assert any(line.startswith(b'["amendments"') for line in final.dump())


# -- policies ---------------------------------------------------------------------------------


def _observations(bus: Bus) -> list[Observation]:
    """The finally accepted plain reports in the judge's order, as policies see them."""
    _, out = bus.final()
    return [
        Observation(v.report.report, v.report.envelope_digest)
        for ev in out
        for v in ev.verdicts
        if v.status is Status.ACCEPTED and v.report is not None and hasattr(v.report, "report")
        and isinstance(v.report.report, Report)
    ]  # fmt: skip


WINDOW = Rule("cluster", "investigate", window_ms=86_400_000, count_at_least=2)
EACH = Rule("each", "look")


def test_policy_counts_a_report_and_its_correction_once(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    _, a_id = bus.report(severity=2)
    bus.report(corrects=a_id, severity=4)
    ev = Evaluator(Policy("un", (WINDOW, EACH)))
    decided = [d for o in _observations(bus) for d in ev.evaluate(o, NOW_MS)]
    # one line: the report rule fired once, the window of two never reached
    assert [d.rule for d in decided] == ["each"]
    assert window_counts(WINDOW, [o.report for o in _observations(bus)]) == {
        "north": {NOW_MS - 3_600_000 - (NOW_MS - 3_600_000) % 86_400_000: 1}
    }
    # a second, distinct report makes two
    _, b_id = bus.report(severity=3)
    ev = Evaluator(Policy("un", (WINDOW,)))
    decided = [d for o in _observations(bus) for d in ev.evaluate(o, NOW_MS)]
    assert [len(d.evidence) for d in decided] == [2]
    c2 = next(o for o in _observations(bus) if o.report.corrects == a_id).report.report_id
    assert set(decided[0].report_ids) == {c2, b_id}  # the latest version stands for its line


def test_policy_never_counts_a_retracted_report(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    _, a_id = bus.report()
    bus.report(retracts=a_id, retraction_reason=REASON)
    _, b_id = bus.report()
    ev = Evaluator(Policy("un", (WINDOW,)))
    decided = [d for o in _observations(bus) for d in ev.evaluate(o, NOW_MS)]
    assert decided == []  # a and b would be two; a is retracted, the retraction counts nothing
    reports = [o.report for o in _observations(bus)]
    assert sum(n for per in window_counts(WINDOW, reports).values() for n in per.values()) == 1
    assert b_id in {r.report_id for r in reports}


# -- any schedule -----------------------------------------------------------------------------


def _schedule(bus: Bus, rng: random.Random, steps: int) -> None:
    """Reports, corrections and retractions by three observers (two of UN, one of EU), naming
    targets of their own, of others, retracted, superseded or nowhere; over two partitions and
    several epochs. An observer told (by a scratch node judging in the order written) that a
    record was refused signs its next one at the same seq, so chains go on past refusals."""
    observers = [("un", 1), ("un", 2), ("eu", 1)]
    scratch = Ingestor(
        bus.keyring, ChainBook({}, lambda _rid: None, lambda *_: None), clock=bus.m.clock
    )
    ids: list[str] = []
    for n in range(steps):
        org, i = rng.choice(observers)
        op = rng.random()
        changes: dict[str, object] = {"severity": rng.randint(1, 5)}
        known = ids and rng.random() < 0.85
        target = rng.choice(ids) if known else uuid7(NOW_MS, rng.randbytes(10))
        if 0.4 <= op < 0.75:
            changes["corrects"] = target
        elif op >= 0.75:
            changes.update(retracts=target, retraction_reason=REASON)
        signer = bus.m.signer(org, i)
        head = signer.head
        raw = bus.sign(org, i, **changes)
        verdict = scratch.judge(RecordRef(TOPICS.reports(org), 9, n, NOW_MS), raw, org)
        if isinstance(verdict, Quarantined) and rng.random() < 0.9:
            signer.head = head
        pos = bus.log.put(TOPICS.reports(org), raw, rng.randrange(2))
        bus.order.append((pos, org, raw))
        ids.append(Report.decode(Envelope.decode(raw).payload).report_id)
        if rng.random() < 0.2:
            bus.log.seal()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(0, 2**32 - 1))
def test_property_any_schedule_same_verdicts_everywhere(tmp_path: Path, seed: int) -> None:
    """Every reader order gives the same final verdicts (Bus.final checks), and a node that
    reads in the canonical order reaches them provisionally."""
    rng = random.Random(seed)
    bus = Bus(Path(tempfile.mkdtemp(dir=tmp_path)))
    _schedule(bus, rng, 30)
    final, out = bus.final()
    canonical = [
        v.pos for ev in out for v in ev.verdicts if v.pos[0].startswith(TOPICS.reports(""))
    ]
    by_pos = {pos: (org, raw) for pos, org, raw in bus.order}
    bus.order = [(pos, *by_pos[pos]) for pos in canonical]
    provisional = bus.provisional()
    assert provisional == {p: final[p] for p in canonical}
    assert len(canonical) == len(by_pos)  # every report record has its one final verdict
    for verdict in sorted(set(final.values())):
        event(verdict)


def test_the_analyst_export_carries_the_links(tmp_path: Path) -> None:
    """``obus export reports`` names what a report corrects or retracts and what amended it."""
    bus = Bus(tmp_path)
    _, a_id = bus.report(severity=2)
    _, c_id = bus.report(corrects=a_id, severity=3)
    _, r_id = bus.report(retracts=c_id, retraction_reason=REASON)
    bus.provisional()
    filt, page = parse_params({}, max_limit=None)
    out = io.StringIO(newline="")
    with ReportQuery(bus.store_path) as q:
        write_reports(q.rows(filt, page), out, Format.CSV)
    rows = {r["report_id"]: r for r in csv.DictReader(io.StringIO(out.getvalue(), newline=""))}
    assert rows[a_id]["corrected_by"] == c_id and rows[a_id]["retracted_by"] == ""
    assert rows[c_id]["corrects"] == a_id and rows[c_id]["retracted_by"] == r_id
    assert rows[r_id]["retracts"] == c_id and rows[r_id]["retraction_reason"] == REASON
