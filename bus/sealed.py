"""Restricted reports: an observer report encrypted to named organizations (pure).

Construction (:func:`seal_report`):

1. a fresh 32-byte content key and 12-byte nonce; the canonical ``ObserverReport`` bytes are
   encrypted with AES-256-GCM, associated data :func:`content_aad` (binds report id, observer,
   organization and seq);
2. for each recipient organization, the content key is wrapped with HPKE (RFC 9180) base mode,
   suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, to the organization's
   :class:`~bus.model.EncryptionKey` from the registry, ``info`` = :data:`HPKE_INFO`,
   ``aad`` = report id and recipient organization;
3. the observer signs the resulting :class:`~bus.model.SealedReport` exactly like a plain
   report (:meth:`bus.sign.ReportSigner.sign_sealed`): the signature covers the ciphertext.

HPKE is pyhpke (maintained, on ``cryptography``; tested against the RFC 9180 appendix A.1.1
vectors in ``tests/vectors/rfc9180-x25519.json``). The ``hpke`` 0.3 package was weighed first:
it pins ``cryptography<44`` and has no X25519 KEM, so it does not fit.

**Visible to everyone** (needed to verify authorship, accreditation, mandate and chain
identically at every node): report id, mandate id, zone id, observer id, organization, seq,
prev_digest, signed_at, the recipient organizations and their key ids, sizes. **Hidden**:
everything else of the report (location, times observed, category, severity, casualties,
narrative, attachments, corrections).

**Acceptance never depends on a private key.** :func:`verify_sealed_report` decides accept or
quarantine from public data only, so every node and the auditor agree on it. Whether this node
can read the content is a separate per-node :class:`Readability`, recorded with the report:
``readable``, ``not_recipient``, ``no_key`` (a recipient, but the node holds no private key
for the key id used), ``undecryptable`` (the wrapped key or content does not open: the observer
sealed to a wrong key) or ``inconsistent`` (decrypted, but the inner report differs from the
clear fields or is invalid). A record is never quarantined for one of those.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKeyPair, PyHPKEError

from bus.errors import Reason, VerificationError
from bus.model import (
    GCM_NONCE_BYTES,
    PAYLOAD_SEALED_REPORT,
    EncryptionKey,
    Report,
    SealedRecipient,
    SealedReport,
    encode,
    sha256,
)
from bus.trust import KeyRing
from bus.verify import Limits, check_claims, open_observer_envelope

HPKE_INFO: Final = b"obus sealed report v1"
CONTENT_KEY_BYTES: Final = 32  # AES-256
_SUITE: Final = CipherSuite.new(
    KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM
)
_PEEK: Final = b"\x0a" + bytes([len(PAYLOAD_SEALED_REPORT)]) + PAYLOAD_SEALED_REPORT.encode()


class Readability(enum.StrEnum):
    """Whether this node could read a sealed report it accepted (per node, never a verdict)."""

    READABLE = "readable"
    NOT_RECIPIENT = "not_recipient"
    NO_KEY = "no_key"
    UNDECRYPTABLE = "undecryptable"
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True, slots=True, repr=False)
class DecryptionKey:
    """An organization's X25519 private key (``obus node --decryption-key FILE``)."""

    org: str
    private_key: bytes

    def __post_init__(self) -> None:
        if len(self.private_key) != 32:
            raise ValueError("an X25519 private key is 32 bytes")

    @property
    def public_key(self) -> bytes:
        """The raw X25519 public key."""
        return X25519PrivateKey.from_private_bytes(self.private_key).public_key().public_bytes_raw()

    @property
    def key_id(self) -> bytes:
        """SHA-256 of the public key (as named in recipients and on the registry)."""
        return sha256(self.public_key)

    @classmethod
    def generate(cls, org: str) -> DecryptionKey:
        """A new random key for an organization."""
        return cls(org, X25519PrivateKey.generate().private_bytes_raw())

    def __repr__(self) -> str:
        return f"DecryptionKey(org={self.org}, key_id={self.key_id.hex()[:16]})"


def content_aad(report_id: str, observer_id: str, org: str, seq: int) -> bytes:
    """AES-GCM associated data of the content: binds it to its clear routing fields."""
    return f"obus sealed report v1|{report_id}|{observer_id}|{org}|{seq}".encode()


def _wrap_aad(report_id: str, org: str) -> bytes:
    return f"{report_id}|{org}".encode()


def seal_report(
    report: Report,
    recipients: Sequence[EncryptionKey],
    *,
    content_key: bytes | None = None,
    nonce: bytes | None = None,
    ephemeral_ikm: Sequence[bytes] | None = None,
) -> SealedReport:
    """Encrypt a (chained, complete) report to the recipients' encryption keys.

    Args:
        report: the report with its final seq and prev_digest.
        recipients: one current encryption key per recipient organization.
        content_key, nonce, ephemeral_ikm: fixed values for reproducible test vectors only;
            by default fresh randomness from the OS.

    Raises:
        ValueError: no recipient, an organization twice, or fixed values of the wrong size.
    """
    if not recipients:
        raise ValueError("a restricted report needs at least one recipient organization")
    cek = os.urandom(CONTENT_KEY_BYTES) if content_key is None else content_key
    iv = os.urandom(GCM_NONCE_BYTES) if nonce is None else nonce
    if len(cek) != CONTENT_KEY_BYTES or len(iv) != GCM_NONCE_BYTES:
        raise ValueError("content key must be 32 bytes and nonce 12 bytes")
    aad = content_aad(report.report_id, report.observer_id, report.org, report.seq)
    ciphertext = AESGCM(cek).encrypt(iv, encode(report), aad)
    wrapped = []
    for i, ek in enumerate(recipients):
        eks: KEMKeyPair | None = None
        if ephemeral_ikm is not None:
            eks = _SUITE.kem.derive_key_pair(ephemeral_ikm[i])
        pkr = _SUITE.kem.deserialize_public_key(ek.public_key)
        enc, ctx = _SUITE.create_sender_context(pkr, info=HPKE_INFO, eks=eks)
        wrapped.append(
            SealedRecipient(
                ek.org, ek.key_id, enc, ctx.seal(cek, _wrap_aad(report.report_id, ek.org))
            )
        )
    return SealedReport(
        report_id=report.report_id,
        mandate_id=report.mandate_id,
        zone=report.zone,
        observer_id=report.observer_id,
        org=report.org,
        seq=report.seq,
        prev_digest=report.prev_digest,
        signed_at_ms=report.signed_at_ms,
        recipients=tuple(wrapped),
        nonce=iv,
        ciphertext=ciphertext,
    )


def open_sealed(
    sealed: SealedReport, keys: Mapping[bytes, DecryptionKey]
) -> tuple[Readability, Report | None, str]:
    """Try to read a sealed report with this node's decryption keys (by key id).

    Returns:
        (readability, the inner report when readable, a detail for humans). Never raises.
    """
    orgs = {k.org for k in keys.values()}
    mine = [r for r in sealed.recipients if r.org in orgs]
    if not mine:
        return Readability.NOT_RECIPIENT, None, f"sealed for {', '.join(sealed.recipient_orgs)}"
    entry = next((r for r in mine if r.key_id in keys), None)
    if entry is None:
        return Readability.NO_KEY, None, "sealed to an encryption key this node does not hold"
    key = keys[entry.key_id]
    try:
        skr = _SUITE.kem.deserialize_private_key(key.private_key)
        ctx = _SUITE.create_recipient_context(entry.enc, skr, info=HPKE_INFO)
        cek = ctx.open(entry.wrapped_key, _wrap_aad(sealed.report_id, entry.org))
        aad = content_aad(sealed.report_id, sealed.observer_id, sealed.org, sealed.seq)
        plain = AESGCM(cek).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except (PyHPKEError, InvalidTag, ValueError) as exc:
        return Readability.UNDECRYPTABLE, None, f"does not open: {type(exc).__name__}"
    try:
        inner = Report.decode(plain)
    except VerificationError as exc:
        return Readability.INCONSISTENT, None, f"inner report invalid: {exc.message}"
    for name in ("report_id", "mandate_id", "zone", "observer_id", "org", "seq", "prev_digest",
                 "signed_at_ms"):  # fmt: skip
        if getattr(inner, name) != getattr(sealed, name):
            return Readability.INCONSISTENT, None, f"inner {name} differs from the clear field"
    return Readability.READABLE, inner, ""


def is_sealed(raw: bytes) -> bool:
    """Cheap test whether canonical envelope bytes carry a sealed report (field 1 comes first).

    A non-canonical envelope answers False and is then refused as ``malformed`` by the plain
    path, the same verdict the sealed path would give.
    """
    return raw.startswith(_PEEK)


@dataclass(frozen=True, slots=True)
class VerifiedSealed:
    """A sealed report whose signature, accreditation, mandate and clear fields verified."""

    sealed: SealedReport
    envelope_digest: bytes
    key_id: bytes
    readability: Readability
    report: Report | None  # the inner report when this node could read it
    detail: str = ""
    content: bytes = b""  # the inner report's bytes when readable


def verify_sealed_report(
    raw: bytes,
    *,
    expected_org: str,
    keyring: KeyRing,
    reference_ms: int,
    limits: Limits | None = None,
    keys: Mapping[bytes, DecryptionKey] | None = None,
) -> VerifiedSealed:
    """Verify a sealed report record from ``expected_org``'s topic, then try to read it.

    The same checks as :func:`bus.verify.verify_report` on the clear fields; the location
    check needs the content and is left to recipients (``inconsistent`` when it fails).
    Recipients must be organizations of the mandate.

    Raises:
        VerificationError: the first public check that fails, with its reason code.
    """
    limits = limits or Limits()
    env, acc = open_observer_envelope(raw, PAYLOAD_SEALED_REPORT, keyring, limits)
    sealed = SealedReport.decode(env.payload)
    check_claims(sealed, acc, expected_org=expected_org, keyring=keyring)
    mandate = keyring.mandate
    unknown = [o for o in sealed.recipient_orgs if mandate.organization(o) is None]
    if unknown:
        raise VerificationError(
            Reason.INVALID_FIELD,
            f"recipients {', '.join(unknown)} are not organizations of the mandate",
            field="recipients",
        )
    if not mandate.not_before_ms <= sealed.signed_at_ms <= mandate.not_after_ms:
        raise VerificationError(
            Reason.OUTSIDE_WINDOW, "signed_at_ms outside the mandate window", field="signed_at_ms"
        )
    if sealed.signed_at_ms > reference_ms + limits.max_clock_skew_ms:
        raise VerificationError(
            Reason.CLOCK_SKEW,
            f"signed_at is {sealed.signed_at_ms - reference_ms} ms after the log time",
        )
    readability, inner, detail = open_sealed(sealed, keys or {})
    if inner is not None:
        zone = mandate.zone(inner.zone)
        if zone is None or not zone.contains(inner.location.lat, inner.location.lon):
            readability, inner, detail = Readability.INCONSISTENT, None, "location outside zone"
    return VerifiedSealed(
        sealed,
        sha256(raw),
        env.signatures[0].key_id,
        readability,
        inner,
        detail,
        encode(inner) if inner is not None else b"",
    )
