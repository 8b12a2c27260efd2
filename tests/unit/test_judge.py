"""The final judge and the sealed reader: the attacks of the one-order issue that the pure judge
settles, each a named test, plus the judge's and reader's own contracts (pure, no broker)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from bus.crypto import SigningKey
from bus.epoch import FinalSeal, PartitionSeal
from bus.errors import ConfigError, EpochInputError, Reason, SealedRootMismatchError
from bus.judge import EpochVerdicts, FinalJudge, RecordPos, Status, Verdict, namespace_owner
from bus.model import (
    Accreditation,
    EncryptionKey,
    Envelope,
    Mandate,
    Organization,
    Report,
    Revocation,
    Role,
    Zone,
    sha256,
)
from bus.sealed import DecryptionKey
from bus.sealed_reader import SealedReader
from bus.sign import (
    ReportSigner,
    sign_accreditation,
    sign_encryption_key,
    sign_mandate,
    sign_revocation,
)
from bus.verify import ChainHead, Limits
from nodes.demo.scenario import ZONES
from tests.mission import Mission, demo_key, make_mission
from tests.sealed_log import DAY_MS, NOW_MS, TOPICS, SealedLog, project

UN = TOPICS.reports("un")
EU = TOPICS.reports("eu")
WEST = Zone("west", "Lowlands", 47.0, 35.0, 48.0, 37.0)
FOUR = ["un", "osce", "eu", "nato"]  # the mission's threshold of organizations


def _bus(m: Mission | None = None, t1: int = NOW_MS) -> tuple[Mission, SealedLog]:
    """A mission whose epoch 1 (at ``t1``) publishes the root and the accreditations (in force
    from epoch 2)."""
    m = m or make_mission()
    log = SealedLog(m.scenario.mandate)
    log.put(TOPICS.mandate, m.scenario.mandate_envelope)
    for raw in m.scenario.accreditations:
        log.put(TOPICS.registry, raw)
    log.seal(t1)
    return m, log


def _final(out: list[EpochVerdicts]) -> dict[RecordPos, Verdict]:
    """The last verdict given to each position (a deferred report's comes an epoch later)."""
    return {v.pos: v for ev in out for v in ev.verdicts}


def _says(out: list[EpochVerdicts], pos: RecordPos) -> str:
    v = _final(out)[pos]
    return v.reason or v.status.value


def _rid(raw: bytes) -> str:
    return Report.decode(Envelope.decode(raw).payload).report_id


def _accredit(m: Mission, subject: str, org: str, key: SigningKey, root: SigningKey | None = None,
              **changes: object) -> bytes:  # fmt: skip
    mandate = m.scenario.mandate
    acc = Accreditation(subject, org, Role.OBSERVER, key.public_key, mandate.not_before_ms,
                        mandate.not_after_ms, 500, mandate.mandate_id)  # fmt: skip
    acc = dataclasses.replace(acc, **changes)  # type: ignore[arg-type]
    return sign_accreditation(acc, root or m.scenario.org_roots[org]).encode()


def _revoke(m: Mission, org: str, key: SigningKey, last_valid_seq: int,
            root: SigningKey | None = None) -> bytes:  # fmt: skip
    rev = Revocation(org, key.key_id, last_valid_seq, NOW_MS, "lost", 7, m.mandate_id)
    return sign_revocation(rev, root or m.scenario.org_roots[org]).encode()


def _v2(m: Mission, *, rekey: str = "", signers: list[str] = FOUR, **changes: object) -> bytes:
    orgs = tuple(
        dataclasses.replace(o, root_public_key=demo_key(f"new-root:{o.org}").public_key)
        if o.org == rekey
        else o
        for o in m.scenario.mandate.organizations
    )
    v2 = dataclasses.replace(m.scenario.mandate, version=2, organizations=orgs, **changes)  # type: ignore[arg-type]
    keys = [m.scenario.org_roots[o] for o in signers]
    if rekey:
        keys.append(demo_key(f"new-root:{rekey}"))
    return sign_mandate(v2, keys).encode()


def _reader_runs(log: SealedLog) -> list[list[EpochVerdicts]]:
    """The same log through readers fed in opposite partition orders, seals first or last,
    and with the trust topics leading or lagging."""
    runs = []
    refs = sorted(log.partitions)
    trust = [r for r in refs if r[0] in {TOPICS.registry, TOPICS.mandate}]
    data = [r for r in refs if r not in trust]
    for order, seals_first in (
        (trust + data, True),
        (list(reversed(data)) + trust, False),
        (data[::2] + trust + data[1::2], True),
    ):
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


def _same_everywhere(log: SealedLog) -> list[EpochVerdicts]:
    """Judge the log directly and through readers in several orders; all must agree."""
    _, reference = log.judge()
    for run in _reader_runs(log):
        assert [project(v) for v in run] == [project(v) for v in reference]
    return reference


# -- the attacks ------------------------------------------------------------------------------


def test_attack_1_trust_records_under_another_organizations_authority_never_take_effect() -> None:
    m, log = _bus()
    _, un1 = m.observer("un", 1)
    _, un2 = m.observer("un", 2)
    junk = {
        "un revokes its own key": log.put(TOPICS.registry, _revoke(m, "un", un1, 0)),
        "a null record": log.put(TOPICS.registry, None),
        "garbage": log.put(TOPICS.registry, b"\xff\xfegarbage"),
        "EU accredits UN's key as its own subject": log.put(
            TOPICS.registry, _accredit(m, "eu-obs-9", "eu", un2)
        ),
        "EU accredits a subject of UN": log.put(
            TOPICS.registry, _accredit(m, "un-obs-7", "eu", demo_key("x"))
        ),
        "EU revokes UN's key": log.put(TOPICS.registry, _revoke(m, "eu", un2, 0)),
        "a null mandate record": log.put(TOPICS.mandate, None),
        "a report on the registry": log.put(TOPICS.registry, m.next_report("sco", 1)),
    }
    log.seal()
    p1 = log.put(UN, m.next_report("un", 1))
    p2 = log.put(UN, m.next_report("un", 2))
    log.seal()
    out = _same_everywhere(log)
    said = {name: _says(out, pos) for name, pos in junk.items()}
    assert said == {
        "un revokes its own key": "applied",
        "a null record": "malformed",
        "garbage": "malformed",
        "EU accredits UN's key as its own subject": "duplicate_conflict",
        "EU accredits a subject of UN": "wrong_org",
        "EU revokes UN's key": "wrong_org",
        "a null mandate record": "malformed",
        "a report on the registry": "wrong_payload_type",
    }
    assert _says(out, p1) == "key_revoked"  # UN's own revocation holds
    assert _says(out, p2) == "accepted"  # nothing EU wrote silenced UN's other observer


def test_attack_2_report_ids_are_scoped_to_the_observer() -> None:
    m, log = _bus()
    genuine = m.next_report("un", 1)
    rid = _rid(genuine)
    squat = m.next_report("eu", 1, report_id=rid)
    p_squat = log.put(EU, squat)  # EU's observer uses UN's id first, in an earlier epoch
    log.seal()
    p_un = log.put(UN, genuine)
    p_un2 = log.put(UN, m.next_report("un", 1))
    p_same = log.put(UN, m.next_report("un", 1, report_id=rid))  # the observer's own reuse
    log.seal()
    out = _same_everywhere(log)
    assert [_says(out, p) for p in (p_squat, p_un, p_un2, p_same)] == [
        "accepted",
        "accepted",
        "accepted",
        "duplicate_conflict",
    ]
    head = out[-1].heads[("un", "un-obs-1")]
    assert head is not None
    assert head.seq == 2


def test_attack_3_revocation_survives_a_root_rotation_and_re_accreditation() -> None:
    m, log = _bus()
    _, key = m.observer("un", 1)
    p1 = log.put(UN, m.next_report("un", 1))
    log.put(TOPICS.registry, _revoke(m, "un", key, 1))  # signed by UN's old root
    log.put(TOPICS.mandate, _v2(m, rekey="un"))  # the same epoch: both in force from epoch 3
    log.seal()
    new_root = demo_key("new-root:un")
    p_early = log.put(TOPICS.registry, _accredit(m, "un-obs-1", "un", key, new_root))
    log.seal()  # epoch 3: v2 in force, so UN re-accredits under its new root (epoch 4)
    p_acc = log.put(TOPICS.registry, _accredit(m, "un-obs-1", "un", key, new_root, serial=501))
    log.seal()
    p2 = log.put(UN, m.next_report("un", 1))
    log.seal()
    out = _same_everywhere(log)
    assert _says(out, p1) == "accepted"
    assert _says(out, p_early) == "applied"  # verified under v2, in force at epoch 3
    assert _says(out, p_acc) == "applied"
    assert _says(out, p2) == "key_revoked"  # the revocation signed by the old root stays
    assert out[-1].mandate_version == 2


def test_attack_4_revocation_rewinds_the_chain_head_for_every_reader() -> None:
    m, log = _bus()
    _, k1 = m.observer("un", 1)
    raws = [m.next_report("un", 1) for _ in range(3)]  # seq 1..3 under k1
    p = [log.put(UN, raw) for raw in raws]
    log.seal()  # epoch 2
    k2 = demo_key("un-obs-1:k2")
    log.put(TOPICS.registry, _revoke(m, "un", k1, 1))
    log.put(TOPICS.registry, _accredit(m, "un-obs-1", "un", k2, serial=600))
    p4 = log.put(UN, m.next_report("un", 1), partition=1)  # seq 4 under k1: k1 holds at 3
    log.seal()  # epoch 3: the revocation and k2 are in force from epoch 4
    last_valid = ChainHead(1, sha256(raws[0]))
    signer = ReportSigner(k2, last_valid)  # the observer continues from seq 1 with k2
    p_new = log.put(UN, signer.sign(m.draft("un", 1)))
    p_old = log.put(UN, m.next_report("un", 1))  # the thief, seq 5 under k1
    log.seal()
    out = _same_everywhere(log)
    changes = [c for ev in out for c in ev.changes]
    assert [(c.pos, c.seq, c.at_epoch) for c in changes] == [(p[1], 2, 4), (p[2], 3, 4), (p4, 4, 4)]
    assert all(c.status is Status.REVOKED_AFTER_ACCEPTANCE for c in changes)
    assert out[2].heads[("un", "un-obs-1")] == last_valid  # rewound, in epoch 3's answer
    assert _says(out, p_new) == "accepted"
    assert _says(out, p_old) == "key_revoked"
    assert out[-1].heads[("un", "un-obs-1")] == signer.head


def test_attack_4_reports_resting_on_a_revoked_report_are_withdrawn_with_it() -> None:
    m, log = _bus()
    _, k1 = m.observer("un", 1)
    k2 = demo_key("un-obs-1:k2")
    p1 = log.put(UN, m.next_report("un", 1))
    p2 = log.put(UN, m.next_report("un", 1))
    log.put(TOPICS.registry, _accredit(m, "un-obs-1", "un", k2, serial=600))
    log.seal()
    signer = ReportSigner(k2, m.signer("un", 1).head)  # re-keyed: continues the chain at seq 3
    p3 = log.put(UN, signer.sign(m.draft("un", 1)))
    log.put(TOPICS.registry, _revoke(m, "un", k1, 1))
    log.seal()
    log.seal()
    out = _same_everywhere(log)
    assert [(c.pos, c.seq) for c in out[2].changes] == [(p2, 2), (p3, 3)]
    assert "rests on seq 2" in out[2].changes[1].detail
    assert _says(out, p1) == "accepted"
    assert out[2].heads[("un", "un-obs-1")] == ChainHead(
        1, sha256(log.partitions[(UN, 0)][0] or b"")
    )


def test_attack_5_the_clock_is_the_seal_time_never_a_broker_timestamp() -> None:
    assert list(inspect.signature(FinalJudge.judge_epoch).parameters) == [
        "self",
        "seal",
        "records",
        "preverified",
    ]  # records are values only: no timestamp reaches a verdict
    m, _ = _bus()
    raw = m.next_report("un", 1)
    signed_at = m.draft().signed_at_ms
    said = []
    for t in (signed_at - 10 * 60_000, signed_at + 60_000):
        _, log = _bus(m, t1=t - 1)
        pos = log.put(UN, raw)
        log.seal(t)
        said.append(_says(log.judge()[1], pos))
    assert said == ["clock_skew", "accepted"]


def test_attack_6_a_mandate_version_takes_effect_at_the_next_epoch_for_every_reader() -> None:
    m, log = _bus()
    west = dataclasses.replace(m.draft().location, lat=47.5, lon=36.0)
    log.put(TOPICS.mandate, _v2(m, zones=(*m.scenario.mandate.zones, WEST)))
    p_same = log.put(UN, m.next_report("un", 1, zone="west", location=west))
    log.seal()
    p_next = log.put(UN, m.next_report("un", 2, zone="west", location=west))
    log.seal()
    out = _same_everywhere(log)
    assert _says(out, p_same) == "outside_zone"  # judged under v1, in force at its epoch
    assert _says(out, p_next) == "accepted"
    assert out[1].mandate_version == 2
    assert not any(ev.changes for ev in out)  # never judged again


def test_attack_7_a_copy_on_another_partition_is_replayed_wherever_it_sits() -> None:
    m, log = _bus()
    raw = m.next_report("un", 1)
    p_late = log.put(UN, raw, partition=1)
    p_early = log.put(UN, raw, partition=0)  # the copy sits first in the canonical order
    p_next = log.put(UN, m.next_report("un", 1), partition=2)
    log.seal()
    p_again = log.put(UN, raw, partition=2)
    log.seal()
    out = _same_everywhere(log)
    assert [_says(out, p) for p in (p_early, p_late, p_next, p_again)] == [
        "accepted",
        "replayed",
        "accepted",
        "replayed",
    ]


def test_attack_8_a_report_logged_with_its_keys_accreditation_is_deferred_not_lost() -> None:
    m, log = _bus()
    key = demo_key("un-obs-9")
    signer = ReportSigner(key)
    log.put(TOPICS.registry, _accredit(m, "un-obs-9", "un", key))
    p1 = log.put(UN, signer.sign(m.draft("un", 1, observer_id="un-obs-9")))
    log.seal()  # the accreditation and the first report share epoch 2
    p2 = log.put(UN, signer.sign(m.draft("un", 1, observer_id="un-obs-9")))
    log.seal()
    out = _same_everywhere(log)
    assert out[1].verdicts[-1].status is Status.DEFERRED
    assert [v.pos for v in out[2].verdicts] == [p1, p2]  # the deferred one first
    assert _says(out, p1) == "accepted"
    assert _says(out, p2) == "accepted"


def test_attack_8_a_report_an_epoch_ahead_of_its_accreditation_is_judged_alike_everywhere() -> None:
    m, log = _bus()
    key = demo_key("un-obs-9")
    signer = ReportSigner(key)
    p1 = log.put(UN, signer.sign(m.draft("un", 1, observer_id="un-obs-9")))
    log.seal()
    log.put(TOPICS.registry, _accredit(m, "un-obs-9", "un", key))
    log.seal()
    p2 = log.put(UN, signer.sign(m.draft("un", 1, observer_id="un-obs-9")))
    p1_again = log.put(UN, log.partitions[(UN, 0)][0], partition=1)  # re-published
    p3 = log.put(UN, signer.sign(m.draft("un", 1, observer_id="un-obs-9")))
    log.seal()
    out = _same_everywhere(log)
    assert _says(out, p1) == "unknown_key"
    # Judged in claimed order: the re-published seq 1 first, then seq 2 and 3 follow it.
    assert [_says(out, p) for p in (p1_again, p2, p3)] == ["accepted"] * 3


def test_attack_11_backdating_with_an_expired_key_is_bounded_by_the_delivery_lag() -> None:
    m = make_mission()
    _, key = m.observer("un", 1)
    expiry = NOW_MS
    m, log = _bus(m)
    log.put(TOPICS.registry, _accredit(m, "un-obs-1", "un", key, not_after_ms=expiry))
    log.seal(NOW_MS + 1)

    def backdated(signed_at: int) -> bytes:
        return m.next_report("un", 1, signed_at_ms=signed_at, observed_at_ms=signed_at - 60_000)

    p_in = log.put(UN, backdated(expiry - 1_000))
    log.seal(expiry + DAY_MS)  # a day after expiry: within the lag
    p_lag = log.put(UN, backdated(expiry - 2_000))
    log.seal(expiry + 8 * DAY_MS)  # the same trick eight days on: beyond the 7-day lag
    p_after = log.put(UN, backdated(expiry + 1_000))
    log.seal()
    out = _same_everywhere(log)
    assert _says(out, p_in) == "accepted"
    assert _says(out, p_lag) == "delivery_lag"
    assert _says(out, p_after) == "key_expired"  # windows judged at signed_at


def test_attack_11_subject_namespaces_cannot_collide() -> None:
    roots = {o: demo_key(f"ns:{o}") for o in ("un", "un-women")}
    root = Mandate("ns", 1, ZONES, NOW_MS - 30 * DAY_MS, NOW_MS + 365 * DAY_MS,
                   tuple(Organization(o, o, k.public_key) for o, k in roots.items()), 1)  # fmt: skip
    assert namespace_owner("un-women-obs-1", root) == "un-women"
    assert namespace_owner("un-obs-1", root) == "un"
    log = SealedLog(root)

    def acc(org: str, subject: str) -> bytes:
        a = Accreditation(subject, org, Role.OBSERVER, demo_key(subject + org).public_key,
                          root.not_before_ms, root.not_after_ms, 1, "ns")  # fmt: skip
        return sign_accreditation(a, roots[org]).encode()

    p_un = log.put(TOPICS.registry, acc("un", "un-women-obs-1"))
    p_unw = log.put(TOPICS.registry, acc("un-women", "un-women-obs-1"))
    log.seal()
    out = _same_everywhere(log)
    assert _says(out, p_un) == "wrong_org"
    assert _says(out, p_unw) == "applied"


# -- the judge's own contract ------------------------------------------------------------------


def test_trust_records_take_effect_at_the_next_epoch() -> None:
    m, log = _bus()
    _, key = m.observer("un", 1)
    p1 = log.put(UN, m.next_report("un", 1))
    log.put(TOPICS.registry, _revoke(m, "un", key, 0))
    log.seal()
    log.seal()
    out = _same_everywhere(log)
    assert _final(out)[p1].status is Status.ACCEPTED  # its epoch's trust
    assert [c.pos for c in out[1].changes] == [p1]  # withdrawn when the revocation holds


def test_mandate_copies_and_rollbacks() -> None:
    m, log = _bus()
    v2 = _v2(m, description="v2")
    p_v2 = log.put(TOPICS.mandate, v2)
    p_copy = log.put(TOPICS.mandate, v2)
    p_v1 = log.put(TOPICS.mandate, m.scenario.mandate_envelope)
    p_weak = log.put(TOPICS.mandate, _v2(m, signers=FOUR[:3], description="weak"))
    log.seal()
    out = _same_everywhere(log)
    assert [_says(out, p) for p in (p_v2, p_copy, p_v1, p_weak)] == [
        "applied",
        "applied",
        "mandate_rollback",
        "mandate_rollback",
    ]
    assert _says(out, (TOPICS.mandate, 0, 0)) == "applied"  # the root, published


def test_other_topics_are_not_judged_here() -> None:
    _, log = _bus()
    pos = log.put(TOPICS.statements, b"anything")
    p_decision = log.put(TOPICS.decisions("un"), b"anything")  # decisions are judged
    log.seal()
    out = _same_everywhere(log)
    v = _final(out)[pos]
    assert (v.status, v.reason) == (Status.NOT_JUDGED, "")
    assert _says(out, p_decision) == "malformed"


def test_a_restricted_report_is_judged_like_a_plain_one() -> None:
    m, log = _bus()
    dk = DecryptionKey.generate("osce")
    mandate = m.scenario.mandate
    ek = EncryptionKey("osce", dk.public_key, mandate.not_before_ms, mandate.not_after_ms, 1,
                       mandate.mandate_id)  # fmt: skip
    log.put(TOPICS.registry, sign_encryption_key(ek, m.scenario.org_roots["osce"]).encode())
    log.seal()
    raw = m.signer("un", 1).sign_sealed(m.draft(), [ek])
    pos = log.put(UN, raw)
    log.seal()
    judge = FinalJudge(log.root, TOPICS, decryption_keys={dk.key_id: dk})
    _, out = log.judge(judge)
    v = _final(out)[pos]
    assert v.status is Status.ACCEPTED
    assert v.report is not None and getattr(v.report, "readability", None) == "readable"
    assert [project(e) for e in _same_everywhere(log)] == [project(e) for e in out]


def test_input_that_does_not_match_its_seal_is_refused_and_changes_nothing() -> None:
    m, log = _bus()
    log.put(UN, m.next_report("un", 1))
    seal = log.seal()
    judge = FinalJudge(log.root, TOPICS)
    judge.judge_epoch(log.seals[0], log.epoch_records(1))
    before = judge.snapshot()
    records = log.epoch_records(2)
    bad: dict[str, tuple[FinalSeal, dict[tuple[str, int], list[bytes | None]]]] = {
        "a record short": (seal, {**records, (UN, 0): []}),
        "a record too many": (seal, {**records, (UN, 0): [*records[(UN, 0)], None]}),
        "a partition the seal does not grow": (seal, {**records, (EU, 0): [b"x"]}),
        "epoch skipped": (dataclasses.replace(seal, epoch=3), records),
        "not chained": (dataclasses.replace(seal, prev_digest=bytes(32)), records),
        "not later": (dataclasses.replace(seal, time_ms=log.seals[0].time_ms), records),
        "another mandate": (dataclasses.replace(seal, mandate_id="other"), records),
        "a partition shrinks": (
            dataclasses.replace(
                seal, partitions={k: v for k, v in seal.partitions.items() if k[0] != UN}
                | {(TOPICS.registry, 0): PartitionSeal(1, bytes(32))}
            ),
            {},
        ),
    }  # fmt: skip
    for name, (s, r) in bad.items():
        with pytest.raises(EpochInputError):
            judge.judge_epoch(s, r)
        assert judge.snapshot() == before, name
    assert judge.judge_epoch(seal, records).verdicts[0].status is Status.ACCEPTED


def test_state_digest_names_any_difference() -> None:
    m, log = _bus()
    t2 = log.time_ms + 1
    log.put(UN, m.next_report("un", 1, signed_at_ms=t2 + 1_000))  # a second ahead of t_2
    log.seal(t2)
    _, a = log.judge()
    strict = FinalJudge(log.root, TOPICS, Limits(max_clock_skew_ms=0))
    _, b = log.judge(strict)
    assert _says(a, (UN, 0, 0)) == "accepted"
    assert _says(b, (UN, 0, 0)) == "clock_skew"
    assert a[0].state_digest == b[0].state_digest  # the trust epoch judges alike
    assert a[1].state_digest != b[1].state_digest  # the report does not


def test_the_delivery_lag_is_the_mandates_and_a_new_version_changes_it_from_the_next_epoch() -> (
    None
):
    m, log = _bus()
    assert log.root.max_delivery_lag_ms == 0 and log.root.delivery_lag_ms == 7 * DAY_MS
    log.put(TOPICS.mandate, _v2(m, max_delivery_lag_ms=30 * DAY_MS))
    t2 = NOW_MS + 10 * DAY_MS

    def signed(days_before_t2: int, i: int = 1, **changes: object) -> bytes:
        at = t2 - days_before_t2 * DAY_MS
        return m.next_report("un", i, signed_at_ms=at, observed_at_ms=at - 60_000, **changes)

    late = signed(10)  # ten days on the way: beyond the root's 7, within version 2's 30
    p_before = log.put(UN, late)
    key = demo_key("un-obs-9")
    log.put(TOPICS.registry, _accredit(m, "un-obs-9", "un", key))
    at = t2 - 10 * DAY_MS
    p_deferred = log.put(  # deferred to epoch 3, judged with its own epoch's clock and lag
        UN,
        ReportSigner(key).sign(
            m.draft("un", 1, observer_id="un-obs-9", signed_at_ms=at, observed_at_ms=at - 60_000)
        ),
    )
    log.seal(t2)  # epoch 2: version 2 logged, in force from epoch 3
    p_after = log.put(UN, late, partition=1)  # the same report logged again
    p_far = log.put(UN, signed(31, 2))  # beyond version 2's lag too
    log.seal(t2 + 1_000)
    out = _same_everywhere(log)
    assert [_says(out, p) for p in (p_before, p_deferred, p_after, p_far)] == [
        "delivery_lag",
        "delivery_lag",
        "accepted",
        "delivery_lag",
    ]
    assert "at most 2592000000" in _final(out)[p_far].detail


# -- the reader ---------------------------------------------------------------------------------


def _two_epochs() -> tuple[Mission, SealedLog]:
    m, log = _bus()
    for i in range(3):
        log.put(UN, m.next_report("un", 1), partition=i % 2)
    log.seal()
    return m, log


def test_reader_names_an_altered_sealed_record() -> None:
    _, log = _two_epochs()
    reader = SealedReader(log.root, TOPICS)
    for s in log.seals:
        reader.offer_final_seal(s)
    for ref in sorted(log.partitions):
        if ref != (UN, 1):
            for offset, value in enumerate(log.partitions[ref]):
                reader.offer_record(ref, offset, value)
    assert reader.judge.epoch == 1
    with pytest.raises(SealedRootMismatchError) as exc:
        reader.offer_record((UN, 1), 0, b"altered")
    assert (exc.value.topic, exc.value.partition, exc.value.reason) == (
        UN,
        1,
        Reason.SEALED_ROOT_MISMATCH,
    )
    assert reader.judge.epoch == 1  # nothing of the epoch was judged


def test_reader_names_a_deleted_sealed_record() -> None:
    _, log = _two_epochs()
    reader = SealedReader(log.root, TOPICS)
    for ref in sorted(log.partitions):
        values = log.partitions[ref]
        start = 1 if ref == (UN, 0) else 0  # offset 0 of this partition is gone
        reader.offer_records(ref, start, values[start:])
    reader.offer_final_seal(log.seals[0])
    with pytest.raises(SealedRootMismatchError, match="deleted") as exc:
        reader.offer_final_seal(log.seals[1])
    assert (exc.value.topic, exc.value.partition) == (UN, 0)
    # Offered late after all, the record takes its place and the epoch is judged.
    assert len(reader.offer_record((UN, 0), 0, log.partitions[(UN, 0)][0])) == 1


def test_reader_refuses_seals_out_of_order_and_conflicting_records() -> None:
    _, log = _two_epochs()
    reader = SealedReader(log.root, TOPICS)
    with pytest.raises(EpochInputError):
        reader.offer_final_seal(log.seals[1])
    reader.offer_final_seal(log.seals[0])
    with pytest.raises(EpochInputError):
        reader.offer_final_seal(dataclasses.replace(log.seals[1], prev_digest=bytes(32)))
    reader.offer_record((UN, 0), 0, log.partitions[(UN, 0)][0])
    reader.offer_record((UN, 0), 0, log.partitions[(UN, 0)][0])  # the same again: ignored
    with pytest.raises(EpochInputError):
        reader.offer_record((UN, 0), 0, b"other")
    assert reader.buffered() == 1


def test_reader_buffers_only_what_is_not_judged() -> None:
    m, log = _two_epochs()
    log.put(UN, m.next_report("un", 1))  # not sealed
    reader = SealedReader(log.root, TOPICS)
    for s in log.seals:
        reader.offer_final_seal(s)
    for ref in sorted(log.partitions):
        reader.offer_records(ref, 0, log.partitions[ref])
    assert reader.judge.epoch == 2
    assert reader.buffered() == 1
    assert reader.next_epoch == 3


def test_reader_resumes_from_any_snapshot() -> None:
    _, log = _two_epochs()
    _, reference = log.judge()
    feed: list[tuple[str, object]] = [("seal", s) for s in log.seals]
    for ref in sorted(log.partitions):
        feed += [("rec", (ref, o, v)) for o, v in enumerate(log.partitions[ref])]
    for cut in range(len(feed) + 1):
        reader = SealedReader(log.root, TOPICS)
        got: list[EpochVerdicts] = []
        for kind, item in feed[:cut]:
            got += _offer(reader, kind, item)
        reader = SealedReader.resume(reader.snapshot(), log.root, TOPICS)
        for s in log.seals[reader.next_epoch - 1 :]:
            got += reader.offer_final_seal(s)
        for ref, start in {r: reader.positions().get(r, 0) for r in log.partitions}.items():
            got += reader.offer_records(ref, 0, log.partitions[ref])  # from 0: harmless
            assert start <= len(log.partitions[ref])
        assert [project(v) for v in got] == [project(v) for v in reference], cut


def _offer(reader: SealedReader, kind: str, item: object) -> list[EpochVerdicts]:
    if kind == "seal":
        assert isinstance(item, FinalSeal)
        return reader.offer_final_seal(item)
    assert isinstance(item, tuple)
    ref, offset, value = item
    return reader.offer_record(ref, offset, value)


def test_snapshots_are_refused_under_another_configuration() -> None:
    _, log = _two_epochs()
    judge, _ = log.judge()
    snap = judge.snapshot()
    assert FinalJudge.restore(snap, log.root, TOPICS).digest == judge.digest
    with pytest.raises(ConfigError):
        FinalJudge.restore(snap, log.root, TOPICS, Limits(max_clock_skew_ms=1))
    with pytest.raises(ConfigError):
        SealedReader.resume(b"{}", log.root, TOPICS)


def test_an_oversized_record_is_refused_on_its_length() -> None:
    m, log = _bus()
    pos = log.put(UN, b"\x0a" * (Limits().max_record_bytes + 1))
    p1 = log.put(UN, m.next_report("un", 1))
    log.seal()
    out = _same_everywhere(log)
    assert [_says(out, p) for p in (pos, p1)] == ["oversized", "accepted"]
