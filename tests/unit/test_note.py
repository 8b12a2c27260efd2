"""Signed notes and cosignatures (the layer under seals): C2SP / Go vectors, then obus's rules."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.crypto import SigningKey
from bus.errors import Reason, VerificationError
from bus.model import Role
from bus.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Note,
    NoteKeys,
    NoteSignature,
    Verifier,
    cosign,
    cosignature_message,
    format_vkey,
    key_name,
    merge_notes,
    note_key_hash,
    open_note,
    parse_note,
    parse_vkey,
    sign_note,
)
from nodes.demo.scenario import demo_key
from tests.mission import Mission, make_mission

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


def test_sum_golang_org_note_with_extra_signatures() -> None:
    """A real log's note with three more signers: every known line verifies; with only the
    log's key known, the other lines are unverified and ignored."""
    case = VECTORS["checkpoints"][0]
    note = case["with_extra_cosigner_signatures"].encode()
    opened = open_note(note, _index(case["verifier_keys"]))
    assert [v.name for v, _, _ in opened.verified] == [s["key_name"] for s in case["signatures"]]
    assert opened.text == case["text"].encode()
    log_only = open_note(note, _index(case["verifier_keys"][:1]))
    assert [v.name for v, _, _ in log_only.verified] == ["sum.golang.org"]
    assert [s.name for s in log_only.unverified] == ["monkeys", "bananas", "witness"]


def test_c2sp_example_note_round_trips() -> None:
    case = VECTORS["checkpoints"][1]
    note = parse_note(case["checkpoint"].encode())
    assert note.text == case["text"].encode()
    assert note.encode() == case["checkpoint"].encode()


def test_c2sp_cosignature_example_layout() -> None:
    """The C2SP examples publish no keys: the layout of their lines is checked, not their
    signatures (a type 0x04 line is a vote on a seal)."""
    case = VECTORS["checkpoints"][2]
    note = parse_note(case["checkpoint"].encode())
    assert note.text == case["text"].encode()
    witness = note.signatures[1]
    want = case["signatures"][1]
    assert witness.name == want["key_name"]
    assert witness.key_hash.hex() == want["key_id_hex"]
    assert witness.timestamp == want["cosignature_v1_timestamp"]
    assert witness.body[8:].hex() == want["ed25519_signature_hex"]
    assert (
        cosignature_message(note.text, want["cosignature_v1_timestamp"]).decode()
        == case["cosignature_v1_signed_message"]
    )
    assert note.encode() == case["checkpoint"].encode()


# -- obus: node keys under their note names ----------------------------------------------------

TEXT = b"obus-seal/v1/jmm-2026\n1\n1\n1793491200000\n" + base64.b64encode(bytes(32)) + b"\n"


def _mission_with_nodes() -> tuple[Mission, dict[str, SigningKey]]:
    m = make_mission()
    keys = {}
    for org in ("un", "osce", "eu", "nato"):
        keys[org] = demo_key(f"test:node:{org}")
        m.accredit(f"{org}-node", org, keys[org], Role.NODE)
    return m, keys


def test_note_keys_index_every_accredited_key_under_both_types() -> None:
    m, keys = _mission_with_nodes()
    index = NoteKeys(m.keyring)
    name = key_name("un", "un-node")
    assert name == "obus/un/un-node"
    for sig_type in (SIG_ED25519, SIG_COSIGNATURE_V1):
        v = index.by_name_hash[(name, note_key_hash(name, sig_type, keys["un"].public_key))]
        assert (v.sig_type, v.public_key) == (sig_type, keys["un"].public_key)
        assert index.accreditation(v).key_id == keys["un"].key_id
    obs_id, obs_key = m.observer("un", 1)
    obs_name = key_name("un", obs_id)
    obs = index.by_name_hash[(obs_name, note_key_hash(obs_name, SIG_ED25519, obs_key.public_key))]
    assert index.accreditation(obs).role is Role.OBSERVER  # indexed, so refused as wrong_role
    assert not index.stale()
    m.accredit("sco-node", "sco", demo_key("test:node:sco"), Role.NODE)
    assert index.stale()


def test_signed_and_cosigned_lines_merge_and_verify() -> None:
    m, keys = _mission_with_nodes()
    index = NoteKeys(m.keyring).by_name_hash
    proposer = sign_note(TEXT, keys["un"], key_name("un", "un-node"))
    cosigs = [
        cosign(TEXT, keys[o], key_name(o, f"{o}-node"), 1_793_491_200 + i)
        for i, o in enumerate(("osce", "eu"))
    ]
    merged = merge_notes(
        TEXT, [proposer.line(), cosigs[0].line(), proposer.line(), cosigs[1].line()]
    )
    assert merged.count(proposer.line()) == 1  # a repeated line is kept once
    opened = open_note(merged, index)
    assert opened.text == TEXT
    assert [(v.name, v.sig_type, ts) for v, _, ts in opened.verified] == [
        ("obus/un/un-node", SIG_ED25519, None),
        ("obus/osce/osce-node", SIG_COSIGNATURE_V1, 1_793_491_200),
        ("obus/eu/eu-node", SIG_COSIGNATURE_V1, 1_793_491_201),
    ]


def test_note_refusals_table() -> None:
    m, keys = _mission_with_nodes()
    index = NoteKeys(m.keyring).by_name_hash
    name = key_name("un", "un-node")
    good = Note(TEXT, (sign_note(TEXT, keys["un"], name),)).encode()
    flipped = bytearray(good)
    flipped[-10] ^= 1  # inside the base64 of the signature
    cos = cosign(TEXT, keys["osce"], key_name("osce", "osce-node"), 7)
    short = NoteSignature(cos.name, cos.key_hash, cos.body[:-1])
    other_time = NoteSignature(cos.name, cos.key_hash, (8).to_bytes(8, "big") + cos.body[8:])
    bad_line = parse_note(bytes(flipped)).signatures[0]
    cases: dict[str, tuple[bytes, Reason]] = {
        "not a note": (b"hello", Reason.MALFORMED),
        "bad signature by a node key": (bytes(flipped), Reason.BAD_SIGNATURE),
        "unaccredited key": (
            Note(TEXT, (sign_note(TEXT, demo_key("rogue"), name),)).encode(),
            Reason.UNKNOWN_KEY,
        ),
        "key under another org's name": (
            Note(TEXT, (sign_note(TEXT, keys["osce"], name),)).encode(),
            Reason.UNKNOWN_KEY,
        ),
        "cosignature of the wrong length": (Note(TEXT, (short,)).encode(), Reason.BAD_SIGNATURE),
        "cosignature over another time": (Note(TEXT, (other_time,)).encode(), Reason.BAD_SIGNATURE),
        "a known key's bad line after a good one": (
            Note(TEXT, (cos, bad_line)).encode(),
            Reason.BAD_SIGNATURE,
        ),
    }
    for label, (record, reason) in cases.items():
        with pytest.raises(VerificationError) as exc:
            open_note(record, index)
        assert exc.value.reason is reason, label


def test_cosignature_key_hash_differs_from_the_note_key_hash() -> None:
    key = demo_key("k")
    assert note_key_hash("n", 1, key.public_key) != note_key_hash(
        "n", SIG_COSIGNATURE_V1, key.public_key
    )


def test_cosignature_time_must_be_a_uint64() -> None:
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="uint64"):
            cosign(TEXT, demo_key("k"), "obus/un/un-node", bad)


def test_a_line_by_an_unknown_key_is_ignored_next_to_a_good_one() -> None:
    m, keys = _mission_with_nodes()
    lines = (
        sign_note(TEXT, demo_key("stranger"), "example.com/stranger"),
        sign_note(TEXT, keys["un"], key_name("un", "un-node")),
    )
    opened = open_note(Note(TEXT, lines).encode(), NoteKeys(m.keyring).by_name_hash)
    assert [v.name for v, _, _ in opened.verified] == ["obus/un/un-node"]
    assert opened.unverified == (lines[0],)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400) | st.text(max_size=300).map(str.encode))
def test_any_bytes_open_or_raise_verification_error(data: bytes) -> None:
    with contextlib.suppress(VerificationError):  # anything else fails the test
        open_note(data, FUZZ_INDEX)


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
    note = Note(TEXT, tuple(lines))
    assert parse_note(note.encode()) == note


FUZZ_INDEX = NoteKeys(_mission_with_nodes()[0].keyring).by_name_hash
