"""The final judge on published decisions: one hash chain per organization, judged in the
sealed order under the epoch's trust, node keys revoked at an epoch (pure, no broker)."""

from __future__ import annotations

import pytest

from bus.crypto import SigningKey
from bus.decision import verify_decision
from bus.errors import ConfigError, Reason, VerificationError
from bus.judge import FinalJudge, Status
from bus.model import Accreditation, Revocation, Role
from bus.sign import sign_accreditation, sign_revocation
from bus.verify import ChainHead, Limits
from tests.mission import Mission, make_mission
from tests.sealed_log import (
    DAY_MS,
    NOW_MS,
    TOPICS,
    SealedLog,
    decision_head,
    make_decision,
    project,
)
from tests.unit.test_judge import _final, _same_everywhere, _says

OSCE = TOPICS.decisions("osce")


def _nodes_bus() -> tuple[Mission, SealedLog]:
    """Epoch 1 (at NOW_MS) publishes the root and the accreditations of the observers and of
    every organization's node key (in force from epoch 2)."""
    m = make_mission()
    log = SealedLog(m.scenario.mandate)
    log.put(TOPICS.mandate, m.scenario.mandate_envelope)
    for raw in (*m.scenario.accreditations, *m.scenario.node_accreditations):
        log.put(TOPICS.registry, raw)
    log.seal(NOW_MS)
    return m, log


def _node_key(m: Mission, org: str = "osce") -> SigningKey:
    return m.scenario.node_keys[org]


def _decide(
    m: Mission, after: ChainHead | None, key: SigningKey | None = None, *, n: int = 0,
    org: str = "osce", signed_at_ms: int = NOW_MS,
) -> bytes:  # fmt: skip
    """Organization ``org``'s decision after ``after``, signed by its node key or ``key``."""
    return make_decision(
        m.mandate_id, org, key or _node_key(m, org), after, n=n, signed_at_ms=signed_at_ms
    )


def _accredit_node(m: Mission, subject: str, key: SigningKey, org: str = "osce") -> bytes:
    mandate = m.scenario.mandate
    acc = Accreditation(subject, org, Role.NODE, key.public_key, mandate.not_before_ms,
                        mandate.not_after_ms, 900, mandate.mandate_id)  # fmt: skip
    return sign_accreditation(acc, m.scenario.org_roots[org]).encode()


def _revoke_node(m: Mission, key: SigningKey, last_epoch: int, org: str = "osce") -> bytes:
    rev = Revocation(org, key.key_id, last_epoch, NOW_MS, "stolen", 901, m.mandate_id)
    return sign_revocation(rev, m.scenario.org_roots[org]).encode()


def test_attack_10_a_revoked_node_keys_decisions_of_later_epochs_are_refused_everywhere() -> None:
    m, log = _nodes_bus()
    d1 = _decide(m, None)
    p1 = log.put(OSCE, d1)
    log.put(TOPICS.registry, _revoke_node(m, _node_key(m), 3))  # counts up to epoch 3
    log.seal()  # epoch 2: the revocation is in force from epoch 3
    d2 = _decide(m, decision_head(d1, 1), n=2)
    p2 = log.put(OSCE, d2)
    log.seal()  # epoch 3: still inside the key's last epoch
    p3 = log.put(OSCE, _decide(m, decision_head(d2, 2), n=3))
    p_seq1 = log.put(OSCE, _decide(m, None, n=4), partition=1)  # "seq 1 verifies": it does not
    log.seal()  # epoch 4
    out = _same_everywhere(log)
    assert [_says(out, p) for p in (p1, p2, p3, p_seq1)] == [
        "accepted",
        "accepted",
        "key_revoked",
        "key_revoked",
    ]
    assert out[-1].decision_heads == {}  # epoch 4 extended no chain
    assert out[2].decision_heads == {"osce": decision_head(d2, 2)}
    # A reader that does not know the epoch yet (the board) refuses the key outright.
    judge, _ = log.judge()
    with pytest.raises(VerificationError) as exc:
        verify_decision(d2, judge.keyring, topic_org="osce")
    assert exc.value.reason is Reason.KEY_REVOKED


def test_a_repeated_or_skipped_seq_is_refused() -> None:
    m, log = _nodes_bus()
    d1 = _decide(m, None)
    p1 = log.put(OSCE, d1)
    p_again = log.put(OSCE, _decide(m, None, n=1))  # another decision at seq 1
    log.seal()
    d2 = _decide(m, decision_head(d1, 1), n=2)
    p2 = log.put(OSCE, d2)
    p_gap = log.put(OSCE, _decide(m, ChainHead(3, bytes(32)), n=3))  # seq 4 after 2
    p_fork = log.put(OSCE, _decide(m, ChainHead(2, bytes(32)), n=4))  # seq 3, prev not d2's
    p_old = log.put(OSCE, _decide(m, decision_head(d1, 1), n=5), partition=1)  # seq 2 again
    log.seal()
    out = _same_everywhere(log)
    assert [_says(out, p) for p in (p1, p_again, p2, p_gap, p_fork, p_old)] == [
        "accepted",
        "chain_fork",
        "accepted",
        "chain_gap",
        "chain_fork",
        "chain_fork",
    ]


def test_a_copy_of_a_decision_on_another_partition_is_replayed_wherever_it_sits() -> None:
    m, log = _nodes_bus()
    d1 = _decide(m, None)
    p_late = log.put(OSCE, d1, partition=1)
    p_early = log.put(OSCE, d1, partition=0)  # the copy sits first in the canonical order
    p_next = log.put(OSCE, _decide(m, decision_head(d1, 1), n=2), partition=2)
    log.seal()
    p_again = log.put(OSCE, d1, partition=2)
    log.seal()
    out = _same_everywhere(log)
    assert [_says(out, p) for p in (p_early, p_late, p_next, p_again)] == [
        "accepted",
        "replayed",
        "accepted",
        "replayed",
    ]


def test_a_decision_chain_continues_across_node_key_rotations() -> None:
    m, log = _nodes_bus()
    k2, k3 = SigningKey.generate(), SigningKey.generate()
    d1 = _decide(m, None)
    p1 = log.put(OSCE, d1)
    log.put(TOPICS.registry, _accredit_node(m, "osce-node-2", k2))
    log.seal()  # epoch 2: k2 in force from epoch 3
    d2 = _decide(m, decision_head(d1, 1), k2, n=2)
    p2 = log.put(OSCE, d2)
    log.put(TOPICS.registry, _accredit_node(m, "osce-node-3", k3))
    d3 = _decide(m, decision_head(d2, 2), k3, n=3)  # the moment k3 is accredited
    p3 = log.put(OSCE, d3, partition=1)
    log.seal()  # epoch 3
    d4 = _decide(m, decision_head(d3, 3), k3, n=4)
    p4 = log.put(OSCE, d4)
    log.seal()  # epoch 4: the deferred seq 3 first, then seq 4
    out = _same_everywhere(log)
    assert out[2].verdicts[-1].status is Status.DEFERRED
    assert [v.pos for v in out[3].verdicts] == [p3, p4]
    assert [_says(out, p) for p in (p1, p2, p3, p4)] == ["accepted"] * 4
    v4 = _final(out)[p4]
    assert v4.decision is not None and v4.decision.node_id == "osce-node-3"
    assert out[3].decision_heads == {"osce": decision_head(d4, 4)}


def test_a_decision_is_judged_at_its_epochs_clock_and_lag() -> None:
    m, log = _nodes_bus()
    t2 = log.time_ms + DAY_MS
    junk = {
        "null": log.put(OSCE, None),
        "garbage": log.put(OSCE, b"\xff\xfegarbage"),
        "oversized": log.put(OSCE, b"\x0a" * (Limits().max_record_bytes + 1)),
        "a report": log.put(OSCE, m.next_report("osce", 1)),
        "un's decision on osce's topic": log.put(OSCE, _decide(m, None, org="un")),
        "signed by an observer key": log.put(OSCE, _decide(m, None, m.observer("osce", 1)[1])),
        "ahead of t_e": log.put(OSCE, _decide(m, None, n=1, signed_at_ms=t2 + 300_001)),
        "eight days late": log.put(OSCE, _decide(m, None, n=2, signed_at_ms=t2 - 8 * DAY_MS)),
    }
    p_ok = log.put(OSCE, _decide(m, None, n=3, signed_at_ms=t2 - 6 * DAY_MS))
    log.seal(t2)
    out = _same_everywhere(log)
    said = {name: _says(out, pos) for name, pos in junk.items()}
    assert said == {
        "null": "malformed",
        "garbage": "malformed",
        "oversized": "oversized",
        "a report": "wrong_payload_type",
        "un's decision on osce's topic": "wrong_topic",
        "signed by an observer key": "wrong_role",
        "ahead of t_e": "clock_skew",
        "eight days late": "delivery_lag",
    }
    assert _says(out, p_ok) == "accepted"


def test_decision_chains_survive_a_snapshot() -> None:
    m, log = _nodes_bus()
    d1 = _decide(m, None)
    log.put(OSCE, d1)
    k2 = SigningKey.generate()
    log.put(TOPICS.registry, _accredit_node(m, "osce-node-2", k2))
    d2 = _decide(m, decision_head(d1, 1), k2, n=2)
    log.put(OSCE, d2)  # deferred across the snapshot
    log.seal()
    judge, _ = log.judge()
    assert judge.decision_heads() == {"osce": decision_head(d1, 1)}
    restored = FinalJudge.restore(judge.snapshot(), log.root, TOPICS)
    assert restored.snapshot() == judge.snapshot()
    log.put(OSCE, d1, partition=1)  # a copy, after the restart
    d3 = _decide(m, decision_head(d2, 2), k2, n=3)
    log.put(OSCE, d3)
    seal = log.seal()
    a = judge.judge_epoch(seal, log.epoch_records(seal.epoch))
    b = restored.judge_epoch(seal, log.epoch_records(seal.epoch))
    assert project(a) == project(b)
    # The deferred seq 2 first, then this epoch's in claimed order: the copy of seq 1, seq 3.
    assert [v.reason or v.status.value for v in a.verdicts] == ["accepted", "replayed", "accepted"]
    assert a.decision_heads == restored.decision_heads() == {"osce": decision_head(d3, 3)}


def test_a_decision_verdict_is_in_the_state_digest() -> None:
    m, log = _nodes_bus()
    t2 = log.time_ms + 1
    log.put(OSCE, _decide(m, None, signed_at_ms=t2 + 1_000))  # a second ahead of t_2
    log.seal(t2)
    _, default = log.judge()
    _, strict = log.judge(FinalJudge(log.root, TOPICS, Limits(max_clock_skew_ms=0)))
    assert [_says(r, (OSCE, 0, 0)) for r in (default, strict)] == ["accepted", "clock_skew"]
    assert default[0].state_digest == strict[0].state_digest
    assert default[1].state_digest != strict[1].state_digest


def test_a_snapshot_of_another_format_is_refused() -> None:
    _, log = _nodes_bus()
    judge, _ = log.judge()
    old = judge.snapshot().replace(b"obus-judge-state-v2", b"obus-judge-state-v1")
    with pytest.raises(ConfigError):
        FinalJudge.restore(old, log.root, TOPICS)
