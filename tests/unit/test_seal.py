"""Seals: the byte format, which signatures count, finality from the seals topic alone,
equivocation evidence, the witness's rule, and the properties a dishonest minority cannot break.
No broker: records are built and fed in the order a reader of the seals topic would see them."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bus import crypto
from bus.crypto import SigningKey, pae
from bus.epoch import GENESIS_DIGEST, FinalSeal, PartitionRef, PartitionSeal
from bus.errors import BusError, Reason, VerificationError
from bus.merkle import MerkleTree
from bus.model import PAYLOAD_REPORT, Accreditation, Envelope, Mandate, Revocation, Role
from bus.note import (
    Note,
    NoteSignature,
    cosign,
    cosignature_message,
    key_name,
    parse_note,
    sign_note,
)
from bus.seal import (
    MAX_ROUND,
    MAX_SEAL_PARTITIONS,
    MAX_SEAL_RECORD_BYTES,
    MAX_SIGNATURE_BLOCK_BYTES,
    ChainUpdate,
    Cosign,
    Disposition,
    RecordVerdict,
    SealChain,
    SealProposal,
    SealWithdrawal,
    TreeView,
    check_successor,
    cosign_seal,
    decide_cosign,
    epoch_electorate,
    make_proposal,
    node_electorate,
    parse_seal,
    parse_seal_record,
    sign_proposal,
    sign_withdrawal,
    verify_seal,
)
from bus.sign import sign_accreditation, sign_revocation
from bus.trust import KeyRing
from nodes.demo.scenario import node_subject
from tests.mission import NOW_MS, make_mission

M = make_mission(observers_per_org=1)
for _raw in M.scenario.node_accreditations:
    M.apply(Envelope.decode(_raw))
MANDATE = M.scenario.mandate
MID = MANDATE.mandate_id
ORGS = tuple(o.org for o in MANDATE.organizations)  # un osce eu nato csto sco
K = MANDATE.threshold  # 4 of 6
KR = M.keyring
UN, OSCE, EU, NATO, CSTO, SCO = ORGS


def keyring(mandate: Mandate = MANDATE) -> KeyRing:
    """A fresh key ring of the mission's accreditations (observers and node keys)."""
    kr = KeyRing(mandate)
    for raw in M.registry:
        kr.apply(Envelope.decode(raw))
    return kr


def with_threshold(k: int) -> KeyRing:
    return keyring(dataclasses.replace(MANDATE, version=2, threshold=k))


def name(org: str) -> str:
    return key_name(org, node_subject(org))


def node_key(org: str) -> SigningKey:
    return M.scenario.node_keys[org]


def root(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


REPORTS_UN: PartitionRef = ("obus.reports.un", 0)
REGISTRY: PartitionRef = ("obus.registry", 0)


def seal(
    epoch: int = 1,
    *,
    prev: bytes = GENESIS_DIGEST,
    time_ms: int = NOW_MS,
    parts: dict[PartitionRef, int] | None = None,
    mandate_id: str = MID,
    round_: int = 1,
) -> SealProposal:
    """A seal whose roots are a function of (partition, size), like one honest log's."""
    sizes = {REPORTS_UN: 10 * epoch, REGISTRY: 2 * epoch} if parts is None else parts
    return SealProposal(
        mandate_id,
        epoch,
        time_ms,
        prev,
        {ref: PartitionSeal(n, root((ref, n))) for ref, n in sizes.items()},
        round_,
    )


def successor(p: SealProposal, **changes: Any) -> SealProposal:
    """The next epoch's seal after p as final (more records, later time), with changes."""
    args: dict[str, Any] = {
        "prev": p.digest,
        "time_ms": p.time_ms + 10_000,
        "parts": {ref: s.size + 3 for ref, s in p.partitions.items()},
    }
    args.update(changes)
    return seal(p.epoch + 1, **args)


def proposed(p: SealProposal, org: str) -> bytes:
    return sign_proposal(p, node_key(org), name(org))


def cosigned(p: SealProposal, org: str) -> bytes:
    return cosign_seal(p.text(), node_key(org), name(org), now_ms=p.time_ms)


def line_of(record: bytes) -> bytes:
    """The signature lines of a record."""
    return b"".join(s.line() for s in parse_note(record).signatures)


def merged(p: SealProposal, orgs: Sequence[str]) -> bytes:
    """One note carrying a cosignature of each organization."""
    return p.text() + b"\n" + b"".join(line_of(cosigned(p, o)) for o in orgs)


def chain_of(
    trust: KeyRing | Callable[[SealProposal], KeyRing | None] = KR,
    latest: FinalSeal | None = None,
) -> SealChain:
    fn = trust if callable(trust) else (lambda _p: trust)
    return SealChain(MID, fn, latest=latest)


def feed(chain: SealChain, records: Sequence[bytes | None], start: int = 0) -> list[RecordVerdict]:
    out: list[RecordVerdict] = []
    for i, value in enumerate(records):
        out.extend(chain.offer(start + i, value).verdicts)
    return out


def finals(verdicts: Sequence[RecordVerdict]) -> list[FinalSeal]:
    return [v.final for v in verdicts if v.final is not None]


def final_of(p: SealProposal, orgs: Sequence[str] = (UN, OSCE, EU, NATO)) -> FinalSeal:
    return p.final(digest=p.digest, signers=orgs, offset=len(orgs) - 1)


# -- the byte format ---------------------------------------------------------------------------


def test_the_seal_text_byte_for_byte() -> None:
    p = SealProposal(
        "jmm-2026",
        2,
        1_793_491_200_123,
        bytes(range(32)),
        {
            ("obus.reports.un", 10): PartitionSeal(7, bytes([1]) * 32),
            ("obus.registry", 0): PartitionSeal(3, bytes([2]) * 32),
            ("obus.reports.un", 9): PartitionSeal(1, bytes([3]) * 32),
        },
        round=3,
    )
    want = (
        b"obus-seal/v1/jmm-2026\n"
        b"2\n"
        b"3\n"
        b"1793491200123\n"
        b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
        b"obus.registry 0 3 AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\n"
        b"obus.reports.un 9 1 AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\n"
        b"obus.reports.un 10 7 AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n"
    )
    assert p.text() == want  # sorted by topic, then partition as a number (9 before 10)
    assert p.digest == hashlib.sha256(want).digest()
    assert parse_seal(want) == p
    assert list(parse_seal(want).partitions) == [
        ("obus.registry", 0),
        ("obus.reports.un", 9),
        ("obus.reports.un", 10),
    ]
    record = proposed(p, UN)
    assert record.startswith(want + b"\n\xe2\x80\x94 obus/un/un-node-1 ")
    parsed = parse_seal_record(record)
    assert (parsed.proposal, parsed.text, parsed.digest) == (p, want, p.digest)


def test_an_empty_bus_has_a_seal_too() -> None:
    p = seal(parts={})
    assert p.text().count(b"\n") == 5
    assert parse_seal(p.text()) == p


_TOPICS = st.text("abcxyzABC019._-", min_size=1, max_size=20)
_REFS = st.tuples(_TOPICS, st.integers(0, 2**31 - 1))
_SEALS = st.builds(PartitionSeal, st.integers(1, 2**64 - 1), st.binary(min_size=32, max_size=32))


@settings(max_examples=200, deadline=None)
@given(
    epoch=st.integers(1, 2**63 - 1),
    round_=st.integers(1, 2**31 - 1),
    time_ms=st.integers(1, 2**63 - 1),
    prev=st.binary(min_size=32, max_size=32),
    parts=st.dictionaries(_REFS, _SEALS, max_size=12),
)
def test_text_round_trip(
    epoch: int, round_: int, time_ms: int, prev: bytes, parts: dict[PartitionRef, PartitionSeal]
) -> None:
    p = SealProposal(MID, epoch, time_ms, prev, parts, round_)
    text = p.text()
    assert parse_seal(text) == p
    assert parse_seal(text).text() == text
    final = p.final(digest=p.digest, signers=(), offset=0)
    assert final.round == round_
    assert SealProposal.of_final(final).text() == text


GOOD = seal(3, prev=bytes(32), parts={REPORTS_UN: 5, REGISTRY: 2}).text()
_ROOT = base64.b64encode(root((REPORTS_UN, 5))).decode()


def _sub(old: str, new: str) -> bytes:
    assert old.encode() in GOOD
    return GOOD.replace(old.encode(), new.encode(), 1)


MALFORMED_TEXTS: dict[str, bytes] = {
    "empty": b"",
    "no final newline": GOOD[:-1],
    "crlf": GOOD.replace(b"\n", b"\r\n"),
    "tab": _sub(" 0 5 ", "\t0 5 "),
    "not ascii": _sub("jmm-2026", "jmm-2026\u00e9"),
    "nul byte": _sub("jmm", "j\x00m"),
    "blank line inside": _sub("\nobus.registry", "\n\nobus.registry"),
    "trailing space": _sub(f"{_ROOT}\n", f"{_ROOT} \n"),
    "header lines missing": GOOD.split(b"\n", 3)[0] + b"\n3\n",
    "checkpoint origin instead": _sub("obus-seal/v1/jmm-2026", "obus/jmm-2026/obus.reports.un/0"),
    "other version": _sub("obus-seal/v1/", "obus-seal/v2/"),
    "upper-case mandate id": _sub("jmm-2026", "JMM-2026"),
    "empty mandate id": _sub("jmm-2026", ""),
    "epoch zero": _sub("\n3\n", "\n0\n"),
    "epoch leading zero": _sub("\n3\n", "\n03\n"),
    "epoch with sign": _sub("\n3\n", "\n+3\n"),
    "epoch negative": _sub("\n3\n", "\n-3\n"),
    "epoch 2^63": _sub("\n3\n", f"\n{2**63}\n"),
    "epoch with spaces": _sub("\n3\n", "\n 3\n"),
    "round zero": _sub("\n3\n1\n", "\n3\n0\n"),
    "round leading zero": _sub("\n3\n1\n", "\n3\n01\n"),
    "round 2^31": _sub("\n3\n1\n", f"\n3\n{2**31}\n"),
    "round missing": _sub("\n3\n1\n", "\n3\n"),
    "round negative": _sub("\n3\n1\n", "\n3\n-1\n"),
    "time zero": _sub(f"\n{NOW_MS}\n", "\n0\n"),
    "time not a number": _sub(f"\n{NOW_MS}\n", "\n1e12\n"),
    "prev not canonical base64": _sub(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
    ),
    "prev 31 bytes": _sub(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
    ),
    "prev unpadded": _sub(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ),
    "prev url-safe alphabet": _sub(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ),
    "root 33 bytes": _sub(_ROOT, base64.b64encode(bytes(33)).decode()),
    "root not canonical": _sub(_ROOT, _ROOT[:42] + chr(ord(_ROOT[42]) ^ 1) + "="),
    "partition line missing a field": _sub(f" 0 5 {_ROOT}", f" 5 {_ROOT}"),
    "partition line extra field": _sub(f" 0 5 {_ROOT}", f" 0 5 5 {_ROOT}"),
    "double space": _sub(" 0 5 ", " 0  5 "),
    "size zero": _sub(" 0 5 ", " 0 0 "),
    "size leading zero": _sub(" 0 5 ", " 0 05 "),
    "size beyond uint64": _sub(" 0 5 ", f" 0 {2**64} "),
    "partition leading zero": _sub(" 0 5 ", " 00 5 "),
    "partition beyond int32": _sub(" 0 5 ", f" {2**31} 5 "),
    "partition negative": _sub(" 0 5 ", " -1 5 "),
    "topic with a slash": _sub("obus.reports.un 0", "obus/reports.un 0"),
    "topic too long": _sub("obus.reports.un 0", "t" * 250 + " 0"),
    "lines unsorted": GOOD.split(b"obus.registry")[0]
    + b"".join(reversed(GOOD.split(b"\n", 4)[4].splitlines(keepends=True))),
    "line repeated": GOOD + GOOD.splitlines(keepends=True)[-1],
    "too many lines": GOOD.split(b"obus.registry")[0]
    + b"".join(f"t {i} 1 {_ROOT}\n".encode() for i in range(MAX_SEAL_PARTITIONS + 1)),
}


@pytest.mark.parametrize("text", MALFORMED_TEXTS.values(), ids=MALFORMED_TEXTS.keys())
def test_malformed_seal_texts_are_refused(text: bytes) -> None:
    with pytest.raises(VerificationError) as exc:
        parse_seal(text)
    assert exc.value.reason is Reason.MALFORMED


def test_the_table_starts_from_a_good_text() -> None:
    assert (parse_seal(GOOD).epoch, parse_seal(GOOD).round) == (3, 1)
    assert parse_seal(GOOD.split(b"obus.registry")[0]).partitions == {}


INVALID_FIELDS: dict[str, dict[str, Any]] = {
    "epoch zero": {"epoch": 0},
    "round zero": {"round": 0},
    "round beyond int32": {"round": 2**31},
    "round not an int": {"round": True},
    "time beyond int64": {"time_ms": 2**63},
    "prev 31 bytes": {"prev_digest": bytes(31)},
    "mandate id": {"mandate_id": "JMM"},
    "size zero": {"partitions": {REPORTS_UN: PartitionSeal(0, bytes(32))}},
    "root 31 bytes": {"partitions": {REPORTS_UN: PartitionSeal(1, bytes(31))}},
    "negative partition": {"partitions": {("t", -1): PartitionSeal(1, bytes(32))}},
    "topic with a space": {"partitions": {("a b", 0): PartitionSeal(1, bytes(32))}},
    "too many partitions": {
        "partitions": {("t", i): PartitionSeal(1, bytes(32)) for i in range(2049)}
    },
}


@pytest.mark.parametrize("changes", INVALID_FIELDS.values(), ids=INVALID_FIELDS.keys())
def test_a_seal_out_of_range_cannot_be_built(changes: dict[str, Any]) -> None:
    with pytest.raises(VerificationError) as exc:
        dataclasses.replace(seal(), **changes)
    assert exc.value.reason is Reason.INVALID_FIELD


def test_record_bounds() -> None:
    p = seal()
    good = proposed(p, UN)
    line = line_of(good)
    cases: dict[str, tuple[bytes, Reason]] = {
        "oversized": (good + b"x" * MAX_SEAL_RECORD_BYTES, Reason.OVERSIZED),
        "no signature block": (p.text(), Reason.MALFORMED),
        "101 lines": (p.text() + b"\n" + line * 101, Reason.MALFORMED),
        "long lines": (
            p.text()
            + b"\n"
            + "\u2014 ".encode()
            + b"n" * MAX_SIGNATURE_BLOCK_BYTES
            + b" AAAAAAAA\n",
            Reason.MALFORMED,
        ),
        "line not a signature": (p.text() + b"\nhello\n", Reason.MALFORMED),
        "text is a withdrawal": (
            sign_withdrawal(SealWithdrawal(MID, 1, 1), node_key(UN), name(UN), now_ms=NOW_MS),
            Reason.MALFORMED,
        ),
    }
    for label, (data, reason) in cases.items():
        with pytest.raises(VerificationError) as exc:
            parse_seal_record(data)
        assert exc.value.reason is reason, label
    assert len(parse_seal_record(p.text() + b"\n" + line * 100).signatures) == 100


def test_seal_signatures_never_serve_another_use() -> None:
    """A node key signs DSSE envelopes, seal texts (type 0x01) and cosignatures (type 0x04): the
    signed bytes start apart (``DSSEv1 ``, ``obus-seal/v1/``, ``cosignature/v1``), so a signature
    made for one use never verifies for another, even over the same text."""
    p, key, t = seal(), node_key(UN), NOW_MS // 1000
    text = p.text()
    dsse = pae(PAYLOAD_REPORT, text)  # an envelope whose payload is the seal text itself
    assert text.startswith(b"obus-seal/v1/")
    assert dsse.startswith(b"DSSEv1 ")
    assert cosignature_message(text, t).startswith(b"cosignature/v1\ntime ")
    vote = cosign(text, key, name(UN), t)
    assert verify_seal(Note(text, (vote,)).encode(), KR).orgs == {UN}  # the genuine vote

    def as_vote(signature: bytes) -> bytes:
        line = NoteSignature(vote.name, vote.key_hash, t.to_bytes(8, "big") + signature)
        return Note(text, (line,)).encode()

    refused = ((name(UN), Reason.BAD_SIGNATURE),)
    # An envelope's signature, or the proposer's note signature of the very text, is no vote.
    assert verify_seal(as_vote(key.sign(dsse)), KR).refused == refused
    assert verify_seal(as_vote(sign_note(text, key, name(UN)).body), KR).refused == refused
    # A vote for another text (the next epoch's seal, a withdrawal) moved under this one.
    for other in (
        successor(p).text(),
        parse_note(sign_withdrawal(SealWithdrawal(MID, 1, 1), key, name(UN), now_ms=NOW_MS)).text,
    ):
        assert verify_seal(as_vote(cosign(other, key, name(UN), t).body[8:]), KR).refused == refused
    # And the other way round: the vote verifies neither as an envelope nor as a note signature.
    for message in (dsse, text):
        with pytest.raises(VerificationError) as exc:
            crypto.verify(key.public_key, message, vote.body[8:])
        assert exc.value.reason is Reason.BAD_SIGNATURE
    # A type 0x01 line is no vote: under a seal text it is never tried.
    assert verify_seal(text + b"\n" + sign_note(text, key, name(UN)).line(), KR).refused == ()


_SEED_RECORDS = [proposed(seal(), UN), merged(successor(seal()), ORGS)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEED_RECORDS),
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    noise=st.binary(max_size=300),
)
def test_any_bytes_give_a_seal_or_a_bus_error_and_never_stop_the_chain(
    seed: bytes, cuts: list[tuple[int, int]], noise: bytes
) -> None:
    data = bytearray(seed)
    for pos, byte in cuts:
        data[pos % len(data)] = byte
    chain = chain_of()
    for i, value in enumerate((bytes(data), noise, seed[: len(noise)])):
        with contextlib.suppress(BusError):
            parse_seal_record(value)
        chain.offer(i, value)  # never raises


# -- which signatures count --------------------------------------------------------------------


def test_every_organization_counts_once() -> None:
    p = seal()
    record = proposed(p, UN) + line_of(merged(p, ORGS)) + line_of(merged(p, (EU, EU)))
    verified = verify_seal(record, KR)
    assert verified.orgs == frozenset(ORGS)
    assert [s.line for s in verified.signatures] == [line_of(cosigned(p, o)) for o in ORGS]
    assert verified.refused == ()


def test_a_key_of_another_role_never_counts() -> None:
    p = seal()
    oid, okey = M.observer(UN)
    record = Note(p.text(), (cosign(p.text(), okey, key_name(UN, oid), NOW_MS // 1000),)).encode()
    assert verify_seal(record, KR).refused == ((key_name(UN, oid), Reason.WRONG_ROLE),)
    chain = chain_of()
    (v,) = feed(chain, [record])
    assert (v.disposition, v.counted) == (Disposition.UNCOUNTED, ())
    assert v.refused_lines == ((key_name(UN, oid), Reason.WRONG_ROLE),)


def test_a_key_nobody_accredited_is_ignored() -> None:
    p = seal()
    stranger = SigningKey.from_seed(bytes(32))
    record = Note(p.text(), (sign_note(p.text(), stranger, name(UN)),)).encode()
    verified = verify_seal(record, KR)
    assert (verified.signatures, verified.refused) == ((), ())


def test_an_organization_outside_the_mandate_never_counts() -> None:
    without_sco = dataclasses.replace(
        MANDATE, organizations=tuple(o for o in MANDATE.organizations if o.org != SCO)
    )
    kr = KeyRing(without_sco)
    for acc in KR.accreditations(Role.NODE):
        kr.add_accreditation(acc)  # as if verified: the seal check itself must refuse it
    verified = verify_seal(merged(seal(), (UN, SCO)), kr)
    assert verified.orgs == {UN}
    assert verified.refused == ((name(SCO), Reason.WRONG_ORG),)


def test_a_node_key_revoked_at_an_epoch_counts_up_to_it_only() -> None:
    kr = keyring()
    un_node = KR.lookup(node_key(UN).key_id)
    rev = Revocation(UN, un_node.key_id, 2, NOW_MS, "rotated", 1, MID)
    kr.apply(sign_revocation(rev, M.scenario.org_roots[UN]))
    two = seal(2, prev=bytes(32))
    three = seal(3, prev=bytes(32))
    assert verify_seal(cosigned(two, UN), kr).orgs == {UN}
    assert verify_seal(cosigned(three, UN), kr).refused == ((name(UN), Reason.KEY_REVOKED),)
    # In the chain: epoch 3 needs a fourth organization once UN's key is out.
    p1 = seal()
    p2 = successor(p1)
    p3 = successor(p2)
    records = [merged(p1, ORGS[:4]), merged(p2, ORGS[:4]), merged(p3, ORGS[:4])]
    chain = chain_of(kr)
    verdicts = feed(chain, records)
    assert [f.epoch for f in finals(verdicts)] == [1, 2]
    assert verdicts[2].counted == (OSCE, EU, NATO)
    assert verdicts[2].refused_lines == ((name(UN), Reason.KEY_REVOKED),)
    (last,) = feed(chain, [cosigned(p3, CSTO)], start=3)
    assert last.final is not None and last.final.signers == {OSCE, EU, NATO, CSTO}


def test_a_node_key_counts_inside_its_window_at_t_e() -> None:
    kr = keyring()
    spare = SigningKey.from_seed(b"\x07" * 32)
    acc = Accreditation(
        "un-node-2", UN, Role.NODE, spare.public_key, NOW_MS - 10_000, NOW_MS, 101, MID
    )
    kr.apply(sign_accreditation(acc, M.scenario.org_roots[UN]))
    inside = seal(time_ms=NOW_MS)
    after = seal(time_ms=NOW_MS + 1)
    line = key_name(UN, "un-node-2")
    assert verify_seal(cosign_seal(inside.text(), spare, line, now_ms=NOW_MS), kr).orgs == {UN}
    assert verify_seal(cosign_seal(after.text(), spare, line, now_ms=NOW_MS), kr).refused == (
        (line, Reason.KEY_EXPIRED),
    )


def test_a_bad_line_counts_for_nothing_and_cancels_no_other() -> None:
    p = seal()
    good = line_of(cosigned(p, UN))
    raw = base64.b64decode(good.rsplit(b" ", 1)[1])
    bad = good.rsplit(b" ", 1)[0] + b" " + base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 1])) + b"\n"
    record = p.text() + b"\n" + line_of(cosigned(p, OSCE)) + bad
    verified = verify_seal(record, KR)
    assert verified.orgs == {OSCE}
    assert verified.refused == ((name(UN), Reason.BAD_SIGNATURE),)


def test_one_line_per_key_is_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    p = seal()
    calls: list[bytes] = []
    real = crypto.verify

    def counting(public_key: bytes, message: bytes, signature: bytes) -> None:
        calls.append(public_key)
        real(public_key, message, signature)

    monkeypatch.setattr(crypto, "verify", counting)
    # The proposer's 0x01 line is no vote: not verified, and it takes no turn from its key.
    same_key = line_of(proposed(p, UN)) + line_of(cosigned(p, UN)) * 50
    assert verify_seal(p.text() + b"\n" + same_key, KR).orgs == {UN}
    assert len(calls) == 1
    # The first cosignature by a key decides for the record: a good second one is not tried.
    bad_first = NoteSignature(
        name(UN), parse_note(cosigned(p, UN)).signatures[0].key_hash, bytes(72)
    )
    calls.clear()
    verified = verify_seal(p.text() + b"\n" + bad_first.line() + line_of(cosigned(p, UN)), KR)
    assert (verified.orgs, len(calls)) == (frozenset(), 1)
    # In the chain, an organization's vote already counted on a text is never verified again.
    chain = chain_of()
    feed(chain, [cosigned(p, UN)])
    calls.clear()
    later = cosign_seal(p.text(), node_key(UN), name(UN), now_ms=p.time_ms + 5_000)
    (v,) = feed(chain, [later], start=1)
    assert (v.disposition, calls) == (Disposition.UNCOUNTED, [])


# -- finality ----------------------------------------------------------------------------------


def test_k_distinct_organizations_make_a_seal_final() -> None:
    kr = keyring()
    spare = SigningKey.from_seed(b"\x08" * 32)
    acc = Accreditation(
        "un-node-2",
        UN,
        Role.NODE,
        spare.public_key,
        MANDATE.not_before_ms,
        MANDATE.not_after_ms,
        102,
        MID,
    )
    kr.apply(sign_accreditation(acc, M.scenario.org_roots[UN]))
    p = seal()
    records = [
        proposed(p, UN),  # proposing is not voting
        cosigned(p, UN),  # UN's vote: its proposer cosigns like any witness
        cosign_seal(p.text(), spare, key_name(UN, "un-node-2"), now_ms=NOW_MS),  # UN again
        cosigned(p, OSCE),
        cosigned(p, EU),
        cosigned(p, NATO),
        cosigned(p, CSTO),
    ]
    chain = chain_of(kr)
    verdicts = feed(chain, records)
    assert [v.disposition for v in verdicts] == [
        Disposition.UNCOUNTED,
        Disposition.COUNTED,
        Disposition.UNCOUNTED,
        Disposition.COUNTED,
        Disposition.COUNTED,
        Disposition.FINAL,
        Disposition.IGNORED,
    ]
    assert verdicts[6].reason is Reason.SEAL_EPOCH_FINAL
    final = verdicts[5].final
    assert final == FinalSeal(
        MID, 1, NOW_MS, p.partitions, p.digest, GENESIS_DIGEST, frozenset({UN, OSCE, EU, NATO}), 5
    )
    assert chain.latest == final and chain.open_epoch == 2
    assert SealProposal.of_final(final).digest == final.digest
    assert chain.counts["final"] == 1 and chain.counts["seal_epoch_final"] == 1


def test_two_keys_of_one_organization_in_one_record_are_one_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kr = keyring()
    spare = SigningKey.from_seed(b"\x09" * 32)
    acc = Accreditation(
        "un-node-2",
        UN,
        Role.NODE,
        spare.public_key,
        MANDATE.not_before_ms,
        MANDATE.not_after_ms,
        103,
        MID,
    )
    kr.apply(sign_accreditation(acc, M.scenario.org_roots[UN]))
    p = seal()
    spare_line = line_of(cosign_seal(p.text(), spare, key_name(UN, "un-node-2"), now_ms=NOW_MS))
    record = cosigned(p, UN) + spare_line
    calls: list[bytes] = []
    real = crypto.verify

    def counting(public_key: bytes, message: bytes, signature: bytes) -> None:
        calls.append(public_key)
        real(public_key, message, signature)

    monkeypatch.setattr(crypto, "verify", counting)
    assert [s.subject_id for s in verify_seal(record, kr).signatures] == ["un-node-1"]
    assert len(calls) == 1
    chain = chain_of(kr)
    (v,) = feed(chain, [record])
    assert (v.counted, v.refused_lines, v.equivocations) == ((UN,), (), ())


def test_the_first_text_to_reach_k_wins() -> None:
    """B leads 2 to 0, A reaches k first; B's later votes, however many, change nothing."""
    a = seal()
    b = seal(parts={REPORTS_UN: 11, REGISTRY: 2})
    records = [
        cosigned(b, NATO),
        cosigned(b, CSTO),
        cosigned(a, UN),
        merged(a, (OSCE, EU)),
        merged(b, (SCO, UN, OSCE, EU)),
    ]
    chain = chain_of(with_threshold(3))
    verdicts = feed(chain, records)
    (final,) = finals(verdicts)
    assert (final.digest, final.signers, final.offset) == (a.digest, frozenset({UN, OSCE, EU}), 3)
    assert verdicts[4].reason is Reason.SEAL_EPOCH_FINAL
    # With threshold 4 (6 organizations, one vote each) at most one text can ever reach it.
    verdicts = feed(chain_of(), records)
    assert finals(verdicts) == []


BROKEN_SUCCESSORS: dict[str, tuple[Callable[[SealProposal], SealProposal], Reason]] = {
    "wrong prev": (lambda p: successor(p, prev=root("other")), Reason.SEAL_WRONG_PREV),
    "prev of an older seal": (lambda p: successor(p, prev=p.prev_digest), Reason.SEAL_WRONG_PREV),
    "size shrinks": (
        lambda p: successor(p, parts={REPORTS_UN: 9, REGISTRY: 5}),
        Reason.SEAL_SIZE_SHRINKS,
    ),
    "partition dropped": (lambda p: successor(p, parts={REPORTS_UN: 20}), Reason.SEAL_SIZE_SHRINKS),
    "same time": (lambda p: successor(p, time_ms=p.time_ms), Reason.SEAL_TIME_NOT_INCREASING),
    "earlier time": (
        lambda p: successor(p, time_ms=p.time_ms - 1),
        Reason.SEAL_TIME_NOT_INCREASING,
    ),
}


@pytest.mark.parametrize(
    ("make", "reason"), BROKEN_SUCCESSORS.values(), ids=BROKEN_SUCCESSORS.keys()
)
def test_a_seal_that_does_not_follow_never_becomes_final(
    make: Callable[[SealProposal], SealProposal], reason: Reason
) -> None:
    one = seal()
    bad = make(one)
    good = successor(one)
    chain = chain_of()
    verdicts = feed(chain, [merged(one, ORGS[:4]), merged(bad, ORGS), merged(good, ORGS)])
    assert (verdicts[1].disposition, verdicts[1].reason) == (Disposition.COUNTED, reason)
    assert verdicts[1].counted == ORGS
    assert [f.epoch for f in finals(verdicts)] == [1]  # votes on the broken text were votes
    assert chain.counts[reason.value] == 1
    # Every organization's round-1 vote went to a text that can never be final: the round is
    # dead, and the good text of round 1 comes too late.
    opened = verdicts[1].opened
    assert opened is not None and (opened.epoch, opened.round) == (2, 2)
    assert (opened.tallies, opened.void, opened.undecided) == ((), len(ORGS), 0)
    assert (verdicts[2].disposition, verdicts[2].reason) == (
        Disposition.IGNORED,
        Reason.SEAL_ROUND_CLOSED,
    )
    assert chain.equivocations == []
    again = dataclasses.replace(good, round=2)
    (last,) = feed(chain, [merged(again, ORGS[:4])], start=3)
    assert last.final is not None and (last.final.digest, last.final.round) == (again.digest, 2)
    with pytest.raises(VerificationError) as exc:
        check_successor(bad, finals(verdicts)[0])
    assert exc.value.reason is reason


def test_a_broken_text_signed_by_a_minority_blocks_nothing() -> None:
    one = seal()
    bad = successor(one, prev=root("other"))
    good = successor(one)
    verdicts = feed(
        chain_of(),
        [merged(one, ORGS[:4]), merged(bad, (CSTO, SCO)), merged(good, ORGS)],
    )
    assert [f.digest for f in finals(verdicts)] == [one.digest, good.digest]
    assert finals(verdicts)[1].signers == {UN, OSCE, EU, NATO}
    assert verdicts[2].refused_lines == (
        (name(CSTO), Reason.SEAL_EQUIVOCATION),
        (name(SCO), Reason.SEAL_EQUIVOCATION),
    )


def test_the_first_seal_names_the_genesis_digest() -> None:
    wrong = seal(prev=root("x"))
    (v,) = feed(chain_of(), [merged(wrong, ORGS)])
    assert (v.disposition, v.reason) == (Disposition.COUNTED, Reason.SEAL_WRONG_PREV)


def test_records_not_for_the_open_epoch_are_ignored_and_counted() -> None:
    one = seal()
    two = successor(one)
    other = seal(mandate_id="other-mandate")
    chain = chain_of()
    verdicts = feed(
        chain,
        [
            merged(two, ORGS),
            merged(other, ORGS),
            None,
            b"junk",
            merged(one, ORGS[:4]),
            merged(one, ORGS),
        ],
    )
    assert [(v.disposition, v.reason) for v in verdicts] == [
        (Disposition.IGNORED, Reason.SEAL_EPOCH_AHEAD),
        (Disposition.IGNORED, Reason.WRONG_MANDATE),
        (Disposition.REFUSED, Reason.MALFORMED),
        (Disposition.REFUSED, Reason.MALFORMED),
        (Disposition.FINAL, None),
        (Disposition.IGNORED, Reason.SEAL_EPOCH_FINAL),
    ]
    assert chain.counts["ignored"] == 3 and chain.counts["refused"] == 2
    # The early records were not votes: epoch 2 still needs them again.
    (v,) = feed(chain, [merged(two, ORGS[:4])], start=6)
    assert v.disposition is Disposition.FINAL


def test_the_threshold_is_that_of_the_epoch() -> None:
    four, three = keyring(), with_threshold(3)
    one = seal()
    two = successor(one)
    chain = chain_of(lambda p: four if p.epoch == 1 else three)
    verdicts = feed(chain, [merged(one, ORGS[:3]), merged(one, ORGS[3:4]), merged(two, ORGS[:3])])
    assert [(f.epoch, f.offset) for f in finals(verdicts)] == [(1, 1), (2, 2)]


def test_offsets_must_increase() -> None:
    chain = chain_of()
    chain.offer(5, None)
    with pytest.raises(ValueError, match="not after"):
        chain.offer(5, None)
    chain.offer(9, None)  # gaps are allowed
    assert chain.next_offset == 10


def test_the_chain_waits_for_a_trust_state_and_resumes() -> None:
    one = seal()
    two = successor(one)
    known = {1}
    chain = chain_of(lambda p: KR if p.epoch in known else None)
    records = [
        merged(one, ORGS[:4]),
        b"junk",
        merged(two, ORGS[:2]),
        b"junk",
        merged(two, ORGS[2:4]),
    ]
    got = feed(chain, records)
    assert [v.offset for v in got] == [0, 1]  # offset 2 needs epoch 2's trust: it waits
    assert chain.waiting
    assert chain.resume() == ChainUpdate()
    known.add(2)
    got += chain.resume().verdicts
    assert not chain.waiting
    assert got == feed(chain_of(), records)


def test_a_restart_from_the_newest_final_seal_continues_identically() -> None:
    one = seal()
    two = successor(one)
    records = [
        merged(one, ORGS[:3]),
        proposed(two, UN),  # ahead: ignored
        merged(one, ORGS[3:]),
        proposed(two, UN),
        cosigned(seal(2, prev=one.digest, parts={}), EU),  # EU's vote, on a broken text
        merged(two, ORGS[1:4]),
    ]
    full = feed(chain_of(), records)
    latest = finals(full)[0]
    assert latest.offset == 2
    again = chain_of(latest=latest)
    assert again.next_offset == 3
    assert feed(again, records[3:], start=3) == full[3:]
    for broken in (
        dataclasses.replace(latest, offset=-1),
        dataclasses.replace(latest, digest=root("other")),
        dataclasses.replace(latest, time_ms=latest.time_ms + 1),
    ):
        with pytest.raises(ValueError, match="latest must be"):
            chain_of(latest=broken)


# -- equivocation ------------------------------------------------------------------------------


def test_equivocation_is_kept_as_evidence_and_never_counts() -> None:
    a = seal()
    b = seal(parts={REPORTS_UN: 11, REGISTRY: 2})
    c = seal(parts={REPORTS_UN: 12, REGISTRY: 2})
    records = [
        cosigned(a, UN),
        merged(b, (OSCE, EU, NATO)),
        cosigned(b, UN),  # UN's second text: evidence
        cosigned(c, UN),  # a third: UN has equivocated already, nothing more to prove
        cosigned(b, CSTO),
    ]
    chain = chain_of()
    verdicts = feed(chain, records)
    (ev,) = chain.equivocations
    assert verdicts[2].equivocations == (ev,)
    assert verdicts[2].refused_lines == ((name(UN), Reason.SEAL_EQUIVOCATION),)
    assert (ev.org, ev.epoch, ev.first_offset, ev.second_offset) == (UN, 1, 0, 2)
    assert (ev.first_text, ev.second_text) == (a.text(), b.text())
    first_note, second_note = ev.notes()
    assert first_note == cosigned(a, UN) and second_note == cosigned(b, UN)
    assert verify_seal(second_note, KR).orgs == {UN}  # evidence anyone can check again
    assert verdicts[3].disposition is Disposition.UNCOUNTED and verdicts[3].equivocations == ()
    (final,) = finals(verdicts)
    assert (final.digest, final.signers) == (b.digest, frozenset({OSCE, EU, NATO, CSTO}))
    assert chain.votes() == {}  # epoch 2 is open and empty
    as_json = ev.to_json()
    assert as_json["first"]["offset"] == 0 and as_json["second"]["text"] == b.text().decode()


def test_votes_of_the_open_epoch_are_readable() -> None:
    p = seal()
    chain = chain_of()
    feed(chain, [cosigned(p, UN), cosigned(p, EU)])
    assert chain.votes() == {UN: p.digest, EU: p.digest}


def test_a_proposal_is_no_vote() -> None:
    """Records with only a proposer's type 0x01 line change no vote: every organization
    proposing, on one text or on six, makes nothing final and kills no round."""
    p = seal()
    chain = chain_of()
    verdicts = feed(chain, [proposed(p, org) for org in ORGS])
    assert [(v.disposition, v.counted, v.refused_lines) for v in verdicts] == [
        (Disposition.UNCOUNTED, (), ())
    ] * len(ORGS)
    assert (chain.votes(), chain.latest, chain.open_round) == ({}, None, 1)
    texts = [seal(parts={REPORTS_UN: 10 + i, REGISTRY: 2}) for i in range(len(ORGS))]
    split = feed(chain, [proposed(t, o) for t, o in zip(texts, ORGS, strict=True)], start=6)
    assert all(v.opened is None and v.counted == () for v in split)
    assert (chain.votes(), chain.open_round, chain.equivocations) == ({}, 1, [])
    # Cosignatures are the votes: k of them on a text every organization proposed make it final.
    (*_, last) = feed(chain, [cosigned(p, o) for o in ORGS[:K]], start=12)
    assert last.final is not None and last.final.signers == frozenset(ORGS[:K])


def test_a_proposer_that_cosigns_its_own_proposal_counts_once() -> None:
    p = seal()
    own = proposed(p, UN) + line_of(cosigned(p, UN))  # proposal and cosignature in one record
    verified = verify_seal(own, KR)
    assert [s.org for s in verified.signatures] == [UN] and verified.refused == ()
    chain = chain_of()
    verdicts = feed(chain, [proposed(p, UN), cosigned(p, UN), own, cosigned(p, OSCE)])
    assert [(v.disposition, v.counted) for v in verdicts] == [
        (Disposition.UNCOUNTED, ()),
        (Disposition.COUNTED, (UN,)),
        (Disposition.UNCOUNTED, ()),
        (Disposition.COUNTED, (OSCE,)),
    ]
    assert chain.votes() == {UN: p.digest, OSCE: p.digest} and chain.latest is None
    (*_, last) = feed(chain, [cosigned(p, EU), cosigned(p, NATO)], start=4)
    assert last.final is not None and last.final.signers == {UN, OSCE, EU, NATO}


def test_two_proposals_at_once_split_no_vote() -> None:
    """Two organizations propose in one round, back to back; every organization, both
    proposers included, cosigns the first: it is final in round 1, and no second round
    opens even with two organizations silent."""
    a = seal()
    b = seal(parts={REPORTS_UN: 11, REGISTRY: 2})
    records = [proposed(a, UN), proposed(b, OSCE)]
    records += [cosigned(a, o) for o in (OSCE, UN, EU, NATO)]  # CSTO and SCO down
    chain = chain_of()
    verdicts = feed(chain, records)
    (final,) = finals(verdicts)
    assert (final.digest, final.round, final.offset) == (a.digest, 1, 5)
    assert final.signers == {UN, OSCE, EU, NATO}
    assert all(v.opened is None for v in verdicts) and chain.equivocations == []


# -- rounds ------------------------------------------------------------------------------------

A1 = seal(parts={REPORTS_UN: 5, REGISTRY: 1})
B1 = seal(parts={REPORTS_UN: 6, REGISTRY: 1})
C1 = seal(parts={REPORTS_UN: 7, REGISTRY: 1})
# Six votes split 3-2-1 over A1, B1 and C1: round 1 of epoch 1 dies at the last one.
SPLIT_3_2_1 = [
    cosigned(A1, UN),
    cosigned(B1, NATO),
    cosigned(A1, OSCE),
    cosigned(B1, CSTO),
    cosigned(A1, EU),  # A 3, B 2, SCO yet to vote: A can still reach 4
    cosigned(C1, SCO),  # 3, 2, 1: no text can
]


def _again(p: SealProposal, round_: int) -> SealProposal:
    """The same content proposed again in another round (another text, another digest)."""
    return dataclasses.replace(p, round=round_)


def _dead_after(votes: Sequence[tuple[str, int]], k: int = K) -> int | None:
    """The oracle: after how many of ``votes`` ((org, text index), an organization's first one
    counting) no text can reach k, every organization of the mandate able to vote; None when
    never."""
    first: dict[str, int] = {}
    for i, (org, text) in enumerate(votes):
        first.setdefault(org, text)
        tallies = Counter(first.values())
        undecided = len(ORGS) - len(first)
        if max([*tallies.values(), 0]) + undecided < k:
            return i + 1
    return None


def test_a_split_of_six_votes_over_three_texts_opens_round_2_where_round_2_becomes_final() -> None:
    records = [*SPLIT_3_2_1, merged(A1, (NATO, CSTO, SCO))]  # round 1 is dead: no change
    chain = chain_of()
    verdicts = feed(chain, records)
    assert [v.disposition for v in verdicts] == [Disposition.COUNTED] * 6 + [Disposition.IGNORED]
    assert [v.opened for v in verdicts[:5]] == [None] * 5
    opened = verdicts[5].opened
    assert opened is not None
    assert (opened.epoch, opened.round, opened.offset, opened.threshold) == (1, 2, 5, K)
    assert (opened.tallies, opened.void, opened.undecided) == ((3, 2, 1), 0, 0)
    assert opened.why == (
        "no text of round 1 can reach k = 4: votes per text 3, 2, 1, 0 on texts that can"
        " never be final, 0 organizations yet to vote"
    )
    assert verdicts[6].reason is Reason.SEAL_ROUND_CLOSED
    assert (chain.open_epoch, chain.open_round, chain.votes(), chain.latest) == (1, 2, {}, None)
    assert ChainUpdate(tuple(verdicts)).rounds_opened == (opened,)
    # Round 2: the next turn proposes again (the same content is another text), votes anew.
    a2 = _again(A1, 2)
    assert a2.digest != A1.digest
    more = [cosigned(a2, OSCE), merged(a2, (EU, NATO)), cosigned(a2, SCO), cosigned(a2, UN)]
    after = feed(chain, more, start=len(records))
    (final,) = finals(after)
    assert (final.epoch, final.round, final.digest) == (1, 2, a2.digest)
    assert final.signers == {OSCE, EU, NATO, SCO} and final.offset == len(records) + 2
    assert after[3].reason is Reason.SEAL_EPOCH_FINAL
    assert SealProposal.of_final(final) == a2
    assert chain.equivocations == []  # one vote per round: signing again in round 2 is no fault
    # Deterministic: another reader of the same topic, resuming trust late, does the same.
    known: set[int] = set()
    late = chain_of(lambda p: KR if p.epoch in known else None)
    got = feed(late, [*records, *more])
    assert got == []
    known.add(1)
    assert list(late.resume().verdicts) == [*verdicts, *after]


@pytest.mark.parametrize(
    "split",
    [(0, 0, 1, 1, 2, 2), (0, 0, 0, 1, 1, 2), (0, 0, 0, 1, 1, 1)],
    ids=["2-2-2", "3-2-1", "3-3"],
)
def test_the_round_opens_at_the_first_record_that_leaves_no_text_able_to_reach_k(
    split: tuple[int, ...],
) -> None:
    """Every order of six votes split over texts: round 2 opens exactly where the oracle says
    (a 2-2-1 split with one organization yet to vote is already dead, 3-2 with one is not)."""
    votes = list(zip(ORGS, split, strict=True))
    texts = (A1, B1, C1)
    for order in itertools.permutations(range(len(votes))):
        ordered = [votes[i] for i in order]
        verdicts = feed(chain_of(), [cosigned(texts[t], org) for org, t in ordered])
        opened_at = [v.offset + 1 for v in verdicts if v.opened is not None]
        assert opened_at == [_dead_after(ordered)], ordered


def test_a_round_is_not_opened_while_some_text_can_still_reach_k() -> None:
    split = [cosigned(A1, UN), cosigned(A1, OSCE), cosigned(A1, EU), cosigned(B1, NATO)]
    split.append(cosigned(B1, CSTO))
    # A holds 3 votes, SCO has not voted: A can still reach 4.
    chain = chain_of()
    verdicts = feed(chain, split)
    assert all(v.opened is None for v in verdicts) and chain.open_round == 1
    # SCO's vote for A makes it final ...
    (v,) = feed(chain, [cosigned(A1, SCO)], start=len(split))
    assert v.final is not None and v.final.signers == {UN, OSCE, EU, SCO}
    # ... and for B (3 to 3) kills the round.
    chain = chain_of()
    feed(chain, split)
    (v,) = feed(chain, [cosigned(B1, SCO)], start=len(split))
    assert v.final is None and v.opened is not None and v.opened.tallies == (3, 3)
    # Two votes, one per text, four organizations yet to vote: a fresh text could reach 4.
    chain = chain_of()
    assert all(v.opened is None for v in feed(chain, [cosigned(A1, UN), cosigned(B1, OSCE)]))


def test_votes_on_texts_that_can_never_be_final_count_as_votes_for_the_round() -> None:
    """A text breaking a successor rule burns the votes on it: with them, no text can reach k."""
    broken = seal(prev=root("not genesis"))
    records = [merged(broken, (UN, OSCE)), merged(A1, (EU, NATO, CSTO)), cosigned(broken, SCO)]
    verdicts = feed(chain_of(), records)
    assert verdicts[0].reason is Reason.SEAL_WRONG_PREV
    assert [v.opened for v in verdicts[:2]] == [None, None]  # A could still reach 4 with SCO
    opened = verdicts[2].opened
    assert opened is not None
    assert (opened.tallies, opened.void, opened.undecided) == ((3,), 3, 0)
    # Three votes burnt at once leave three organizations: a fresh text could not reach 4.
    (v,) = feed(chain_of(), [merged(broken, (UN, OSCE, EU))])
    assert v.opened is not None and (v.opened.tallies, v.opened.undecided) == ((), 3)


def test_a_record_of_a_closed_round_changes_nothing() -> None:
    kill = SPLIT_3_2_1
    late = [
        merged(A1, ORGS),  # every organization on a text of the dead round
        cosigned(B1, UN),  # UN signs a second text of round 1: never looked at
        b"junk",
        merged(_again(C1, 3), ORGS),  # a round not open yet: ignored, and not kept for later
    ]
    chain = chain_of()
    before = feed(chain, kill)
    assert before[-1].opened is not None and before[-1].opened.round == 2
    got = feed(chain, late, start=len(kill))
    assert [(v.disposition, v.reason) for v in got] == [
        (Disposition.IGNORED, Reason.SEAL_ROUND_CLOSED),
        (Disposition.IGNORED, Reason.SEAL_ROUND_CLOSED),
        (Disposition.REFUSED, Reason.MALFORMED),
        (Disposition.IGNORED, Reason.SEAL_ROUND_AHEAD),
    ]
    assert all(v.counted == () and v.refused_lines == () for v in got)
    assert (chain.open_round, chain.votes(), chain.equivocations, chain.latest) == (2, {}, [], None)
    assert chain.counts["seal_round_closed"] == 2 and chain.counts["seal_round_ahead"] == 1
    # The same topic without those records opens and ends the same rounds.
    a2 = _again(A1, 2)
    tail = [merged(a2, ORGS[:4])]
    with_late = feed(chain_of(), [*kill, *late, *tail])
    without = feed(chain_of(), [*kill, *tail])
    assert [f.digest for f in finals(with_late)] == [f.digest for f in finals(without)]
    assert [f.digest for f in finals(without)] == [a2.digest]


def test_equivocation_is_per_round_and_votes_in_two_rounds_are_not_equivocation() -> None:
    records = [
        cosigned(A1, UN),
        cosigned(B1, UN),  # UN's second text in round 1: evidence
        cosigned(A1, OSCE),
        cosigned(B1, NATO),
        cosigned(A1, SCO),
        cosigned(B1, EU),  # A 3, B 2, CSTO yet to vote
        cosigned(C1, CSTO),  # 3, 2, 1: dead
        cosigned(_again(A1, 2), UN),  # a vote in round 2
        cosigned(_again(B1, 2), UN),  # a second text in round 2: evidence again
    ]
    chain = chain_of()
    verdicts = feed(chain, records)
    assert verdicts[6].opened is not None
    first, second = chain.equivocations
    assert (first.org, first.epoch, first.round, first.first_offset, first.second_offset) == (
        UN, 1, 1, 0, 1,
    )  # fmt: skip
    assert (second.org, second.epoch, second.round, second.first_offset) == (UN, 1, 2, 7)
    assert second.second_offset == 8 and second.to_json()["round"] == 2
    assert verdicts[7].counted == (UN,) and verdicts[7].equivocations == ()
    assert verdicts[8].equivocations == (second,)
    assert chain.votes() == {UN: _again(A1, 2).digest}


def _ring_with_node_keys(orgs: Sequence[str]) -> KeyRing:
    kr = KeyRing(MANDATE)
    for acc in KR.accreditations(Role.NODE):
        if acc.org in orgs:
            kr.add_accreditation(acc)
    return kr


def test_the_electorate_is_the_key_ring_s() -> None:
    """Only organizations whose node key could count are waited for: a 3-2 split among five
    is dead when the sixth has no usable node key, alive when it has one."""
    one = seal()
    two = successor(one)
    other = successor(one, parts={REPORTS_UN: 40, REGISTRY: 9})
    split = [merged(two, (OSCE, EU, NATO)), merged(other, (CSTO, SCO))]
    start = [merged(one, ORGS[:4])]
    all_keys = feed(chain_of(), [*start, *split])
    assert all_keys[-1].opened is None  # UN could still make `two` final
    kr = keyring()
    un_node = KR.lookup(node_key(UN).key_id)
    kr.apply(sign_revocation(Revocation(UN, un_node.key_id, 1, NOW_MS, "lost", 1, MID),
                             M.scenario.org_roots[UN]))  # fmt: skip
    revoked = feed(chain_of(kr), [*start, *split])
    assert [f.epoch for f in finals(revoked)] == [1]
    opened = revoked[-1].opened
    assert opened is not None and (opened.epoch, opened.round) == (2, 2)
    assert (opened.tallies, opened.undecided) == ((3, 2), 0)
    # Epoch 1 (the bootstrap): a text's trust state may be its own, so an organization without
    # a node key in one text's ring could still vote on another text: every organization of
    # the mandate is waited for on a text nobody signed yet.
    four = _ring_with_node_keys((UN, OSCE, EU, NATO))
    two_votes = [cosigned(A1, UN), cosigned(B1, OSCE)]
    assert [v.opened for v in feed(chain_of(four), two_votes)] == [None, None]
    # From epoch 2 on, one ring counts every text of the epoch: its node keys are the limit
    # (neither text can get more than 1 + 2 votes, nor a fresh one more than 2).
    first = final_of(one)
    p, q = successor(one), successor(one, parts={REPORTS_UN: 40, REGISTRY: 9})
    verdicts = feed(chain_of(four, latest=first), [cosigned(p, UN), cosigned(q, OSCE)],
                    start=first.offset + 1)  # fmt: skip
    opened = verdicts[1].opened
    assert opened is not None and (opened.tallies, opened.undecided) == ((1, 1), 2)


def test_epoch_electorate_counts_keys_usable_after_the_previous_seal() -> None:
    kr = keyring()
    spare = SigningKey.from_seed(b"\x0a" * 32)
    acc = Accreditation("sco-node-2", SCO, Role.NODE, spare.public_key, NOW_MS - 10, NOW_MS,
                        104, MID)  # fmt: skip
    only_spare = KeyRing(MANDATE)
    only_spare.add_accreditation(acc)
    assert epoch_electorate(only_spare, 2, NOW_MS - 1) == {SCO}
    assert epoch_electorate(only_spare, 2, NOW_MS) == frozenset()  # expired by t_e > t_{e-1}
    assert epoch_electorate(kr, 2, NOW_MS) == frozenset(ORGS)
    assert node_electorate(kr, seal(2, prev=bytes(32))) == frozenset(ORGS)


def test_the_last_round_never_dies() -> None:
    last = seal(round_=MAX_ROUND)
    other = seal(parts={REPORTS_UN: 3}, round_=MAX_ROUND)
    with pytest.raises(VerificationError):
        dataclasses.replace(last, round=MAX_ROUND + 1)
    chain = chain_of()
    # Reaching the last round takes 2^31 - 1 dead rounds: the chain is put there directly.
    chain._open.round = MAX_ROUND
    verdicts = feed(chain, [merged(last, (UN, OSCE, EU)), merged(other, (NATO, CSTO, SCO))])
    assert [v.opened for v in verdicts] == [None, None]
    assert chain.open_round == MAX_ROUND


_VOTE = st.tuples(st.sampled_from(ORGS), st.integers(0, 2), st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(votes=st.lists(_VOTE, min_size=1, max_size=14))
def test_a_round_dies_exactly_when_no_text_can_reach_k(
    votes: list[tuple[str, int, bool]],
) -> None:
    """Any sequence of proposals and cosignatures on three texts (an organization's first
    cosignature is its vote, later ones equivocation or repeats; a proposal is no vote): the
    first text to reach k is final, and otherwise the round dies at exactly the first record
    after which no text can reach k."""
    texts = (A1, B1, C1)
    records = [
        proposed(texts[t], org) if as_proposer else cosigned(texts[t], org)
        for org, t, as_proposer in votes
    ]
    verdicts = feed(chain_of(), records)
    first: dict[str, int] = {}
    want_final = want_open = None
    for i, (org, t, as_proposer) in enumerate(votes):
        if as_proposer:
            continue  # no vote
        first.setdefault(org, t)
        tallies = Counter(first.values())
        if tallies[t] >= K and first[org] == t:
            want_final = (i, texts[t].digest)
            break
        cast = [(o, t) for o, t, proposal in votes[: i + 1] if not proposal]
        if _dead_after(cast) == len(cast):
            want_open = i
            break
    event("final" if want_final else "round 2 opened" if want_open is not None else "open")
    got_final = [(v.offset, v.final.digest) for v in verdicts if v.final is not None]
    got_open = [v.offset for v in verdicts if v.opened is not None]
    assert got_final == ([] if want_final is None else [want_final])
    assert got_open == ([] if want_open is None else [want_open])
    # After either, nothing of round 1 counts.
    stop = want_final[0] if want_final else want_open
    if stop is not None:
        assert all(v.disposition is Disposition.IGNORED for v in verdicts[stop + 1 :])


def test_one_equivocating_signer_and_a_hiding_operator_can_kill_a_round_final_elsewhere() -> None:
    """The bound is tight: A is final for one reader with exactly k signers; a reader shown
    NATO's other text of round 1 first (NATO signed two) and nothing else sees round 1 dead,
    and can end epoch 1 in round 2 on another text. NATO alone equivocated, and the two views
    together prove it."""
    nato_a, nato_b = cosigned(A1, NATO), cosigned(B1, NATO)
    honest = [proposed(A1, UN), cosigned(A1, UN), cosigned(A1, OSCE), cosigned(A1, EU)]
    view_a = [*honest, nato_a]
    (final_a,) = finals(feed(chain_of(), view_a))
    assert final_a.signers == {UN, OSCE, EU, NATO}
    b2 = _again(B1, 2)
    view_b = [nato_b, *honest, cosigned(C1, CSTO), cosigned(C1, SCO), merged(b2, ORGS[:4])]
    verdicts = feed(chain_of(), view_b)
    (final_b,) = finals(verdicts)
    assert (final_b.digest, final_b.round) == (b2.digest, 2) != (final_a.digest, final_a.round)
    seen = chain_of()
    feed(seen, [*honest, nato_b, nato_a])  # a reader shown both of NATO's round-1 records
    assert {(e.org, e.round) for e in seen.equivocations} == {(NATO, 1)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hiding_records_kills_a_round_another_reader_finalised_only_by_equivocation(
    data: st.DataObject,
) -> None:
    """An operator shows two readers different subsets of one epoch's round-1 records, in any
    order. Honest organizations sign one text; dishonest ones sign any texts. When reader A
    finds a text T final in round 1 with signers S and reader B finds round 1 dead, at least
    |S| - k + 1 members of S signed another text of round 1: equivocation, which the two
    views together prove (module docstring, "What an operator who hides records can do")."""
    orgs = data.draw(st.permutations(ORGS))
    dishonest = set(orgs[: data.draw(st.integers(0, 3))])
    texts = (A1, B1, C1)
    records: list[bytes] = []
    signed: dict[str, set[int]] = {o: set() for o in ORGS}
    text = st.sampled_from([0, 0, 0, 1, 2])  # most honest votes on one text
    for org in ORGS:
        choices = (
            data.draw(st.lists(text, min_size=1, max_size=3, unique=True))
            if org in dishonest
            else [data.draw(text)]
        )
        for t in choices:
            signed[org].add(t)
            records.append(cosigned(texts[t], org))

    def view() -> list[bytes]:
        shown = data.draw(st.permutations(records))
        return shown[: len(shown) - data.draw(st.integers(0, 2))]

    view_a, view_b = view(), view()
    finals_a = finals(feed(chain_of(), view_a))
    opened_b = [v.opened for v in feed(chain_of(), view_b) if v.opened is not None]
    event(f"final for A: {bool(finals_a)}, round 2 for B: {bool(opened_b)}")
    if finals_a and opened_b:
        final = finals_a[0]
        t = next(i for i, p in enumerate(texts) if p.digest == final.digest)
        equivocators = {o for o in final.signers if len(signed[o]) > 1 and t in signed[o]}
        assert len(equivocators) >= len(final.signers) - K + 1
        assert equivocators <= dishonest


# -- the witness's rule ------------------------------------------------------------------------

LOG: dict[PartitionRef, list[bytes]] = {
    REPORTS_UN: [b"report %d" % i for i in range(30)],
    REGISTRY: [b"acc %d" % i for i in range(8)],
    ("obus.reports.eu", 0): [b"eu %d" % i for i in range(5)],
}


def view(
    sizes: dict[PartitionRef, int] | None = None,
    *,
    ends: dict[PartitionRef, int] | None = None,
    log: dict[PartitionRef, list[bytes]] = LOG,
) -> TreeView:
    trees: dict[PartitionRef, MerkleTree] = {}
    for ref, values in log.items():
        tree = trees[ref] = MerkleTree()
        for value in values[: len(values) if sizes is None else sizes.get(ref, 0)]:
            tree.append(value)
    return TreeView(trees, lambda topic: topic.startswith("obus."), ends or {})


FIRST_SIZES = {REPORTS_UN: 10, REGISTRY: 4}


def first_final() -> FinalSeal:
    p = make_proposal(view(FIRST_SIZES), None, mandate_id=MID, now_ms=NOW_MS)
    assert p is not None
    return p.final(digest=p.digest, signers=ORGS[:4], offset=3)


def test_a_proposer_seals_what_it_read_and_every_witness_cosigns_it() -> None:
    previous = first_final()
    assert set(previous.partitions) == {REPORTS_UN, REGISTRY}  # nothing read of eu: not listed
    p = make_proposal(view(), previous, mandate_id=MID, now_ms=NOW_MS + 5_000)
    assert p is not None
    assert {ref: s.size for ref, s in p.partitions.items()} == {
        ref: len(v) for ref, v in LOG.items()
    }
    decision = decide_cosign(
        p,
        view(),
        previous,
        mandate_id=MID,
        now_ms=NOW_MS + 6_000,
        tolerance_ms=60_000,
        voted={},
        open_round=1,
    )
    assert decision.verdict is Cosign.COSIGN
    record = cosign_seal(p.text(), node_key(EU), name(EU), now_ms=NOW_MS + 6_000)
    assert verify_seal(record, KR).orgs == {EU}


def _decide(p: SealProposal, v: TreeView | None = None, **kw: Any) -> tuple[Cosign, Reason | None]:
    args: dict[str, Any] = {
        "mandate_id": MID,
        "now_ms": p.time_ms,
        "tolerance_ms": 60_000,
        "voted": {},
        "open_round": 1,
    }
    args.update(kw)
    previous = args.pop("previous", first_final())
    d = decide_cosign(p, v or view(), previous, **args)
    return d.verdict, d.reason


def _next(**changes: Any) -> SealProposal:
    previous = first_final()
    p = make_proposal(view(), previous, mandate_id=MID, now_ms=NOW_MS + 5_000)
    assert p is not None
    return dataclasses.replace(p, **changes)


def _with_root(p: SealProposal, ref: PartitionRef, new_root: bytes) -> SealProposal:
    parts = dict(p.partitions)
    parts[ref] = PartitionSeal(parts[ref].size, new_root)
    return dataclasses.replace(p, partitions=parts)


def _with_size(p: SealProposal, ref: PartitionRef, size: int, new_root: bytes) -> SealProposal:
    parts = dict(p.partitions)
    parts[ref] = PartitionSeal(size, new_root)
    return dataclasses.replace(p, partitions=parts)


_OTHER_LOG = {**LOG, REPORTS_UN: [b"forged", *LOG[REPORTS_UN][1:]]}

WITNESS_CASES: dict[
    str, tuple[Callable[[], tuple[Cosign, Reason | None]], Cosign, Reason | None]
] = {
    "consistent": (lambda: _decide(_next()), Cosign.COSIGN, None),
    "another mandate": (
        lambda: _decide(_next(mandate_id="other")),
        Cosign.REFUSE,
        Reason.WRONG_MANDATE,
    ),
    "epoch already final": (
        lambda: _decide(_next(epoch=1)),
        Cosign.REFUSE,
        Reason.SEAL_EPOCH_FINAL,
    ),
    "epoch not open here yet": (lambda: _decide(_next(epoch=3)), Cosign.WAIT, None),
    "round dead here": (
        lambda: _decide(_next(), open_round=2),
        Cosign.REFUSE,
        Reason.SEAL_ROUND_CLOSED,
    ),
    "round not open here yet": (lambda: _decide(_next(round=2)), Cosign.WAIT, None),
    "voted in an earlier round": (
        lambda: _decide(_next(round=2), open_round=2, voted={(2, 1): root("other")}),
        Cosign.COSIGN,
        None,
    ),
    "voted for another text in this round": (
        lambda: _decide(_next(round=2), open_round=2, voted={(2, 2): root("other")}),
        Cosign.REFUSE,
        Reason.SEAL_ALREADY_COSIGNED,
    ),
    "voted for this text": (
        lambda: _decide(_next(), voted={(2, 1): _next().digest}),
        Cosign.ALREADY,
        None,
    ),
    "voted for another text": (
        lambda: _decide(_next(), voted={(2, 1): root("other")}),
        Cosign.REFUSE,
        Reason.SEAL_ALREADY_COSIGNED,
    ),
    "wrong prev": (
        lambda: _decide(_next(prev_digest=root("x"))),
        Cosign.REFUSE,
        Reason.SEAL_WRONG_PREV,
    ),
    "time not after the previous": (
        lambda: _decide(_next(time_ms=NOW_MS), now_ms=NOW_MS),
        Cosign.REFUSE,
        Reason.SEAL_TIME_NOT_INCREASING,
    ),
    "time ahead of the clock": (
        lambda: _decide(_next(), now_ms=NOW_MS + 5_000 - 60_001),
        Cosign.REFUSE,
        Reason.SEAL_TIME_OUT_OF_TOLERANCE,
    ),
    "time behind the clock": (
        lambda: _decide(_next(), now_ms=NOW_MS + 5_000 + 60_001),
        Cosign.REFUSE,
        Reason.SEAL_TIME_OUT_OF_TOLERANCE,
    ),
    "time at the tolerance": (
        lambda: _decide(_next(), now_ms=NOW_MS + 5_000 + 60_000),
        Cosign.COSIGN,
        None,
    ),
    "size shrinks": (
        lambda: _decide(_with_size(_next(), REPORTS_UN, 9, root(9))),
        Cosign.REFUSE,
        Reason.SEAL_SIZE_SHRINKS,
    ),
    "not a bus topic": (
        lambda: _decide(_with_size(_next(), ("elsewhere", 0), 1, root(1))),
        Cosign.REFUSE,
        Reason.SEAL_UNKNOWN_PARTITION,
    ),
    "not read that far": (
        lambda: _decide(_next(), view({REPORTS_UN: 20, REGISTRY: 8, ("obus.reports.eu", 0): 5})),
        Cosign.WAIT,
        None,
    ),
    "never read that partition": (
        lambda: _decide(_next(), view({REPORTS_UN: 30, REGISTRY: 8})),
        Cosign.WAIT,
        None,
    ),
    "beyond the log's end": (
        lambda: _decide(
            _next(),
            view({REPORTS_UN: 20, REGISTRY: 8, ("obus.reports.eu", 0): 5}, ends={REPORTS_UN: 25}),
        ),
        Cosign.REFUSE,
        Reason.SEAL_BEYOND_LOG,
    ),
    "another root at the sealed size": (
        lambda: _decide(_with_root(_next(), REGISTRY, root("forged"))),
        Cosign.REFUSE,
        Reason.SEAL_ROOT_MISMATCH,
    ),
    "a mismatch outweighs waiting elsewhere": (
        lambda: _decide(
            _with_root(_next(), REGISTRY, root("forged")),
            view({REPORTS_UN: 20, REGISTRY: 8, ("obus.reports.eu", 0): 5}),
        ),
        Cosign.REFUSE,
        Reason.SEAL_ROOT_MISMATCH,
    ),
    "own log differs from the previous final seal": (
        lambda: _decide(
            _with_root(_next(), REPORTS_UN, view(log=_OTHER_LOG).root_at(REPORTS_UN, 30)),
            view(log=_OTHER_LOG),
        ),
        Cosign.REFUSE,
        Reason.SEAL_FINAL_MISMATCH,
    ),
    "the first seal": (
        lambda: _decide(seal(parts={}), previous=None),
        Cosign.COSIGN,
        None,
    ),
}


@pytest.mark.parametrize(
    ("decide", "verdict", "reason"), WITNESS_CASES.values(), ids=WITNESS_CASES.keys()
)
def test_the_witness_rule(
    decide: Callable[[], tuple[Cosign, Reason | None]], verdict: Cosign, reason: Reason | None
) -> None:
    assert decide() == (verdict, reason)


def test_a_proposer_waits_and_refuses_like_a_witness() -> None:
    previous = first_final()
    assert (
        make_proposal(
            view({REPORTS_UN: 9, REGISTRY: 8}), previous, mandate_id=MID, now_ms=NOW_MS + 1
        )
        is None
    )
    with pytest.raises(VerificationError) as exc:
        make_proposal(view(), previous, mandate_id=MID, now_ms=NOW_MS)
    assert exc.value.reason is Reason.SEAL_TIME_NOT_INCREASING
    with pytest.raises(VerificationError) as exc:
        make_proposal(view(log=_OTHER_LOG), previous, mandate_id=MID, now_ms=NOW_MS + 1)
    assert exc.value.reason is Reason.SEAL_FINAL_MISMATCH
    outside = {**LOG, ("elsewhere", 0): [b"x"]}
    p = make_proposal(view(log=outside), previous, mandate_id=MID, now_ms=NOW_MS + 1)
    assert p is not None and ("elsewhere", 0) not in p.partitions and p.round == 1
    later = make_proposal(view(), previous, mandate_id=MID, now_ms=NOW_MS + 1, open_round=3)
    assert later == dataclasses.replace(p, round=3)


# -- properties: what a dishonest minority can and cannot do ------------------------------------

PARTS: tuple[PartitionRef, ...] = (
    ("obus.mandate", 0),
    REGISTRY,
    ("obus.reports.eu", 0),
    REPORTS_UN,
    ("obus.reports.un", 1),
)


@dataclasses.dataclass
class World:
    """An honest seal chain with its records, and a dishonest minority's records with where they
    go: ``slots[i]`` is the index of the honest record the i-th dishonest record comes before
    (``len(honest)``: at the end), never before ``earliest[i]`` (a copy comes after what it
    copies)."""

    dishonest: tuple[str, ...]
    texts: list[SealProposal]
    honest: list[bytes]
    extra: list[bytes]
    slots: list[int]
    earliest: list[int]

    def log(self, order: Sequence[int] | None = None) -> list[bytes]:
        """The seals topic: honest records with the dishonest ones (in ``order``) put in."""
        order = range(len(self.extra)) if order is None else order
        slot_list = sorted(self.slots)
        placed: list[list[bytes]] = [[] for _ in range(len(self.honest) + 1)]
        for slot, i in zip(slot_list, order, strict=True):
            placed[max(slot, self.earliest[i])].append(self.extra[i])
        out: list[bytes] = []
        for j in range(len(self.honest) + 1):
            out.extend(placed[j])
            if j < len(self.honest):
                out.append(self.honest[j])
        return out


def _garbage(draw: st.DrawFn, base: SealProposal) -> SealProposal:
    """Another text for base's epoch: broken, or a well-formed successor with another log."""
    kind = draw(st.sampled_from(["prev", "roots", "sizes", "shrink", "time"]))
    sizes = {ref: s.size for ref, s in base.partitions.items()}
    if kind == "prev":
        return dataclasses.replace(base, prev_digest=draw(st.binary(min_size=32, max_size=32)))
    if kind == "roots":
        return SealProposal(
            MID,
            base.epoch,
            base.time_ms,
            base.prev_digest,
            {ref: PartitionSeal(n, root(("forged", ref, n))) for ref, n in sizes.items()},
        )
    if kind == "sizes":
        ref = draw(st.sampled_from(PARTS))
        sizes[ref] = sizes.get(ref, 0) + draw(st.integers(1, 3))
    elif kind == "shrink" and sizes:
        ref = draw(st.sampled_from(sorted(sizes)))
        sizes[ref] -= 1
        sizes = {r: n for r, n in sizes.items() if n > 0}
    time_ms = base.time_ms - draw(st.integers(0, 2)) if kind == "time" else base.time_ms
    parts = {ref: PartitionSeal(n, root((ref, n))) for ref, n in sizes.items()}
    return SealProposal(MID, base.epoch, max(time_ms, 1), base.prev_digest, parts)


@st.composite
def worlds(draw: st.DrawFn, *, max_dishonest: int = len(ORGS) - K) -> World:
    orgs = draw(st.permutations(ORGS))
    n_bad = draw(st.integers(0, max_dishonest))
    dishonest, honest_orgs = tuple(orgs[:n_bad]), orgs[n_bad:]
    texts: list[SealProposal] = []
    honest: list[bytes] = []
    sizes = dict.fromkeys(PARTS, 0)
    prev, time_ms = GENESIS_DIGEST, NOW_MS
    for epoch in range(1, draw(st.integers(1, 3)) + 1):
        for ref in PARTS:
            sizes[ref] += draw(st.integers(0, 3))
        time_ms += draw(st.integers(1, 20_000))
        p = SealProposal(
            MID,
            epoch,
            time_ms,
            prev,
            {r: PartitionSeal(n, root((r, n))) for r, n in sizes.items() if n},
        )
        proposer = draw(st.sampled_from(honest_orgs))
        others = [o for o in honest_orgs if o != proposer]
        cosigners = draw(st.lists(st.sampled_from(others), min_size=K - 1, unique=True))
        honest.append(proposed(p, proposer))
        honest.extend(cosigned(p, o) for o in [proposer, *cosigners])
        texts.append(p)
        prev = p.digest
    # The text a dishonest organization could sign for the epoch after the honest chain.
    after = SealProposal(
        MID,
        len(texts) + 1,
        time_ms + 1,
        prev,
        {r: PartitionSeal(n, root((r, n))) for r, n in sizes.items() if n},
    )
    extra: list[bytes] = []
    earliest: list[int] = []
    for _ in range(draw(st.integers(0, 12))):
        kinds = ["noise", "observer", "replay", "copied_line"]
        if dishonest:
            kinds += ["garbage", "garbage", "cosign_honest", "bad_signature"]
        kind = draw(st.sampled_from(kinds))
        base = draw(st.sampled_from([*texts, after]))
        low = 0
        if kind == "noise":
            record = draw(
                st.sampled_from([b"", b"junk\n\n", honest[0][: draw(st.integers(0, 200))]])
            )
        elif kind == "observer":  # observers' keys of any organizations, on one text
            lines = []
            for org in draw(st.lists(st.sampled_from(ORGS), min_size=1, unique=True)):
                oid, okey = M.observer(org)
                lines.append(sign_note(base.text(), okey, key_name(org, oid)))
            record = Note(base.text(), tuple(lines)).encode()
        elif kind == "replay":
            low = draw(st.integers(0, len(honest) - 1))
            record, low = honest[low], low + 1
        elif kind == "copied_line":
            low = draw(st.integers(0, len(honest) - 1))
            record, low = _garbage(draw, base).text() + b"\n" + line_of(honest[low]), low + 1
        elif kind == "garbage":
            signers = draw(st.lists(st.sampled_from(dishonest), min_size=1, unique=True))
            text = _garbage(draw, base)
            record = proposed(text, signers[0]) if draw(st.booleans()) else merged(text, signers)
        elif kind == "cosign_honest":
            record = merged(
                base, draw(st.lists(st.sampled_from(dishonest), min_size=1, unique=True))
            )
        else:  # bad_signature: a dishonest organization's line, broken
            good = cosigned(base, draw(st.sampled_from(dishonest)))
            record = good[:-3] + (b"A" if good[-3:-2] != b"A" else b"B") + good[-2:]
        extra.append(record)
        earliest.append(low)
    slots = [draw(st.integers(0, len(honest))) for _ in extra]
    return World(dishonest, texts, honest, extra, slots, earliest)


def _run(
    log: Sequence[bytes], trust: Callable[[SealProposal], KeyRing | None] | None = None
) -> SealChain:
    chain = chain_of(KR if trust is None else trust)
    feed(chain, log)
    return chain


def _final_chain(log: Sequence[bytes]) -> tuple[list[FinalSeal], SealChain]:
    chain = chain_of()
    return finals(feed(chain, log)), chain


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), data=st.data())
def test_a_dishonest_minority_cannot_change_the_final_seals(
    world: World, data: st.DataObject
) -> None:
    """With at most n - k = 2 dishonest organizations and the honest ones each signing only the
    honest seal of every epoch (k or more of them per epoch, the next epoch's records after the
    previous epoch's), whatever the minority publishes (broken and well-formed texts of its own,
    cosignatures of the honest texts, broken lines, observer-key lines, junk, replays of honest
    records after the original, honest lines pasted under its texts) and wherever it puts it:

    * the final seals are exactly the honest chain (digest, time, sizes, roots, prev), epoch by
      epoch, each signed by at least k organizations;
    * the same when the minority's records are removed, or reordered among themselves;
    * only dishonest organizations are ever found equivocating.

    What the minority may change is *when* a seal becomes final (its cosignatures of an honest
    text count) and so the offset and the signer set of a final seal, never which text it is.
    """
    want = [p.digest for p in world.texts]
    got, chain = _final_chain(world.log())
    assert [f.digest for f in got] == want
    assert all(len(f.signers) >= K for f in got)
    assert [SealProposal.of_final(f) for f in got] == world.texts
    assert {e.org for e in chain.equivocations} <= set(world.dishonest)
    assert [f.digest for f in _final_chain(world.honest)[0]] == want
    order = data.draw(st.permutations(range(len(world.extra))))
    assert [f.digest for f in _final_chain(world.log(order))[0]] == want


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_dishonest_minority_cannot_forge_a_final_seal(data: st.DataObject) -> None:
    """One epoch. Honest organizations split their one vote each among up to three honest texts
    (different sizes of one log); at most k - 1 = 3 dishonest organizations sign whatever they
    like, as often as they like, in any order. Then every final seal is one of the honest texts,
    at least one honest organization voted for it, and when some honest text holds the votes of
    k honest organizations a final seal exists."""
    orgs = data.draw(st.permutations(ORGS))
    n_bad = data.draw(st.integers(0, K - 1))
    dishonest, honest_orgs = orgs[:n_bad], orgs[n_bad:]
    candidates = [seal(parts={REPORTS_UN: n, REGISTRY: 1}) for n in (5, 6, 7)]
    records: list[bytes] = []
    votes: dict[str, int] = {}
    for org in honest_orgs:
        votes[org] = data.draw(st.integers(0, 2))
        p = candidates[votes[org]]
        records.extend([cosigned(p, org)] * data.draw(st.integers(1, 2)))
        if data.draw(st.booleans()):
            records.append(proposed(p, org))  # no vote
    for _ in range(data.draw(st.integers(0, 10))):
        if not dishonest:
            break
        signer = data.draw(st.sampled_from(dishonest))
        text = data.draw(st.sampled_from([*candidates, seal(parts={REPORTS_UN: 99})]))
        records.append(cosigned(text, signer))
    records = data.draw(st.permutations(records))
    got, _ = _final_chain(records)
    honest_digests = [p.digest for p in candidates]
    for f in got:
        assert f.digest in honest_digests
        assert len(f.signers) >= K
        assert f.signers & set(honest_orgs)
    if any(list(votes.values()).count(i) >= K for i in range(3)):
        assert len(got) == 1


@st.composite
def split_logs(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """A seals topic where honest organizations split their votes: in each round every
    organization, in a random order, cosigns one of up to three texts of the round (some
    proposing it in the same record), until a text is final or the round dies; one to three epochs. From the
    third round of an epoch on, everyone signs the first text, so every epoch ends."""
    chain = chain_of()
    log: list[bytes] = []
    epochs = draw(st.integers(1, 3))
    while chain.latest is None or chain.latest.epoch < epochs:
        at = (chain.open_epoch, chain.open_round)
        n_texts = 1 if at[1] >= 3 else draw(st.integers(1, 3))
        if chain.latest is None:
            texts = [
                seal(parts={REPORTS_UN: 10 + i, REGISTRY: 2}, round_=at[1]) for i in range(n_texts)
            ]
        else:
            before = SealProposal.of_final(chain.latest)
            texts = [
                successor(before, parts={r: p.size + 1 + i for r, p in before.partitions.items()},
                          round_=at[1])
                for i in range(n_texts)
            ]  # fmt: skip
        for org in draw(st.permutations(ORGS)):
            p = texts[draw(st.integers(0, n_texts - 1))]
            own = proposed(p, org) + line_of(cosigned(p, org))
            log.append(own if draw(st.booleans()) else cosigned(p, org))
            chain.offer(len(log) - 1, log[-1])
            if (chain.open_epoch, chain.open_round) != at:
                break
    return log, epochs


def _any_reader_agrees(log: list[bytes], data: st.DataObject) -> None:
    """Every reader fed ``log`` derives the verdicts of one that read it straight, whenever it
    learns each epoch's trust state (a record waits for it) and wherever it restarts from a
    final seal."""
    baseline = feed(chain_of(), log)
    known: set[int] = set()
    chain = chain_of(lambda p: KR if p.epoch in known else None)
    got: list[RecordVerdict] = []
    for offset, value in enumerate(log):
        got.extend(chain.offer(offset, value).verdicts)
        if data.draw(st.booleans()):
            known.add(data.draw(st.integers(1, 5)))
            got.extend(chain.resume().verdicts)
    known.update(range(1, 6))
    got.extend(chain.resume().verdicts)
    assert got == baseline
    done = finals(baseline)
    if done:
        latest = data.draw(st.sampled_from(done))
        again = chain_of(latest=latest)
        rest = feed(again, log[latest.offset + 1 :], start=latest.offset + 1)
        assert rest == baseline[latest.offset + 1 :]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), data=st.data())
def test_verdicts_do_not_depend_on_when_trust_is_known_nor_on_restarts(
    world: World, data: st.DataObject
) -> None:
    """A dishonest minority's records anywhere: see :func:`_any_reader_agrees`."""
    _any_reader_agrees(world.log(), data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(built=split_logs(), data=st.data())
def test_rounds_do_not_depend_on_when_trust_is_known_nor_on_restarts(
    built: tuple[list[bytes], int], data: st.DataObject
) -> None:
    """Split votes and the rounds they open: see :func:`_any_reader_agrees`; every epoch the
    log was built for is final."""
    log, epochs = built
    verdicts = feed(chain_of(), log)
    assert [f.epoch for f in finals(verdicts)] == list(range(1, epochs + 1))
    rounds = [v.opened for v in verdicts if v.opened is not None]
    event(f"rounds opened: {min(len(rounds), 3)}")
    _any_reader_agrees(log, data)
