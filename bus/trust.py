"""Trust roots: the mandate, accreditations, revocations and the key ring built from them.

Pure state machine in the spirit of python-tuf's ``TrustedMetadataSet``: it takes envelope
bytes, returns verified objects, and refuses anything that does not chain to the mandate.

Rules (one rule for every node and the auditor):

* A mandate version counts signatures of **distinct organizations**: an organization counts
  once (a second signature by one key refuses the record, see below); signatures by keys the
  mandate does not list are ignored.
  Version 1 (given out of band) must carry ``threshold`` signatures of its own organizations.
  Version N+1 must carry ``threshold(N)`` signatures of version N's organizations **and**
  ``threshold(N+1)`` of its own, and its version must be exactly N+1 (rollback refused).
  An expired mandate is refused (freeze attack).
* An accreditation or revocation is valid only when signed by the root key of the organization
  it names, for the current mandate id.
* A revocation takes effect at a position in the subject's own signed sequence
  (``last_valid_seq``), not at a claimed time, so every node decides identically however it
  interleaves topics, and a thief holding the key cannot backdate around it.

Bounded work per record (anyone who can write to a trust topic can make every reader spend
what a record costs, on every start): a mandate record is at most
:data:`MAX_MANDATE_RECORD_BYTES`, a registry record at most :data:`MAX_REGISTRY_RECORD_BYTES`
(``oversized``), checked before anything else. Before any signature is verified, a mandate
record carries at most one signature per distinct root key of the offered and the previous
version, a registry record exactly one, and no record two signatures by one key id
(``too_many_signatures``). Signatures by key ids that name no root key are skipped without a
verification, and the first signature by a key id is the only one ever tried. So reading a
mandate version costs at most one verification per root key of the previous version before
its threshold is met (the organizations of the offered version, which its author chose, are
tried only after that), and a registry record one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bus.crypto import verify_pae
from bus.errors import Reason, VerificationError
from bus.model import (
    PAYLOAD_ACCREDITATION,
    PAYLOAD_ENCRYPTION_KEY,
    PAYLOAD_MANDATE,
    PAYLOAD_REVOCATION,
    Accreditation,
    EncryptionKey,
    Envelope,
    Mandate,
    Organization,
    Revocation,
    Role,
)

# Record size limits of the trust topics, checked before a record is decoded (and again on a
# decoded envelope, through Envelope.wire_size). The demo's mandate (six organizations, six
# signatures, three zones) is 1.3 KiB and an accreditation 233 bytes; the limits leave room for
# a mandate of about a hundred organizations with long names and many zones, signed across a
# rotation of every root key, and for a revocation reason of several KiB.
MAX_MANDATE_RECORD_BYTES: Final = 64 * 1024
MAX_REGISTRY_RECORD_BYTES: Final = 8 * 1024


def check_record_size(size: int, limit: int, what: str) -> None:
    """Refuse a record of more than ``limit`` bytes.

    Raises:
        VerificationError: ``oversized``, with the size and the limit.
    """
    if size > limit:
        raise VerificationError(
            Reason.OVERSIZED, f"{what} of {size} bytes > limit {limit}", size=size, limit=limit
        )


def check_signature_count(envelope: Envelope, allowed: int, what: str) -> None:
    """Refuse an envelope with more than ``allowed`` signatures or two by one key id.

    Checked before any signature is verified, so a record's signature work is bounded by
    ``allowed`` verifications whatever it carries.

    Raises:
        VerificationError: ``missing_signature`` (none), ``too_many_signatures``.
    """
    sigs = envelope.signatures
    if not sigs:
        raise VerificationError(Reason.MISSING_SIGNATURE, f"{what} carries no signature")
    if len(sigs) > allowed:
        raise VerificationError(
            Reason.TOO_MANY_SIGNATURES,
            f"{what} carries {len(sigs)} signatures, at most {allowed} allowed",
            signatures=len(sigs),
            allowed=allowed,
        )
    seen: set[bytes] = set()
    for s in sigs:
        if s.key_id in seen:
            raise VerificationError(
                Reason.TOO_MANY_SIGNATURES,
                f"{what} carries two signatures by key {s.key_id.hex()[:16]} (one per key)",
                key_id=s.key_id.hex(),
            )
        seen.add(s.key_id)


def decode_mandate_record(raw: bytes) -> Envelope:
    """The envelope of a record read from the mandate topic (or a mandate file).

    Raises:
        VerificationError: ``oversized`` (checked before decoding), ``malformed``,
            ``missing_signature``, ``invalid_field``, ``bad_signature``.
    """
    check_record_size(len(raw), MAX_MANDATE_RECORD_BYTES, "mandate record")
    return Envelope.decode(raw)


def decode_registry_record(raw: bytes) -> Envelope:
    """The envelope of a record read from the registry topic, within its bounds.

    Raises:
        VerificationError: ``oversized`` (checked before decoding), ``malformed``,
            ``missing_signature``, ``invalid_field``, ``bad_signature``,
            ``too_many_signatures``.
    """
    check_record_size(len(raw), MAX_REGISTRY_RECORD_BYTES, "registry record")
    envelope = Envelope.decode(raw)
    check_registry_record(envelope)
    return envelope


def check_registry_record(envelope: Envelope) -> None:
    """The bounds of every registry record, checked before anything else about it.

    At most :data:`MAX_REGISTRY_RECORD_BYTES`, exactly one signature: an accreditation, a
    revocation or an encryption key is signed by one organization's root key.

    Raises:
        VerificationError: ``oversized``, ``missing_signature``, ``too_many_signatures``.
    """
    check_record_size(envelope.wire_size(), MAX_REGISTRY_RECORD_BYTES, "registry record")
    check_signature_count(envelope, 1, "a registry record")


def mandate_signature_limit(mandate: Mandate, previous: Mandate | None) -> int:
    """How many signatures a record of ``mandate`` may carry: one per distinct root key.

    The root keys of the offered version and of the previous one (None: the out-of-band
    version alone). That is the larger organization count, plus one for every root key a
    rotation replaces: such a version is signed with the old key (for the previous version's
    threshold) and the new one (for its own).
    """
    keys = {o.root_key_id for o in mandate.organizations}
    if previous is not None:
        keys.update(o.root_key_id for o in previous.organizations)
    return len(keys)


def signing_organizations(
    envelope: Envelope,
    organizations: tuple[Organization, ...],
    *,
    verdicts: dict[bytes, bool] | None = None,
) -> set[str]:
    """Ids of the organizations whose root key made a valid signature on the envelope.

    Signatures by unknown keys and invalid signatures are ignored here: the caller decides
    whether the count reaches its threshold. Unknown key ids are skipped without a
    verification, and each key id is tried once: only the first signature by a key id is
    verified. ``verdicts`` (key id -> verified) shares those tries between calls over the
    same envelope, so an organization of two versions is verified once.
    """
    by_key = {o.root_key_id: o for o in organizations}
    tried: dict[bytes, bool] = {} if verdicts is None else verdicts
    signed: set[str] = set()
    for s in envelope.signatures:
        org = by_key.get(s.key_id)
        if org is None or org.org in signed:
            continue
        valid = tried.get(s.key_id)
        if valid is None:
            try:
                verify_pae(org.root_public_key, envelope.payload_type, envelope.payload, s.sig)
            except VerificationError:
                valid = False
            else:
                valid = True
            tried[s.key_id] = valid
        if valid:
            signed.add(org.org)
    return signed


def _expect_type(envelope: Envelope, payload_type: str) -> None:
    if envelope.payload_type != payload_type:
        raise VerificationError(
            Reason.WRONG_PAYLOAD_TYPE,
            f"expected {payload_type}, got {envelope.payload_type!r}",
            payload_type=envelope.payload_type,
        )


def verify_mandate(envelope: Envelope, *, previous: Mandate | None, now_ms: int) -> Mandate:
    """Verify a mandate version against the previous trusted one (None: out-of-band root).

    Checks, in this order: size, payload type, the mandate itself, id and version against
    ``previous``, the signature bound (:func:`mandate_signature_limit`, one per key id), then
    ``previous``'s threshold, the offered version's threshold and expiry. Each signature is
    verified at most once, and none of those by the offered version's own organizations
    before ``previous``'s threshold is met.

    Raises:
        VerificationError: ``oversized``, ``wrong_payload_type``, ``malformed``/
            ``invalid_field``, ``wrong_mandate``, ``mandate_rollback`` (version not exactly
            previous + 1), ``missing_signature``, ``too_many_signatures``,
            ``threshold_not_met``, ``mandate_expired``.
    """
    check_record_size(envelope.wire_size(), MAX_MANDATE_RECORD_BYTES, "mandate record")
    _expect_type(envelope, PAYLOAD_MANDATE)
    mandate = Mandate.decode(envelope.payload)
    if previous is not None:
        if mandate.mandate_id != previous.mandate_id:
            raise VerificationError(
                Reason.WRONG_MANDATE,
                f"mandate id {mandate.mandate_id!r} differs from {previous.mandate_id!r}",
            )
        if mandate.version != previous.version + 1:
            raise VerificationError(
                Reason.MANDATE_ROLLBACK,
                f"version {mandate.version} does not follow {previous.version}",
                version=mandate.version,
            )
    check_signature_count(envelope, mandate_signature_limit(mandate, previous), "a mandate record")
    verdicts: dict[bytes, bool] = {}
    if previous is not None:
        old = signing_organizations(envelope, previous.organizations, verdicts=verdicts)
        if len(old) < previous.threshold:
            raise VerificationError(
                Reason.THRESHOLD_NOT_MET,
                f"signed by {len(old)} of the previous version's organizations,"
                f" {previous.threshold} required",
                signed_by=sorted(old),
            )
    new = signing_organizations(envelope, mandate.organizations, verdicts=verdicts)
    if len(new) < mandate.threshold:
        raise VerificationError(
            Reason.THRESHOLD_NOT_MET,
            f"signed by {len(new)} distinct organizations, {mandate.threshold} required",
            signed_by=sorted(new),
        )
    if now_ms > mandate.not_after_ms:
        raise VerificationError(
            Reason.MANDATE_EXPIRED,
            f"mandate version {mandate.version} expired",
            not_after_ms=mandate.not_after_ms,
        )
    return mandate


def _open_registry_envelope(envelope: Envelope, payload_type: str) -> None:
    check_registry_record(envelope)
    _expect_type(envelope, payload_type)


def _signed_by_org_root(envelope: Envelope, mandate: Mandate, org_id: str) -> None:
    """The one signature (see :func:`check_registry_record`) is by ``org_id``'s root key."""
    org = mandate.organization(org_id)
    if org is None:
        raise VerificationError(
            Reason.WRONG_ORG, f"organization {org_id!r} is not part of the mandate", org=org_id
        )
    (sig,) = envelope.signatures
    if sig.key_id != org.root_key_id:
        raise VerificationError(
            Reason.UNKNOWN_KEY, f"not signed by the root key of {org_id}", org=org_id
        )
    try:
        verify_pae(org.root_public_key, envelope.payload_type, envelope.payload, sig.sig)
    except VerificationError as exc:
        raise VerificationError(
            Reason.BAD_SIGNATURE, f"bad signature by {org_id} root key"
        ) from exc


def verify_accreditation(envelope: Envelope, mandate: Mandate) -> Accreditation:
    """Verify an accreditation record against the mandate.

    Raises:
        VerificationError: ``oversized``, ``missing_signature``, ``too_many_signatures`` (not
            exactly one signature), wrong type, malformed, wrong organization or mandate,
            ``unknown_key`` (not the organization's root key), ``bad_signature``.
    """
    _open_registry_envelope(envelope, PAYLOAD_ACCREDITATION)
    acc = Accreditation.decode(envelope.payload)
    if acc.mandate_id != mandate.mandate_id:
        raise VerificationError(Reason.WRONG_MANDATE, f"accreditation for {acc.mandate_id!r}")
    check_subject_namespace(acc.subject_id, acc.org)
    _signed_by_org_root(envelope, mandate, acc.org)
    return acc


def check_subject_namespace(subject_id: str, org: str) -> None:
    """An organization accredits subjects only in its own namespace: ``<org>-<name>``.

    Observer ids key the hash chains (one chain per observer id, in every node's store and in
    every audit), so an id must belong to exactly one organization. Without the namespace,
    one organization could accredit a key of its own as another's observer id and extend,
    or fork, that observer's chain from its own topic.

    Raises:
        VerificationError: ``wrong_org`` when ``subject_id`` does not start with ``org`` + "-".
    """
    prefix = f"{org}-"
    if not subject_id.startswith(prefix) or len(subject_id) == len(prefix):
        raise VerificationError(
            Reason.WRONG_ORG,
            f"subject id {subject_id!r} is outside {org}'s namespace (ids must start with"
            f" {prefix!r})",
            subject_id=subject_id,
            org=org,
        )


def verify_revocation(envelope: Envelope, mandate: Mandate) -> Revocation:
    """Verify a revocation record against the mandate (same failures as accreditations)."""
    _open_registry_envelope(envelope, PAYLOAD_REVOCATION)
    rev = Revocation.decode(envelope.payload)
    if rev.mandate_id != mandate.mandate_id:
        raise VerificationError(Reason.WRONG_MANDATE, f"revocation for {rev.mandate_id!r}")
    _signed_by_org_root(envelope, mandate, rev.org)
    return rev


def verify_encryption_key(envelope: Envelope, mandate: Mandate) -> EncryptionKey:
    """Verify an organization's X25519 encryption key record (restricted reports).

    Raises:
        VerificationError: same failures as accreditations.
    """
    _open_registry_envelope(envelope, PAYLOAD_ENCRYPTION_KEY)
    ek = EncryptionKey.decode(envelope.payload)
    if ek.mandate_id != mandate.mandate_id:
        raise VerificationError(Reason.WRONG_MANDATE, f"encryption key for {ek.mandate_id!r}")
    _signed_by_org_root(envelope, mandate, ek.org)
    return ek


@dataclass
class KeyRing:
    """Accredited keys and revocations under one mandate, built from the registry in log order.

    The registry topic has a single partition, so every node applies records in the same order.
    The first accreditation of a key id wins; a later one for the same key by another subject
    or organization is refused (a key identifies exactly one subject).
    """

    mandate: Mandate

    def __post_init__(self) -> None:
        self._accredited: dict[bytes, Accreditation] = {}
        # By (revoking organization, key id): a revocation only ever applies to an
        # accreditation by the same organization, also when it reached the ring before any
        # accreditation of the key (e.g. replayed into a mandate version after a root rotation).
        self._revoked: dict[tuple[str, bytes], Revocation] = {}
        self._encryption: dict[str, EncryptionKey] = {}  # newest serial per organization

    def __len__(self) -> int:
        return len(self._accredited)

    def add_accreditation(self, acc: Accreditation) -> None:
        """Add a verified accreditation.

        Raises:
            VerificationError: ``duplicate_conflict`` if the key is accredited to someone else.
        """
        known = self._accredited.get(acc.key_id)
        if known is not None and (known.subject_id, known.org) != (acc.subject_id, acc.org):
            raise VerificationError(
                Reason.DUPLICATE_CONFLICT,
                f"key already accredited to {known.org}/{known.subject_id}",
                key_id=acc.key_id.hex(),
            )
        if known is None or acc.serial > known.serial:
            self._accredited[acc.key_id] = acc

    def add_revocation(self, rev: Revocation) -> None:
        """Add a verified revocation; only the accrediting organization may revoke a key.

        The earliest cut-off wins: a later revocation can never re-validate reports.
        """
        acc = self._accredited.get(rev.key_id)
        if acc is not None and acc.org != rev.org:
            raise VerificationError(
                Reason.WRONG_ORG, f"{rev.org} cannot revoke a key accredited by {acc.org}"
            )
        known = self._revoked.get((rev.org, rev.key_id))
        if known is None or rev.last_valid_seq < known.last_valid_seq:
            self._revoked[(rev.org, rev.key_id)] = rev

    def revocations(self) -> list[Revocation]:
        """Every revocation in force (the earliest cut-off per key)."""
        return list(self._revoked.values())

    def encryption_key(self, org: str) -> EncryptionKey | None:
        """The organization's current encryption key (newest serial), or None."""
        return self._encryption.get(org)

    def apply(self, envelope: Envelope) -> Accreditation | Revocation | EncryptionKey:
        """Verify a registry envelope and add it (accreditation, revocation, encryption key)."""
        if envelope.payload_type == PAYLOAD_ENCRYPTION_KEY:
            ek = verify_encryption_key(envelope, self.mandate)
            known = self._encryption.get(ek.org)
            if known is None or ek.serial > known.serial:
                self._encryption[ek.org] = ek
            return ek
        if envelope.payload_type == PAYLOAD_REVOCATION:
            rev = verify_revocation(envelope, self.mandate)
            self.add_revocation(rev)
            return rev
        acc = verify_accreditation(envelope, self.mandate)
        self.add_accreditation(acc)
        return acc

    def lookup(self, key_id: bytes) -> Accreditation:
        """The accreditation of a key id.

        Raises:
            VerificationError: ``unknown_key``.
        """
        acc = self._accredited.get(key_id)
        if acc is None:
            raise VerificationError(
                Reason.UNKNOWN_KEY, "signing key is not accredited", key_id=key_id.hex()
            )
        return acc

    def accreditations(self, role: Role | None = None) -> list[Accreditation]:
        """Every accredited key (of ``role`` when given), in the order first accredited."""
        return [a for a in self._accredited.values() if role is None or a.role == role]

    def check_usable(self, acc: Accreditation, *, role: Role, at_ms: int, seq: int) -> None:
        """Check that an accredited key may sign a message of ``role`` at time/sequence.

        Raises:
            VerificationError: ``wrong_role``, ``key_expired``, ``key_revoked``.
        """
        if acc.role != role:
            raise VerificationError(
                Reason.WRONG_ROLE, f"key accredited as {acc.role.name}, not {role.name}"
            )
        if not acc.not_before_ms <= at_ms <= acc.not_after_ms:
            raise VerificationError(
                Reason.KEY_EXPIRED,
                "signed outside the accreditation's validity window",
                signed_at_ms=at_ms,
            )
        rev = self._revoked.get((acc.org, acc.key_id))
        if rev is not None and seq > rev.last_valid_seq:
            raise VerificationError(
                Reason.KEY_REVOKED,
                f"key revoked after seq {rev.last_valid_seq}",
                revocation_serial=rev.serial,
            )
