"""The compiled verifier (``obus_ed25519``, ``make native``) gives libsodium's verdict, always.

Differential: every speccheck and Wycheproof vector, then tens of thousands of generated valid
and damaged signatures (bit flips in R, S, key and message; S + nL; small-order and non-canonical
R and A encodings; mixed-order keys and R built so that only some satisfy the cofactorless
equation; wrong lengths) are verified by ``obus_ed25519.verify`` and by PyNaCl (libsodium), and
any difference fails. Generation is seeded, so a failure names a case that can be replayed.

Skipped, with the reason shown, when the module is not built (``make test`` then still passes);
run whenever it is. The tests of ``OBUS_VERIFIER`` itself need no compiled module.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import nacl.bindings
import nacl.exceptions
import nacl.signing
import pytest

from bus import crypto
from bus.errors import ConfigError, Reason, VerificationError

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
REPO = Path(__file__).resolve().parents[2]


def _native() -> ModuleType | None:
    try:
        return importlib.import_module("obus_ed25519")
    except ImportError:
        return None


NATIVE = _native()
needs_native = pytest.mark.skipif(
    NATIVE is None,
    reason="compiled verifier obus_ed25519 not built (make native; needs cargo)",
)

Case = tuple[str, bytes, bytes, bytes]  # (what, public key, message, signature)

# --- edwards25519 in plain integers (RFC 8032 §5.1), independent of both verifiers -------------

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


def _decode(raw: bytes) -> Point | None:
    """RFC 8032 §5.1.3 decoding, for canonical encodings."""
    n = int.from_bytes(raw, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if x * x % _P != x2:
        x = x * _SQRT_M1 % _P
    if x * x % _P != x2 or (x == 0 and sign):
        return None
    return ((_P - x) if x % 2 != sign else x, y)


def _encode(point: Point) -> bytes:
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _eight_torsion() -> list[Point]:
    """The 8 points of order dividing 8: multiples of [L]Q for a Q whose torsion has order 8."""
    y = 2
    while True:
        q = _decode(y.to_bytes(32, "little"))
        if q is not None:
            t = _mul(_L, q)
            if _mul(4, t) != _NEUTRAL:
                return [_mul(i, t) for i in range(8)]
        y += 1


TORSION = _eight_torsion()
# Small-order encodings both canonical and not (y = p, p + 1), with either sign bit.
SMALL_ORDER_ENCODINGS = sorted(
    {
        (int.from_bytes(_encode(t), "little") ^ (s << 255)).to_bytes(32, "little")
        for t in TORSION
        for s in (0, 1)
    }
    | {(y | s << 255).to_bytes(32, "little") for y in (_P, _P + 1) for s in (0, 1)}
)
# Non-canonical y >= p: p + k for every k that fits below 2^255, both sign bits.
NON_CANONICAL_ENCODINGS = [
    ((_P + k) | s << 255).to_bytes(32, "little") for k in range(19) for s in (0, 1)
]


def _libsodium(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def _native_verify() -> Callable[[bytes, bytes, bytes], bool]:
    assert NATIVE is not None
    verify: Callable[[bytes, bytes, bytes], bool] = NATIVE.verify
    return verify


def _disagreements(cases: Iterator[Case] | list[Case]) -> tuple[list[str], Counter[str]]:
    """Verify every case with both; return the cases they disagree on and accept counts."""
    native = _native_verify()
    wrong: list[str] = []
    tally: Counter[str] = Counter()
    for what, pk, msg, sig in cases:
        expected = _libsodium(pk, msg, sig)
        got = native(pk, msg, sig)
        tally[f"{what}:{'accept' if expected else 'reject'}"] += 1
        if got is not expected:
            wrong.append(
                f"{what}: libsodium {expected}, native {got}; "
                f"pk={pk.hex()} sig={sig.hex()} msg={msg.hex()}"
            )
    return wrong, tally


# --- the published vectors ----------------------------------------------------------------------


def _vector_cases() -> list[Case]:
    cases: list[Case] = []
    speccheck = json.loads((VECTORS / "ed25519-speccheck.json").read_text())
    for i, c in enumerate(speccheck):
        cases.append(
            (
                f"speccheck {i}",
                bytes.fromhex(c["pub_key"]),
                bytes.fromhex(c["message"]),
                bytes.fromhex(c["signature"]),
            )
        )
    wycheproof = json.loads((VECTORS / "wycheproof-ed25519_test.json").read_text())
    cases.extend(
        (f"wycheproof {t['tcId']}", pk, bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]))
        for group in wycheproof["testGroups"]
        for pk in [bytes.fromhex(group["publicKey"]["pk"])]
        for t in group["tests"]
    )
    return cases


VECTOR_CASES = _vector_cases()


def test_every_vector_is_loaded() -> None:
    assert sum(1 for c in VECTOR_CASES if c[0].startswith("speccheck")) == 12
    assert sum(1 for c in VECTOR_CASES if c[0].startswith("wycheproof")) == 151


@needs_native
def test_vectors_same_verdict_as_libsodium() -> None:
    wrong, tally = _disagreements(VECTOR_CASES)
    assert wrong == []
    # Not vacuous: both verdicts occur among the vectors.
    assert any(k.endswith(":accept") for k in tally)
    assert any(k.endswith(":reject") for k in tally)


@needs_native
def test_vectors_same_verdict_and_reason_through_bus_crypto() -> None:
    """bus.crypto.verify gives the same outcome, reason code included, with either verifier."""

    def outcome(pk: bytes, msg: bytes, sig: bytes) -> Reason | None:
        try:
            crypto.verify(pk, msg, sig)
        except VerificationError as exc:
            return exc.reason
        return None

    before = crypto.verifier()
    try:
        crypto.select_verifier("pynacl")
        assert crypto.verifier() == "pynacl"
        with_pynacl = [outcome(pk, m, s) for _, pk, m, s in VECTOR_CASES]
        crypto.select_verifier("native")
        assert crypto.verifier() == "native"
        with_native = [outcome(pk, m, s) for _, pk, m, s in VECTOR_CASES]
    finally:
        crypto.select_verifier("native" if before == "native" else "pynacl")
    assert with_native == with_pynacl


# --- generated: valid and damaged signatures ----------------------------------------------------

BASES = 2_400  # each yields 13 cases: 31,200, plus the mixed-order ones below


def _flip(raw: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    hi = len(raw) if hi is None else hi
    b = bytearray(raw)
    i = rng.randrange(lo * 8, hi * 8)
    b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


def _damaged(rng: random.Random) -> Iterator[Case]:
    keys = [nacl.signing.SigningKey(rng.randbytes(32)) for _ in range(64)]
    for _ in range(BASES):
        key = rng.choice(keys)
        pk = bytes(key.verify_key)
        msg = rng.randbytes(rng.choice((0, 1, 31, 64, 200, 1000, rng.randrange(2000))))
        sig = key.sign(msg).signature
        r, s = sig[:32], int.from_bytes(sig[32:], "little")
        yield "valid", pk, msg, sig
        yield "flip R", pk, msg, _flip(sig, rng, 0, 32)
        yield "flip S", pk, msg, _flip(sig, rng, 32, 64)
        yield "flip key", _flip(pk, rng), msg, sig
        yield "flip message", pk, (_flip(msg, rng) if msg else b"\0"), sig
        n = rng.randrange(1, (2**256 - 1 - s) // _L + 1)  # S + nL still fits in 32 bytes
        yield "S + nL", pk, msg, r + (s + n * _L).to_bytes(32, "little")
        yield "small-order R", pk, msg, rng.choice(SMALL_ORDER_ENCODINGS) + sig[32:]
        yield "small-order key", rng.choice(SMALL_ORDER_ENCODINGS), msg, sig
        yield "non-canonical R", pk, msg, rng.choice(NON_CANONICAL_ENCODINGS) + sig[32:]
        yield "non-canonical key", rng.choice(NON_CANONICAL_ENCODINGS), msg, sig
        yield "R sign bit", pk, msg, bytes([*sig[:31], sig[31] ^ 0x80]) + sig[32:]
        yield "key sign bit", bytes([*pk[:31], pk[31] ^ 0x80]), msg, sig
        cut = rng.choice((0, 31, 33, 63, 65))
        if cut in (31, 33):
            yield "key length", (pk + b"\0")[:cut], msg, sig
        else:
            yield "signature length", pk, msg, (sig + b"\0")[:cut]


def _scalar_base(k: int) -> Point:
    raw = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp((k % _L).to_bytes(32, "little"))
    point = _decode(raw)
    assert point is not None
    return point


def _mixed_order(rng: random.Random, count: int) -> Iterator[Case]:
    """Keys A = aB + T and nonces R = rB + T' with torsion T, T': S = r + k a is the honest
    answer, and the cofactorless equation holds only when [k]T = T' (so some accept, most do
    not), while the cofactored one holds whenever T' = 0: exactly where verifiers differ."""
    for i in range(count):
        a, r = rng.randrange(1, _L), rng.randrange(1, _L)
        t = rng.choice(TORSION[1:])
        t_r = TORSION[0] if i % 2 else rng.choice(TORSION)
        pk = _encode(_add(_scalar_base(a), t))
        nonce = _encode(_add(_scalar_base(r), t_r))
        msg = rng.randbytes(rng.randrange(100))
        k = int.from_bytes(hashlib.sha512(nonce + pk + msg).digest(), "little") % _L
        sig = nonce + ((r + k * a) % _L).to_bytes(32, "little")
        yield "mixed order", pk, msg, sig
        yield "mixed order, S + L", pk, msg, nonce + ((r + k * a) % _L + _L).to_bytes(32, "little")


@needs_native
def test_generated_signatures_same_verdict_as_libsodium() -> None:
    rng = random.Random(int(os.environ.get("OBUS_NATIVE_SEED", "19")))
    cases = list(_damaged(rng)) + list(_mixed_order(rng, 1_200))
    assert len(cases) >= 30_000
    wrong, tally = _disagreements(cases)
    assert wrong[:5] == [], f"{len(wrong)} disagreements"
    # Not vacuous: valid ones verify, each kind of damage is exercised, and the mixed-order
    # cases split between accepted (cofactorless equation holds) and rejected.
    assert tally["valid:accept"] == BASES
    assert tally["mixed order:accept"] > 0
    assert tally["mixed order:reject"] > 0
    for what in ("flip R", "flip S", "flip key", "flip message", "S + nL", "small-order R"):
        assert tally[f"{what}:reject"] > 0


# --- choosing the verifier: OBUS_VERIFIER -------------------------------------------------------


def _in_fresh_python(code: str, verifier: str, *, hide_native: bool = False) -> str:
    prelude = "import sys; sys.modules['obus_ed25519'] = None\n" if hide_native else ""
    env = {**os.environ, "OBUS_VERIFIER": verifier}
    out = subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True, text=True, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    return out.stdout.strip() + out.stderr.strip()


def test_a_bad_verifier_name_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        crypto.select_verifier("fast")
    assert info.value.key == "OBUS_VERIFIER"
    assert "auto, native, pynacl" in info.value.fix
    out = _in_fresh_python("import bus.crypto", "libsodium")
    assert "ConfigError: config OBUS_VERIFIER: 'libsodium' is not a verifier" in out


def test_pynacl_is_chosen_when_asked_and_when_the_module_is_missing() -> None:
    code = "import bus.crypto; print(bus.crypto.verifier())"
    assert _in_fresh_python(code, "pynacl") == "pynacl"
    assert _in_fresh_python(code, "auto", hide_native=True) == "pynacl"


def test_native_without_the_module_is_a_config_error() -> None:
    out = _in_fresh_python("import bus.crypto", "native", hide_native=True)
    assert "config OBUS_VERIFIER: native, but the compiled verifier obus_ed25519" in out
    assert "make native" in out


@needs_native
def test_auto_takes_the_compiled_module() -> None:
    code = "import bus.crypto; print(bus.crypto.verifier())"
    assert _in_fresh_python(code, "auto") == "native"
    assert _in_fresh_python(code, "native") == "native"
