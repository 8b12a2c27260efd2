"""Published decisions and joint statements: signing, verification, k-of-n counting."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from bus.crypto import SigningKey
from bus.decision import (
    PAYLOAD_DECISION,
    PublishedDecision,
    next_link,
    sign_decision,
    verify_decision,
)
from bus.errors import VerificationError
from bus.model import Envelope, Revocation, Role, Signature, encode, sha256
from bus.policy import Decision, Evidence
from bus.sign import sign_envelope, sign_revocation
from bus.statement import (
    PAYLOAD_STATEMENT,
    JointStatement,
    StatementBook,
    cosign,
    sign_statement,
)
from bus.uuid7 import uuid7
from bus.verify import ChainHead, Limits
from nodes.demo.scenario import demo_key
from tests.mission import NOW_MS, Mission, make_mission

ORGS = ("un", "osce", "eu", "nato", "csto", "sco")


def _nodes(m: Mission) -> dict[str, SigningKey]:
    keys = {}
    for org in ORGS:
        keys[org] = demo_key(f"test:node:{org}")
        m.accredit(f"{org}-node", org, keys[org], Role.NODE)
    return keys


def _decision(org: str = "osce", **changes: object) -> PublishedDecision:
    d = Decision(
        org=org, rule="ceasefire-pattern", kind="aggregate", action="request_assessment_visit",
        priority="high", zone="north", group="north", window_start_ms=NOW_MS - 43_200_000,
        window_end_ms=NOW_MS, evidence=(Evidence(uuid7(NOW_MS, bytes(10)), bytes(32)),),
        decided_at_ms=NOW_MS, summary="3 reports", publish=True,
    )  # fmt: skip
    p = PublishedDecision.of(
        d, mandate_id="jmm-2026", after=None, signed_at_ms=NOW_MS, policy_digest=bytes(32)
    )
    return dataclasses.replace(p, **changes)  # type: ignore[arg-type]


def test_decision_round_trip_and_verify() -> None:
    m = make_mission()
    keys = _nodes(m)
    raw = sign_decision(_decision(), keys["osce"])
    vd = verify_decision(raw, m.keyring, topic_org="osce")
    assert vd.decision == _decision()
    assert vd.node_id == "osce-node"
    assert PublishedDecision.decode(encode(_decision())) == _decision()


def _tampered(raw: bytes) -> bytes:
    env = Envelope.decode(raw)
    payload = encode(dataclasses.replace(PublishedDecision.decode(env.payload), action="invade"))
    return dataclasses.replace(env, payload=payload).encode()


def _two_sigs(raw: bytes, key: SigningKey) -> bytes:
    env = Envelope.decode(raw)
    extra = Signature(key.key_id, key.sign_pae(env.payload_type, env.payload))
    return dataclasses.replace(env, signatures=(*env.signatures, extra)).encode()


def _revoked(m: Mission, key: SigningKey, last_valid_seq: int) -> None:
    rev = Revocation("osce", key.key_id, last_valid_seq, NOW_MS, "compromised", 1, m.mandate_id)
    m.apply(sign_revocation(rev, m.scenario.org_roots["osce"]))


def _after_revocation(m: Mission, k: dict[str, SigningKey]) -> tuple[bytes, str]:
    _revoked(m, k["osce"], 0)
    return sign_decision(_decision(), k["osce"]), "osce"


DecisionBuilder = Callable[[Mission, dict[str, SigningKey]], tuple[bytes, str]]
DECISION_CASES: dict[str, tuple[DecisionBuilder, str]] = {
    # name: (builder(m, keys) -> (raw, topic_org), expected reason)
    "tampered payload": (lambda m, k: (_tampered(sign_decision(_decision(), k["osce"])), "osce"), "bad_signature"),
    "other payload type": (lambda m, k: (sign_envelope(PAYLOAD_STATEMENT, encode(_decision()), [k["osce"]]).encode(), "osce"), "wrong_payload_type"),
    "two signatures": (lambda m, k: (_two_sigs(sign_decision(_decision(), k["osce"]), k["un"]), "osce"), "invalid_field"),
    "unknown key": (lambda m, k: (sign_decision(_decision(), demo_key("rogue")), "osce"), "unknown_key"),
    "observer key": (lambda m, k: (sign_decision(_decision(), m.observer("osce", 1)[1]), "osce"), "wrong_role"),
    "another org's node": (lambda m, k: (sign_decision(_decision(), k["un"]), "osce"), "wrong_org"),
    "on another org's topic": (lambda m, k: (sign_decision(_decision(), k["osce"]), "un"), "wrong_topic"),
    "other mandate": (lambda m, k: (sign_decision(_decision(mandate_id="other"), k["osce"]), "osce"), "wrong_mandate"),
    "signed after accreditation ended": (lambda m, k: (sign_decision(_decision(signed_at_ms=m.scenario.mandate.not_after_ms + 1), k["osce"]), "osce"), "key_expired"),
    "seq after revocation": (_after_revocation, "key_revoked"),
    "garbage": (lambda m, k: (b"\x00\x01", "osce"), "malformed"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(DECISION_CASES))
def test_bad_decisions_are_rejected_with_their_reason(name: str) -> None:
    m = make_mission()
    keys = _nodes(m)
    build, reason = DECISION_CASES[name]
    raw, topic_org = build(m, keys)
    with pytest.raises(VerificationError) as exc:
        verify_decision(raw, m.keyring, topic_org=topic_org)
    assert exc.value.reason.value == reason


def test_a_node_key_revocation_cuts_at_the_epoch_never_at_the_signers_seq() -> None:
    m = make_mission()
    keys = _nodes(m)
    _revoked(m, keys["osce"], 4)  # the node key's signatures count on epochs 1..4
    raw = sign_decision(_decision(), keys["osce"])  # seq 1: a number its signer chose
    assert verify_decision(raw, m.keyring, topic_org="osce", epoch=4).decision.seq == 1
    for epoch in (5, None):  # a later epoch, or one a provisional reader does not know yet
        with pytest.raises(VerificationError) as exc:
            verify_decision(raw, m.keyring, topic_org="osce", epoch=epoch)
        assert exc.value.reason.value == "key_revoked"


def test_chained_decisions_and_the_clock() -> None:
    m = make_mission()
    keys = _nodes(m)
    first = sign_decision(_decision(), keys["osce"])
    vd = verify_decision(first, m.keyring, topic_org="osce")
    assert vd.envelope_digest == sha256(first)
    head = ChainHead(1, vd.envelope_digest)
    assert next_link(None) == (1, b"")
    assert next_link(head) == (2, sha256(first))
    second = PublishedDecision.of(
        Decision(
            org="osce", rule="r", kind="report", action="a", priority="low", zone="north",
            group="north", window_start_ms=0, window_end_ms=0,
            evidence=(Evidence(uuid7(NOW_MS, bytes(10)), bytes(32)),), decided_at_ms=NOW_MS,
            summary="", publish=True,
        ),
        mandate_id="jmm-2026", after=head, signed_at_ms=NOW_MS,
    )  # fmt: skip
    assert (second.seq, second.prev_digest) == (2, sha256(first))
    raw = sign_decision(second, keys["osce"])
    assert verify_decision(raw, m.keyring, topic_org="osce", reference_ms=NOW_MS - 300_000)
    with pytest.raises(VerificationError) as exc:  # more than the clock skew ahead of t_e
        verify_decision(raw, m.keyring, topic_org="osce", reference_ms=NOW_MS - 300_001)
    assert exc.value.reason.value == "clock_skew"
    evidence = tuple(sorted(Evidence(uuid7(NOW_MS + i, bytes(10)), bytes(32)) for i in range(20)))
    big = sign_decision(dataclasses.replace(second, evidence=evidence), keys["osce"])
    assert len(big) > 1024
    verify_decision(big, m.keyring, topic_org="osce")
    with pytest.raises(VerificationError) as exc:
        verify_decision(big, m.keyring, topic_org="osce", limits=Limits(max_record_bytes=1024))
    assert exc.value.reason.value == "oversized"


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", 0), ("kind", "vote"), ("priority", "urgent"), ("evidence", ()), ("decision_id", "x"),
     ("evidence", (Evidence("r", bytes(32)),)), ("policy_digest", b"\x01"),
     ("prev_digest", bytes(32)), ("seq", 2)],
)  # fmt: skip
def test_decision_invariants(field: str, value: object) -> None:
    with pytest.raises(VerificationError) as exc:
        changes: dict[str, Any] = {field: value}
        _decision(**changes)
    assert exc.value.reason.value == "invalid_field"


def test_a_decision_names_the_seal_it_rests_on() -> None:
    m = make_mission()
    keys = _nodes(m)
    seal = bytes(range(32))
    final = _decision(seal_epoch=7, seal_digest=seal)
    assert final.final and not _decision().final
    assert PublishedDecision.decode(encode(final)) == final
    raw = sign_decision(final, keys["osce"])
    known = {7: seal, 8: bytes(32)}
    vd = verify_decision(raw, m.keyring, topic_org="osce", epoch=8, seal_digest=known.get)
    assert (vd.decision.seal_epoch, vd.decision.seal_digest) == (7, seal)
    for epoch in (7, 3):  # sealed no later than the evidence it names was final
        with pytest.raises(VerificationError) as exc:
            verify_decision(raw, m.keyring, topic_org="osce", epoch=epoch)
        assert exc.value.reason.value == "invalid_field"
    for digests in ({7: bytes(32)}, {}):  # another seal of that epoch, or none known
        with pytest.raises(VerificationError) as exc:
            verify_decision(raw, m.keyring, topic_org="osce", seal_digest=digests.get)
        assert exc.value.reason.value == "invalid_field"
    # A decision on provisional verdicts names none, and nothing about seals is checked.
    provisional = sign_decision(_decision(), keys["osce"])
    none: dict[int, bytes] = {}
    assert verify_decision(provisional, m.keyring, topic_org="osce", epoch=1, seal_digest=none.get)


@pytest.mark.parametrize(
    "changes",
    [{"seal_epoch": 0, "seal_digest": bytes(32)}, {"seal_epoch": 2, "seal_digest": b""},
     {"seal_epoch": 2, "seal_digest": bytes(31)}],
)  # fmt: skip
def test_seal_reference_invariants(changes: dict[str, Any]) -> None:
    with pytest.raises(VerificationError) as exc:
        _decision(**changes)
    assert exc.value.reason.value == "invalid_field"


def test_a_decision_published_before_seals_reads_as_provisional() -> None:
    """Fields 19 and 20 absent (a decision of an older node): seal_epoch 0, no digest."""
    pb = _decision().to_pb()
    pb.ClearField("seal_epoch")
    pb.ClearField("seal_digest")
    d = PublishedDecision.decode(pb.SerializeToString(deterministic=True))
    assert (d.seal_epoch, d.seal_digest) == (0, b"")


def test_payload_types_are_distinct() -> None:
    decision: str = PAYLOAD_DECISION  # a plain str: the constants are distinct Final literals
    assert decision != PAYLOAD_STATEMENT


# -- joint statements --------------------------------------------------------------------------


def _statement(drafted_by: str = "un", **changes: object) -> JointStatement:
    s = JointStatement(
        statement_id=uuid7(NOW_MS, bytes(range(10))),
        mandate_id="jmm-2026",
        drafted_by=drafted_by,
        title="Escalation in the east",
        text="Ceasefire violations doubled week over week.",
        references=(Evidence(uuid7(NOW_MS, bytes(10)), bytes(32)),),
        created_at_ms=NOW_MS,
    )
    return dataclasses.replace(s, **changes)  # type: ignore[arg-type]


def test_statement_becomes_valid_at_k_distinct_organizations() -> None:
    m = make_mission()
    keys = _nodes(m)
    book = StatementBook(m.keyring)
    draft = sign_statement(_statement(), keys["un"])
    status, added = book.apply(draft)
    assert added == ["un"] and status.state == "pending"
    assert (status.threshold, status.organizations) == (4, 6)
    for org in ("osce", "osce", "eu"):  # osce twice counts once
        status, _ = book.apply(cosign(draft, keys[org]))
    assert sorted(status.signed_by) == ["eu", "osce", "un"] and not status.valid
    status, added = book.apply(cosign(draft, m.scenario.org_roots["nato"]))  # a root key counts
    assert added == ["nato"] and status.valid and status.signed_by["nato"] == "root key"
    assert [s.statement.statement_id for s in book.statuses()] == [_statement().statement_id]


def _conflicting_draft(m: Mission, k: dict[str, SigningKey], d: StatementBook) -> bytes:
    m_apply(m, k, d)
    return sign_statement(_statement(title="Other"), k["un"])


StatementBuilder = Callable[[Mission, dict[str, SigningKey], StatementBook], bytes]
STATEMENT_CASES: dict[str, tuple[StatementBuilder, str]] = {
    "draft not signed by its drafter": (lambda m, k, d: sign_statement(_statement(), k["osce"]), "wrong_org"),
    "drafter not in the mandate": (lambda m, k, d: sign_statement(_statement("who"), k["un"]), "wrong_org"),
    "unknown key only": (lambda m, k, d: sign_statement(_statement(), demo_key("x")), "unknown_key"),
    "observer key only": (lambda m, k, d: sign_statement(_statement(), m.observer("un", 1)[1]), "unknown_key"),
    "other bytes under the same id": (_conflicting_draft, "duplicate_conflict"),
    "other mandate": (lambda m, k, d: sign_statement(_statement(mandate_id="other"), k["un"]), "wrong_mandate"),
    "not a statement": (lambda m, k, d: sign_decision(_decision(), k["un"]), "wrong_payload_type"),
}  # fmt: skip


def m_apply(m: Mission, keys: dict[str, SigningKey], book: StatementBook) -> None:
    book.apply(sign_statement(_statement(), keys["un"]))


@pytest.mark.parametrize("name", list(STATEMENT_CASES))
def test_bad_statement_records(name: str) -> None:
    m = make_mission()
    keys = _nodes(m)
    book = StatementBook(m.keyring)
    build, reason = STATEMENT_CASES[name]
    with pytest.raises(VerificationError) as exc:
        book.apply(build(m, keys, book))
    assert exc.value.reason.value == reason


def test_revoked_node_key_signs_no_statement() -> None:
    m = make_mission()
    keys = _nodes(m)
    book = StatementBook(m.keyring)
    draft = sign_statement(_statement(), keys["un"])
    book.apply(draft)
    _revoked(m, keys["osce"], 10**6)  # any revocation at all: fail closed
    with pytest.raises(VerificationError) as exc:
        book.apply(cosign(draft, keys["osce"]))
    assert exc.value.reason.value == "unknown_key"
    assert book.get(_statement().statement_id) is not None
