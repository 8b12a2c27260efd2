"""Following mandate versions as a node reads them: named scenarios and their outcomes (pure).

A node judges provisionally under the trust it knows when it judges (the newest version applied,
the registry as read) on its own clock; the broker's timestamp of a record, mandate or report,
decides nothing (each scenario gives it values that would have decided otherwise by log time).
"""

from __future__ import annotations

import dataclasses

import pytest

from bus.errors import Reason, VerificationError
from bus.ingest import Accepted, Ingestor, Outcome, Quarantined
from bus.lifecycle import TrustTimeline
from bus.model import Accreditation, Envelope, Mandate, Organization, Revocation, Role, Zone
from bus.sign import sign_accreditation, sign_mandate, sign_revocation
from bus.verify import ChainBook
from tests.mission import NOW_MS, Mission, demo_key, make_mission, ref

ORGS = ["un", "osce", "eu", "nato", "csto", "sco"]
T_V2 = NOW_MS - 1_000_000  # broker timestamp of version 2's record on the mandate topic
WEST = Zone("west", "Lowlands", 47.0, 35.0, 48.0, 37.0)


def _timeline(m: Mission) -> TrustTimeline:
    tl = TrustTimeline(m.scenario.mandate)
    for raw in m.scenario.accreditations:
        tl.apply_registry(Envelope.decode(raw))
    return tl


def _v(m: Mission, version: int, signers: list[str], **changes: object) -> Envelope:
    new = dataclasses.replace(m.scenario.mandate, version=version, **changes)  # type: ignore[arg-type]
    return sign_mandate(new, [m.scenario.org_roots[o] for o in signers])


def _orgs(m: Mission, drop: str = "", rekey: str = "") -> tuple[Organization, ...]:
    out = []
    for o in m.scenario.mandate.organizations:
        if o.org == drop:
            continue
        key = demo_key(f"new-root:{rekey}").public_key if o.org == rekey else o.root_public_key
        out.append(dataclasses.replace(o, root_public_key=key))
    return tuple(out)


# name -> (build the offered versions, index of the one judged, expected reason or None)
OFFERS: dict[str, tuple[list[tuple[list[str], dict[str, object], int]], Reason | None]] = {
    "v2 signed by 4 of 6": ([(ORGS[:4], {}, 2)], None),
    "v2 signed by 3 of 6": ([(ORGS[:3], {}, 2)], Reason.THRESHOLD_NOT_MET),
    "v2 signed four times by one organization": ([(["un"] * 4, {}, 2)], Reason.TOO_MANY_SIGNATURES),
    "v3 skips a version": ([(ORGS, {}, 3)], Reason.MANDATE_ROLLBACK),
    "other mandate id": ([(ORGS, {"mandate_id": "other"}, 2)], Reason.WRONG_MANDATE),
    "expired by the node's clock": ([(ORGS, {"not_after_ms": NOW_MS - 1}, 2)], Reason.MANDATE_EXPIRED),
    "a second, different v2 after v2": ([(ORGS, {}, 2), (ORGS, {"description": "other"}, 2)], Reason.MANDATE_ROLLBACK),
    "v1 again with other content after v2": ([(ORGS, {}, 2), (ORGS, {"description": "x"}, 1)], Reason.MANDATE_ROLLBACK),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OFFERS))
def test_mandate_offers(name: str) -> None:
    offers, reason = OFFERS[name]
    m = make_mission()
    tl = _timeline(m)
    *before, (signers, changes, version) = offers
    for s, c, v in before:
        assert tl.offer_mandate(_v(m, v, s, **c), now_ms=NOW_MS) is not None
    applied = len(tl.versions)
    env = _v(m, version, signers, **changes)
    if reason is None:
        assert tl.offer_mandate(env, now_ms=NOW_MS) is not None
        assert tl.mandate.version == version
    else:
        with pytest.raises(VerificationError) as exc:
            tl.offer_mandate(env, now_ms=NOW_MS)
        assert exc.value.reason is reason
        assert len(tl.versions) == applied  # never applied


def test_freshness_of_a_version_is_judged_on_the_node_clock() -> None:
    """A version that has ended by the node's clock is refused, one that has not is applied;
    the broker's timestamp of its record is not an input at all."""
    m = make_mission()
    ended = _v(m, 2, ORGS[:4], not_after_ms=NOW_MS - 1)
    with pytest.raises(VerificationError) as exc:
        _timeline(m).offer_mandate(ended, now_ms=NOW_MS)
    assert exc.value.reason is Reason.MANDATE_EXPIRED
    running = _v(m, 2, ORGS[:4], not_after_ms=NOW_MS + 1)
    tl = _timeline(m)
    assert tl.offer_mandate(running, now_ms=NOW_MS) is not None
    assert tl.mandate.version == 2


def test_copies_and_history_are_not_alarms() -> None:
    m = make_mission()
    tl = _timeline(m)
    v1 = Envelope.decode(m.scenario.mandate_envelope)
    # The out-of-band version, published:
    assert tl.offer_mandate(v1, now_ms=NOW_MS) is None
    v2 = _v(m, 2, ORGS[:4])
    assert tl.offer_mandate(v2, now_ms=NOW_MS) is not None
    assert tl.offer_mandate(v2, now_ms=NOW_MS) is None  # republished copy
    # A node started from the v2 file sees v1 first on the topic: history, ignored.
    late = TrustTimeline(tl.mandate)
    assert late.offer_mandate(v1, now_ms=NOW_MS) is None
    assert late.offer_mandate(v2, now_ms=NOW_MS) is None
    # ... but v1 published again after v2 is a rollback attempt.
    with pytest.raises(VerificationError) as exc:
        late.offer_mandate(v1, now_ms=NOW_MS)
    assert exc.value.reason is Reason.MANDATE_ROLLBACK


def _judge(m: Mission, tl: TrustTimeline, raw: bytes, org: str, log_time: int) -> Outcome:
    """The node's provisional verdict: the trust it knows now, on its clock; ``log_time`` is
    the broker's timestamp the record carries."""
    ing = Ingestor(tl.current, ChainBook({}, lambda _rid: None), clock=m.clock)
    return ing.judge(ref(f"obus.reports.{org}", 0, log_time), raw, org)


def test_reports_are_judged_under_the_version_the_node_knows_when_it_judges() -> None:
    m = make_mission()
    tl = _timeline(m)
    west = m.draft(
        "un", 1, zone="west", location=dataclasses.replace(m.draft().location, lat=47.5, lon=36.0)
    )
    raw = m.signer("un", 1).sign(west)
    # Not yet read: the west zone does not exist for this node, whatever the log time says.
    before = _judge(m, tl, raw, "un", T_V2 + 1)
    assert isinstance(before, Quarantined)
    assert before.reason == "outside_zone"
    assert tl.offer_mandate(
        _v(m, 2, ORGS[:4], zones=(*m.scenario.mandate.zones, WEST)), now_ms=NOW_MS,
    )  # fmt: skip
    # Read: the zone exists, also for a report whose log time is before version 2's.
    assert isinstance(_judge(m, tl, raw, "un", T_V2 - 1), Accepted)


def test_organization_leaving_takes_its_accreditations_with_it() -> None:
    m = make_mission()
    tl = _timeline(m)
    raw = m.next_report("sco", 1)
    assert isinstance(_judge(m, tl, raw, "sco", T_V2 + 1), Accepted)  # v2 not read yet
    assert tl.offer_mandate(_v(m, 2, ORGS[:4], organizations=_orgs(m, drop="sco")), now_ms=NOW_MS)
    late = _judge(m, tl, raw, "sco", T_V2 - 1)  # read: gone, whatever the log time
    assert isinstance(late, Quarantined)
    assert late.reason == "unknown_key"
    # A registry record of the departed organization no longer counts under the newest version.
    acc = Accreditation("sco-obs-9", "sco", Role.OBSERVER, demo_key("sco9").public_key,
                        NOW_MS - 10**9, NOW_MS + 10**9, 9, m.mandate_id)  # fmt: skip
    with pytest.raises(VerificationError) as exc:
        tl.apply_registry(sign_accreditation(acc, m.scenario.org_roots["sco"]))
    assert exc.value.reason is Reason.WRONG_ORG


def test_root_key_rotated_inside_an_organization_needs_re_accreditation() -> None:
    m = make_mission()
    tl = _timeline(m)
    v2 = dataclasses.replace(m.scenario.mandate, version=2, organizations=_orgs(m, rekey="un"))
    signers = [m.scenario.org_roots[o] for o in ORGS[:4]] + [demo_key("new-root:un")]
    assert tl.offer_mandate(sign_mandate(v2, signers), now_ms=NOW_MS)
    raw = m.next_report("un", 1)
    assert isinstance(_judge(m, tl, raw, "un", T_V2 - 1), Quarantined)
    # The organization re-accredits the same observer key under its new root key.
    _, key = m.observer("un", 1)
    acc = Accreditation("un-obs-1", "un", Role.OBSERVER, key.public_key,
                        NOW_MS - 10**9, NOW_MS + 10**9, 100, m.mandate_id)  # fmt: skip
    tl.apply_registry(sign_accreditation(acc, demo_key("new-root:un")))
    assert isinstance(_judge(m, tl, raw, "un", T_V2 + 1), Accepted)


def test_revocations_survive_rotations() -> None:
    m = make_mission()
    tl = _timeline(m)
    _, key = m.observer("un", 2)
    rev = Revocation("un", key.key_id, 0, NOW_MS, "lost", 1, m.mandate_id)
    tl.apply_registry(sign_revocation(rev, m.scenario.org_roots["un"]))
    assert tl.offer_mandate(_v(m, 2, ORGS[:4]), now_ms=NOW_MS)
    assert [r.key_id for r in tl.revocations()] == [key.key_id]
    out = _judge(m, tl, m.next_report("un", 2), "un", T_V2 - 1)
    assert isinstance(out, Quarantined)
    assert out.reason == "key_revoked"


def test_new_organization_can_accredit_after_it_joins() -> None:
    m = make_mission()
    tl = _timeline(m)
    au_root = demo_key("root:au")
    au = Organization("au", "African Union", au_root.public_key)
    new: Mandate = dataclasses.replace(
        m.scenario.mandate, version=2, organizations=(*m.scenario.mandate.organizations, au)
    )
    acc = Accreditation("au-obs-1", "au", Role.OBSERVER, demo_key("au1").public_key,
                        NOW_MS - 10**9, NOW_MS + 10**9, 1, m.mandate_id)  # fmt: skip
    with pytest.raises(VerificationError):  # not a member yet
        tl.apply_registry(sign_accreditation(acc, au_root))
    signers = [m.scenario.org_roots[o] for o in ORGS[:4]]
    assert tl.offer_mandate(sign_mandate(new, signers), now_ms=NOW_MS)
    # The record read before the version is re-judged under it: order of reading does not matter.
    assert tl.current.lookup(acc.key_id).subject_id == "au-obs-1"


def test_a_forged_higher_version_does_not_turn_history_into_alarms() -> None:
    m = make_mission()
    tl = _timeline(m)
    v2 = _v(m, 2, ORGS[:4])
    assert tl.offer_mandate(v2, now_ms=NOW_MS) is not None
    with pytest.raises(VerificationError) as exc:
        tl.offer_mandate(_v(m, 3, ORGS[:3]), now_ms=NOW_MS)  # 3 of 6: refused
    assert exc.value.reason is Reason.THRESHOLD_NOT_MET
    with pytest.raises(VerificationError) as exc:
        tl.offer_mandate(Envelope.decode(m.scenario.mandate_envelope), now_ms=NOW_MS)
    assert exc.value.reason is Reason.MANDATE_ROLLBACK
    assert "after version 2" in exc.value.message  # the forged 3 was never "seen"
    assert tl.mandate.version == 2
