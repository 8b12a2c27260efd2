"""Making signed envelopes: one per message type, and an observer's chained report signer (pure).

Singly signed envelopes are made by :func:`bus.crypto.sign_single` (opened by its inverse,
:func:`bus.crypto.open_single`); :func:`sign_envelope` signs with several keys at once (a
mandate, signed by the organizations' root keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from bus.crypto import SigningKey, sign_single
from bus.model import (
    PAYLOAD_ACCREDITATION,
    PAYLOAD_ENCRYPTION_KEY,
    PAYLOAD_MANDATE,
    PAYLOAD_REPORT,
    PAYLOAD_REVOCATION,
    PAYLOAD_SEALED_REPORT,
    Accreditation,
    EncryptionKey,
    Envelope,
    Mandate,
    Report,
    Revocation,
    Signature,
    encode,
    sha256,
    stamp_schema_version,
)
from bus.verify import ChainHead


def sign_envelope(payload_type: str, payload: bytes, keys: Iterable[SigningKey]) -> Envelope:
    """An envelope over payload with one signature per key (over DSSE PAE).

    Raises:
        ValueError: no key given (an unsigned envelope is never useful).
    """
    sigs = tuple(Signature(k.key_id, k.sign_pae(payload_type, payload)) for k in keys)
    if not sigs:
        raise ValueError("at least one signing key is required")
    return Envelope(payload_type, payload, sigs)


def sign_mandate(mandate: Mandate, root_keys: Iterable[SigningKey]) -> Envelope:
    """A mandate envelope signed by each given organization root key."""
    return sign_envelope(PAYLOAD_MANDATE, encode(mandate), root_keys)


def sign_accreditation(acc: Accreditation, org_root: SigningKey) -> Envelope:
    """An accreditation envelope signed by the organization's root key."""
    return sign_single(PAYLOAD_ACCREDITATION, encode(acc), org_root)


def sign_revocation(rev: Revocation, org_root: SigningKey) -> Envelope:
    """A revocation envelope signed by the organization's root key."""
    return sign_single(PAYLOAD_REVOCATION, encode(rev), org_root)


class ReportSigner:
    """Signs an observer's reports in chain order: fills seq and prev_digest, returns bytes.

    The caller persists :attr:`head` together with each envelope it keeps (the observer's
    outbox), so a restart continues the chain exactly where it stopped. Given ``mandate``, every
    report states the schema version :func:`bus.model.stamp_schema_version` gives under it, and
    one using fields of a version the mandate does not allow is refused before signing; without
    one, a report states at least the version its fields need (the caller answers for the
    mandate, as the observer client does through :meth:`bus.report_file.ReportDraft.to_report`).
    """

    def __init__(
        self, key: SigningKey, head: ChainHead | None = None, *, mandate: Mandate | None = None
    ) -> None:
        self._key = key
        self.head = head
        self._mandate = mandate

    def _next(self, draft: Report) -> Report:
        seq = 1 if self.head is None else self.head.seq + 1
        prev = b"" if self.head is None else self.head.digest
        report = dataclasses.replace(draft, seq=seq, prev_digest=prev)
        if self._mandate is not None:
            return stamp_schema_version(report, self._mandate)
        if report.schema_version < report.required_schema_version:
            return dataclasses.replace(report, schema_version=report.required_schema_version)
        return report

    def sign(self, draft: Report) -> bytes:
        """Sign the next report; draft's seq and prev_digest are replaced.

        Returns:
            The envelope bytes exactly as they go on the bus.

        Raises:
            VerificationError: ``schema_not_allowed`` (given a mandate, see the class).
        """
        report = self._next(draft)
        raw = sign_single(PAYLOAD_REPORT, encode(report), self._key).encode()
        self.head = ChainHead(report.seq, sha256(raw))
        return raw

    def sign_sealed(self, draft: Report, recipients: Sequence[EncryptionKey]) -> bytes:
        """Sign the next report as a restricted report readable only by ``recipients``.

        The report takes the next chain position like :meth:`sign`; it is sealed with
        :func:`bus.sealed.seal_report` and the signature covers the ciphertext.

        Returns:
            The envelope bytes (payload type sealed report) exactly as they go on the bus.
        """
        from bus.sealed import seal_report  # noqa: PLC0415 - HPKE only when sealing

        report = self._next(draft)
        sealed = seal_report(report, recipients)
        raw = sign_single(PAYLOAD_SEALED_REPORT, encode(sealed), self._key).encode()
        self.head = ChainHead(report.seq, sha256(raw))
        return raw


def sign_encryption_key(ek: EncryptionKey, org_root: SigningKey) -> Envelope:
    """An encryption key record signed by the organization's root key."""
    return sign_single(PAYLOAD_ENCRYPTION_KEY, encode(ek), org_root)
