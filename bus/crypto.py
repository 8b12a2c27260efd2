"""Ed25519 signatures over DSSE v1 PAE, the one verification rule every node applies, and the
one way to make and open a singly signed envelope.

Every envelope signature covers ``pae(payload_type, payload)`` (DSSE v1 Pre-Authentication
Encoding), never the bare payload, so a signature made for one message type can never be replayed
as another. A key is named by ``key_id`` = SHA-256 of its raw 32-byte public key (DESIGN.md §3).

The verification rule is pinned: **libsodium's strict ``crypto_sign_verify_detached``**, reached
through PyNaCl. Ed25519 libraries disagree on edge cases (ed25519-speccheck, "Taming the many
EdDSAs", Chalkias, Garillot and Nikolaenko 2020): OpenSSL and pyca/cryptography accept speccheck
cases 0-3 and 11, libsodium only case 3. Organizations that do not trust each other must reach the
same verdict on the same bytes, so every node, gateway and auditor uses this module and nothing
else. The strict rule rejects:

* public keys that are not canonical (y >= p), not on the curve, or of small order (in the
  8-torsion); with a small-order key, signatures can be forged without any private key;
* signatures whose R is of small order, whose S is not reduced (S >= L: malleable), or whose
  R is not the canonical encoding of the recomputed point;
* signatures that satisfy only the cofactored equation: the check is cofactorless,
  ``[S]B = R + [k]A`` (speccheck cases 4 and 5).

``tests/unit/test_crypto_vectors.py`` pins this with the 12 speccheck cases and all 151
Wycheproof Ed25519 tests (libsodium agrees with every Wycheproof verdict).

**Which code computes the verdict** (``OBUS_VERIFIER``, read once at import; ``auto`` when
unset): ``pynacl`` is libsodium itself. ``native`` is ``obus_ed25519``, the optional compiled
module of ``bus/_native/`` (``make native``: Rust on curve25519-dalek) that implements the same
acceptance rule as libsodium's ``crypto_sign_verify_detached``, step for step, 1.66-1.75x as
fast per signature here; ``tests/unit/test_native_verifier.py`` checks it gives PyNaCl's verdict on
every vector above and on tens of thousands of valid and damaged signatures. ``auto`` takes
``native`` when the module imports and ``pynacl`` otherwise. Any other value, or ``native``
without the module, is a :class:`~bus.errors.ConfigError` naming the variable. :func:`verifier`
says which one is in use. Signing always uses PyNaCl.

The verdict always comes from that one verifier alone. Only when it rejects does this module
look at the public key itself (a pure-Python copy of libsodium's own key checks) to choose the
reason: :attr:`Reason.MALFORMED_KEY` when no signature could ever verify under that key,
:attr:`Reason.BAD_SIGNATURE` otherwise. The reason never changes the verdict.

Measured verify rate, 1 KiB messages, one core (``taskset -c 0``; AMD EPYC, 2-vCPU KVM guest
shared with other load, so CPU time via ``time.process_time``, 25 interleaved rounds of 2,000
verifies, median (best); CPython 3.11.7, PyNaCl 1.6.2 with its bundled libsodium, cryptography
50.0.2 on OpenSSL 4.0.3; throwaway script, not in the repository):

* PyNaCl ``VerifyKey(pk).verify(msg, sig)``: 13,100/s (14,500/s)
* this module's :func:`verify` (PyNaCl plus input checks): 12,600/s (14,300/s)
* cryptography ``Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)``: 6,950/s (7,650/s);
  with the key object cached: 6,900/s (7,700/s)

So the strict rule is also the faster one here, about 1.9x, as DESIGN.md §3 expects.

Most messages carry exactly one signature (reports, receipts, decisions, accreditations...):
:func:`sign_single` makes such an envelope and :func:`open_single` opens and checks one, with
the same checks, in the same order and with the same reason codes, for every payload type.

This module is pure: no asyncio, Kafka, socket or HTTP imports.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Final, cast

import nacl.exceptions
import nacl.signing

from bus.errors import ConfigError, KeyStoreError, Reason, VerificationError
from bus.model import Accreditation, Envelope, Signature

__all__ = [
    "KEY_ID_BYTES",
    "PUBLIC_KEY_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "VERIFIER_ENV",
    "SigningKey",
    "key_id",
    "open_single",
    "pae",
    "select_verifier",
    "sign_single",
    "validate_public_key",
    "verifier",
    "verify",
    "verify_pae",
]

PUBLIC_KEY_BYTES: Final = 32  # RFC 8032 §5.1.5: the encoded point A
SEED_BYTES: Final = 32  # RFC 8032 §5.1.5: the private key is a 32-byte seed
SIGNATURE_BYTES: Final = 64  # RFC 8032 §5.1.6: R (32 bytes) || S (32 bytes, little-endian)
KEY_ID_BYTES: Final = 32  # SHA-256 digest size

VERIFIER_ENV: Final = "OBUS_VERIFIER"
_VERIFIER_CHOICES: Final = ("auto", "native", "pynacl")
_NATIVE_MODULE: Final = "obus_ed25519"

# The compiled verifier's verify(public_key, message, signature) -> bool, or None: PyNaCl.
_native_verify: Callable[[bytes, bytes, bytes], bool] | None = None


def _load_native() -> Callable[[bytes, bytes, bytes], bool] | None:
    try:
        module = importlib.import_module(_NATIVE_MODULE)
    except ImportError:
        return None
    return cast("Callable[[bytes, bytes, bytes], bool]", module.verify)


def select_verifier(choice: str) -> str:
    """Choose the code that computes every verdict of this process; returns its name.

    Args:
        choice: ``"auto"`` (the compiled module when it imports, else PyNaCl), ``"native"``
            or ``"pynacl"``; what ``$OBUS_VERIFIER`` holds. The module does this once at import.

    Returns:
        ``"native"`` or ``"pynacl"``.

    Raises:
        ConfigError: ``choice`` is not one of the three, or is ``"native"`` and the compiled
            module ``obus_ed25519`` does not import.
    """
    global _native_verify  # noqa: PLW0603 - one process-wide choice, made before any verify
    if choice not in _VERIFIER_CHOICES:
        raise ConfigError(
            VERIFIER_ENV,
            f"{choice!r} is not a verifier",
            f"set {VERIFIER_ENV} to one of {', '.join(_VERIFIER_CHOICES)}, or unset it (auto)",
        )
    native = None if choice == "pynacl" else _load_native()
    if choice == "native" and native is None:
        raise ConfigError(
            VERIFIER_ENV,
            f"native, but the compiled verifier {_NATIVE_MODULE} is not installed",
            f"run make native (needs cargo), or set {VERIFIER_ENV}=auto or pynacl",
        )
    _native_verify = native
    return verifier()


def verifier() -> str:
    """The verifier in use: ``"native"`` (``obus_ed25519``) or ``"pynacl"`` (libsodium)."""
    return "pynacl" if _native_verify is None else "native"


# DSSE v1 protocol.md, "Signature definition": PAE(type, body) =
# "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, LEN = ASCII decimal byte length.
_PAE_PREFIX: Final = b"DSSEv1 "

# edwards25519 (RFC 8032 §5.1): field prime p and curve constant d = -121665/121666 mod p.
_P: Final = 2**255 - 19
_D: Final = -121665 * pow(121666, -1, _P) % _P
_Y_MASK: Final = (1 << 255) - 1  # the top bit of an encoded point is the sign of x
# y-coordinates of the 8 points of order dividing 8 (the 8-torsion): libsodium's
# ge25519_has_small_order() blacklist, which like this set ignores the x sign bit.
# 0: order 4; 1: the neutral point; p-1: order 2; the two large values: order 8.
_SMALL_ORDER_Y: Final = frozenset(
    {
        0,
        1,
        _P - 1,
        2707385501144840649318225287225658788936804267575313519463743609750303402022,
        55188659117513257062467267217118295137698188065244968500265048394206261417927,
    }
)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: the exact bytes that are signed.

    Args:
        payload_type: the envelope's payload type; LEN counts its UTF-8 bytes, not characters.
        payload: the serialized inner message, as stored.

    Returns:
        ``b"DSSEv1 " + LEN(type) + b" " + type + b" " + LEN(body) + b" " + body``.

    Raises:
        VerificationError: ``INVALID_FIELD`` when ``payload_type`` has no UTF-8 encoding
            (lone surrogates).
        TypeError: ``payload_type`` is not ``str`` or ``payload`` is not bytes-like.
    """
    if not isinstance(payload_type, str):
        raise TypeError(f"payload_type must be str, not {type(payload_type).__name__}")
    body = _require_bytes(payload, "payload")
    try:
        type_bytes = payload_type.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise VerificationError(
            Reason.INVALID_FIELD, "payload_type is not valid Unicode text (no UTF-8 encoding)"
        ) from exc
    return b"".join(
        (
            _PAE_PREFIX,
            b"%d " % len(type_bytes),
            type_bytes,
            b" %d " % len(body),
            body,
        )
    )


def key_id(public_key: bytes) -> bytes:
    """The key id that names a public key in envelopes and accreditations.

    Args:
        public_key: raw 32-byte Ed25519 public key.

    Returns:
        SHA-256 of the raw public key (32 bytes).

    Raises:
        VerificationError: ``MALFORMED_KEY`` when ``public_key`` is not 32 bytes.
    """
    raw = _bytes_or_reject(public_key, Reason.MALFORMED_KEY, "public key")
    if len(raw) != PUBLIC_KEY_BYTES:
        raise VerificationError(
            Reason.MALFORMED_KEY,
            f"public key must be {PUBLIC_KEY_BYTES} bytes",
            length=len(raw),
        )
    return hashlib.sha256(raw).digest()


def validate_public_key(public_key: bytes) -> None:
    """Check that a public key can ever verify a signature under the pinned rule.

    Mirrors the key checks in libsodium's ``crypto_sign_verify_detached``: 32 bytes, canonical
    encoding (y < p), not of small order, and a point on edwards25519. Use it to refuse weak keys
    before accrediting them; :func:`verify` needs no prior call.

    Raises:
        VerificationError: ``MALFORMED_KEY``, with the problem in ``context["problem"]``.
    """
    raw = _bytes_or_reject(public_key, Reason.MALFORMED_KEY, "public key")
    problem = _public_key_problem(raw)
    if problem is not None:
        raise VerificationError(
            Reason.MALFORMED_KEY, f"unusable Ed25519 public key: {problem}", problem=problem
        )


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature under the pinned strict (libsodium) rule.

    Args:
        public_key: raw 32-byte public key.
        message: the signed bytes (for envelopes, use :func:`verify_pae`).
        signature: 64-byte signature R || S.

    Raises:
        VerificationError: ``MALFORMED_KEY`` when the key is not 32 bytes, not canonical, not on
            the curve or of small order; ``BAD_SIGNATURE`` for any other rejection (wrong length,
            S >= L, small-order or non-canonical R, or the equation does not hold);
            ``INVALID_FIELD`` when ``message`` is not bytes-like. Nothing else is ever raised.
    """
    pk = _bytes_or_reject(public_key, Reason.MALFORMED_KEY, "public key")
    msg = _bytes_or_reject(message, Reason.INVALID_FIELD, "message")
    sig = _bytes_or_reject(signature, Reason.BAD_SIGNATURE, "signature")
    cause: Exception | None = None
    if len(pk) == PUBLIC_KEY_BYTES and len(sig) == SIGNATURE_BYTES:
        if _native_verify is not None:
            if _native_verify(pk, msg, sig):
                return
            # The same cause as PyNaCl's rejection, so errors chain alike whichever verified.
            cause = nacl.exceptions.BadSignatureError(f"{_NATIVE_MODULE} rejected the signature")
        else:
            try:
                # crypto_sign_open runs the same _crypto_sign_ed25519_verify_detached as
                # crypto_sign_verify_detached (libsodium crypto_sign/ed25519/ref10/open.c);
                # PyNaCl 1.6 exposes only the former.
                nacl.signing.VerifyKey(pk).verify(msg, sig)
            except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
                cause = exc
            else:
                return
    # Rejected. Only the reason is decided here; the verdict was the verifier's.
    problem = _public_key_problem(pk)
    if problem is not None:
        raise VerificationError(
            Reason.MALFORMED_KEY, f"unusable Ed25519 public key: {problem}", problem=problem
        ) from cause
    if len(sig) != SIGNATURE_BYTES:
        raise VerificationError(
            Reason.BAD_SIGNATURE,
            f"signature must be {SIGNATURE_BYTES} bytes",
            key_id=key_id(pk).hex(),
            length=len(sig),
        )
    raise VerificationError(
        Reason.BAD_SIGNATURE, "signature does not verify", key_id=key_id(pk).hex()
    ) from cause


def verify_pae(public_key: bytes, payload_type: str, payload: bytes, signature: bytes) -> None:
    """Verify a signature over ``pae(payload_type, payload)``.

    Raises:
        VerificationError: as :func:`verify`; ``INVALID_FIELD`` when ``payload_type`` is not a
            ``str`` with a UTF-8 encoding or ``payload`` is not bytes-like.
    """
    try:
        message = pae(payload_type, payload)
    except TypeError as exc:
        raise VerificationError(Reason.INVALID_FIELD, str(exc)) from exc
    verify(public_key, message, signature)


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class SigningKey:
    """An Ed25519 private key. Immutable; ``repr`` shows only the key id, never the seed.

    Build it with :meth:`generate` or :meth:`from_seed`. Signing is deterministic (RFC 8032), so
    the same seed and message always give the same signature.

    Raises:
        KeyStoreError: the seed is not exactly 32 bytes.
    """

    seed: bytes
    public_key: bytes = field(init=False)
    key_id: bytes = field(init=False)
    _signer: nacl.signing.SigningKey = field(init=False)

    def __post_init__(self) -> None:
        seed = self.seed
        if not isinstance(seed, bytes | bytearray | memoryview):
            raise KeyStoreError(f"Ed25519 seed must be bytes, not {type(seed).__name__}")
        seed = bytes(seed)
        if len(seed) != SEED_BYTES:
            raise KeyStoreError(f"Ed25519 seed must be {SEED_BYTES} bytes", length=len(seed))
        signer = nacl.signing.SigningKey(seed)
        public_key = bytes(signer.verify_key)
        # frozen dataclass: __post_init__ is the one place that may set fields.
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "_signer", signer)
        object.__setattr__(self, "public_key", public_key)
        object.__setattr__(self, "key_id", hashlib.sha256(public_key).digest())

    @classmethod
    def generate(cls) -> SigningKey:
        """A new key from the operating system's CSPRNG (libsodium ``randombytes``)."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key for a 32-byte RFC 8032 seed.

        Raises:
            KeyStoreError: the seed is not exactly 32 bytes.
        """
        return cls(seed)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (prefer :meth:`sign_pae` for envelopes).

        Raises:
            TypeError: ``message`` is not bytes-like.
        """
        msg = _require_bytes(message, "message")
        return bytes(self._signer.sign(msg).signature)

    def sign_pae(self, payload_type: str, payload: bytes) -> bytes:
        """The 64-byte signature of ``pae(payload_type, payload)``.

        Raises:
            VerificationError: ``INVALID_FIELD`` when ``payload_type`` has no UTF-8 encoding.
            TypeError: wrong argument types.
        """
        return self.sign(pae(payload_type, payload))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id.hex()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return hmac.compare_digest(self.seed, other.seed)

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __reduce__(self) -> tuple[type[SigningKey], tuple[bytes]]:
        # Rebuild from the seed; the nacl object and derived fields are not picklable state.
        return (SigningKey, (self.seed,))


def sign_single(payload_type: str, payload: bytes, key: SigningKey) -> Envelope:
    """An envelope over ``payload`` with exactly one signature: ``key``'s over DSSE PAE.

    The inverse of :func:`open_single` (Ed25519 is deterministic: the same key and payload
    always give the same envelope bytes).

    Raises:
        VerificationError: ``INVALID_FIELD`` when ``payload_type`` has no UTF-8 encoding.
        TypeError: wrong argument types.
    """
    sig = Signature(key.key_id, key.sign_pae(payload_type, payload))
    return Envelope(payload_type, payload, (sig,))


def open_single(
    raw: bytes,
    payload_type: str,
    lookup: Callable[[bytes], Accreditation],
    *,
    what: str,
    preverified: Container[tuple[bytes, bytes]] = frozenset(),
) -> tuple[Envelope, Accreditation]:
    """Open an envelope that must carry exactly one signature, by an accredited key.

    Checks, in this order: the bytes are a canonical envelope, of ``payload_type``, with exactly
    one signature, by a key ``lookup`` knows, that verifies over
    ``pae(payload_type, payload)``. The inverse of :func:`sign_single`.

    The signature check is skipped only when ``(public key, raw)`` is in ``preverified``: then
    the same libsodium call has already accepted exactly these bytes under exactly this key
    (:func:`bus.verify.preverify_signatures`), and it is deterministic. A signature found
    invalid there is never in ``preverified`` and is verified again here, so the reason code is
    always this function's own.

    Args:
        raw: the envelope bytes.
        payload_type: the only payload type accepted.
        lookup: the accreditation of a key id (:meth:`bus.trust.KeyRing.lookup`); raises
            ``unknown_key`` for a key it does not know.
        what: what the message is ("report", "receipt", ...), for the error message.
        preverified: ``(public key, raw)`` pairs whose signature is known to verify.

    Returns:
        The envelope and the accreditation of its signing key.

    Raises:
        VerificationError: ``malformed``, ``missing_signature``, ``wrong_payload_type``,
            ``invalid_field`` (not exactly one signature), ``unknown_key`` (from ``lookup``),
            ``bad_signature``, ``malformed_key``.
    """
    env = Envelope.decode(raw)
    if env.payload_type != payload_type:
        raise VerificationError(
            Reason.WRONG_PAYLOAD_TYPE,
            f"expected {payload_type}, got {env.payload_type!r}",
            payload_type=env.payload_type,
        )
    if len(env.signatures) != 1:
        raise VerificationError(
            Reason.INVALID_FIELD, f"a {what} carries exactly one signature", field="signatures"
        )
    sig = env.signatures[0]
    acc = lookup(sig.key_id)
    # An empty set holds no pair: skip building and hashing one (a Container without __len__
    # is always truthy, so it is still asked).
    if not preverified or (acc.public_key, raw) not in preverified:
        verify_pae(acc.public_key, env.payload_type, env.payload, sig.sig)
    return env, acc


def _require_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _bytes_or_reject(value: object, reason: Reason, what: str) -> bytes:
    try:
        return _require_bytes(value, what)
    except TypeError as exc:
        raise VerificationError(reason, str(exc)) from exc


def _public_key_problem(public_key: bytes) -> str | None:
    """Why libsodium's verifier refuses this key outright, or None if it can verify.

    The same three checks as ``_crypto_sign_ed25519_verify_detached`` makes on ``pk``:
    ``ge25519_is_canonical``, ``ge25519_has_small_order`` and ``ge25519_frombytes_negate_vartime``.
    """
    if len(public_key) != PUBLIC_KEY_BYTES:
        return f"must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}"
    y = int.from_bytes(public_key, "little") & _Y_MASK
    if y >= _P:
        return "non-canonical encoding (y >= p)"
    if y in _SMALL_ORDER_Y:
        return "small-order point"
    # RFC 8032 §5.1.3 decoding: x^2 = (y^2 - 1) / (d y^2 + 1) must be a square mod p.
    # d y^2 + 1 is never 0 because d is not a square and -1 is.
    y2 = y * y % _P
    x2 = (y2 - 1) * pow(_D * y2 + 1, -1, _P) % _P
    if x2 != 0 and pow(x2, (_P - 1) // 2, _P) != 1:
        return "not a point on edwards25519"
    return None


select_verifier(os.environ.get(VERIFIER_ENV, "auto"))
