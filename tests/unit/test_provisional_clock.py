"""A node's provisional verdicts read no broker timestamp (pure, no broker).

The node judges each record under the trust it knows when it judges and on its own clock
(:mod:`bus.ingest`): ``signed_at <= now + skew`` (``clock_skew``), as the final judge does at
*t_e*; the delivery lag is the final judge's alone (a node catching up would refuse every old
record). The broker's timestamp a record carries (which the operator sets: CreateTime topics, or
the broker's clock) changes no verdict, no reason code and no chain head.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import Reason
from bus.ingest import Accepted, AcceptedSealed, Ingestor, Outcome, Quarantined, RecordRef
from bus.judge import Status
from bus.model import EncryptionKey, Role
from bus.sign import ReportSigner, sign_encryption_key
from bus.verify import DEFAULT_MAX_CLOCK_SKEW_MS, ChainBook, ChainHead
from tests.mission import NOW_MS, Mission, demo_key, make_mission
from tests.sealed_log import TOPICS, SealedLog

DAY_MS = 86_400_000
# Broker timestamps a hostile operator may give a record: none, the distant past, the far future.
STAMPS = [0, 1, NOW_MS - 400 * DAY_MS, NOW_MS - 1, NOW_MS + 400 * DAY_MS, 2**63 - 1]
Verdict = tuple[str, str, str]  # (status, reason, detail)


def _verdict(o: Outcome) -> Verdict:
    if isinstance(o, Quarantined):
        return ("quarantined", o.reason, o.detail)
    assert isinstance(o, Accepted | AcceptedSealed)
    return ("accepted", "", "")


def _at(m: Mission, signed_at_ms: int, org: str = "un", i: int = 1) -> bytes:
    """The observer's next report, observed and signed at ``signed_at_ms``."""
    return m.next_report(org, i, observed_at_ms=signed_at_ms, signed_at_ms=signed_at_ms)


def _hostile_mix(m: Mission) -> list[tuple[str, bytes]]:
    """(organization, record) in read order: on the edges of both clock rules, a chain whose
    second report is too late (its third is then a gap), an expired key and a restricted
    report beyond the lag."""
    lag = m.scenario.mandate.delivery_lag_ms
    skew = DEFAULT_MAX_CLOCK_SKEW_MS
    short = demo_key(m.sid("short-lived"))
    m.accredit(m.sid("un-exp"), "un", short, Role.OBSERVER, not_after_ms=m.now - 3 * DAY_MS)
    expired = m.draft(observer_id=m.sid("un-exp"))
    expired = dataclasses.replace(
        expired, observed_at_ms=m.now - 2 * DAY_MS, signed_at_ms=m.now - 2 * DAY_MS
    )
    mandate = m.scenario.mandate
    ek = EncryptionKey(
        "un", demo_key("x25519:un").public_key, mandate.not_before_ms, mandate.not_after_ms, 1,
        m.mandate_id,
    )  # fmt: skip
    m.apply(sign_encryption_key(ek, m.scenario.org_roots["un"]))
    t = m.now - lag - 1
    sealed = m.signer("un", 2).sign_sealed(m.draft("un", 2, observed_at_ms=t, signed_at_ms=t), [ek])
    return [
        ("un", m.next_report("un", 1)),
        ("un", _at(m, m.now + skew, "un", 1)),  # at the skew: accepted
        ("un", _at(m, m.now + skew + 1, "un", 1)),  # beyond it: clock_skew
        ("osce", _at(m, m.now - lag, "osce", 1)),  # at the lag: accepted
        ("osce", _at(m, m.now - lag - 1, "osce", 1)),  # beyond it: delivery_lag finally
        ("osce", m.next_report("osce", 1)),  # after it: chain_gap finally
        ("un", ReportSigner(short).sign(expired)),  # signed after its key's end: key_expired
        ("un", sealed),  # restricted, beyond the lag: delivery_lag finally
        ("eu", m.next_report("eu", 2)),
    ]


def _judge_all(
    m: Mission, records: list[tuple[str, bytes]], log_time: int
) -> tuple[list[Verdict], dict[str, ChainHead]]:
    """Verdicts and chain heads of a fresh node reading ``records`` stamped ``log_time``."""
    ing = Ingestor(m.keyring, ChainBook({}, lambda _rid: None), clock=m.clock)
    out = []
    for offset, (org, raw) in enumerate(records):
        ref = RecordRef(f"obus.reports.{org}", 0, offset, log_time)
        out.append(_verdict(ing.judge(ref, raw, org)))
    return out, ing.chain.heads()


def test_the_mix_gets_the_verdicts_of_the_rules() -> None:
    m = make_mission()
    records = _hostile_mix(m)
    verdicts, _ = _judge_all(m, records, NOW_MS)
    reasons = [reason or status for status, reason, _ in verdicts]
    assert reasons == [
        "accepted", "accepted", Reason.CLOCK_SKEW.value, "accepted", "accepted", "accepted",
        Reason.KEY_EXPIRED.value, "accepted", "accepted",
    ]  # fmt: skip


def test_the_same_records_get_the_same_verdicts_whatever_broker_timestamp_they_carry() -> None:
    m = make_mission()
    records = _hostile_mix(m)
    expected = _judge_all(m, records, NOW_MS)
    for stamp in STAMPS:
        assert _judge_all(m, records, stamp) == expected, stamp


_M = make_mission()
_RECORDS = _hostile_mix(_M)
_EXPECTED = _judge_all(_M, _RECORDS, NOW_MS)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**63 - 1), min_size=len(_RECORDS), max_size=len(_RECORDS)))
def test_any_broker_timestamps_per_record_change_nothing(stamps: list[int]) -> None:
    ing = Ingestor(_M.keyring, ChainBook({}, lambda _rid: None), clock=_M.clock)
    got = []
    for offset, ((org, raw), stamp) in enumerate(zip(_RECORDS, stamps, strict=True)):
        got.append(
            _verdict(ing.judge(RecordRef(f"obus.reports.{org}", 0, offset, stamp), raw, org))
        )
    assert (got, ing.chain.heads()) == _EXPECTED


def test_a_report_beyond_the_delivery_lag_is_accepted_provisionally() -> None:
    """A node that reads a report long after it was logged (joining late, catching up) does
    not refuse it on its own clock: the lag is judged finally, at the report's epoch's time."""
    m = make_mission()
    lag = m.scenario.mandate.delivery_lag_ms
    ing = Ingestor(m.keyring, ChainBook({}, lambda _rid: None), clock=m.clock)
    late = ing.judge(RecordRef("obus.reports.un", 0, 0, m.now), _at(m, m.now - lag - 1), "un")
    assert isinstance(late, Accepted)
    after = ing.judge(RecordRef("obus.reports.un", 0, 1, m.now), m.next_report(), "un")
    assert isinstance(after, Accepted)


def test_now_is_read_when_each_record_is_judged() -> None:
    """The node's clock moves between records: a report signed ahead of it by more than the
    skew is ``clock_skew`` until the clock catches up (a copy read later is judged afresh)."""
    m = make_mission()
    ahead = _at(m, m.now + DEFAULT_MAX_CLOCK_SKEW_MS + 60_000)
    clock = iter([m.now, m.now + 60_000])
    ing = Ingestor(m.keyring, ChainBook({}, lambda _rid: None), clock=lambda: next(clock))
    first = ing.judge(RecordRef("obus.reports.un", 0, 0, 0), ahead, "un")
    assert isinstance(first, Quarantined)
    assert first.reason == Reason.CLOCK_SKEW.value
    assert isinstance(ing.judge(RecordRef("obus.reports.un", 0, 1, 0), ahead, "un"), Accepted)


def test_provisional_verdicts_on_the_node_clock_are_the_final_ones_at_that_t_e() -> None:
    """Records sealed in an epoch whose *t_e* equals the node's clock when it read them: the
    final judge and the node reach the same status and reason code on each (the clock rules
    are the same rules), but for the delivery lag, which only the final judge applies: the
    report beyond it, the same observer's next report resting on it, and the restricted
    report beyond it."""
    m = make_mission()
    records = _hostile_mix(m)
    log = SealedLog(m.scenario.mandate)
    log.put(TOPICS.mandate, m.scenario.mandate_envelope)
    for raw in m.registry:
        log.put(TOPICS.registry, raw)
    log.seal(m.now - 60_000)
    positions = [log.put(TOPICS.reports(org), raw) for org, raw in records]
    log.seal(m.now)
    _, epochs = log.judge()
    final = {v.pos: (v.status, v.reason) for ev in epochs for v in ev.verdicts}
    provisional, _ = _judge_all(m, records, 0)
    lag_only = {4: Reason.DELIVERY_LAG, 5: Reason.CHAIN_GAP, 7: Reason.DELIVERY_LAG}
    for i, (pos, (status, reason, _)) in enumerate(zip(positions, provisional, strict=True)):
        if i in lag_only:
            assert status == "accepted"
            assert final[pos] == (Status.QUARANTINED, lag_only[i].value), pos
            continue
        expected = Status.ACCEPTED if status == "accepted" else Status.QUARANTINED
        assert final[pos] == (expected, reason), pos
