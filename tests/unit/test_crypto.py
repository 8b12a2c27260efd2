"""Properties of bus.crypto: round trips, tamper detection, type confusion, and the fuzz
invariant (verify returns None or raises VerificationError, never anything else)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import nacl.bindings
import nacl.exceptions
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bus import crypto
from bus.errors import KeyStoreError, Reason, VerificationError

seeds = st.binary(min_size=32, max_size=32)
payload_types = st.text(max_size=64)
payloads = st.binary(max_size=2048)
# Inputs as they may arrive off the wire: any length, with the valid lengths over-weighted.
key_bytes = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=80))
signature_bytes = st.one_of(st.binary(min_size=64, max_size=64), st.binary(max_size=130))
not_bytes = st.one_of(st.none(), st.integers(), st.text(max_size=70), st.lists(st.integers()))


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- PAE -------------------------------------------------------------------------------------


def test_pae_layout() -> None:
    assert crypto.pae("t", b"body") == b"DSSEv1 1 t 4 body"
    assert crypto.pae("", b"") == b"DSSEv1 0  0 "


@given(payload_types, payloads, payload_types, payloads)
def test_pae_is_injective(t1: str, p1: bytes, t2: str, p2: bytes) -> None:
    # Length prefixes make PAE injective: bytes can never move between type and body.
    if (t1, p1) != (t2, p2):
        assert crypto.pae(t1, p1) != crypto.pae(t2, p2)


def test_pae_counts_utf8_bytes_not_characters() -> None:
    assert crypto.pae("é", b"") == b"DSSEv1 2 \xc3\xa9 0 "


def test_pae_rejects_unencodable_payload_type() -> None:
    with pytest.raises(VerificationError) as info:
        crypto.pae("\ud800", b"")
    assert info.value.reason is Reason.INVALID_FIELD


@pytest.mark.parametrize(
    ("payload_type", "payload"),
    [(b"type", b""), (None, b""), ("type", "text"), ("type", None), ("type", 5)],
    ids=["bytes-type", "none-type", "str-payload", "none-payload", "int-payload"],
)
def test_pae_wrong_types_are_type_errors(payload_type: Any, payload: Any) -> None:
    with pytest.raises(TypeError):
        crypto.pae(payload_type, payload)


def test_pae_accepts_bytes_like_payload() -> None:
    # Typed as bytes; bytes-like values are copied, so a caller cannot mutate what is signed.
    expected = b"DSSEv1 1 t 2 ab"
    assert crypto.pae("t", bytearray(b"ab")) == expected  # type: ignore[arg-type]
    assert crypto.pae("t", memoryview(b"ab")) == expected  # type: ignore[arg-type]


# --- key_id ----------------------------------------------------------------------------------


def test_key_id_is_sha256_of_raw_public_key() -> None:
    key = crypto.SigningKey.from_seed(bytes(32))
    assert crypto.key_id(key.public_key) == key.key_id
    assert len(key.key_id) == crypto.KEY_ID_BYTES == 32


@pytest.mark.parametrize("public_key", [b"", bytes(31), bytes(33), "a" * 32, None])
def test_key_id_refuses_what_is_not_a_32_byte_key(public_key: Any) -> None:
    with pytest.raises(VerificationError) as info:
        crypto.key_id(public_key)
    assert info.value.reason is Reason.MALFORMED_KEY


# --- SigningKey ------------------------------------------------------------------------------

# RFC 8032 §7.1, TEST 1 (empty message).
RFC8032_TEST1_SEED = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
)
RFC8032_TEST1_PUBLIC_KEY = bytes.fromhex(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
)
RFC8032_TEST1_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_test_1() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_TEST1_SEED)
    assert key.seed == RFC8032_TEST1_SEED
    assert key.public_key == RFC8032_TEST1_PUBLIC_KEY
    assert key.sign(b"") == RFC8032_TEST1_SIGNATURE
    crypto.verify(RFC8032_TEST1_PUBLIC_KEY, b"", RFC8032_TEST1_SIGNATURE)


def test_generate_gives_distinct_valid_keys() -> None:
    a, b = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    assert a != b
    assert a.seed != b.seed
    for key in (a, b):
        assert len(key.seed) == 32
        assert len(key.public_key) == 32
        crypto.validate_public_key(key.public_key)
        crypto.verify(key.public_key, b"m", key.sign(b"m"))


@pytest.mark.parametrize(
    "seed",
    [b"", bytes(31), bytes(33), bytes(64), "0" * 32, None, 32],
    ids=["empty", "31", "33", "64-byte-libsodium-secret-key", "str", "none", "int"],
)
def test_from_seed_refuses_anything_but_32_bytes(seed: Any) -> None:
    with pytest.raises(KeyStoreError):
        crypto.SigningKey.from_seed(seed)


def test_from_seed_copies_mutable_seed() -> None:
    raw = bytearray(RFC8032_TEST1_SEED)
    key = crypto.SigningKey.from_seed(raw)  # type: ignore[arg-type]
    raw[0] ^= 1
    assert key.seed == RFC8032_TEST1_SEED
    assert isinstance(key.seed, bytes)


def test_signing_key_is_immutable() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_TEST1_SEED)
    for name in ("seed", "public_key", "key_id", "_signer"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(key, name, b"x")
    with pytest.raises((AttributeError, TypeError)):
        key.extra = 1  # type: ignore[attr-defined]


def test_repr_does_not_leak_the_seed() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_TEST1_SEED)
    for text in (repr(key), str(key), f"{key}", f"{key!r}"):
        assert RFC8032_TEST1_SEED.hex() not in text
        assert repr(RFC8032_TEST1_SEED)[2:-1] not in text
        assert key.key_id.hex() in text


def test_equality_hash_copy_and_pickle() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_TEST1_SEED)
    same = crypto.SigningKey.from_seed(RFC8032_TEST1_SEED)
    other = crypto.SigningKey.from_seed(bytes(32))
    assert key == same
    assert hash(key) == hash(same)
    assert key != other
    assert key != RFC8032_TEST1_SEED
    for clone in (copy.copy(key), copy.deepcopy(key), pickle.loads(pickle.dumps(key))):
        assert clone == key
        assert clone.sign(b"m") == key.sign(b"m")


def test_sign_refuses_non_bytes() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_TEST1_SEED)
    with pytest.raises(TypeError):
        key.sign("text")  # type: ignore[arg-type]


# --- round trip, tampering, type confusion ---------------------------------------------------


@given(seeds, payload_types, payloads)
def test_sign_pae_then_verify_pae(seed: bytes, payload_type: str, payload: bytes) -> None:
    key = crypto.SigningKey.from_seed(seed)
    signature = key.sign_pae(payload_type, payload)
    assert len(signature) == crypto.SIGNATURE_BYTES
    assert signature == key.sign(crypto.pae(payload_type, payload))  # deterministic
    crypto.verify_pae(key.public_key, payload_type, payload, signature)
    crypto.verify(key.public_key, crypto.pae(payload_type, payload), signature)


@given(seeds, payload_types, st.binary(min_size=1, max_size=512), st.data())
def test_any_payload_bit_flip_is_bad_signature(
    seed: bytes, payload_type: str, payload: bytes, data: st.DataObject
) -> None:
    key = crypto.SigningKey.from_seed(seed)
    signature = key.sign_pae(payload_type, payload)
    bit = data.draw(st.integers(0, len(payload) * 8 - 1), label="bit")
    with pytest.raises(VerificationError) as info:
        crypto.verify_pae(key.public_key, payload_type, _flip(payload, bit), signature)
    assert info.value.reason is Reason.BAD_SIGNATURE


@given(seeds, payload_types, payloads, st.integers(0, crypto.SIGNATURE_BYTES * 8 - 1))
def test_any_signature_bit_flip_is_bad_signature(
    seed: bytes, payload_type: str, payload: bytes, bit: int
) -> None:
    key = crypto.SigningKey.from_seed(seed)
    signature = key.sign_pae(payload_type, payload)
    with pytest.raises(VerificationError) as info:
        crypto.verify_pae(key.public_key, payload_type, payload, _flip(signature, bit))
    assert info.value.reason is Reason.BAD_SIGNATURE


@given(seeds, st.text(min_size=1, max_size=64), payloads, st.data())
def test_any_payload_type_bit_flip_is_rejected(
    seed: bytes, payload_type: str, payload: bytes, data: st.DataObject
) -> None:
    """Flip any bit of the UTF-8 payload type. If the result is still UTF-8 it is another type
    and the signature does not cover it (BAD_SIGNATURE); if not, it is not a type at all
    (INVALID_FIELD). Either way: rejected."""
    key = crypto.SigningKey.from_seed(seed)
    signature = key.sign_pae(payload_type, payload)
    raw = payload_type.encode("utf-8")
    flipped = _flip(raw, data.draw(st.integers(0, len(raw) * 8 - 1), label="bit"))
    try:
        tampered, expected = flipped.decode("utf-8"), Reason.BAD_SIGNATURE
    except UnicodeDecodeError:
        tampered, expected = flipped.decode("utf-8", "surrogateescape"), Reason.INVALID_FIELD
    with pytest.raises(VerificationError) as info:
        crypto.verify_pae(key.public_key, tampered, payload, signature)
    assert info.value.reason is expected


@given(seeds, payload_types, payload_types, payloads)
def test_signature_does_not_verify_under_another_payload_type(
    seed: bytes, signed_type: str, other_type: str, payload: bytes
) -> None:
    assume(signed_type != other_type)
    key = crypto.SigningKey.from_seed(seed)
    signature = key.sign_pae(signed_type, payload)
    with pytest.raises(VerificationError) as info:
        crypto.verify_pae(key.public_key, other_type, payload, signature)
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_type_confusion_named_cases() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_TEST1_SEED)
    report = b'{"report": 1}'
    signature = key.sign_pae("application/vnd.obus.v1.ObserverReport", report)
    for other in (
        "application/vnd.obus.v1.Decision",
        "application/vnd.obus.v1.ObserverReport ",
        "application/vnd.obus.v1.observerreport",
        "",
    ):
        with pytest.raises(VerificationError) as info:
            crypto.verify_pae(key.public_key, other, report, signature)
        assert info.value.reason is Reason.BAD_SIGNATURE
    # Nor as a raw signature over the bare payload.
    with pytest.raises(VerificationError):
        crypto.verify(key.public_key, report, signature)


@given(seeds, seeds, payload_types, payloads)
def test_signature_does_not_verify_under_another_key(
    seed: bytes, other_seed: bytes, payload_type: str, payload: bytes
) -> None:
    assume(seed != other_seed)
    signature = crypto.SigningKey.from_seed(seed).sign_pae(payload_type, payload)
    other = crypto.SigningKey.from_seed(other_seed)
    with pytest.raises(VerificationError) as info:
        crypto.verify_pae(other.public_key, payload_type, payload, signature)
    assert info.value.reason is Reason.BAD_SIGNATURE


# --- the fuzz invariant ----------------------------------------------------------------------

VERIFY_REASONS = {Reason.MALFORMED_KEY, Reason.BAD_SIGNATURE, Reason.INVALID_FIELD}


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(key_bytes, st.binary(max_size=256), signature_bytes)
def test_verify_returns_none_or_raises_verification_error(
    public_key: bytes, message: bytes, signature: bytes
) -> None:
    result: object = "not called"
    try:
        result = crypto.verify(public_key, message, signature)  # type: ignore[func-returns-value]
    except VerificationError as exc:
        assert exc.reason in VERIFY_REASONS
        if len(public_key) != 32:
            assert exc.reason is Reason.MALFORMED_KEY
    else:
        assert result is None


@given(
    st.one_of(key_bytes, not_bytes),
    st.one_of(st.binary(max_size=64), not_bytes),
    st.one_of(signature_bytes, not_bytes),
)
def test_verify_never_raises_anything_else_even_for_non_bytes(
    public_key: Any, message: Any, signature: Any
) -> None:
    try:
        crypto.verify(public_key, message, signature)
    except VerificationError as exc:
        assert exc.reason in VERIFY_REASONS


@given(
    st.one_of(key_bytes, not_bytes),
    st.one_of(st.text(st.characters(exclude_categories=[])), st.binary(max_size=8), not_bytes),
    st.one_of(st.binary(max_size=64), not_bytes),
    st.one_of(signature_bytes, not_bytes),
)
def test_verify_pae_never_raises_anything_else(
    public_key: Any, payload_type: Any, payload: Any, signature: Any
) -> None:
    try:
        crypto.verify_pae(public_key, payload_type, payload, signature)
    except VerificationError as exc:
        assert exc.reason in VERIFY_REASONS


@given(seeds, st.binary(max_size=64), signature_bytes)
def test_fuzzed_signatures_under_a_real_key_are_bad_signatures(
    seed: bytes, message: bytes, signature: bytes
) -> None:
    key = crypto.SigningKey.from_seed(seed)
    assume(signature != key.sign(message))
    with pytest.raises(VerificationError) as info:
        crypto.verify(key.public_key, message, signature)
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_foreign_exceptions_are_wrapped_with_their_cause() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_TEST1_SEED)
    with pytest.raises(VerificationError) as info:
        crypto.verify(key.public_key, b"m", bytes(64))
    assert isinstance(info.value.__cause__, nacl.exceptions.BadSignatureError)
    assert info.value.context["key_id"] == key.key_id.hex()


# --- public key classification ---------------------------------------------------------------
#
# The verdict is libsodium's; validate_public_key only names the reason. These tests check it
# against independent arithmetic and against libsodium, so MALFORMED_KEY means exactly "libsodium
# refuses this key whatever the signature".

_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_L = 2**252 + 27742317777372353535851937790883648493
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_NEUTRAL = (0, 1)
Point = tuple[int, int]


def _add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, -1, _P) % _P,
        (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P) % _P,
    )


def _mul(k: int, a: Point) -> Point:
    out = _NEUTRAL
    while k:
        if k & 1:
            out = _add(out, a)
        a = _add(a, a)
        k >>= 1
    return out


def _decode(y: int, sign: int) -> Point | None:
    """RFC 8032 §5.1.3, for y < p."""
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if x * x % _P != x2:
        x = x * _SQRT_M1 % _P
    if x * x % _P != x2:
        return None
    if x == 0 and sign:
        return None
    if x % 2 != sign:
        x = _P - x
    return (x, y)


def _encode(point: Point, *, sign: int | None = None) -> bytes:
    x, y = point
    bit = x % 2 if sign is None else sign
    return (y | bit << 255).to_bytes(32, "little")


def _eight_torsion() -> set[Point]:
    """All 8 points of order dividing 8, derived without bus.crypto: [L]Q for a point Q whose
    torsion part has order 8 generates the whole 8-torsion (E = Z/8 x Z/L)."""
    y = 2
    while True:
        q = _decode(y, 0)
        if q is not None:
            t = _mul(_L, q)
            if _mul(4, t) != _NEUTRAL:  # order exactly 8
                return {_mul(i, t) for i in range(8)}
        y += 1


EIGHT_TORSION = _eight_torsion()


def test_eight_torsion_has_eight_points() -> None:
    assert len(EIGHT_TORSION) == 8
    for point in EIGHT_TORSION:
        assert _mul(8, point) == _NEUTRAL


@pytest.mark.parametrize("sign", [0, 1])
def test_every_small_order_key_is_malformed_under_both_sign_bits(sign: int) -> None:
    some_signature = crypto.SigningKey.from_seed(bytes(32)).sign(b"m")
    for point in EIGHT_TORSION:
        encoded = _encode(point, sign=sign)
        with pytest.raises(VerificationError) as info:
            crypto.validate_public_key(encoded)
        assert info.value.reason is Reason.MALFORMED_KEY
        with pytest.raises(VerificationError) as info:
            crypto.verify(encoded, b"m", some_signature)
        assert info.value.reason is Reason.MALFORMED_KEY


@pytest.mark.parametrize("y", [_P, _P + 1, _P + 2, 2**255 - 1])
def test_non_canonical_keys_are_malformed(y: int) -> None:
    for sign in (0, 1):
        with pytest.raises(VerificationError) as info:
            crypto.validate_public_key((y | sign << 255).to_bytes(32, "little"))
        assert info.value.reason is Reason.MALFORMED_KEY
        assert "non-canonical" in info.value.context["problem"]


def test_mixed_order_key_is_usable() -> None:
    # speccheck case 3's key has a torsion component, yet libsodium verifies under it.
    crypto.validate_public_key(
        bytes.fromhex("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d")
    )


def _libsodium_decodes(public_key: bytes) -> bool:
    # crypto_core_ed25519_add checks only ge25519_frombytes + is_on_curve, which is the
    # "is a point" part of the verifier's key checks.
    base = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp((1).to_bytes(32, "little"))
    try:
        nacl.bindings.crypto_core_ed25519_add(public_key, base)
    except nacl.exceptions.RuntimeError:
        return False
    return True


@settings(max_examples=500)
@given(st.binary(min_size=32, max_size=32))
def test_validate_public_key_matches_libsodium_on_curve_check(public_key: bytes) -> None:
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    assume(y < _P)
    small = any(point[1] == y for point in EIGHT_TORSION)
    try:
        crypto.validate_public_key(public_key)
    except VerificationError as exc:
        assert exc.reason is Reason.MALFORMED_KEY
        assert small or not _libsodium_decodes(public_key)
    else:
        assert not small
        assert _libsodium_decodes(public_key)
        assert _decode(y, public_key[31] >> 7) is not None


@given(seeds)
def test_generated_keys_always_validate(seed: bytes) -> None:
    crypto.validate_public_key(crypto.SigningKey.from_seed(seed).public_key)
