"""Restricted reports: an observer report encrypted to named organizations (pure).

Construction (:func:`seal_report`), format version 2 (:data:`~bus.model.PAYLOAD_SEALED_REPORT`):

1. a fresh 32-byte content key ``K`` and 12-byte nonce; ``context`` = :func:`content_aad`
   (version, report id, observer, organization, seq);
2. ``commitment = HMAC-SHA256(K, "commit|" || context)`` goes in the clear field
   ``key_commitment``; the content is encrypted under ``HMAC-SHA256(K, "encrypt|" || context)``
   (:func:`key_commitment`, :func:`content_aead_key`);
3. the canonical ``ObserverReport`` bytes, padded (:func:`pad_content`: ``0x80`` then zeros,
   by default up to a size bucket of :func:`bucket_size`), are encrypted with AES-256-GCM
   under that key, associated data ``context``;
4. for each recipient organization, ``K`` is wrapped with HPKE (RFC 9180) base mode, suite
   DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, to the organization's current
   :class:`~bus.model.EncryptionKey` on the registry, ``info`` = :data:`HPKE_INFO`, ``aad`` =
   report id and recipient organization;
5. the observer signs the resulting :class:`~bus.model.SealedReport` exactly like a plain
   report (:meth:`bus.sign.ReportSigner.sign_sealed`): the signature covers the ciphertext, the
   wraps and the commitment.

**Why a key commitment.** AES-GCM (and ChaCha20-Poly1305, and the AEAD inside HPKE) is not
key-committing: its tag is a polynomial in the ciphertext (GHASH), so whoever chooses two keys
can solve for one ciphertext block that makes one ciphertext and tag open under both, to two
different plaintexts ("invisible salamanders", Dodis et al. 2018; Albertini et al. 2022). An
observer could then wrap one key to UN and the other to OSCE and have them read different
reports from one signed record, or make one of them unable to read it with nothing to show it
was deliberate. The commitment fixes the one key: for a fixed 32-byte key length,
``HMAC-SHA256(K, m) = SHA-256((K||0^32) ^ opad || SHA-256((K||0^32) ^ ipad || m))``, so two
keys with one commitment are a SHA-256 collision (128-bit security), and the commitment, being
a PRF output under a random secret key, says nothing about ``K``. A recipient compares it with
the key it unwrapped *before* using that key; the AEAD key is derived from ``K`` under another
label, so no key serves two purposes. Under the committed key, AES-GCM decryption of the signed
(nonce, ciphertext, context) is a function: every recipient that gets past the comparison reads
the same bytes. The commitment is inside the signed bytes, so the observer is accountable for
it: whoever discloses ``K`` lets anyone check it against the signature and read what the
observer signed for.

**Visible to everyone** (needed to verify authorship, accreditation, mandate and chain
identically at every node): report id, mandate id, zone id, observer id, organization, seq,
prev_digest, signed_at, the recipient organizations and their key ids, the key commitment and
the padded size (a bucket by default). **Hidden**: everything else of the report (location,
times observed, category, severity, casualties, narrative, attachments, corrections) and its
exact size.

**Acceptance never depends on a private key.** :func:`verify_sealed_report` decides accept or
quarantine from public data only, so every node, the final judge and the auditor agree on it:
besides the checks of a plain report's clear fields, every recipient key id must name the
organization's current encryption key under the key ring given (``recipient_key_not_current``)
and a version 1 record is ``key_commitment_missing``. What a node could read is a separate,
per-node :class:`Readability`, recorded with the report and never a verdict: ``readable``,
``not_recipient``, ``no_key`` (the record names this organization's current key, but this node
does not hold its private key), ``undecryptable`` (the wrap, or the content under the
committed key, does not open: the observer sealed to a wrong key) or ``inconsistent`` (the
node opened something and refused it, for a :class:`~bus.errors.Reason`:
``key_commitment_mismatch``, ``padding_invalid``, ``malformed``, ``invalid_field`` when the
content differs from the clear fields, and ``outside_zone``, ``outside_window``,
``invalid_field`` from the same checks as a plain report's content). Quarantining on those
would make recipients' chains and verdicts differ from everyone else's; the commitment makes
the difference detectable instead: each recipient either reads *the* committed content or
knows the observer gave it another key.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKeyPair, PyHPKEError

from bus.errors import Reason, VerificationError
from bus.model import (
    GCM_NONCE_BYTES,
    PAYLOAD_SEALED_REPORT,
    EncryptionKey,
    Mandate,
    Report,
    SealedRecipient,
    SealedReport,
    Zone,
    encode,
    sha256,
)
from bus.trust import KeyRing
from bus.verify import Limits, check_claims, open_observer_envelope

HPKE_INFO: Final = b"obus sealed report v2"
CONTENT_KEY_BYTES: Final = 32  # AES-256
# The first format, without a key commitment: recognized only to be refused.
PAYLOAD_SEALED_REPORT_V1: Final = "application/vnd.obus.sealed-report.v1+protobuf"
# Padding: the content, then PAD_MARKER, then zeros (ISO/IEC 7816-4), so the end of the content
# is the last non-zero byte. Buckets: 1 KiB, 2 KiB, 4 KiB ... 64 KiB, then every multiple of
# 64 KiB (the largest report fits in 192 KiB, well inside the record limit).
PAD_MARKER: Final = 0x80
SMALLEST_BUCKET: Final = 1024
LARGEST_POWER_OF_TWO_BUCKET: Final = 64 * 1024
_SUITE: Final = CipherSuite.new(
    KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM
)


def _peek(payload_type: str) -> bytes:
    return b"\x0a" + bytes([len(payload_type)]) + payload_type.encode()


_PEEK: Final = _peek(PAYLOAD_SEALED_REPORT)
_PEEK_V1: Final = _peek(PAYLOAD_SEALED_REPORT_V1)


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
    """The context of a sealed report's content: the AES-GCM associated data and the input of
    :func:`key_commitment` and :func:`content_aead_key` (binds them to the clear routing
    fields; ids never contain ``|``)."""
    return f"obus sealed report v2|{report_id}|{observer_id}|{org}|{seq}".encode()


def key_commitment(content_key: bytes, context: bytes) -> bytes:
    """``HMAC-SHA256(content_key, "commit|" || context)``: the clear ``key_commitment``."""
    return hmac.digest(content_key, b"commit|" + context, "sha256")


def content_aead_key(content_key: bytes, context: bytes) -> bytes:
    """``HMAC-SHA256(content_key, "encrypt|" || context)``: the AES-256-GCM key of the content."""
    return hmac.digest(content_key, b"encrypt|" + context, "sha256")


def bucket_size(n: int) -> int:
    """The padded size of ``n`` bytes (content plus the marker): the smallest bucket >= n."""
    if n <= SMALLEST_BUCKET:
        return SMALLEST_BUCKET
    if n <= LARGEST_POWER_OF_TWO_BUCKET:
        return 1 << (n - 1).bit_length()
    return -(-n // LARGEST_POWER_OF_TWO_BUCKET) * LARGEST_POWER_OF_TWO_BUCKET


def pad_content(content: bytes, *, bucketed: bool = True) -> bytes:
    """``content || 0x80 || zeros`` up to :func:`bucket_size`; no zeros when not ``bucketed``."""
    n = len(content) + 1
    size = bucket_size(n) if bucketed else n
    return content + bytes([PAD_MARKER]) + bytes(size - n)


def unpad_content(padded: bytes) -> bytes:
    """The content of :func:`pad_content`'s output, checked strictly.

    The last non-zero byte must be the marker, and the size exactly one of the two
    :func:`pad_content` gives for that content (unpadded, or its bucket): one content, two byte
    forms, no room for anything else in the padding.

    Raises:
        VerificationError: ``padding_invalid``.
    """
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != PAD_MARKER:
        raise VerificationError(Reason.PADDING_INVALID, "no 0x80 marker before the zero padding")
    n = len(stripped)
    if len(padded) not in (n, bucket_size(n)):
        raise VerificationError(
            Reason.PADDING_INVALID,
            f"padded to {len(padded)} bytes; {n - 1} bytes of content pad to {n} or"
            f" {bucket_size(n)}",
        )
    return stripped[:-1]


def _wrap_aad(report_id: str, org: str) -> bytes:
    return f"{report_id}|{org}".encode()


def seal_report(
    report: Report,
    recipients: Sequence[EncryptionKey],
    *,
    pad: bool = True,
    content_key: bytes | None = None,
    nonce: bytes | None = None,
    ephemeral_ikm: Sequence[bytes] | None = None,
) -> SealedReport:
    """Encrypt a (chained, complete) report to the recipients' encryption keys.

    Args:
        report: the report with its final seq and prev_digest.
        recipients: each recipient organization's current encryption key on the registry
            (readers refuse any other key as ``recipient_key_not_current``).
        pad: pad the content to its :func:`bucket_size` (the default), so the record shows the
            bucket and not the exact size; False adds the marker byte only.
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
    context = content_aad(report.report_id, report.observer_id, report.org, report.seq)
    plain = pad_content(encode(report), bucketed=pad)
    ciphertext = AESGCM(content_aead_key(cek, context)).encrypt(iv, plain, context)
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
        key_commitment=key_commitment(cek, context),
    )


class Opened(NamedTuple):
    """What :func:`open_sealed` found: the state, the inner report when readable, a detail for
    humans (``"<reason>: ..."`` when refused) and the reason code of an ``inconsistent``."""

    readability: Readability
    report: Report | None
    detail: str
    reason: Reason | None = None


def _refused(reason: Reason, message: str) -> Opened:
    return Opened(Readability.INCONSISTENT, None, f"{reason.value}: {message}", reason)


def open_sealed(sealed: SealedReport, keys: Mapping[bytes, DecryptionKey]) -> Opened:
    """Try to read a sealed report with this node's decryption keys (by key id).

    The unwrapped content key is checked against the key commitment before it is used; the
    content must then open, carry valid padding, decode and repeat the clear fields.

    Returns:
        The :class:`Opened` state. Never raises.
    """
    orgs = {k.org for k in keys.values()}
    mine = [r for r in sealed.recipients if r.org in orgs]
    if not mine:
        return Opened(
            Readability.NOT_RECIPIENT, None, f"sealed for {', '.join(sealed.recipient_orgs)}"
        )
    entry = next((r for r in mine if r.key_id in keys), None)
    if entry is None:
        return Opened(
            Readability.NO_KEY, None, "sealed to an encryption key this node does not hold"
        )
    key = keys[entry.key_id]
    context = content_aad(sealed.report_id, sealed.observer_id, sealed.org, sealed.seq)
    try:
        skr = _SUITE.kem.deserialize_private_key(key.private_key)
        ctx = _SUITE.create_recipient_context(entry.enc, skr, info=HPKE_INFO)
        cek = ctx.open(entry.wrapped_key, _wrap_aad(sealed.report_id, entry.org))
    except (PyHPKEError, InvalidTag, ValueError) as exc:
        return Opened(
            Readability.UNDECRYPTABLE, None, f"wrapped key does not open: {type(exc).__name__}"
        )
    if not hmac.compare_digest(key_commitment(cek, context), sealed.key_commitment):
        return _refused(
            Reason.KEY_COMMITMENT_MISMATCH,
            f"the content key wrapped for {entry.org} is not the one the observer committed to",
        )
    try:
        padded = AESGCM(content_aead_key(cek, context)).decrypt(
            sealed.nonce, sealed.ciphertext, context
        )
    except InvalidTag:
        return Opened(
            Readability.UNDECRYPTABLE, None, "content does not open under the committed key"
        )
    try:
        inner = Report.decode(unpad_content(padded))
    except VerificationError as exc:
        return _refused(exc.reason, f"inner report: {exc.message}")
    for name in ("report_id", "mandate_id", "zone", "observer_id", "org", "seq", "prev_digest",
                 "signed_at_ms"):  # fmt: skip
        if getattr(inner, name) != getattr(sealed, name):
            return _refused(Reason.INVALID_FIELD, f"inner {name} differs from the clear field")
    return Opened(Readability.READABLE, inner, "")


def is_sealed(raw: bytes) -> bool:
    """Cheap test whether canonical envelope bytes carry a sealed report, of this version or
    the first (field 1 comes first); :func:`verify_sealed_report` refuses the first.

    A non-canonical envelope answers False and is then refused as ``malformed`` by the plain
    path, the same verdict the sealed path would give.
    """
    return raw.startswith(_PEEK) or raw.startswith(_PEEK_V1)


@dataclass(frozen=True, slots=True)
class VerifiedSealed:
    """A sealed report whose signature, accreditation, mandate and clear fields verified.

    ``readability``, ``report``, ``detail``, ``content`` and ``reason`` are this node's own
    view (see the module docstring), never part of the verdict.
    """

    sealed: SealedReport
    envelope_digest: bytes
    key_id: bytes
    readability: Readability
    report: Report | None  # the inner report when this node could read it
    detail: str = ""
    content: bytes = b""  # the inner report's bytes when readable
    reason: Reason | None = None  # why this node refused content it opened (inconsistent)


def check_recipient_keys(sealed: SealedReport, keyring: KeyRing) -> None:
    """Every recipient is an organization of the mandate, named with its current encryption
    key on the registry (:meth:`bus.trust.KeyRing.encryption_key`), valid at ``signed_at``.

    Raises:
        VerificationError: ``invalid_field`` (not an organization of the mandate),
            ``recipient_key_not_current`` (no key, another key, or outside its validity).
    """
    mandate = keyring.mandate
    unknown = [o for o in sealed.recipient_orgs if mandate.organization(o) is None]
    if unknown:
        raise VerificationError(
            Reason.INVALID_FIELD,
            f"recipients {', '.join(unknown)} are not organizations of the mandate",
            field="recipients",
        )
    for r in sealed.recipients:
        ek = keyring.encryption_key(r.org)
        if ek is None:
            raise VerificationError(
                Reason.RECIPIENT_KEY_NOT_CURRENT,
                f"recipient {r.org} has no encryption key on the registry",
                recipient=r.org,
            )
        if r.key_id != ek.key_id:
            raise VerificationError(
                Reason.RECIPIENT_KEY_NOT_CURRENT,
                f"recipient {r.org}: key id {r.key_id.hex()[:16]} is not its current encryption"
                f" key (serial {ek.serial}, key id {ek.key_id.hex()[:16]})",
                recipient=r.org,
            )
        if not ek.not_before_ms <= sealed.signed_at_ms <= ek.not_after_ms:
            raise VerificationError(
                Reason.RECIPIENT_KEY_NOT_CURRENT,
                f"recipient {r.org}: its encryption key (serial {ek.serial}) is not valid at"
                " signed_at",
                recipient=r.org,
            )


def _check_content(inner: Report, zone: Zone, mandate: Mandate, limits: Limits) -> None:
    """The checks :func:`bus.verify.verify_report` makes on a plain report's content, in its
    order, with its reason codes. The others are done: signed_at equals the clear field, whose
    window and clock skew were checked for everyone."""
    location = inner.location
    if not zone.contains(location.lat, location.lon):
        raise VerificationError(
            Reason.OUTSIDE_ZONE,
            f"location ({location.lat}, {location.lon}) outside zone {zone.id}",
        )
    if not mandate.not_before_ms <= inner.observed_at_ms <= mandate.not_after_ms:
        raise VerificationError(
            Reason.OUTSIDE_WINDOW,
            "observed_at_ms outside the mandate window",
            field="observed_at_ms",
        )
    if inner.observed_at_ms > inner.signed_at_ms + limits.max_clock_skew_ms:
        raise VerificationError(
            Reason.INVALID_FIELD, "observed after it was signed", field="observed_at_ms"
        )


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

    The same checks as :func:`bus.verify.verify_report` on the clear fields, then
    :func:`check_recipient_keys`. A recipient also checks the content (key commitment,
    padding, clear fields, then the checks a plain report's content gets); what it finds is
    its :class:`Readability` and ``reason``, never the verdict.

    Raises:
        VerificationError: the first public check that fails, with its reason code
            (``key_commitment_missing`` for a version 1 record from an accredited observer).
    """
    limits = limits or Limits()
    if raw.startswith(_PEEK_V1):
        open_observer_envelope(raw, PAYLOAD_SEALED_REPORT_V1, keyring, limits)
        raise VerificationError(
            Reason.KEY_COMMITMENT_MISSING,
            f"{PAYLOAD_SEALED_REPORT_V1} commits to no content key, so its recipients could"
            " read different content; seal it again in the current version",
        )
    env, acc = open_observer_envelope(raw, PAYLOAD_SEALED_REPORT, keyring, limits)
    sealed = SealedReport.decode(env.payload)
    zone = check_claims(sealed, acc, expected_org=expected_org, keyring=keyring)
    check_recipient_keys(sealed, keyring)
    mandate = keyring.mandate
    if not mandate.not_before_ms <= sealed.signed_at_ms <= mandate.not_after_ms:
        raise VerificationError(
            Reason.OUTSIDE_WINDOW, "signed_at_ms outside the mandate window", field="signed_at_ms"
        )
    if sealed.signed_at_ms > reference_ms + limits.max_clock_skew_ms:
        raise VerificationError(
            Reason.CLOCK_SKEW,
            f"signed_at is {sealed.signed_at_ms - reference_ms} ms after the log time",
        )
    opened = open_sealed(sealed, keys or {})
    if opened.report is not None:
        try:
            _check_content(opened.report, zone, mandate, limits)
        except VerificationError as exc:
            opened = _refused(exc.reason, f"inner report: {exc.message}")
    inner = opened.report
    return VerifiedSealed(
        sealed,
        sha256(raw),
        env.signatures[0].key_id,
        opened.readability,
        inner,
        opened.detail,
        encode(inner) if inner is not None else b"",
        opened.reason,
    )
