"""The gateway finds its node key's accreditation among the registry's records, in log order.

The registry is append-only: record keys play no part, and no record can erase or shadow
another. The lookup judges every record as every node's key ring does.
"""

from __future__ import annotations

import dataclasses

import pytest

from bus.crypto import SigningKey
from bus.errors import ConfigError
from bus.model import Accreditation, Revocation, Role
from bus.sign import sign_accreditation, sign_revocation
from nodes.demo.scenario import Scenario, demo_key
from nodes.gateway.service import find_node_accreditation
from tests.mission import NOW_MS, make_mission

NODE_KEY = demo_key("gateway-node-key-test")
OTHER_KEY = demo_key("gateway-node-key-test:other")


def _scenario() -> Scenario:
    return make_mission(2).scenario


def _acc(sc: Scenario, org: str = "un", *, key: SigningKey = NODE_KEY, **changes: object) -> bytes:
    m = sc.mandate
    acc = Accreditation(
        f"{org}-node-9", org, Role.NODE, key.public_key, m.not_before_ms, m.not_after_ms, 7,
        m.mandate_id,
    )  # fmt: skip
    acc = dataclasses.replace(acc, **changes)  # type: ignore[arg-type]
    return sign_accreditation(acc, sc.org_roots[org]).encode()


def _rev(sc: Scenario, org: str = "un", *, key: SigningKey = NODE_KEY, serial: int = 1) -> bytes:
    rev = Revocation(org, key.key_id, 0, NOW_MS, "compromised", serial, sc.mandate.mandate_id)
    return sign_revocation(rev, sc.org_roots[org]).encode()


def _find(sc: Scenario, records: list[bytes], org: str = "un") -> tuple[bytes, Accreditation]:
    return find_node_accreditation(records, sc.mandate, org=org, key_id=NODE_KEY.key_id)


def test_found_among_other_records_whatever_their_keys_were() -> None:
    sc = _scenario()
    mine = _acc(sc)
    # observers' accreditations, another org's node, garbage and an empty (null-like) record
    records = [*sc.accreditations, _acc(sc, "eu", key=OTHER_KEY), b"", b"\x00junk", mine]
    raw, acc = _find(sc, [*records, *sc.node_accreditations])
    assert raw == mine
    assert (acc.org, acc.role, acc.key_id) == ("un", Role.NODE, NODE_KEY.key_id)


def test_a_later_higher_serial_supersedes_and_a_lower_one_does_not() -> None:
    sc = _scenario()
    first, renewed, older = _acc(sc, serial=7), _acc(sc, serial=8), _acc(sc, serial=3)
    raw, acc = _find(sc, [first, renewed, older])
    assert raw == renewed and acc.serial == 8


@pytest.mark.parametrize("where", ["after", "before"])
def test_a_revocation_by_the_organization_stands_wherever_it_lies(where: str) -> None:
    sc = _scenario()
    records = [_acc(sc), _rev(sc)] if where == "after" else [_rev(sc), _acc(sc)]
    with pytest.raises(ConfigError, match="revoked by un"):
        _find(sc, [*records, _acc(sc, serial=9)])  # a re-accreditation revives nothing


def test_another_organizations_revocation_counts_for_nothing() -> None:
    sc = _scenario()
    mine = _acc(sc)
    raw, _ = _find(sc, [mine, _rev(sc, "eu")])
    assert raw == mine


def test_an_accreditation_signed_by_another_root_is_not_one() -> None:
    sc = _scenario()
    m = sc.mandate
    forged = Accreditation(
        "un-node-9", "un", Role.NODE, NODE_KEY.public_key, m.not_before_ms, m.not_after_ms, 7,
        m.mandate_id,
    )  # fmt: skip
    raw = sign_accreditation(forged, sc.org_roots["eu"]).encode()
    with pytest.raises(ConfigError, match=r"not accredited.*refused.*root key of un"):
        _find(sc, [raw])


def test_no_record_of_the_key() -> None:
    sc = _scenario()
    with pytest.raises(ConfigError, match="not accredited on the registry"):
        _find(sc, [*sc.accreditations, *sc.node_accreditations])


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
