"""The offline mandate signing ceremony: description -> draft -> detached signatures -> envelope.

Pure (no I/O): the CLI reads and writes the files; this module turns their contents into
verified objects and back. The three file formats, all UTF-8 JSON except the description:

* **description** (TOML or YAML, parsed by the caller into a mapping): what a mandate says in
  words people type (:func:`mandate_from_description`). Times are RFC 3339 strings
  (``2026-10-01T00:00:00Z``) or ``*_ms`` integers; root keys are 64 hex characters.
* **draft** ``{"type": "obus-mandate-draft", "payload_type", "payload" (hex), "payload_sha256"}``:
  the exact canonical mandate bytes every organization signs. Signers compare
  ``payload_sha256`` out of band (read aloud, on a call) before signing.
* **signatures** ``{"type": "obus-mandate-signatures", "payload_sha256", "signatures": [{"org",
  "key_id", "sig"}]}``: detached Ed25519 signatures over DSSE PAE of the draft payload. One
  file per signer, or one bundle several signers append to; :func:`combine` merges any number.

:func:`combine` refuses a signature over other bytes, a signature that does not verify, and a
result that does not meet the threshold rules of :func:`bus.trust.verify_mandate` (against the
previous version for a rotation), so a combined file is always one a node will accept.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from bus.crypto import SigningKey, verify_pae
from bus.errors import ConfigError, Reason, VerificationError
from bus.model import (
    PAYLOAD_MANDATE,
    Envelope,
    Mandate,
    Organization,
    Signature,
    Zone,
    encode,
    sha256,
)
from bus.trust import signing_organizations, verify_mandate

DRAFT_TYPE: Final = "obus-mandate-draft"
SIGNATURES_TYPE: Final = "obus-mandate-signatures"


# ---------------------------------------------------------------------------------------------
# Description -> Mandate


def parse_time_ms(key: str, value: object) -> int:
    """Milliseconds since the epoch from an RFC 3339 string, a datetime or an integer.

    Raises:
        ConfigError: naming ``key`` and the accepted forms.
    """
    fix = f"write {key} as 2026-10-01T00:00:00Z or as Unix milliseconds"
    if isinstance(value, bool):
        raise ConfigError(key, f"{value!r} is not a time", fix)
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(key, f"{value!r} is not an RFC 3339 time", fix) from None
    else:
        raise ConfigError(key, f"{value!r} is not a time", fix)
    if dt.tzinfo is None:
        raise ConfigError(key, f"{value!r} has no time zone", fix)
    return int(dt.timestamp() * 1000)


def format_time_ms(ms: int) -> str:
    """RFC 3339 UTC text of Unix milliseconds (for humans)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _req(doc: Mapping[str, Any], key: str, where: str = "") -> Any:
    if key not in doc:
        name = f"{where}{key}"
        raise ConfigError(name, "is missing", f"add {name} to the description")
    return doc[key]


def _hex32(key: str, value: object) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(
            key, "is not 64 hex characters", "paste the public key `obus keygen` printed"
        )
    return raw


def _time_field(doc: Mapping[str, Any], name: str) -> int:
    if f"{name}_ms" in doc:
        return parse_time_ms(f"{name}_ms", doc[f"{name}_ms"])
    return parse_time_ms(name, _req(doc, name))


def _as_config_error(exc: VerificationError, what: str) -> ConfigError:
    field = str(exc.context.get("field", what))
    return ConfigError(field, exc.message, "correct the description")


def organization_from(doc: Mapping[str, Any], index: int) -> Organization:
    """One ``[[organizations]]`` entry: org, name, root_public_key (hex)."""
    where = f"organizations[{index}]."
    try:
        return Organization(
            str(_req(doc, "org", where)),
            str(doc.get("name", "")),
            _hex32(f"{where}root_public_key", _req(doc, "root_public_key", where)),
        )
    except VerificationError as exc:
        raise _as_config_error(exc, f"{where}org") from exc


def zone_from(doc: Mapping[str, Any], index: int) -> Zone:
    """One ``[[zones]]`` entry: id, name, min_lat, min_lon, max_lat, max_lon (degrees)."""
    where = f"zones[{index}]."
    try:
        return Zone(
            str(_req(doc, "id", where)),
            str(doc.get("name", "")),
            *(float(_req(doc, k, where)) for k in ("min_lat", "min_lon", "max_lat", "max_lon")),
        )
    except VerificationError as exc:
        raise _as_config_error(exc, f"{where}id") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}min_lat", str(exc), "write coordinates as numbers") from exc


def mandate_from_description(doc: Mapping[str, Any]) -> Mandate:
    """A mandate from a parsed description (TOML/YAML mapping).

    Keys: ``mandate_id``, ``version`` (default 1), ``description``, ``threshold``,
    ``not_before``/``not_after`` (or ``*_ms``), ``zones`` and ``organizations`` lists, and
    optionally ``min_schema_version``/``max_schema_version`` (the report schema versions
    allowed; default 1).

    Raises:
        ConfigError: a key is missing or wrong; the message names it and the fix.
    """
    zones = _req(doc, "zones")
    orgs = _req(doc, "organizations")
    if not isinstance(zones, list) or not isinstance(orgs, list):
        raise ConfigError("zones", "zones and organizations must be lists", "use [[zones]]")
    try:
        threshold = int(_req(doc, "threshold"))
        version = int(doc.get("version", 1))
        min_schema = int(doc.get("min_schema_version", 0))
        max_schema = int(doc.get("max_schema_version", 0))
    except (TypeError, ValueError) as exc:
        raise ConfigError("threshold", str(exc), "write threshold and version as integers") from exc
    try:
        return Mandate(
            mandate_id=str(_req(doc, "mandate_id")),
            version=version,
            zones=tuple(zone_from(z, i) for i, z in enumerate(zones)),
            not_before_ms=_time_field(doc, "not_before"),
            not_after_ms=_time_field(doc, "not_after"),
            organizations=tuple(organization_from(o, i) for i, o in enumerate(orgs)),
            threshold=threshold,
            description=str(doc.get("description", "")),
            min_schema_version=min_schema,
            max_schema_version=max_schema,
        )
    except VerificationError as exc:
        raise _as_config_error(exc, "mandate") from exc


@dataclass(frozen=True, slots=True)
class RotationChanges:
    """What version N+1 changes relative to version N (everything else is carried over)."""

    threshold: int | None = None
    add: tuple[Organization, ...] = ()
    remove: tuple[str, ...] = ()
    replace_keys: tuple[tuple[str, bytes], ...] = ()  # (org, new root public key)
    not_after_ms: int | None = None
    description: str | None = None
    zones: tuple[Zone, ...] | None = None
    min_schema_version: int | None = None
    max_schema_version: int | None = None


def next_version(previous: Mandate, changes: RotationChanges) -> Mandate:
    """Version ``previous.version + 1`` with the changes applied.

    Raises:
        ConfigError: removing or re-keying an organization that is not a member, adding one
            that already is, or a result that breaks a mandate invariant.
    """
    orgs = {o.org: o for o in previous.organizations}
    for org in changes.remove:
        if org not in orgs:
            raise ConfigError("--remove-org", f"{org!r} is not a member", "name a member org")
        del orgs[org]
    for org, key in changes.replace_keys:
        if org not in orgs:
            raise ConfigError("--replace-key", f"{org!r} is not a member", "name a member org")
        orgs[org] = dataclasses.replace(orgs[org], root_public_key=key)
    for o in changes.add:
        if o.org in orgs:
            raise ConfigError("--add-org", f"{o.org!r} is already a member", "add a new org id")
        orgs[o.org] = o
    try:
        return dataclasses.replace(
            previous,
            version=previous.version + 1,
            organizations=tuple(orgs.values()),
            threshold=previous.threshold if changes.threshold is None else changes.threshold,
            not_after_ms=(
                previous.not_after_ms if changes.not_after_ms is None else changes.not_after_ms
            ),
            description=(
                previous.description if changes.description is None else changes.description
            ),
            zones=previous.zones if changes.zones is None else changes.zones,
            min_schema_version=(
                previous.min_schema_version
                if changes.min_schema_version is None
                else changes.min_schema_version
            ),
            max_schema_version=(
                previous.max_schema_version
                if changes.max_schema_version is None
                else changes.max_schema_version
            ),
        )
    except VerificationError as exc:
        raise _as_config_error(exc, "mandate") from exc


# ---------------------------------------------------------------------------------------------
# Draft and detached signatures


def _json_doc(data: bytes, expected_type: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(Reason.MALFORMED, f"{what} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type") != expected_type:
        raise VerificationError(Reason.MALFORMED, f"{what} is not an {expected_type} file")
    return doc


def _hex_field(doc: Mapping[str, Any], key: str, what: str) -> bytes:
    try:
        return bytes.fromhex(str(doc[key]))
    except (KeyError, ValueError) as exc:
        raise VerificationError(
            Reason.MALFORMED, f"{what}: {key} missing or not hex", field=key
        ) from exc


@dataclass(frozen=True, slots=True)
class Draft:
    """The exact mandate bytes to sign, with the mandate they decode to."""

    payload: bytes
    mandate: Mandate

    @classmethod
    def of(cls, mandate: Mandate) -> Draft:
        """The draft of a mandate (its canonical encoding)."""
        return cls(encode(mandate), mandate)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the payload: what signers compare out of band."""
        return sha256(self.payload)

    def encode(self) -> bytes:
        """Draft file bytes (JSON)."""
        doc = {
            "type": DRAFT_TYPE,
            "payload_type": PAYLOAD_MANDATE,
            "payload": self.payload.hex(),
            "payload_sha256": self.digest.hex(),
            "mandate_id": self.mandate.mandate_id,
            "version": self.mandate.version,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> Draft:
        """Parse a draft file; the payload must be a canonical, valid mandate.

        Raises:
            VerificationError: ``malformed`` / ``invalid_field`` / ``wrong_payload_type``.
        """
        doc = _json_doc(data, DRAFT_TYPE, "draft")
        if doc.get("payload_type") != PAYLOAD_MANDATE:
            raise VerificationError(Reason.WRONG_PAYLOAD_TYPE, "draft is not a mandate")
        payload = _hex_field(doc, "payload", "draft")
        if _hex_field(doc, "payload_sha256", "draft") != sha256(payload):
            raise VerificationError(
                Reason.INVALID_FIELD, "draft payload_sha256 does not match its payload"
            )
        return cls(payload, Mandate.decode(payload))


@dataclass(frozen=True, slots=True)
class DetachedSignature:
    """One organization root key's signature over a draft's payload."""

    payload_sha256: bytes
    org: str  # informative: which organization the signer says it is; the key decides
    key_id: bytes
    sig: bytes

    def to_json(self) -> dict[str, str]:
        """JSON object of this signature (inside a signatures file)."""
        return {"org": self.org, "key_id": self.key_id.hex(), "sig": self.sig.hex()}


def organization_of_key(key_id: bytes, *mandates: Mandate | None) -> str:
    """Id of the organization whose root key this is in any of the mandates, or ``""``."""
    for m in mandates:
        if m is None:
            continue
        for o in m.organizations:
            if o.root_key_id == key_id:
                return o.org
    return ""


def sign_draft(
    draft: Draft, root: SigningKey, *, previous: Mandate | None = None
) -> DetachedSignature:
    """Sign the draft's payload (DSSE PAE, payload type mandate) with an organization root key.

    The organization is looked up by key id in the draft and in ``previous`` (an organization
    leaving in this version signs with its key from the previous one).
    """
    org = organization_of_key(root.key_id, draft.mandate, previous)
    return DetachedSignature(
        draft.digest, org, root.key_id, root.sign_pae(PAYLOAD_MANDATE, draft.payload)
    )


def encode_signatures(sigs: Sequence[DetachedSignature]) -> bytes:
    """A signatures file (bundle) holding these signatures, all over one payload.

    Raises:
        ValueError: empty, or signatures over different payloads.
    """
    digests = {s.payload_sha256 for s in sigs}
    if len(digests) != 1:
        raise ValueError("a signatures file holds one or more signatures over one draft")
    doc = {
        "type": SIGNATURES_TYPE,
        "payload_sha256": digests.pop().hex(),
        "signatures": [s.to_json() for s in sigs],
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def decode_signatures(data: bytes) -> list[DetachedSignature]:
    """Parse a signatures file.

    Raises:
        VerificationError: ``malformed`` when the file is not a signatures file.
    """
    doc = _json_doc(data, SIGNATURES_TYPE, "signatures file")
    digest = _hex_field(doc, "payload_sha256", "signatures file")
    entries = doc.get("signatures")
    if not isinstance(entries, list) or not entries:
        raise VerificationError(Reason.MALFORMED, "signatures file holds no signature")
    out = []
    for e in entries:
        if not isinstance(e, dict):
            raise VerificationError(Reason.MALFORMED, "signature entry is not an object")
        out.append(
            DetachedSignature(
                digest,
                str(e.get("org", "")),
                _hex_field(e, "key_id", "signature"),
                _hex_field(e, "sig", "signature"),
            )
        )
    return out


def add_to_bundle(existing: bytes | None, sig: DetachedSignature) -> bytes:
    """A bundle with ``sig`` appended (replacing an earlier signature by the same key)."""
    sigs = decode_signatures(existing) if existing else []
    sigs = [s for s in sigs if s.key_id != sig.key_id] + [sig]
    return encode_signatures(sigs)


def combine(
    draft: Draft,
    signatures: Iterable[DetachedSignature],
    *,
    previous: Mandate | None,
    now_ms: int,
) -> Envelope:
    """The signed mandate envelope from a draft and detached signatures.

    Duplicate signatures by one key are merged (an identical copy is not verified again);
    signatures are ordered by key id so the result does not depend on the order the files were
    given in. The result carries at most one signature per root key of this and the previous
    version, so it is within :func:`bus.trust.mandate_signature_limit`.

    Raises:
        VerificationError: ``invalid_field`` when a signature is over another draft,
            ``bad_signature`` when one does not verify, ``unknown_key`` when a key is no root of
            this or the previous version, else whatever :func:`verify_mandate` raises
            (``oversized`` when the signed record would exceed
            :data:`bus.trust.MAX_MANDATE_RECORD_BYTES`, ``threshold_not_met``,
            ``mandate_rollback``, ``mandate_expired``, ...).
    """
    roots = {o.root_key_id: o for o in draft.mandate.organizations}
    if previous is not None:
        roots.update({o.root_key_id: o for o in previous.organizations})
    by_key: dict[bytes, Signature] = {}
    for s in signatures:
        if s.payload_sha256 != draft.digest:
            raise VerificationError(
                Reason.INVALID_FIELD,
                f"signature by {s.org or s.key_id.hex()[:16]} is over another draft"
                f" ({s.payload_sha256.hex()[:16]}, this draft is {draft.digest.hex()[:16]})",
                key_id=s.key_id.hex(),
            )
        org = roots.get(s.key_id)
        if org is None:
            raise VerificationError(
                Reason.UNKNOWN_KEY,
                f"key {s.key_id.hex()[:16]} is not a root key of this or the previous version",
                key_id=s.key_id.hex(),
            )
        sig = Signature(s.key_id, s.sig)
        if by_key.get(s.key_id) != sig:
            verify_pae(org.root_public_key, PAYLOAD_MANDATE, draft.payload, s.sig)
            by_key[s.key_id] = sig
    env = Envelope(PAYLOAD_MANDATE, draft.payload, tuple(by_key[k] for k in sorted(by_key)))
    verify_mandate(env, previous=previous, now_ms=now_ms)
    return env


# ---------------------------------------------------------------------------------------------
# Human-readable view


def describe(
    mandate: Mandate, *, envelope: Envelope | None = None, previous: Mandate | None = None
) -> list[str]:
    """Lines a person reads before signing or trusting a mandate (``obus mandate show``)."""
    lines = [
        f"mandate {mandate.mandate_id} version {mandate.version}",
        f"  sha256 of payload: {sha256(encode(mandate)).hex()}",
        f"  valid {format_time_ms(mandate.not_before_ms)}"
        f" .. {format_time_ms(mandate.not_after_ms)}",
        f"  threshold: {mandate.threshold} of {len(mandate.organizations)} organizations",
    ]
    if mandate.description:
        lines.append(f"  description: {mandate.description}")
    low, high = mandate.schema_versions
    lines.append(f"  report schema versions allowed: {low}..{high}")
    lines.append("  organizations:")
    signed: set[str] = set()
    old_signed: set[str] = set()
    if envelope is not None:
        signed = signing_organizations(envelope, mandate.organizations)
        if previous is not None:
            old_signed = signing_organizations(envelope, previous.organizations)
    for o in mandate.organizations:
        mark = " [signed]" if o.org in signed else ""
        lines.append(f"    {o.org:<8} root key {o.root_key_id.hex()[:16]}  {o.name}{mark}")
    lines.append("  zones:")
    lines.extend(
        f"    {z.id:<8} lat {z.min_lat}..{z.max_lat}, lon {z.min_lon}..{z.max_lon}  {z.name}"
        for z in mandate.zones
    )
    if previous is not None:
        lines.extend(changes_from(previous, mandate))
    if envelope is not None:
        lines.append(
            f"  signed by {len(signed)} of its organizations ({', '.join(sorted(signed)) or '-'})"
        )
        if previous is not None:
            lines.append(
                f"  signed by {len(old_signed)} of version {previous.version}'s organizations"
                f" ({', '.join(sorted(old_signed)) or '-'}), {previous.threshold} required"
            )
    return lines


def changes_from(previous: Mandate, new: Mandate) -> list[str]:
    """What changed between two versions, one line each."""
    out = [f"  changes from version {previous.version}:"]
    old = {o.org: o for o in previous.organizations}
    cur = {o.org: o for o in new.organizations}
    out.extend(f"    + organization {o}" for o in sorted(cur.keys() - old.keys()))
    out.extend(f"    - organization {o}" for o in sorted(old.keys() - cur.keys()))
    out.extend(
        f"    ~ root key of {o}: {old[o].root_key_id.hex()[:16]} -> {cur[o].root_key_id.hex()[:16]}"
        for o in sorted(old.keys() & cur.keys())
        if old[o].root_public_key != cur[o].root_public_key
    )
    if previous.threshold != new.threshold:
        out.append(f"    ~ threshold {previous.threshold} -> {new.threshold}")
    if previous.zones != new.zones:
        out.append(
            f"    ~ zones {', '.join(z.id for z in previous.zones)}"
            f" -> {', '.join(z.id for z in new.zones)}"
        )
    if (previous.not_before_ms, previous.not_after_ms) != (new.not_before_ms, new.not_after_ms):
        out.append(f"    ~ valid until {format_time_ms(new.not_after_ms)}")
    if len(out) == 1:
        out.append("    (none besides the version)")
    return out
