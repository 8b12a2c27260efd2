"""The gateway finds its node key's accreditation in the final trust state, as every node's final
judge holds it after the newest final seal (no broker).

Record keys play no part (the registry is append-only); records that do not verify count for
nothing; the first organization to accredit a key owns it; a revocation by the key's
organization stands wherever it lies; an accreditation signed by a root that was rotated out
accredits nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from bus.crypto import SigningKey
from bus.errors import ConfigError
from bus.model import Accreditation, Revocation, Role
from bus.sign import sign_accreditation, sign_mandate, sign_revocation
from nodes.demo.scenario import Scenario, demo_key
from nodes.gateway.service import node_accreditation
from nodes.gateway.trust import SealedTrust
from tests.mission import NOW_MS, make_mission
from tests.sealed_log import TOPICS, SealedLog

NODE_KEY = demo_key("gateway-node-key-test")
OTHER_KEY = demo_key("gateway-node-key-test:other")


def _scenario() -> Scenario:
    return make_mission(2).scenario


def _acc(
    sc: Scenario, org: str = "un", *, key: SigningKey = NODE_KEY, root: SigningKey | None = None,
    **changes: object,
) -> bytes:  # fmt: skip
    m = sc.mandate
    acc = Accreditation(
        f"{org}-node-9", org, Role.NODE, key.public_key, m.not_before_ms, m.not_after_ms, 7,
        m.mandate_id,
    )  # fmt: skip
    acc = dataclasses.replace(acc, **changes)  # type: ignore[arg-type]
    return sign_accreditation(acc, root or sc.org_roots[org]).encode()


def _rev(sc: Scenario, org: str = "un", *, key: SigningKey = NODE_KEY, serial: int = 1) -> bytes:
    rev = Revocation(org, key.key_id, 0, NOW_MS, "compromised", serial, sc.mandate.mandate_id)
    return sign_revocation(rev, sc.org_roots[org]).encode()


def _sealed(sc: Scenario, *epochs: Sequence[bytes | None]) -> SealedTrust:
    """A trust state after one sealed epoch per list of registry records (the mandate first)."""
    log = SealedLog(sc.mandate)
    log.put(TOPICS.mandate, sc.mandate_envelope)
    for records in epochs:
        for raw in records:
            log.put(TOPICS.registry, raw)
        log.seal()
    trust = SealedTrust(sc.mandate, TOPICS, watch_key=NODE_KEY.key_id)
    for ref, values in log.partitions.items():
        trust.offer_records(ref, 0, values)
    assert trust.advance(log.seals) == len(epochs)
    return trust


def _find(
    sc: Scenario, *epochs: Sequence[bytes | None], org: str = "un"
) -> tuple[bytes, Accreditation]:
    return node_accreditation(_sealed(sc, *epochs), org=org, key_id=NODE_KEY.key_id)


def test_found_among_other_records_whatever_they_are() -> None:
    sc = _scenario()
    mine = _acc(sc)
    # observers' accreditations, another org's node, garbage and an empty (null) record
    records = [*sc.accreditations, _acc(sc, "eu", key=OTHER_KEY), b"\x00junk", None, mine]
    raw, acc = _find(sc, [*records, *sc.node_accreditations])
    assert raw == mine
    assert (acc.org, acc.role, acc.key_id) == ("un", Role.NODE, NODE_KEY.key_id)


def test_a_later_higher_serial_supersedes_and_a_lower_one_does_not() -> None:
    sc = _scenario()
    first, renewed, older = _acc(sc, serial=7), _acc(sc, serial=8), _acc(sc, serial=3)
    raw, acc = _find(sc, [first], [renewed, older])
    assert raw == renewed and acc.serial == 8


@pytest.mark.parametrize("where", ["after", "before"])
def test_a_revocation_by_the_organization_stands_wherever_it_lies(where: str) -> None:
    sc = _scenario()
    records = [_acc(sc), _rev(sc)] if where == "after" else [_rev(sc), _acc(sc)]
    with pytest.raises(ConfigError, match="revoked by un"):
        _find(sc, records, [_acc(sc, serial=9)])  # a re-accreditation revives nothing


def test_another_organizations_revocation_counts_for_nothing() -> None:
    sc = _scenario()
    mine = _acc(sc)
    raw, _ = _find(sc, [mine, _rev(sc, "eu")])
    assert raw == mine


def test_an_accreditation_signed_by_another_root_is_not_one() -> None:
    sc = _scenario()
    with pytest.raises(ConfigError, match="not accredited in the final trust state"):
        _find(sc, [_acc(sc, root=sc.org_roots["eu"])])


def test_no_final_seal_no_trust_state() -> None:
    sc = _scenario()
    trust = SealedTrust(sc.mandate, TOPICS, watch_key=NODE_KEY.key_id)
    trust.offer_records((TOPICS.registry, 0), 0, [_acc(sc)])  # read, but not sealed
    assert not trust.sealed
    with pytest.raises(ConfigError, match="after epoch 0"):
        node_accreditation(trust, org="un", key_id=NODE_KEY.key_id)


def test_the_first_organization_to_accredit_a_key_owns_it() -> None:
    # EU accredited the key first: every node's key ring gives it to EU, so UN's gateway must
    # not serve it as UN's node key (observers would verify a receipt key that nodes refuse).
    sc = _scenario()
    with pytest.raises(ConfigError, match="accredited as eu/NODE"):
        _find(sc, [_acc(sc, "eu"), _acc(sc)])


def test_a_key_accredited_with_another_role_is_refused() -> None:
    sc = _scenario()
    with pytest.raises(ConfigError, match="accredited as un/OBSERVER"):
        _find(sc, [_acc(sc, role=Role.OBSERVER, subject_id="un-obs-9")])


def test_after_a_root_rotation_only_the_record_signed_by_the_new_root_is_served() -> None:
    sc = _scenario()
    new_root = demo_key("gateway-node-key-test:new-root:un")
    orgs = tuple(
        dataclasses.replace(o, root_public_key=new_root.public_key) if o.org == "un" else o
        for o in sc.mandate.organizations
    )
    v2 = dataclasses.replace(sc.mandate, version=2, organizations=orgs)
    signers = [sc.org_roots[o] for o in ("un", "osce", "eu", "nato")] + [new_root]
    log = SealedLog(sc.mandate)
    log.put(TOPICS.mandate, sc.mandate_envelope)
    old = log.put(TOPICS.registry, _acc(sc))
    log.seal()
    log.put(TOPICS.mandate, sign_mandate(v2, signers).encode())
    log.seal()  # v2 in force from epoch 3: the old root's accreditation falls with it
    trust = SealedTrust(sc.mandate, TOPICS, watch_key=NODE_KEY.key_id)
    for ref, values in log.partitions.items():
        trust.offer_records(ref, 0, values)
    trust.advance(log.seals)
    assert trust.mandate.version == 2
    with pytest.raises(ConfigError, match="not accredited"):
        node_accreditation(trust, org="un", key_id=NODE_KEY.key_id)
    resigned = _acc(sc, root=new_root, serial=8)
    trust.offer_records((TOPICS.registry, 0), old[2] + 1, [resigned])
    log.put(TOPICS.registry, resigned)
    log.seal()
    assert trust.advance(log.seals) == 1
    raw, acc = node_accreditation(trust, org="un", key_id=NODE_KEY.key_id)
    assert raw == resigned and acc.serial == 8
