"""Signed notes, checkpoints and cosignatures: C2SP / Go vectors, then obus's own rules."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.checkpoint import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    Note,
    NoteSignature,
    Verifier,
    cosign,
    cosignature_message,
    format_vkey,
    key_name,
    merge_notes,
    note_key_hash,
    open_note,
    origin_for,
    parse_checkpoint,
    parse_note,
    parse_origin,
    parse_vkey,
    sign_note,
    signed_checkpoint,
    verify_checkpoint,
)
from bus.crypto import SigningKey
from bus.errors import Reason, VerificationError
from bus.merkle import MerkleTree
from bus.model import Revocation, Role
from bus.sign import sign_revocation
from nodes.demo.scenario import demo_key
from tests.mission import NOW_MS, Mission, make_mission

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "signed-note.json").read_text()
)


def _index(vkeys: list[str]) -> dict[tuple[str, bytes], Verifier]:
    return {(v.name, v.key_hash): v for v in map(parse_vkey, vkeys)}


# -- C2SP signed-note / Go note vectors --------------------------------------------------------


@pytest.mark.parametrize("vk", VECTORS["verifier_keys"], ids=lambda v: v["name"])
def test_verifier_keys_parse_and_reformat(vk: dict[str, Any]) -> None:
    v = parse_vkey(vk["vkey"])
    assert v.name == vk["name"]
    assert v.key_hash.hex() == vk["key_id_hex"]
    assert v.sig_type == vk["signature_type"]
    assert v.public_key.hex() == vk["public_key_hex"]
    assert format_vkey(v.name, v.public_key, v.sig_type) == vk["vkey"]


@pytest.mark.parametrize(
    "vk", [v for v in VECTORS["invalid_verifier_keys"] if "vkey" in v], ids=lambda v: v["reason"]
)
def test_invalid_verifier_keys_are_refused(vk: dict[str, Any]) -> None:
    with pytest.raises(VerificationError) as exc:
        parse_vkey(vk["vkey"])
    assert exc.value.reason is Reason.MALFORMED_KEY


def test_every_substring_and_increment_of_a_vkey_is_refused() -> None:
    """golang/mod TestNewVerifier: proper substrings and one-character increments fail."""
    good = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    bad = {good[i:j] for i in range(len(good)) for j in range(i, len(good) + 1)} - {good}
    bad |= {good[:i] + chr(ord(good[i]) + 1) + good[i + 1 :] for i in range(len(good))}
    for text in sorted(bad):
        with pytest.raises(VerificationError):
            parse_vkey(text)


@pytest.mark.parametrize("sk", VECTORS["signer_keys"], ids=lambda s: s["name"])
def test_signer_seed_derives_the_published_verifier(sk: dict[str, Any]) -> None:
    key = SigningKey.from_seed(bytes.fromhex(sk["ed25519_seed_hex"]))
    assert format_vkey(sk["name"], key.public_key) == sk["matching_vkey"]


@pytest.mark.parametrize("case", VECTORS["signed_notes"], ids=lambda c: c["id"])
def test_signed_notes_open(case: dict[str, Any]) -> None:
    opened = open_note(case["note"].encode(), _index(case["verifier_keys"]))
    assert opened.text == case["text"].encode()
    assert [v.name for v, _, _ in opened.verified] == [s["key_name"] for s in case["signatures"]]
    for (_, sig, ts), want in zip(opened.verified, case["signatures"], strict=True):
        assert sig.key_hash.hex() == want["key_id_hex"]
        assert sig.body.hex() == want["ed25519_signature_hex"]
        assert ts is None
    assert parse_note(case["note"].encode()).encode() == case["note"].encode()


def test_signing_reproduces_the_go_note_byte_for_byte() -> None:
    sk = next(s for s in VECTORS["signer_keys"] if s["name"] == "PeterNeumann")
    case = next(c for c in VECTORS["signed_notes"] if c["id"] == "go-note-peterneumann")
    key = SigningKey.from_seed(bytes.fromhex(sk["ed25519_seed_hex"]))
    text = case["text"].encode()
    assert Note(text, (sign_note(text, key, "PeterNeumann"),)).encode() == case["note"].encode()


# Go's errors mapped to our reason codes: malformed note -> MALFORMED, no verifiable
# signatures -> UNKNOWN_KEY, invalid signature by a known key -> BAD_SIGNATURE.
OPEN_CASES: dict[str, Reason | list[str]] = {
    "no-trusted-keys": Reason.UNKNOWN_KEY,
    "invalid-signature-known-key": Reason.BAD_SIGNATURE,
    "duplicate-and-unverified-sigs": ["PeterNeumann"],
    "too-many-signatures": Reason.MALFORMED,
    "text-only": Reason.MALFORMED,
    "text-blank-line-no-sigs": Reason.MALFORMED,
    "sig-line-missing-final-newline": Reason.MALFORMED,
    "leading-control-char-0x01": Reason.MALFORMED,
    "leading-invalid-utf8-0xff": Reason.MALFORMED,
    "key-name-with-space": Reason.MALFORMED,
    "unexpected-line-after-sigs": Reason.MALFORMED,
}


@pytest.mark.parametrize("case", VECTORS["note_open_cases"], ids=lambda c: c["id"])
def test_note_open_cases(case: dict[str, Any]) -> None:
    want = OPEN_CASES[case["id"]]
    note = base64.b64decode(case["note_b64"])
    verifiers = _index(case["verifier_keys"])
    if isinstance(want, Reason):
        with pytest.raises(VerificationError) as exc:
            open_note(note, verifiers)
        assert exc.value.reason is want
    else:
        opened = open_note(note, verifiers)
        assert [v.name for v, _, _ in opened.verified] == want
        assert len(opened.unverified) == 2  # EnochRoot's good line and its corrupted copy


def test_every_open_case_is_covered() -> None:
    assert {c["id"] for c in VECTORS["note_open_cases"]} == set(OPEN_CASES)


def test_sum_golang_org_checkpoint_with_witness_signatures() -> None:
    case = VECTORS["checkpoints"][0]
    opened = open_note(
        case["with_extra_cosigner_signatures"].encode(), _index(case["verifier_keys"])
    )
    assert [v.name for v, _, _ in opened.verified] == [s["key_name"] for s in case["signatures"]]
    cp = parse_checkpoint(opened.text)
    assert (cp.origin, cp.size, cp.root.hex()) == (
        case["origin"],
        case["tree_size"],
        case["root_hash_hex"],
    )
    assert cp.text() == case["text"].encode()


def test_c2sp_checkpoint_and_cosignature_examples_parse() -> None:
    """The C2SP examples publish no keys: their layout is checked, not their signatures."""
    cp_case, cosig_case = VECTORS["checkpoints"][1], VECTORS["checkpoints"][2]
    note = parse_note(cp_case["checkpoint"].encode())
    cp = parse_checkpoint(note.text)
    assert (cp.origin, cp.size, base64.b64encode(cp.root).decode()) == (
        cp_case["origin"],
        cp_case["tree_size"],
        cp_case["root_hash_b64"],
    )
    note = parse_note(cosig_case["checkpoint"].encode())
    witness = note.signatures[1]
    want = cosig_case["signatures"][1]
    assert witness.name == want["key_name"]
    assert witness.key_hash.hex() == want["key_id_hex"]
    assert witness.timestamp == want["cosignature_v1_timestamp"]
    assert witness.body[8:].hex() == want["ed25519_signature_hex"]
    assert (
        cosignature_message(note.text, want["cosignature_v1_timestamp"]).decode()
        == cosig_case["cosignature_v1_signed_message"]
    )
    assert note.encode() == cosig_case["checkpoint"].encode()


# transparency-dev/formats accepts roots of any length and empty extension lines; obus pins
# 32-byte roots by default, and follows C2SP (extension lines are non-empty) on the second.
C2SP_DEVIATIONS = {"Log\n9944\ndGhlIHZpZXcgZnJvbSB0aGUgdHJlZSB0b3BzIGlzIGdyZWF0IQ==\n\n\n\n"}


@pytest.mark.parametrize(
    "case", VECTORS["checkpoint_text_parsing"]["cases"], ids=lambda c: repr(c["input"])[:40]
)
def test_checkpoint_text_parsing(case: dict[str, Any]) -> None:
    text = case["input"].encode()
    if case["expected"].startswith("accept") and case["input"] not in C2SP_DEVIATIONS:
        cp = parse_checkpoint(text, hash_size=None)
        if "origin" in case:
            assert (cp.origin, cp.size) == (case["origin"], case["size"])
            assert base64.b64encode(cp.root).decode() == case["hash_b64"]
        rest = "".join(f"{e}\n" for e in cp.extensions)
        assert rest == case.get("rest", rest)
        assert cp.text() == text
    else:
        with pytest.raises(VerificationError) as exc:
            parse_checkpoint(text, hash_size=None)
        assert exc.value.reason is Reason.MALFORMED


def test_checkpoint_text_rules_beyond_the_vectors() -> None:
    root = base64.b64encode(bytes(32)).decode()
    for bad in (
        f"o\n007\n{root}\n",  # leading zero: one checkpoint, one byte form
        f"o\n18446744073709551616\n{root}\n",  # 2**64
        f"o\n1\n{root[:-1]}A=\n",  # non-canonical base64 of the same bytes
        "o\n1\nYmFuYW5hcw==\n",  # not 32 bytes
        f"o\n1\n{root}",  # no final newline
        "o\n" + "9" * 5000 + f"\n{root}\n",  # huge number refused before int()
    ):
        with pytest.raises(VerificationError) as exc:
            parse_checkpoint(bad.encode())
        assert exc.value.reason is Reason.MALFORMED, bad[:40]


# -- obus checkpoints ----------------------------------------------------------------------


def _mission_with_nodes() -> tuple[Mission, dict[str, SigningKey]]:
    m = make_mission()
    keys = {}
    for org in ("un", "osce", "eu", "nato"):
        keys[org] = demo_key(f"test:node:{org}")
        m.accredit(f"{org}-node", org, keys[org], Role.NODE)
    return m, keys


def _checkpoint(m: Mission, size: int = 3, root: bytes | None = None) -> Checkpoint:
    tree = MerkleTree()
    for i in range(size):
        tree.append(b"record %d" % i)
    origin = origin_for(m.mandate_id, "obus.reports.un", 0)
    return Checkpoint(origin, size, tree.root() if root is None else root)


def test_origin_round_trip_and_refusals() -> None:
    assert parse_origin(origin_for("jmm-2026", "obus.reports.un", 2)) == (
        "jmm-2026",
        "obus.reports.un",
        2,
    )
    for bad in ("go.sum database tree", "obus/jmm/obus.reports.un/01", "obus/JMM/t/0", "obus/j/t/"):
        with pytest.raises(VerificationError) as exc:
            parse_origin(bad)
        assert exc.value.reason is Reason.CHECKPOINT_UNKNOWN_ORIGIN


def test_checkpoint_signed_and_cosigned_by_accredited_node_keys() -> None:
    m, keys = _mission_with_nodes()
    cp = _checkpoint(m)
    record = signed_checkpoint(cp, keys["un"], key_name("un", "un-node"))
    vc = verify_checkpoint(record, m.keyring, at_ms=NOW_MS, seq=1)
    assert vc.checkpoint == cp
    assert (vc.topic, vc.partition, vc.mandate_id) == ("obus.reports.un", 0, m.mandate_id)
    assert [(a.org, a.kind, a.timestamp) for a in vc.attestations] == [("un", "checkpoint", None)]

    text = cp.text()
    cosigs = [
        cosign(text, keys[o], key_name(o, f"{o}-node"), 1_793_491_200 + i)
        for i, o in enumerate(("osce", "eu"))
    ]
    one = Note(text, (cosigs[0],)).encode()
    vc1 = verify_checkpoint(one, m.keyring, at_ms=NOW_MS, seq=2)
    assert [(a.org, a.kind, a.timestamp) for a in vc1.attestations] == [
        ("osce", "cosignature", 1_793_491_200)
    ]
    merged = merge_notes(
        text, [parse_note(record).signatures[0].line(), *(c.line() for c in cosigs)]
    )
    assert verify_checkpoint(merged, m.keyring, at_ms=NOW_MS, seq=3).orgs == {"un", "osce", "eu"}


def test_cosignature_key_hash_differs_from_the_note_key_hash() -> None:
    key = demo_key("k")
    assert note_key_hash("n", 1, key.public_key) != note_key_hash(
        "n", SIG_COSIGNATURE_V1, key.public_key
    )


def _reject(m: Mission, record: bytes, reason: Reason, **kw: int) -> None:
    at_ms = kw.get("at_ms", NOW_MS)
    with pytest.raises(VerificationError) as exc:
        verify_checkpoint(record, m.keyring, at_ms=at_ms, seq=kw.get("seq", 1))
    assert exc.value.reason is reason


def test_checkpoint_refusals_table() -> None:
    m, keys = _mission_with_nodes()
    cp = _checkpoint(m)
    name = key_name("un", "un-node")
    good = signed_checkpoint(cp, keys["un"], name)
    _, obs_key = m.observer("un", 1)
    obs_name = key_name("un", m.observer("un", 1)[0])
    flipped = bytearray(good)
    flipped[-10] ^= 1  # inside the base64 of the signature
    other_mandate = dataclasses.replace(cp, origin=origin_for("other", "obus.reports.un", 0))
    cases: dict[str, tuple[bytes, Reason]] = {
        "not a note": (b"hello", Reason.MALFORMED),
        "bad signature by a node key": (bytes(flipped), Reason.BAD_SIGNATURE),
        "unaccredited key": (signed_checkpoint(cp, demo_key("rogue"), name), Reason.UNKNOWN_KEY),
        "key under another org's name": (
            signed_checkpoint(cp, keys["osce"], name),
            Reason.UNKNOWN_KEY,
        ),
        "observer key": (signed_checkpoint(cp, obs_key, obs_name), Reason.WRONG_ROLE),
        "another mandate": (
            signed_checkpoint(other_mandate, keys["un"], name),
            Reason.WRONG_MANDATE,
        ),
        "not an obus origin": (
            signed_checkpoint(dataclasses.replace(cp, origin="example.com/log"), keys["un"], name),
            Reason.CHECKPOINT_UNKNOWN_ORIGIN,
        ),
        "extension line": (
            signed_checkpoint(dataclasses.replace(cp, extensions=("x",)), keys["un"], name),
            Reason.MALFORMED,
        ),
        "root not 32 bytes": (
            signed_checkpoint(dataclasses.replace(cp, root=b"short"), keys["un"], name),
            Reason.MALFORMED,
        ),
    }
    for label, (record, reason) in cases.items():
        with pytest.raises(VerificationError) as exc:
            verify_checkpoint(record, m.keyring, at_ms=NOW_MS, seq=1)
        assert exc.value.reason is reason, label
    _reject(m, good, Reason.KEY_EXPIRED, at_ms=m.scenario.mandate.not_after_ms + 1)


def test_node_key_revocation_counts_from_a_checkpoints_topic_position() -> None:
    m, keys = _mission_with_nodes()
    record = signed_checkpoint(_checkpoint(m), keys["un"], key_name("un", "un-node"))
    rev = Revocation("un", keys["un"].key_id, 10, NOW_MS, "lost", 1, m.mandate_id)
    m.apply(sign_revocation(rev, m.scenario.org_roots["un"]))
    assert verify_checkpoint(record, m.keyring, at_ms=NOW_MS, seq=10).orgs == {"un"}
    _reject(m, record, Reason.KEY_REVOKED, seq=11)


def test_a_line_by_an_unknown_key_is_ignored_next_to_a_good_one() -> None:
    m, keys = _mission_with_nodes()
    cp = _checkpoint(m)
    text = cp.text()
    lines = [
        sign_note(text, demo_key("stranger"), "example.com/stranger"),
        sign_note(text, keys["un"], key_name("un", "un-node")),
    ]
    vc = verify_checkpoint(Note(text, tuple(lines)).encode(), m.keyring, at_ms=NOW_MS, seq=1)
    assert vc.orgs == {"un"}


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400) | st.text(max_size=300).map(str.encode))
def test_any_bytes_verify_or_raise_verification_error(data: bytes) -> None:
    m, _ = FUZZ_MISSION
    with contextlib.suppress(VerificationError):  # anything else fails the test
        verify_checkpoint(data, m.keyring, at_ms=NOW_MS, seq=1)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.builds(
            NoteSignature,
            st.sampled_from(["obus/un/un-node", "a", "b/c"]),
            st.binary(min_size=4, max_size=4),
            st.binary(min_size=1, max_size=80),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_structurally_valid_notes_parse_back(lines: list[NoteSignature]) -> None:
    m, _ = FUZZ_MISSION
    note = Note(_checkpoint(m).text(), tuple(lines))
    assert parse_note(note.encode()) == note


FUZZ_MISSION = _mission_with_nodes()
