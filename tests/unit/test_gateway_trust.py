"""The gateway's trust state and chain rules without a broker: nothing is published before the
first final seal, the final store is required, a sealed trust record altered is named, and a
new key of the same observer id continues the chain (at the final judge and the gateway's
chain book alike)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bus.errors import ConfigError, SealedRootMismatchError
from bus.judge import FinalJudge
from bus.model import Accreditation, Revocation, Role
from bus.sign import ReportSigner, sign_accreditation, sign_revocation
from bus.verify import ChainBook, verify_report
from nodes.demo.scenario import demo_key
from nodes.gateway.service import Gateway, GatewayConfig, Outcome
from nodes.gateway.trust import NOT_SEALED_YET, SealedTrust
from tests.mission import NOW_MS, make_mission
from tests.sealed_log import TOPICS, SealedLog


def _gateway(tmp_path: Path, final_db: Path | None) -> Gateway:
    m = make_mission(1)
    cfg = GatewayConfig(org="un", bootstrap="127.0.0.1:1", db_path=tmp_path / "gw.db",
                        mandate=m.scenario.mandate, node_key=demo_key("trust-unit"),
                        topics=TOPICS, final_db=final_db)  # fmt: skip
    return Gateway(cfg)


def test_before_the_first_seal_a_report_is_answered_not_sealed_yet(tmp_path: Path) -> None:
    m = make_mission(1)
    gw = _gateway(tmp_path, tmp_path / "un.final.db")
    try:
        reply = asyncio.run(gw.submit(m.next_report("un", 1)))
        counts = gw.store.counts()
    finally:
        gw.store.close()
    assert reply.outcome is Outcome.UNAVAILABLE and reply.retry_after_s > 0
    assert json.loads(reply.body)["reason"] == NOT_SEALED_YET
    assert counts == {"publishing": 0, "published": 0}  # nothing recorded, nothing sent


def test_a_gateway_without_a_final_store_names_the_flag(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, None)
    try:
        with pytest.raises(ConfigError, match="--final-db"):
            asyncio.run(gw.start())
    finally:
        gw.store.close()


def test_an_unreadable_final_store_names_the_flag(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, tmp_path / "missing.final.db")
    try:
        with pytest.raises(ConfigError, match="--final-db"):
            asyncio.run(gw.start())
    finally:
        gw.store.close()


def test_an_altered_sealed_trust_record_is_named() -> None:
    m = make_mission(1)
    sc = m.scenario
    log = SealedLog(sc.mandate)
    for raw in sc.accreditations:
        log.put(TOPICS.registry, raw)
    log.seal()
    trust = SealedTrust(sc.mandate, TOPICS)
    values = list(log.partitions[(TOPICS.registry, 0)])
    values[0] = b"altered" + (values[0] or b"")
    trust.offer_records((TOPICS.registry, 0), 0, values)
    with pytest.raises(SealedRootMismatchError):
        trust.advance(log.seals)
    assert not trust.sealed


def test_a_new_key_for_the_same_observer_continues_the_chain() -> None:
    """The chain rule: chains are keyed by (organization, observer id), never by key. Once the
    organization accredits a new key for the observer id (and revokes the old one after the
    last seq it signed), a report signed by the new key at the next seq, naming the digest of
    the last report, extends the chain: at the final judge and at the gateway's chain book."""
    m = make_mission(1)
    sc = m.scenario
    oid, old_key = m.observer("un", 1)
    log = SealedLog(sc.mandate)
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        log.put(TOPICS.registry, raw)
    log.seal()
    signer = m.signer("un", 1)
    first = [signer.sign(m.draft("un", 1)) for _ in range(2)]
    positions = [log.put(TOPICS.reports("un"), raw) for raw in first]
    new_key = demo_key("un-obs-1:new-device")
    mandate = sc.mandate
    acc = Accreditation(oid, "un", Role.OBSERVER, new_key.public_key, mandate.not_before_ms,
                        mandate.not_after_ms, 600, mandate.mandate_id)  # fmt: skip
    log.put(TOPICS.registry, sign_accreditation(acc, sc.org_roots["un"]).encode())
    rev = Revocation("un", old_key.key_id, 2, NOW_MS, "device lost", 601, mandate.mandate_id)
    log.put(TOPICS.registry, sign_revocation(rev, sc.org_roots["un"]).encode())
    log.seal()  # the new key is in force from epoch 3
    device = ReportSigner(new_key, signer.head)  # the head the gateway serves
    later = [device.sign(m.draft("un", 1)) for _ in range(2)]
    stale = ReportSigner(old_key, signer.head).sign(m.draft("un", 1))
    positions += [log.put(TOPICS.reports("un"), raw) for raw in later]
    p_stale = log.put(TOPICS.reports("un"), stale)
    log.seal()
    judge = FinalJudge(sc.mandate, TOPICS)
    verdicts = {}
    for seal in log.seals:
        ev = judge.judge_epoch(seal, log.epoch_records(seal.epoch))
        verdicts.update({v.pos: v for v in ev.verdicts})
    assert [verdicts[p].status.value for p in positions] == ["accepted"] * 4
    assert verdicts[p_stale].reason == "key_revoked"
    # the gateway: the same trust state, its chain book over what it published
    trust = SealedTrust(sc.mandate, TOPICS)
    for ref, values in log.partitions.items():
        if trust.covers(ref[0]):
            trust.offer_records(ref, 0, values)
    trust.advance(log.seals)
    book = ChainBook({}, lambda _rid: None)
    for raw in [*first, *later]:
        book.accept(verify_report(raw, expected_org="un", keyring=trust.keyring,
                                  reference_ms=NOW_MS))  # fmt: skip
    head = book.head(oid)
    assert head is not None and head.seq == 4
