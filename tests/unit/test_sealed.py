"""Restricted reports: HPKE against RFC 9180 vectors, sealing, who can read, and the verdicts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from bus.errors import Reason
from bus.ingest import Accepted, AcceptedSealed, Ingestor, Quarantined
from bus.model import (
    PAYLOAD_SEALED_REPORT,
    EncryptionKey,
    Envelope,
    Report,
    SealedReport,
    Signature,
    encode,
)
from bus.policy import observation_from_stored
from bus.policy_file import parse_policy
from bus.sealed import DecryptionKey, Readability, open_sealed, seal_report
from bus.sign import sign_encryption_key, sign_envelope
from bus.store.node import NodeStore
from bus.verify import ChainBook
from nodes.org_node.followup import FollowUp, FollowUpConfig
from tests.mission import NOW_MS, Mission, demo_key, make_mission, ref

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc9180-x25519.json"
UN = "obus.reports.un"
REPO = Path(__file__).resolve().parents[2]


def test_pyhpke_matches_rfc9180_appendix_a11() -> None:
    v = json.loads(VECTORS.read_text())
    suite = CipherSuite.new(KEMId(v["kem_id"]), KDFId(v["kdf_id"]), AEADId(v["aead_id"]))
    recipient = suite.kem.derive_key_pair(bytes.fromhex(v["ikmR"]))
    ephemeral = suite.kem.derive_key_pair(bytes.fromhex(v["ikmE"]))
    assert recipient.public_key.to_public_bytes().hex() == v["pkRm"]
    assert ephemeral.public_key.to_public_bytes().hex() == v["pkEm"]
    info = bytes.fromhex(v["info"])
    enc, sender = suite.create_sender_context(recipient.public_key, info=info, eks=ephemeral)
    assert enc.hex() == v["enc"]
    receiver = suite.create_recipient_context(enc, recipient.private_key, info=info)
    for e in v["encryptions"]:  # sequence numbers 0, 1, 2 in order
        ct = sender.seal(bytes.fromhex(e["pt"]), bytes.fromhex(e["aad"]))
        assert ct.hex() == e["ct"]
        assert receiver.open(ct, bytes.fromhex(e["aad"])).hex() == e["pt"]
    for x in v["exports"]:
        assert (
            sender.export(bytes.fromhex(x["exporter_context"]), x["L"]).hex() == x["exported_value"]
        )


# -- a mission where UN and OSCE published encryption keys ------------------------------------


def _keys() -> dict[str, DecryptionKey]:
    return {o: DecryptionKey(o, demo_key(f"x25519:{o}").seed) for o in ("un", "osce", "eu")}


def _publish_keys(m: Mission, keys: dict[str, DecryptionKey]) -> dict[str, EncryptionKey]:
    out = {}
    mandate = m.scenario.mandate
    for org, k in keys.items():
        ek = EncryptionKey(
            org, k.public_key, mandate.not_before_ms, mandate.not_after_ms, 1, m.mandate_id
        )
        m.apply(sign_encryption_key(ek, m.scenario.org_roots[org]))
        out[org] = ek
    return out


def _ingestor(m: Mission, keys: list[DecryptionKey]) -> Ingestor:
    return Ingestor(
        m.keyring,
        ChainBook({}, lambda _rid: None),
        decryption_keys={k.key_id: k for k in keys},
        clock=m.clock,
    )


def _sealed_raw(m: Mission, recipients: list[str], org: str = "un", i: int = 1) -> bytes:
    eks = [m.keyring.encryption_key(o) for o in recipients]
    assert all(e is not None for e in eks)
    return m.signer(org, i).sign_sealed(m.draft(org, i), [e for e in eks if e is not None])


def test_encryption_keys_come_from_the_registry_signed_by_the_org_root() -> None:
    m = make_mission()
    keys = _keys()
    published = _publish_keys(m, keys)
    assert m.keyring.encryption_key("un") == published["un"]
    assert m.keyring.encryption_key("nato") is None
    ek = dataclasses.replace(published["un"], serial=2, public_key=keys["eu"].public_key)
    with pytest.raises(Exception) as exc:  # signed by another organization's root
        m.keyring.apply(sign_encryption_key(ek, m.scenario.org_roots["osce"]))
    assert getattr(exc.value, "reason", None) is Reason.UNKNOWN_KEY


# name -> (node holding which keys, expected readability)
READERS = {
    "recipient UN reads": (["un"], Readability.READABLE),
    "recipient OSCE reads": (["osce"], Readability.READABLE),
    "non-recipient EU cannot": (["eu"], Readability.NOT_RECIPIENT),
    "auditor without keys cannot": ([], Readability.NOT_RECIPIENT),
    "UN node with another UN key": (["un-old"], Readability.NO_KEY),
}


@pytest.mark.parametrize("name", list(READERS))
def test_restricted_report_is_accepted_everywhere_and_read_by_recipients_only(name: str) -> None:
    holders, expected = READERS[name]
    m = make_mission()
    keys = _keys()
    _publish_keys(m, keys)
    keys["un-old"] = DecryptionKey("un", demo_key("x25519:un-old").seed)
    raw = _sealed_raw(m, ["un", "osce"])
    out = _ingestor(m, [keys[h] for h in holders]).judge(ref(UN, 0), raw, "un")
    assert isinstance(out, AcceptedSealed), out
    assert out.verified.readability is expected
    assert out.verified.sealed.recipient_orgs == ("un", "osce")
    if expected is Readability.READABLE:
        assert out.verified.report is not None
        assert out.verified.report.narrative == "Impacts counted."
        assert Report.decode(out.verified.content) == out.verified.report
    else:
        assert out.verified.report is None
        assert out.verified.content == b""


def test_what_everyone_sees_in_clear() -> None:
    m = make_mission()
    _publish_keys(m, _keys())
    raw = _sealed_raw(m, ["un", "osce"])
    payload = Envelope.decode(raw).payload
    sealed = SealedReport.decode(payload)
    assert (sealed.observer_id, sealed.org, sealed.seq, sealed.zone) == (
        "un-obs-1",
        "un",
        1,
        "north",
    )
    assert b"Impacts counted" not in payload
    assert b"Riverford" not in payload  # the place name is inside the ciphertext


def _tamper_ciphertext(raw: bytes) -> bytes:
    env = Envelope.decode(raw)
    s = SealedReport.decode(env.payload)
    ct = bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:]
    return dataclasses.replace(env, payload=encode(dataclasses.replace(s, ciphertext=ct))).encode()


def _resign(m: Mission, sealed: SealedReport, org: str = "un", i: int = 1) -> bytes:
    return sign_envelope(PAYLOAD_SEALED_REPORT, encode(sealed), [m.observer(org, i)[1]]).encode()


def _wrong_recipient_key(m: Mission) -> bytes:
    # The observer seals to a key that is not UN's published one, but names UN's key id.
    d = m.draft()
    rogue = DecryptionKey("un", demo_key("x25519:rogue").seed)
    published = m.keyring.encryption_key("un")
    assert published is not None
    ek = dataclasses.replace(published, public_key=rogue.public_key)
    sealed = seal_report(d, [ek])
    right_id = published.key_id
    fixed = dataclasses.replace(sealed.recipients[0], key_id=right_id)
    return _resign(m, dataclasses.replace(sealed, recipients=(fixed,)))


def _inconsistent(m: Mission) -> bytes:
    published = m.keyring.encryption_key("un")
    assert published is not None
    sealed = seal_report(m.draft(), [published])
    return _resign(m, dataclasses.replace(sealed, zone="south"))  # clear zone differs from inner


# name -> (build raw, expected: a Reason (quarantined) or a Readability at the UN node)
CASES: dict[str, tuple[Callable[[Mission], bytes], Reason | Readability]] = {
    "tampered ciphertext": (lambda m: _tamper_ciphertext(_sealed_raw(m, ["un"])), Reason.BAD_SIGNATURE),
    "signature bit flipped": (
        lambda m: dataclasses.replace(Envelope.decode(r := _sealed_raw(m, ["un"])), signatures=(
            Signature(Envelope.decode(r).signatures[0].key_id, bytes(64)),)).encode(),
        Reason.BAD_SIGNATURE,
    ),
    "recipient outside the mandate": (
        lambda m: _resign(m, dataclasses.replace(
            s := SealedReport.decode(Envelope.decode(_sealed_raw(m, ["un"])).payload),
            recipients=(dataclasses.replace(s.recipients[0], org="acme"),))),
        Reason.INVALID_FIELD,
    ),
    "signed by another observer": (
        lambda m: _resign(m, SealedReport.decode(Envelope.decode(_sealed_raw(m, ["un"])).payload), "un", 2),
        Reason.SUBJECT_MISMATCH,
    ),
    "zone not in the mandate": (
        lambda m: _resign(m, dataclasses.replace(
            SealedReport.decode(Envelope.decode(_sealed_raw(m, ["un"])).payload), zone="west")),
        Reason.OUTSIDE_ZONE,
    ),
    "sealed to a wrong key under UN's key id": (_wrong_recipient_key, Readability.UNDECRYPTABLE),
    "clear fields differ from the content": (_inconsistent, Readability.INCONSISTENT),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_sealed_cases(name: str) -> None:
    build, expected = CASES[name]
    m = make_mission()
    keys = _keys()
    _publish_keys(m, keys)
    raw = build(m)
    out = _ingestor(m, [keys["un"]]).judge(ref(UN, 0), raw, "un")
    if isinstance(expected, Reason):
        assert isinstance(out, Quarantined)
        assert out.reason == expected.value, out.detail
        assert out.raw == raw
    else:
        assert isinstance(out, AcceptedSealed)  # never a verdict that depends on a private key
        assert out.verified.readability is expected


def test_sealed_and_plain_reports_share_one_chain_and_revocation() -> None:
    m = make_mission()
    _publish_keys(m, _keys())
    ing = _ingestor(m, [])
    outs = [
        ing.judge(ref(UN, 0), m.next_report(), "un"),
        ing.judge(ref(UN, 1), _sealed_raw(m, ["osce"]), "un"),
        ing.judge(ref(UN, 2), m.next_report(), "un"),
    ]
    assert [type(o).__name__ for o in outs] == ["Accepted", "AcceptedSealed", "Accepted"]
    replay = ing.judge(ref(UN, 3), outs[1].raw, "un")
    assert isinstance(replay, Quarantined)
    assert replay.reason == "replayed"  # the same envelope again
    from bus.model import Revocation  # noqa: PLC0415
    from bus.sign import sign_revocation  # noqa: PLC0415

    _, key = m.observer()
    m.apply(
        sign_revocation(
            Revocation("un", key.key_id, 3, NOW_MS, "x", 1, m.mandate_id),
            m.scenario.org_roots["un"],
        )
    )
    late = ing.judge(ref(UN, 4), _sealed_raw(m, ["osce"]), "un")
    assert isinstance(late, Quarantined)
    assert late.reason == "key_revoked"


def test_store_keeps_sealed_reports_and_their_readability(tmp_path: Path) -> None:
    m = make_mission()
    keys = _keys()
    _publish_keys(m, keys)
    ing = _ingestor(m, [keys["osce"]])
    outs = [ing.judge(ref(UN, 0), _sealed_raw(m, ["osce"]), "un"),
            ing.judge(ref(UN, 1), m.next_report(), "un"),
            ing.judge(ref(UN, 2), _sealed_raw(m, ["un"]), "un")]  # fmt: skip
    store = NodeStore(tmp_path / "osce.db")
    store.commit_batch(outs, ing.chain.heads(), [], {(UN, 0): 3})
    assert store.count_reports() == 3
    rows = store.sealed_reports()
    assert sorted((r[1], r[2]) for r in rows) == [("osce", "readable"), ("un", "not_recipient")]
    assert len(list(store.envelopes())) == 1  # plain reports only
    readable = next(r[0] for r in rows if r[2] == "readable")
    content = store.sealed_content(readable)
    assert content is not None
    assert Report.decode(content).report_id == readable
    store.close()


def test_open_sealed_never_raises_on_garbage_keys() -> None:
    m = make_mission()
    keys = _keys()
    _publish_keys(m, keys)
    sealed = SealedReport.decode(Envelope.decode(_sealed_raw(m, ["un"])).payload)
    garbage = dataclasses.replace(sealed.recipients[0], enc=bytes(32))
    opened = open_sealed(
        dataclasses.replace(sealed, recipients=(garbage,)), {keys["un"].key_id: keys["un"]}
    )
    assert (opened.readability, opened.report, opened.reason) == (
        Readability.UNDECRYPTABLE,
        None,
        None,
    )


def test_policies_see_plain_reports_only_and_a_sealed_one_never_stops_them(
    tmp_path: Path,
) -> None:
    # A node with a policy used to crash (and crash again on every restart) on the first
    # restricted report in its store: the follow-up decoded every stored envelope as a plain
    # report. Policies never read restricted content (decisions are published to everyone).
    m = make_mission()
    keys = _keys()
    _publish_keys(m, keys)
    ing = _ingestor(m, [keys["osce"]])
    outs = [ing.judge(ref(UN, 0), m.next_report(), "un"),
            ing.judge(ref(UN, 1), _sealed_raw(m, ["osce"]), "un"),
            ing.judge(ref(UN, 2), m.next_report(), "un")]  # fmt: skip
    db = tmp_path / "osce.db"
    store = NodeStore(db)
    store.commit_batch(outs, ing.chain.heads(), [], {(UN, 0): 3})
    rows, _, _ = store.log_records_since(0, 0)
    seen = [observation_from_stored(raw, dg) for *_, dg, raw in rows if raw and dg]
    assert [o is not None for o in seen] == [True, False, True]
    assert [o.report.report_id for o in seen if o] == [
        o.verified.report.report_id for o in outs if isinstance(o, Accepted)
    ]

    # A provisional rule on every report: it reads the store's envelopes as they come.
    policy = parse_policy('org = "osce"\n[[rule]]\nname = "all"\naction = "note"\n'
                          'verdicts = "provisional"\n')  # fmt: skip
    followup = FollowUp(FollowUpConfig("osce", "127.0.0.1:9", db, m.scenario.mandate, policy))
    decided = followup._read_store(store)  # no crash on the restricted one
    assert [d.report_ids for d in decided] == [(o.report.report_id,) for o in seen if o]
    store.close()
