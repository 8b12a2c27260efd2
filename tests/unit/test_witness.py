"""The witness's decisions without Kafka: schedule, cosigning and split-view detection."""

from __future__ import annotations

import dataclasses

import pytest

from bus.checkpoint import Checkpoint, parse_note, signed_checkpoint, verify_checkpoint
from bus.crypto import SigningKey
from bus.merkle import MerkleTree
from bus.model import Role
from bus.witness import Verdict, WitnessCore, WitnessPolicy, judge
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from tests.mission import NOW_MS, Mission, make_mission

ORGS = [o for o, _ in ORGANIZATIONS]
TOPIC = "obus.reports.un"


def _mission() -> tuple[Mission, dict[str, SigningKey]]:
    m = make_mission()
    keys = {org: demo_key(f"test:node:{org}") for org in ORGS}
    for org, key in keys.items():
        m.accredit(f"{org}-node", org, key, Role.NODE)
    return m, keys


def _core(m: Mission, keys: dict[str, SigningKey], org: str, **policy: int) -> WitnessCore:
    return WitnessCore(
        org=org,
        subject_id=f"{org}-node",
        key=keys[org],
        mandate_id=m.mandate_id,
        is_report_topic=lambda t: t.startswith("obus.reports."),
        policy=WitnessPolicy(**policy),
        started_ms=0,
    )


def _feed(core: WitnessCore, values: list[bytes], partition: int = 0) -> None:
    for v in values:
        core.append(TOPIC, partition, v)


VALUES = [b"record %d" % i for i in range(10)]


def test_six_witnesses_agree_and_cosign_each_text_once() -> None:
    m, keys = _mission()
    cores = {org: _core(m, keys, org, checkpoint_every=4) for org in ORGS}
    for core in cores.values():
        _feed(core, VALUES)
    published = cores["un"].due(now_ms=1)
    assert [(cp.size) for cp, _ in published] == [8]  # the newest multiple of 4 below 10
    cp, record = published[0]
    vc = verify_checkpoint(record, m.keyring, at_ms=NOW_MS, seq=1)
    lines = [parse_note(record).signatures[0].line()]
    for org in ORGS:
        review = cores[org].review(vc, offset=0, now_ms=NOW_MS)
        assert review.verdict is Verdict.CONSISTENT
        if org == "un":
            assert review.cosignature is None  # its own checkpoint
            continue
        assert review.cosignature is not None
        again = cores[org].review(vc, offset=0, now_ms=NOW_MS)
        assert again.cosignature is None  # once per text
        lines.append(parse_note(review.cosignature).signatures[0].line())
    merged = cp.text() + b"\n" + b"".join(lines)
    assert verify_checkpoint(merged, m.keyring, at_ms=NOW_MS, seq=2).orgs == set(ORGS)


def test_every_org_publishes_the_same_checkpoint_at_multiples() -> None:
    m, keys = _mission()
    texts = set()
    for org in ORGS:
        core = _core(m, keys, org, checkpoint_every=5, checkpoint_interval_ms=10**9)
        _feed(core, VALUES[:7])
        ((cp, _),) = core.due(now_ms=1)
        texts.add(cp.text())
    assert len(texts) == 1


def test_schedule_every_n_and_interval() -> None:
    m, keys = _mission()
    core = _core(m, keys, "un", checkpoint_every=4, checkpoint_interval_ms=1000)
    _feed(core, VALUES[:3])
    assert core.due(now_ms=10) == []  # under 4 records and the interval has not passed
    assert [cp.size for cp, _ in core.due(now_ms=1000)] == [3]  # the interval passed
    _feed(core, VALUES[3:5])
    assert [cp.size for cp, _ in core.due(now_ms=1001)] == [4]  # a multiple of 4 was crossed
    assert core.due(now_ms=1002) == []
    assert [cp.size for cp, _ in core.due(now_ms=2001)] == [5]
    assert core.due(now_ms=9999) == []  # nothing new


def test_forged_root_at_the_same_size_is_a_split_view() -> None:
    m, keys = _mission()
    un, osce = _core(m, keys, "un"), _core(m, keys, "osce")
    for c in (un, osce):
        _feed(c, VALUES)
    tree = un.trees[(TOPIC, 0)]
    forged = Checkpoint(un.origin(TOPIC, 0), 10, bytes(32))
    record = signed_checkpoint(forged, keys["nato"], "obus/nato/nato-node")
    vc = verify_checkpoint(record, m.keyring, at_ms=NOW_MS, seq=5)
    review = osce.review(vc, offset=4, now_ms=NOW_MS)
    assert review.verdict is Verdict.SPLIT_VIEW
    assert review.cosignature is None
    assert review.alarm is not None
    assert review.alarm.to_json() == {
        "origin": un.origin(TOPIC, 0),
        "topic": TOPIC,
        "partition": 0,
        "size": 10,
        "their_root": "00" * 32,
        "our_root": tree.root().hex(),
        "signed_by": ["nato"],
        "offset": 4,
        "detected_at_ms": NOW_MS,
    }


def test_a_witness_fed_another_copy_disagrees_with_everyone() -> None:
    """The operator shows OSCE a partition where record 6 differs: both sides see it."""
    m, keys = _mission()
    un, osce = _core(m, keys, "un", checkpoint_every=8), _core(m, keys, "osce", checkpoint_every=8)
    _feed(un, VALUES)
    _feed(osce, [*VALUES[:6], b"a different record 6", *VALUES[7:]])
    ((_, un_record),) = un.due(now_ms=1)
    ((_, osce_record),) = osce.due(now_ms=1)
    un_vc = verify_checkpoint(un_record, m.keyring, at_ms=NOW_MS, seq=1)
    osce_vc = verify_checkpoint(osce_record, m.keyring, at_ms=NOW_MS, seq=2)
    assert osce.review(un_vc, offset=0, now_ms=1).verdict is Verdict.SPLIT_VIEW
    assert un.review(osce_vc, offset=1, now_ms=1).verdict is Verdict.SPLIT_VIEW
    # Before the differing record, the two views still agree: an older checkpoint is fine.
    older = Checkpoint(un.origin(TOPIC, 0), 6, un.trees[(TOPIC, 0)].root_at(6))
    vc6 = verify_checkpoint(
        signed_checkpoint(older, keys["un"], "obus/un/un-node"), m.keyring, at_ms=NOW_MS, seq=3
    )
    assert osce.review(vc6, offset=2, now_ms=1).verdict is Verdict.CONSISTENT


def test_a_checkpoint_ahead_is_pending_until_the_tree_catches_up() -> None:
    m, keys = _mission()
    un, eu = _core(m, keys, "un", checkpoint_every=10), _core(m, keys, "eu")
    _feed(un, VALUES)
    _feed(eu, VALUES[:3])
    ((_, record),) = un.due(now_ms=1)
    vc = verify_checkpoint(record, m.keyring, at_ms=NOW_MS, seq=1)
    assert eu.review(vc, offset=0, now_ms=1).verdict is Verdict.PENDING
    _feed(eu, VALUES[3:])
    review = eu.review(vc, offset=0, now_ms=1)
    assert review.verdict is Verdict.CONSISTENT
    assert review.cosignature is not None


def test_checkpoint_of_a_partition_never_seen() -> None:
    m, keys = _mission()
    eu = _core(m, keys, "eu")
    cp = Checkpoint(eu.origin(TOPIC, 7), 1, bytes(32))
    vc = verify_checkpoint(
        signed_checkpoint(cp, keys["un"], "obus/un/un-node"), m.keyring, at_ms=NOW_MS, seq=1
    )
    assert eu.review(vc, offset=0, now_ms=1).verdict is Verdict.PENDING
    not_reports = dataclasses.replace(cp, origin=eu.origin("obus.registry", 0))
    vc = verify_checkpoint(
        signed_checkpoint(not_reports, keys["un"], "obus/un/un-node"),
        m.keyring,
        at_ms=NOW_MS,
        seq=2,
    )
    assert eu.review(vc, offset=1, now_ms=1).verdict is Verdict.UNKNOWN_ORIGIN


def test_restored_tree_matches_the_original() -> None:
    m, keys = _mission()
    a, b = _core(m, keys, "un"), _core(m, keys, "un")
    hashes = [a.append(TOPIC, 0, v) for v in VALUES]
    b.load(TOPIC, 0, hashes)
    assert b.trees[(TOPIC, 0)].root() == a.trees[(TOPIC, 0)].root()


@pytest.mark.parametrize("size", range(11))
def test_judge_every_size(size: int) -> None:
    tree = MerkleTree()
    for v in VALUES:
        tree.append(v)
    good = Checkpoint("obus/m/t/0", size, tree.root_at(size) if size <= 10 else bytes(32))
    assert judge(good, tree) is Verdict.CONSISTENT
    assert judge(dataclasses.replace(good, root=bytes(32)), tree) is Verdict.SPLIT_VIEW
    assert judge(dataclasses.replace(good, size=11), tree) is Verdict.PENDING
    assert judge(good, None) is (Verdict.CONSISTENT if size == 0 else Verdict.PENDING)


def test_policy_limits() -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        WitnessPolicy(checkpoint_every=0)
    with pytest.raises(ValueError, match="interval"):
        WitnessPolicy(checkpoint_interval_ms=-1)


def test_a_checkpoint_already_cosigned_is_not_published_again() -> None:
    m, keys = _mission()
    un, eu = _core(m, keys, "un", checkpoint_every=5), _core(m, keys, "eu", checkpoint_every=5)
    for c in (un, eu):
        _feed(c, VALUES[:5])
    ((_, record),) = un.due(now_ms=1)
    vc = verify_checkpoint(record, m.keyring, at_ms=NOW_MS, seq=1)
    assert eu.review(vc, offset=0, now_ms=1).cosignature is not None
    assert eu.due(now_ms=2) == []  # the same text: EU's cosignature already stands
    assert eu.published[eu.origin(TOPIC, 0)][0] == 5
