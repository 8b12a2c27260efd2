"""Trust over time: mandate versions followed from the log, each with the key ring it implies.

Pure state machine (no I/O). A node or auditor starts from the mandate file it was given out of
band, then feeds every record of ``<prefix>mandate`` and ``<prefix>registry`` in log order:

* :meth:`TrustTimeline.offer_mandate` applies a version only when it verifies against the
  current one (:func:`bus.trust.verify_mandate` with ``previous``: exactly N+1, ``threshold``
  of version N's organizations **and** of its own). Anything else raises the
  :class:`~bus.errors.VerificationError` the caller logs and counts as an alarm; it is never
  applied. A byte-identical copy of the current version is ignored (the out-of-band version
  published, compaction). An older version seen before any newer one on the topic is history
  and ignored (a node given version 2 out of band meets version 1 first); an older version, or
  a different one with the current number, appearing **after** a newer one is a rollback alarm,
  even as an identical copy of a genuine old version (the classic replay).
* **The trust a node judges by** is the newest version it has applied, with the registry as
  read so far (:attr:`TrustTimeline.current`): a node's provisional verdicts
  (:class:`bus.ingest.Ingestor`) use the trust it knows when it judges, never a version chosen by
  a broker timestamp. Final verdicts put each trust record at its sealed epoch instead
  (:mod:`bus.judge`). A version's freshness (``mandate_expired``) is judged at the reader's
  ``now_ms``: a node passes its own clock. The broker's timestamp of a record is never an
  argument here: the operator sets it, so it cannot decide whether or when a version counts.
* **Key state under each version** is rebuilt from every registry record seen so far, verified
  against that version: an accreditation counts while its organization is a member **and** its
  signature is by that organization's root key in that version. So an organization that
  leaves takes its accreditations with it, and an organization that rotates its root key must
  re-accredit its keys under the new one (a rotated-out key may be the compromised one).
  Revocations are never undone: every revocation verified under any version stays in force in
  every later one.
* **Bounded work** (:mod:`bus.trust`): a mandate record over
  :data:`~bus.trust.MAX_MANDATE_RECORD_BYTES` is refused (``oversized``) before anything else,
  a duplicate or history copy included. A registry record outside its bounds (size, exactly
  one signature) is refused before it is kept, so it is never verified again under later
  versions; every other one costs one verification per version that judges it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from bus.errors import Reason, VerificationError
from bus.model import (
    PAYLOAD_MANDATE,
    Accreditation,
    EncryptionKey,
    Envelope,
    Mandate,
    Revocation,
    encode,
)
from bus.trust import (
    MAX_MANDATE_RECORD_BYTES,
    KeyRing,
    check_record_size,
    check_registry_record,
    verify_mandate,
)

RegistryEntry = Accreditation | Revocation | EncryptionKey


@dataclass(frozen=True, slots=True)
class Version:
    """An applied mandate version: its canonical encoding and its key ring."""

    payload: bytes
    keyring: KeyRing

    @property
    def mandate(self) -> Mandate:
        """The mandate of this version."""
        return self.keyring.mandate


class TrustTimeline:
    """Mandate versions in the order they were applied, each with its key ring (see module
    docstring).

    Args:
        root: the out-of-band mandate (already verified by the caller).
    """

    def __init__(self, root: Mandate) -> None:
        # Decoding is canonical, so the encoding is the payload every copy of it carries.
        self._versions: list[Version] = [Version(encode(root), KeyRing(root))]
        self._registry: list[Envelope] = []
        self._newest_on_topic = 0  # highest version number seen on the mandate topic

    # -- reads -------------------------------------------------------------------------------

    @property
    def current(self) -> KeyRing:
        """The key ring of the newest version."""
        return self._versions[-1].keyring

    @property
    def mandate(self) -> Mandate:
        """The newest applied mandate version."""
        return self.current.mandate

    @property
    def versions(self) -> tuple[Version, ...]:
        """Every applied version, oldest first."""
        return tuple(self._versions)

    # -- registry ----------------------------------------------------------------------------

    def apply_registry(self, envelope: Envelope) -> RegistryEntry:
        """Apply a registry record to every version's key ring.

        Returns:
            The entry as verified under the newest version.

        Raises:
            VerificationError: ``oversized``, ``missing_signature`` or ``too_many_signatures``
                (outside every version's bounds: not kept); or the newest version refuses it
                (older versions may still count it; a record that counts nowhere changes
                nothing).
        """
        check_registry_record(envelope)
        self._registry.append(envelope)
        for v in self._versions[:-1]:
            with contextlib.suppress(VerificationError):  # counts under that version or not
                v.keyring.apply(envelope)
        return self.current.apply(envelope)

    def revocations(self) -> list[Revocation]:
        """Every revocation in force under the newest version."""
        return self.current.revocations()

    # -- mandate -----------------------------------------------------------------------------

    def offer_mandate(self, envelope: Envelope, *, now_ms: int) -> Mandate | None:
        """Consider a mandate record read from the mandate topic.

        Args:
            envelope: the record.
            now_ms: the reader's clock, at which the version's freshness is judged (a node:
                its own clock when it reads the record; never a broker timestamp).

        Returns:
            The new mandate when it was applied; None for a duplicate or older history.

        Raises:
            VerificationError: an alarm, never applied: ``oversized``, ``wrong_payload_type``,
                ``malformed``, ``wrong_mandate``, ``mandate_rollback`` (older or conflicting
                version after a newer one, or a skipped version), ``missing_signature``,
                ``too_many_signatures``, ``threshold_not_met``, ``mandate_expired``.
        """
        check_record_size(envelope.wire_size(), MAX_MANDATE_RECORD_BYTES, "mandate record")
        if envelope.payload_type != PAYLOAD_MANDATE:
            raise VerificationError(
                Reason.WRONG_PAYLOAD_TYPE, f"not a mandate: {envelope.payload_type!r}"
            )
        offered = Mandate.decode(envelope.payload)
        current = self.mandate
        if offered.mandate_id != current.mandate_id:
            raise VerificationError(
                Reason.WRONG_MANDATE,
                f"mandate id {offered.mandate_id!r} differs from {current.mandate_id!r}",
            )
        # Only versions accepted as genuine (applied, held, or history) count as "seen": a
        # forged higher version must not turn the genuine history after it into alarms.
        newest_before = self._newest_on_topic
        if offered.version == current.version and envelope.payload == self._versions[-1].payload:
            self._newest_on_topic = max(newest_before, offered.version)
            return None  # the current version again (published copy, compaction)
        if offered.version <= current.version:
            if offered.version < current.version and offered.version > newest_before:
                self._newest_on_topic = offered.version
                return None  # history older than what we were given out of band
            raise VerificationError(
                Reason.MANDATE_ROLLBACK,
                f"version {offered.version} appears after version"
                f" {max(newest_before, current.version)}",
                version=offered.version,
            )
        mandate = verify_mandate(envelope, previous=current, now_ms=now_ms)
        self._activate(mandate, envelope.payload)
        self._newest_on_topic = max(newest_before, mandate.version)
        return mandate

    def _activate(self, mandate: Mandate, payload: bytes) -> None:
        keyring = KeyRing(mandate)
        for env in self._registry:
            with contextlib.suppress(VerificationError):  # left, re-keyed: does not count
                keyring.apply(env)
        for rev in self.current.revocations():
            with contextlib.suppress(VerificationError):  # key now another org's: cannot revoke
                keyring.add_revocation(rev)
        self._versions.append(Version(payload, keyring))
