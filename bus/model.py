"""Typed domain objects and their wire codec.

Generated protobuf classes never leave this module: the rest of the code works with the frozen
dataclasses below, which check their invariants on construction. Decoding is strict and fails
closed: the bytes must parse, carry no unknown fields, and be the canonical (deterministic)
encoding of what they parse to, so one logical message has exactly one byte form on the bus and
one digest. Every decode failure is a :class:`~bus.errors.VerificationError` with reason
``malformed``; every invariant failure names the field, with reason ``invalid_field``.

Forward compatibility. One message is open to additions: the observer report
(:data:`OPEN_MESSAGES`), so that six organizations can upgrade on separate days. Its bytes may
carry, after the canonical encoding of every field this software knows, a tail of fields it
does not know, which :func:`_scan_unknown` accepts only when that tail is unambiguous: field
numbers in :data:`ADDITION_FIELDS` (100..199) above every number known here, in increasing
order (a number repeats only consecutively and length-delimited: a repeated field), wire types
varint, fixed64, length-delimited or fixed32 (never the deprecated groups), every varint in its
shortest form, at most :data:`MAX_UNKNOWN_BYTES` in all. The tail is kept byte for byte
(:attr:`Report.unknown_bytes`, re-encoded as received: the signature covers it) and shown as its
field numbers (:attr:`Report.unknown_fields`). Anything else unknown is ``malformed``, as is
every unknown field of any other message: trust records (mandate, accreditation, revocation,
encryption key) are rules every node must apply alike, so a node never skips a part of one.

Schema versions. A report states the version it is written in (:attr:`Report.schema_version`);
:data:`SCHEMA_VERSION` is the newest this software knows and :data:`FIELD_VERSIONS` names the
version that added each later field. A report using a known field of a newer version than it
states, or carrying unknown fields while stating a version this software knows in full, is
``schema_not_allowed`` (the fields are not part of the version it claims). The mandate in
force names the versions allowed (:attr:`Mandate.schema_versions`, checked by
:func:`check_schema_allowed`); writers build reports through :func:`stamp_schema_version`, which
states the lowest version covering the fields used and refuses one the mandate does not allow.
A node that knows every version its mandate allows judges exactly as every other such node; a
node behind (the mandate allows a version it does not know) accepts the unknown fields of that
version unread, so it never quarantines a genuine report, though it may accept a forged value
in a field it cannot read: the upgrade order is readers first, then the mandate, then writers.

Amendments. A report may correct (``corrects``, version 1) or retract (``retracts`` with a
``retraction_reason``, version 3) an earlier report; the codec checks only the shape (a UUIDv7,
not itself, not both, a reason exactly for a retraction). Whether the target may be amended
(same chain, accepted before, latest version, not retracted) is judged against the chain by
:func:`bus.verify.check_amendment`.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Protocol, TypeVar, cast

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from bus._pb.obus.v1 import envelope_pb2, report_pb2, trust_pb2
from bus.errors import Reason, VerificationError

# DSSE payload types. A signature is bound to one of these through PAE, so a signature over a
# report can never be presented as an accreditation or a mandate.
PAYLOAD_REPORT: Final = "application/vnd.obus.report.v1+protobuf"
PAYLOAD_MANDATE: Final = "application/vnd.obus.mandate.v1+protobuf"
PAYLOAD_ACCREDITATION: Final = "application/vnd.obus.accreditation.v1+protobuf"
PAYLOAD_REVOCATION: Final = "application/vnd.obus.revocation.v1+protobuf"

ED25519_PUBLIC_KEY_BYTES: Final = 32
ED25519_SIGNATURE_BYTES: Final = 64
DIGEST_BYTES: Final = 32
# Lower-case ids used in topic names and as primary keys: Kafka topic names allow [a-zA-Z0-9._-]
# and we keep a conservative subset so every id is safe in a topic, a file name and a URL.
_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# RFC 9562 UUID version 7, canonical lower-case text form.
_UUID7_RE: Final = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of data."""
    return hashlib.sha256(data).digest()


def _invalid(field_name: str, problem: str) -> VerificationError:
    return VerificationError(Reason.INVALID_FIELD, f"{field_name}: {problem}", field=field_name)


# Bound once: the hot decode path calls these for every record.
_id_fullmatch: Final = _ID_RE.fullmatch
_uuid7_fullmatch: Final = _UUID7_RE.fullmatch
# Four ids joined by "/" (not an id character): matches exactly when each one is an id.
_four_ids_fullmatch: Final = re.compile(
    r"[a-z0-9][a-z0-9_-]{0,62}(?:/[a-z0-9][a-z0-9_-]{0,62}){3}"
).fullmatch


def check_id(field_name: str, value: str) -> None:
    """Raise invalid_field unless value is a safe lower-case identifier."""
    if not _id_fullmatch(value):
        raise _invalid(field_name, f"{value!r} is not 1-63 chars of [a-z0-9_-] starting alnum")


_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")


def _order_varies(descriptor: Descriptor, seen: set[str] | None = None) -> bool:
    """True when this message (or one it contains) has a map field or extension ranges.

    Those are the only things deterministic serialization changes: it sorts map entries and
    extensions (upb: ``kUpb_EncodeOption_Deterministic``; likewise the C++ and pure-Python
    encoders). Without them both serializations are the same bytes, and the plain call costs
    less (no keyword parsing). tests/unit/test_model_decode.py checks both agree on every input.
    """
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    if descriptor.extension_ranges:
        return True
    for f in descriptor.fields:
        sub = f.message_type
        if sub is not None and (sub.GetOptions().map_entry or _order_varies(sub, seen)):
            return True
    return False


# Message class -> whether its canonical bytes need deterministic=True (see _order_varies).
_DETERMINISTIC: dict[type[Message], bool] = {}


def _parse(cls: type[_M], data: bytes, what: str) -> _M:
    try:
        # FromString is a fresh message plus ParseFromString, in one call.
        msg = cls.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:  # upb raises DecodeError; be safe
        raise VerificationError(Reason.MALFORMED, f"{what} does not parse: {exc}") from exc
    msg.DiscardUnknownFields()  # then any unknown field shows as a difference below
    deterministic = _DETERMINISTIC.get(cls)
    if deterministic is None:
        deterministic = _DETERMINISTIC[cls] = _order_varies(cast(Descriptor, cls.DESCRIPTOR))
    canonical = (
        msg.SerializeToString(deterministic=True) if deterministic else msg.SerializeToString()
    )
    if canonical != data:
        raise VerificationError(
            Reason.MALFORMED, f"{what} is not canonically encoded (unknown or repeated fields)"
        )
    return msg


# The field numbers reserved for additions in every open message (see the module docstring).
ADDITION_FIELDS: Final = range(100, 200)
# Bound on the unknown tail of one message: what a node stores and shows without reading it.
MAX_UNKNOWN_BYTES: Final = 32 * 1024
# Full names of the messages open to additions.
OPEN_MESSAGES: Final = frozenset({"obus.v1.ObserverReport"})
_WIRE_VARINT: Final = 0
_WIRE_I64: Final = 1
_WIRE_LEN: Final = 2
_WIRE_I32: Final = 5


def _malformed_tail(what: str, problem: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED, f"{what}: unknown fields {problem}")


def _varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """The shortest-form varint at ``pos`` and the position after it (malformed otherwise)."""
    value = shift = 0
    start = pos
    while True:
        if pos >= len(data) or pos - start >= 10:
            raise _malformed_tail(what, "end inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                raise _malformed_tail(what, "carry a varint that is not in its shortest form")
            if value >= 1 << 64:
                raise _malformed_tail(what, "carry a varint over 64 bits")
            return value, pos


def _scan_unknown(tail: bytes, above: int, what: str) -> tuple[int, ...]:
    """The field numbers of an unknown tail, checked as the module docstring says.

    Args:
        tail: the bytes after the canonical encoding of the known fields.
        above: the highest field number of the message known here.

    Raises:
        VerificationError: ``malformed`` naming what is wrong.
    """
    if len(tail) > MAX_UNKNOWN_BYTES:
        raise _malformed_tail(what, f"take {len(tail)} bytes, more than {MAX_UNKNOWN_BYTES}")
    numbers: list[int] = []
    pos, last, last_wire = 0, 0, -1
    end = len(tail)
    while pos < end:
        key, pos = _varint(tail, pos, what)
        number, wire = key >> 3, key & 7
        if number not in ADDITION_FIELDS or number <= above:
            raise _malformed_tail(
                what,
                f"include field {number}, outside the addition range"
                f" {max(above + 1, ADDITION_FIELDS.start)}..{ADDITION_FIELDS.stop - 1}",
            )
        if number < last:
            raise _malformed_tail(what, f"are out of order (field {number} after {last})")
        if number == last and not (wire == last_wire == _WIRE_LEN):
            raise _malformed_tail(what, f"repeat field {number} (only length-delimited may)")
        if wire == _WIRE_VARINT:
            _, pos = _varint(tail, pos, what)
        elif wire == _WIRE_I64:
            pos += 8
        elif wire == _WIRE_I32:
            pos += 4
        elif wire == _WIRE_LEN:
            length, pos = _varint(tail, pos, what)
            pos += length
        else:
            raise _malformed_tail(what, f"use wire type {wire} in field {number}")
        if pos > end:
            raise _malformed_tail(what, f"end inside field {number}")
        if number != last:
            numbers.append(number)
        last, last_wire = number, wire
    return tuple(numbers)


# Message class -> the highest field number it declares (the floor of its unknown fields).
_HIGHEST_FIELD: dict[type[Message], int] = {}


def _parse_open(cls: type[_M], data: bytes, what: str) -> tuple[_M, bytes, tuple[int, ...]]:
    """:func:`_parse` for a message open to additions: also the unknown tail and its numbers.

    Raises:
        VerificationError: ``malformed`` as for :func:`_parse`, or an unacceptable tail.
    """
    try:
        msg = cls.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise VerificationError(Reason.MALFORMED, f"{what} does not parse: {exc}") from exc
    msg.DiscardUnknownFields()
    deterministic = _DETERMINISTIC.get(cls)
    if deterministic is None:
        deterministic = _DETERMINISTIC[cls] = _order_varies(cast(Descriptor, cls.DESCRIPTOR))
    canonical = (
        msg.SerializeToString(deterministic=True) if deterministic else msg.SerializeToString()
    )
    if canonical == data:
        return msg, b"", ()
    if not data.startswith(canonical):
        raise VerificationError(
            Reason.MALFORMED,
            f"{what} is not canonically encoded (unknown or repeated fields)",
        )
    highest = _HIGHEST_FIELD.get(cls)
    if highest is None:
        highest = _HIGHEST_FIELD[cls] = max(
            f.number for f in cast(Descriptor, cls.DESCRIPTOR).fields
        )
    tail = data[len(canonical) :]
    return msg, tail, _scan_unknown(tail, highest, what)


def unvalidated(cls: type[_T]) -> Callable[..., _T]:
    """A constructor of ``cls`` (a frozen slots dataclass) that only stores the fields.

    It takes every field positionally, in declaration order, and skips the generated
    ``__init__``, so ``__post_init__`` does not run: the decoders below use it and then call
    ``__post_init__`` themselves, exactly once, so decoded input passes through the very same
    checks as the public constructors. Never hand out an object built with it without that call
    (for a class without ``__post_init__``, such as :class:`bus.verify.VerifiedReport` or
    :class:`bus.ingest.RecordRef`, the object is the same as its constructor's: the per-record
    objects of the ingest path are built with it).

    The fields are stored through the slots' own descriptors (what ``object.__setattr__``
    ends up calling, without the frozen class's ``__setattr__`` guard in front), one call per
    field in straight-line code generated once per class, as :mod:`dataclasses` generates its
    own ``__init__`` (a loop over the fields cost about three times as much per object, on the
    ingest path of every record). The generated source holds only positional parameter names
    ``v0``..``vN``; no field name or value reaches it.
    """
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if tuple(getattr(cls, "__slots__", ())) != names:
        raise TypeError(f"{cls.__name__} must be a slots dataclass without extra slots")
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    for i, n in enumerate(names):
        scope[f"s{i}"] = cls.__dict__[n].__set__
    params = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f"    s{i}(obj, v{i})\n" for i in range(len(names)))
    source = f"def build({params}):\n    obj = new(cls)\n{body}    return obj\n"
    exec(compile(source, f"<unvalidated {cls.__name__}>", "exec"), scope)  # noqa: S102
    build: Callable[..., _T] = scope["build"]
    return build


class _ToPb(Protocol):
    def to_pb(self) -> Message: ...


def encode(obj: _ToPb) -> bytes:
    """Canonical bytes of a domain object."""
    return obj.to_pb().SerializeToString(deterministic=True)


# ---------------------------------------------------------------------------------------------
# Envelope


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature of an envelope: SHA-256 key id and Ed25519 signature bytes."""

    key_id: bytes
    sig: bytes

    def __post_init__(self) -> None:
        if len(self.key_id) != DIGEST_BYTES:
            raise _invalid("signatures.key_id", f"must be {DIGEST_BYTES} bytes")
        if len(self.sig) != ED25519_SIGNATURE_BYTES:
            raise VerificationError(
                Reason.BAD_SIGNATURE, f"signature must be {ED25519_SIGNATURE_BYTES} bytes"
            )


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE-style signed envelope. ``payload`` is exactly the signed bytes."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_pb(self) -> envelope_pb2.SignedEnvelope:
        """The generated protobuf message (for the codec only)."""
        return envelope_pb2.SignedEnvelope(
            payload_type=self.payload_type,
            payload=self.payload,
            signatures=[
                envelope_pb2.Signature(key_id=s.key_id, sig=s.sig) for s in self.signatures
            ],
        )

    def encode(self) -> bytes:
        """Canonical wire bytes."""
        return encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Parse envelope bytes strictly.

        Raises:
            VerificationError: ``malformed`` when the bytes are not a canonical envelope,
                ``missing_signature`` when it carries none, ``bad_signature``/``invalid_field``
                when a signature entry has the wrong length.
        """
        pb = _parse(envelope_pb2.SignedEnvelope, data, "envelope")
        payload_type = pb.payload_type
        if not payload_type:
            raise VerificationError(Reason.MALFORMED, "envelope has no payload_type")
        pb_sigs = pb.signatures
        if not pb_sigs:
            raise VerificationError(Reason.MISSING_SIGNATURE, "envelope carries no signature")
        sigs = []
        for s in pb_sigs:
            key_id, sig_bytes = s.key_id, s.sig  # upb hands out bytes (no copy needed)
            # the checks of Signature.__post_init__, in its order, inline (one call less per
            # signature on the ingest path); tests/unit/test_model_decode.py pins the reasons
            if len(key_id) != DIGEST_BYTES or len(sig_bytes) != ED25519_SIGNATURE_BYTES:
                _unvalidated_signature(key_id, sig_bytes).__post_init__()
            sigs.append(_unvalidated_signature(key_id, sig_bytes))
        return _unvalidated_envelope(payload_type, pb.payload, tuple(sigs))

    def wire_size(self) -> int:
        """The length of :meth:`encode`'s bytes, computed without encoding them.

        Size limits are checked with it before any other work on a decoded envelope, so it costs
        the same for ten signatures as for ten thousand: every field is length-delimited (one
        tag byte, a varint length, the bytes; an empty one is left out) and every
        :class:`Signature` encodes to the same :data:`SIGNATURE_WIRE_BYTES`. Equal to
        ``len(raw)`` for an envelope decoded from ``raw`` (decoding is canonical).
        """
        type_bytes = len(self.payload_type.encode("utf-8", "surrogatepass"))
        return (
            _delimited_size(type_bytes)
            + _delimited_size(len(self.payload))
            + len(self.signatures) * SIGNATURE_WIRE_BYTES
        )


def _delimited_size(length: int) -> int:
    """Encoded bytes of a length-delimited protobuf field (number < 16) of ``length`` bytes."""
    return 0 if length == 0 else 1 + max(1, (length.bit_length() + 6) // 7) + length


# One envelope signature on the wire: a key id and an Ed25519 signature, both of fixed size.
SIGNATURE_WIRE_BYTES: Final = _delimited_size(
    _delimited_size(DIGEST_BYTES) + _delimited_size(ED25519_SIGNATURE_BYTES)
)

_unvalidated_signature: Final = unvalidated(Signature)
_unvalidated_envelope: Final = unvalidated(Envelope)


# ---------------------------------------------------------------------------------------------
# Report


class Category(enum.IntEnum):
    """ACLED-like event taxonomy; names (lower-case) are what people write in files."""

    ARMED_CLASH = report_pb2.ARMED_CLASH
    SHELLING = report_pb2.SHELLING
    CEASEFIRE_VIOLATION = report_pb2.CEASEFIRE_VIOLATION
    TROOP_MOVEMENT = report_pb2.TROOP_MOVEMENT
    HEAVY_WEAPONS = report_pb2.HEAVY_WEAPONS
    CIVILIAN_CASUALTIES = report_pb2.CIVILIAN_CASUALTIES
    HUMANITARIAN_ACCESS = report_pb2.HUMANITARIAN_ACCESS
    DETENTION = report_pb2.DETENTION
    PROTEST = report_pb2.PROTEST
    OTHER = report_pb2.OTHER

    @property
    def label(self) -> str:
        """Lower-case name, e.g. ``ceasefire_violation``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Category:
        """Category from its lower-case label; raises invalid_field listing the allowed ones."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            allowed = ", ".join(c.label for c in cls)
            raise _invalid("category", f"{text!r} is not one of: {allowed}") from None


# Bounds of a report's fields, checked by Location, Attachment and Report below, by the report
# file reader (bus.report_file) and, through nodes/observer_web/export_rules.py, by the web form.
MAX_LAT: Final = 90.0  # WGS 84 degrees, either side of the equator
MAX_LON: Final = 180.0  # WGS 84 degrees, either side of the prime meridian
MAX_PRECISION_M: Final = 1_000_000
MAX_PLACE_CHARS: Final = 200
MAX_MEDIA_TYPE_CHARS: Final = 127  # RFC 6838 4.2 caps each of type and subtype at 127
MAX_ATTACHMENT_NAME_CHARS: Final = 255  # the longest file name of common file systems
MIN_SEVERITY: Final = 1  # minor
MAX_SEVERITY: Final = 5  # grave
MIN_CONFIDENCE: Final = 0.0
MAX_CONFIDENCE: Final = 1.0
# An observer (or any accredited subject) id is "<org>" + this + "<name>" (bus.trust,
# check_subject_namespace): the organization's namespace.
SUBJECT_NAMESPACE_SEPARATOR: Final = "-"


@dataclass(frozen=True, slots=True)
class Location:
    """WGS 84 position with an uncertainty radius in metres and a place name."""

    lat: float
    lon: float
    precision_m: int = 0
    place: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -MAX_LAT <= self.lat <= MAX_LAT):
            raise _invalid(
                "location.lat", f"{self.lat} is not a latitude in [-{MAX_LAT:g}, {MAX_LAT:g}]"
            )
        if not (math.isfinite(self.lon) and -MAX_LON <= self.lon <= MAX_LON):
            raise _invalid(
                "location.lon", f"{self.lon} is not a longitude in [-{MAX_LON:g}, {MAX_LON:g}]"
            )
        if not 0 <= self.precision_m <= MAX_PRECISION_M:
            raise _invalid("location.precision_m", f"must be 0..{MAX_PRECISION_M:,} metres")
        if len(self.place) > MAX_PLACE_CHARS:
            raise _invalid("location.place", f"longer than {MAX_PLACE_CHARS} characters")


@dataclass(frozen=True, slots=True)
class Casualties:
    """Casualty counts; ``civilian`` says whether they are civilians."""

    killed: int = 0
    injured: int = 0
    missing: int = 0
    civilian: bool = False


@dataclass(frozen=True, slots=True)
class Attachment:
    """A reference to an attachment carried separately: its SHA-256, size and media type."""

    sha256: bytes
    size: int
    media_type: str
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.sha256) != DIGEST_BYTES:
            raise _invalid("attachments.sha256", f"must be {DIGEST_BYTES} bytes")
        if "/" not in self.media_type or len(self.media_type) > MAX_MEDIA_TYPE_CHARS:
            raise _invalid("attachments.media_type", f"{self.media_type!r} is not a media type")
        if len(self.name) > MAX_ATTACHMENT_NAME_CHARS:
            raise _invalid(
                "attachments.name", f"longer than {MAX_ATTACHMENT_NAME_CHARS} characters"
            )


# Wire value -> member: what Category(value) returns, without the enum call's cost.
_CATEGORY_BY_VALUE: Final[dict[int, Category]] = {int(c): c for c in Category}
_unvalidated_location: Final = unvalidated(Location)
_unvalidated_casualties: Final = unvalidated(Casualties)
_unvalidated_attachment: Final = unvalidated(Attachment)

# Report schema versions (module docstring): the newest one this software knows, the version
# that added each field after version 1, and the largest version a mandate may name.
SCHEMA_VERSION: Final = 3
FIELD_VERSIONS: Final[dict[str, int]] = {"language": 2, "retracts": 3, "retraction_reason": 3}
if set(FIELD_VERSIONS) != {"language", "retracts", "retraction_reason"}:  # pragma: no cover
    raise RuntimeError("Report.check_stated_version's fast path names the fields of each version")
# A BCP 47 language tag (RFC 5646) in its usual shape: a language subtag, then subtags.
LANGUAGE_TAG_RE: Final = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
MAX_LANGUAGE_CHARS: Final = 35
MAX_SCHEMA_VERSION_BOUND: Final = 1000
# A retraction's reason: long enough for a sentence, short enough to show in a feed row.
MAX_RETRACTION_REASON_CHARS: Final = 500

# Bounds that hold for every report on the wire, whatever a node's own configuration says.
MAX_NARRATIVE_CHARS: Final = 20_000
MAX_ATTACHMENTS: Final = 64
MAX_SUB_TYPE_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class Report:
    """An observer report (see schemas/obus/v1/report.proto for field meanings).

    ``schema_version``: the version it is written in (1 is encoded as absent).
    ``unknown_fields``/``unknown_bytes``: the field numbers and the exact bytes of the fields
    this software does not know (module docstring); empty for every report built here.
    ``corrects``/``retracts``: the report id this one corrects or retracts (at most one of
    them); ``retraction_reason`` says why, exactly when ``retracts`` is set. Whether the target
    may be amended is a rule of the chain, not of the bytes (:mod:`bus.verify`, amendments).
    """

    report_id: str
    mandate_id: str
    zone: str
    observer_id: str
    org: str
    seq: int
    prev_digest: bytes
    observed_at_ms: int
    signed_at_ms: int
    location: Location
    category: Category
    severity: int
    confidence: float
    sub_type: str = ""
    casualties: Casualties = field(default_factory=Casualties)
    narrative: str = ""
    attachments: tuple[Attachment, ...] = ()
    corrects: str = ""
    language: str = ""
    retracts: str = ""
    retraction_reason: str = ""
    schema_version: int = 1
    unknown_fields: tuple[int, ...] = ()
    unknown_bytes: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not _uuid7_fullmatch(self.report_id):
            raise _invalid("report_id", "must be a lower-case UUIDv7")
        if not _four_ids_fullmatch(
            "/".join((self.mandate_id, self.zone, self.observer_id, self.org))
        ):
            # name the first one that is wrong, as one check_id after the other would
            for name in ("mandate_id", "zone", "observer_id", "org"):
                check_id(name, getattr(self, name))
        seq = self.seq
        if seq < 1:
            raise _invalid("seq", "must start at 1")
        if seq == 1 and self.prev_digest:
            raise _invalid("prev_digest", "must be empty when seq is 1")
        if seq > 1 and len(self.prev_digest) != DIGEST_BYTES:
            raise _invalid("prev_digest", f"must be {DIGEST_BYTES} bytes when seq > 1")
        if self.observed_at_ms <= 0 or self.signed_at_ms <= 0:
            raise _invalid("observed_at_ms", "timestamps must be positive Unix milliseconds")
        if not MIN_SEVERITY <= self.severity <= MAX_SEVERITY:
            raise _invalid("severity", f"{self.severity} is not in {MIN_SEVERITY}..{MAX_SEVERITY}")
        confidence = self.confidence
        if not (math.isfinite(confidence) and MIN_CONFIDENCE <= confidence <= MAX_CONFIDENCE):
            raise _invalid(
                "confidence", f"{confidence} is not in {MIN_CONFIDENCE}..{MAX_CONFIDENCE}"
            )
        if len(self.sub_type) > MAX_SUB_TYPE_CHARS:
            raise _invalid("sub_type", f"longer than {MAX_SUB_TYPE_CHARS} characters")
        if len(self.narrative) > MAX_NARRATIVE_CHARS:
            raise _invalid("narrative", f"longer than {MAX_NARRATIVE_CHARS} characters")
        if len(self.attachments) > MAX_ATTACHMENTS:
            raise _invalid("attachments", f"more than {MAX_ATTACHMENTS}")
        corrects = self.corrects
        if corrects and not _uuid7_fullmatch(corrects):
            raise _invalid("corrects", "must be empty or a lower-case UUIDv7")
        if corrects == self.report_id:
            raise _invalid("corrects", "a report cannot correct itself")
        retracts = self.retracts
        if retracts:
            if not _uuid7_fullmatch(retracts):
                raise _invalid("retracts", "must be empty or a lower-case UUIDv7")
            if retracts == self.report_id:
                raise _invalid("retracts", "a report cannot retract itself")
            if corrects:
                raise _invalid("retracts", "a report either corrects or retracts, not both")
            if not self.retraction_reason.strip():
                raise _invalid("retraction_reason", "a retraction says why")
        elif self.retraction_reason:
            raise _invalid("retraction_reason", "only a retraction has a reason")
        if len(self.retraction_reason) > MAX_RETRACTION_REASON_CHARS:
            raise _invalid(
                "retraction_reason", f"longer than {MAX_RETRACTION_REASON_CHARS} characters"
            )
        language = self.language
        if language and (
            len(language) > MAX_LANGUAGE_CHARS or not LANGUAGE_TAG_RE.fullmatch(language)
        ):
            raise _invalid("language", f"{language!r} is not a BCP 47 language tag (e.g. uk, en)")
        version = self.schema_version
        if not 1 <= version <= MAX_SCHEMA_VERSION_BOUND:
            raise _invalid("schema_version", f"{version} is not in 1..{MAX_SCHEMA_VERSION_BOUND}")
        if self.unknown_bytes or self.unknown_fields:
            numbers = _scan_unknown(self.unknown_bytes, _REPORT_HIGHEST_FIELD, "report")
            if numbers != self.unknown_fields or not numbers:
                raise _invalid("unknown_fields", "must name the fields of unknown_bytes")
            if version <= SCHEMA_VERSION:
                raise VerificationError(
                    Reason.SCHEMA_NOT_ALLOWED,
                    f"states schema version {version} but carries fields"
                    f" {', '.join(map(str, numbers))}, which that version does not have",
                    schema_version=version,
                )

    @property
    def amends(self) -> str:
        """The report id this report corrects or retracts ("" for neither)."""
        return self.corrects or self.retracts

    @property
    def required_schema_version(self) -> int:
        """The lowest schema version that has every known field this report uses."""
        used = [v for n, v in FIELD_VERSIONS.items() if getattr(self, n)]
        return max(used, default=1)

    def check_stated_version(self) -> None:
        """The version stated has every known field used (checked on decoding; writers state
        it through :func:`stamp_schema_version`, so a report built here may be a draft).

        Raises:
            VerificationError: ``schema_not_allowed`` naming the newer fields.
        """
        version = self.schema_version
        if version >= SCHEMA_VERSION or not (
            self.language or self.retracts or self.retraction_reason
        ):
            return  # the fast path of every report that uses no field newer than version 1
        if version < self.required_schema_version:
            newer = [n for n, v in FIELD_VERSIONS.items() if v > version and getattr(self, n)]
            raise VerificationError(
                Reason.SCHEMA_NOT_ALLOWED,
                f"states schema version {version} but uses {', '.join(newer)} of version"
                f" {self.required_schema_version}",
                schema_version=version,
            )

    def to_pb(self) -> report_pb2.ObserverReport:
        """The generated protobuf message (for the codec only)."""
        loc, cas = self.location, self.casualties
        pb = report_pb2.ObserverReport(
            report_id=self.report_id,
            mandate_id=self.mandate_id,
            zone=self.zone,
            observer_id=self.observer_id,
            org=self.org,
            seq=self.seq,
            prev_digest=self.prev_digest,
            observed_at_ms=self.observed_at_ms,
            signed_at_ms=self.signed_at_ms,
            location=report_pb2.Location(
                lat=loc.lat, lon=loc.lon, precision_m=loc.precision_m, place=loc.place
            ),
            category=int(self.category),  # type: ignore[arg-type]
            sub_type=self.sub_type,
            severity=self.severity,
            confidence=self.confidence,
            casualties=report_pb2.Casualties(
                killed=cas.killed, injured=cas.injured, missing=cas.missing, civilian=cas.civilian
            ),
            narrative=self.narrative,
            attachments=[
                report_pb2.Attachment(
                    sha256=a.sha256, size=a.size, media_type=a.media_type, name=a.name
                )
                for a in self.attachments
            ],
            corrects=self.corrects,
            schema_version=0 if self.schema_version == 1 else self.schema_version,
            language=self.language,
            retracts=self.retracts,
            retraction_reason=self.retraction_reason,
        )
        if self.unknown_bytes:
            # Kept after the known fields, where the encoder puts unknown fields: the bytes
            # come out exactly as they were signed.
            pb.MergeFromString(self.unknown_bytes)
        return pb

    @classmethod
    def decode(cls, data: bytes) -> Report:
        """Parse and validate report payload bytes.

        Fields this software does not know are kept when acceptable (module docstring).

        Raises:
            VerificationError: ``malformed``, ``invalid_field`` (naming the field) or
                ``schema_not_allowed`` (fields of a version newer than the one stated).
        """
        # Every object is built without its dataclass __init__ and then checked by its own
        # __post_init__, once, in the order Report(Location(...), ..., Attachment(...)) would.
        pb, unknown_bytes, unknown_fields = _parse_open(report_pb2.ObserverReport, data, "report")
        if pb.schema_version == 1:
            raise _invalid("schema_version", "version 1 is written as 0 (left out)")
        if not pb.HasField("location"):
            raise _invalid("location", "is required")
        category = _CATEGORY_BY_VALUE.get(pb.category)
        if category is None:
            raise _invalid("category", f"{pb.category} is not a known category")
        loc = pb.location
        location = _unvalidated_location(loc.lat, loc.lon, loc.precision_m, loc.place)
        location.__post_init__()
        cas = pb.casualties
        casualties = _unvalidated_casualties(cas.killed, cas.injured, cas.missing, cas.civilian)
        attachments: tuple[Attachment, ...] = ()
        pb_attachments = pb.attachments
        if pb_attachments:
            built = []
            for a in pb_attachments:
                att = _unvalidated_attachment(bytes(a.sha256), a.size, a.media_type, a.name)
                att.__post_init__()
                built.append(att)
            attachments = tuple(built)
        report: Report = _unvalidated_report(
            pb.report_id,
            pb.mandate_id,
            pb.zone,
            pb.observer_id,
            pb.org,
            pb.seq,
            pb.prev_digest,
            pb.observed_at_ms,
            pb.signed_at_ms,
            location,
            category,
            pb.severity,
            pb.confidence,
            pb.sub_type,
            casualties,
            pb.narrative,
            attachments,
            pb.corrects,
            pb.language,
            pb.retracts,
            pb.retraction_reason,
            pb.schema_version or 1,
            unknown_fields,
            unknown_bytes,
        )
        report.__post_init__()
        report.check_stated_version()
        return report


_unvalidated_report: Final = unvalidated(Report)
_REPORT_HIGHEST_FIELD: Final = max(f.number for f in report_pb2.ObserverReport.DESCRIPTOR.fields)


def check_schema_allowed(version: int, mandate: Mandate) -> None:
    """A report of schema ``version`` is allowed under ``mandate`` (the version in force).

    Raises:
        VerificationError: ``schema_not_allowed`` naming the versions the mandate allows.
    """
    low, high = mandate.schema_versions
    if not low <= version <= high:
        raise VerificationError(
            Reason.SCHEMA_NOT_ALLOWED,
            f"schema version {version} is not allowed: mandate {mandate.mandate_id} version"
            f" {mandate.version} allows {low}..{high}",
            schema_version=version,
        )


def stamp_schema_version(report: Report, mandate: Mandate | None) -> Report:
    """``report`` stating the lowest schema version that covers its fields and ``mandate``
    allows: what every writer signs (the observer client through
    :meth:`bus.report_file.ReportDraft.to_report`, :class:`bus.sign.ReportSigner` given a
    mandate). Without a mandate, the versions every mandate allows by default (1 only).

    Raises:
        VerificationError: ``schema_not_allowed`` when the report uses fields of a version the
            mandate does not allow yet (or the mandate names versions newer than this
            software knows).
    """
    low, high = (1, 1) if mandate is None else mandate.schema_versions
    which = (
        "the default (no mandate)"
        if mandate is None
        else f"mandate {mandate.mandate_id} version {mandate.version}"
    )
    version = max(report.required_schema_version, low)
    if version > SCHEMA_VERSION:
        raise VerificationError(
            Reason.SCHEMA_NOT_ALLOWED,
            f"{which} requires schema version {low} or later; this software writes"
            f" 1..{SCHEMA_VERSION}",
            schema_version=version,
        )
    if version > high:
        newer = [n for n, v in FIELD_VERSIONS.items() if v > high and getattr(report, n)]
        raise VerificationError(
            Reason.SCHEMA_NOT_ALLOWED,
            f"{', '.join(newer)} needs schema version {version}; {which} allows {low}..{high}",
            schema_version=version,
            field=newer[0],
        )
    if report.unknown_fields:
        raise _invalid("unknown_fields", "a writer emits only fields it knows")
    return report if version == report.schema_version else replace(report, schema_version=version)


# ---------------------------------------------------------------------------------------------
# Trust roots


class Role(enum.IntEnum):
    """What an accredited key may sign."""

    OBSERVER = trust_pb2.OBSERVER
    NODE = trust_pb2.NODE
    AUDITOR = trust_pb2.AUDITOR


@dataclass(frozen=True, slots=True)
class Organization:
    """A participating organization: short id, display name and Ed25519 root public key."""

    org: str
    name: str
    root_public_key: bytes

    def __post_init__(self) -> None:
        check_id("organizations.org", self.org)
        if len(self.root_public_key) != ED25519_PUBLIC_KEY_BYTES:
            raise _invalid("organizations.root_public_key", "must be 32 bytes")

    @property
    def root_key_id(self) -> bytes:
        """SHA-256 of the root public key."""
        return sha256(self.root_public_key)


@dataclass(frozen=True, slots=True)
class Zone:
    """A mandate zone as a latitude/longitude bounding box."""

    id: str
    name: str
    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float

    def __post_init__(self) -> None:
        check_id("zones.id", self.id)
        if not (-90 <= self.min_lat < self.max_lat <= 90):
            raise _invalid("zones.lat", f"zone {self.id}: need -90 <= min_lat < max_lat <= 90")
        if not (-180 <= self.min_lon < self.max_lon <= 180):
            raise _invalid("zones.lon", f"zone {self.id}: need -180 <= min_lon < max_lon <= 180")

    def contains(self, lat: float, lon: float) -> bool:
        """True when the point lies in the box (edges included)."""
        return self.min_lat <= lat <= self.max_lat and self.min_lon <= lon <= self.max_lon


# The delivery lag a mandate sets (Mandate.max_delivery_lag_ms): how far a report's signed_at may
# lie before the time of the epoch it is sealed in (bus.judge). An observer offline in the field
# delivers days later; the lag also bounds backdating by the holder of an expired or withdrawn
# key. 0 in a mandate means the default; a mandate may not allow more than the bound.
DEFAULT_MAX_DELIVERY_LAG_MS: Final = 7 * 24 * 60 * 60 * 1000
MAX_DELIVERY_LAG_BOUND_MS: Final = 90 * 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Mandate:
    """One version of the common mandate (the root of trust).

    ``max_delivery_lag_ms``: 0 for :data:`DEFAULT_MAX_DELIVERY_LAG_MS` (and then not encoded:
    a mandate that leaves it unset keeps its bytes), else 1 ms to
    :data:`MAX_DELIVERY_LAG_BOUND_MS`; :attr:`delivery_lag_ms` is the lag in force.
    ``min_schema_version``/``max_schema_version``: the report schema versions allowed (0 for
    1, likewise not encoded); :attr:`schema_versions` is the pair in force. A mandate may name
    versions newer than this software knows: its readers then accept their unknown fields.
    """

    mandate_id: str
    version: int
    zones: tuple[Zone, ...]
    not_before_ms: int
    not_after_ms: int
    organizations: tuple[Organization, ...]
    threshold: int
    description: str = ""
    max_delivery_lag_ms: int = 0
    min_schema_version: int = 0
    max_schema_version: int = 0

    def __post_init__(self) -> None:
        check_id("mandate_id", self.mandate_id)
        if self.version < 1:
            raise _invalid("version", "must be >= 1")
        if not self.organizations:
            raise _invalid("organizations", "a mandate needs at least one organization")
        orgs = [o.org for o in self.organizations]
        if len(set(orgs)) != len(orgs):
            raise _invalid("organizations", "organization ids must be unique")
        keys = [o.root_public_key for o in self.organizations]
        if len(set(keys)) != len(keys):
            raise _invalid("organizations", "two organizations share one root key")
        if not 1 <= self.threshold <= len(self.organizations):
            raise _invalid("threshold", f"{self.threshold} must be in 1..{len(self.organizations)}")
        if not self.zones:
            raise _invalid("zones", "a mandate needs at least one zone")
        zone_ids = [z.id for z in self.zones]
        if len(set(zone_ids)) != len(zone_ids):
            raise _invalid("zones", "zone ids must be unique")
        if not 0 < self.not_before_ms < self.not_after_ms:
            raise _invalid("not_after_ms", "need 0 < not_before_ms < not_after_ms")
        if not 0 <= self.max_delivery_lag_ms <= MAX_DELIVERY_LAG_BOUND_MS:
            raise _invalid(
                "max_delivery_lag_ms",
                f"{self.max_delivery_lag_ms} must be in 0..{MAX_DELIVERY_LAG_BOUND_MS}"
                " (0: the default of 7 days; at most 90 days)",
            )
        for name in ("min_schema_version", "max_schema_version"):
            if not 0 <= getattr(self, name) <= MAX_SCHEMA_VERSION_BOUND:
                raise _invalid(name, f"must be in 0..{MAX_SCHEMA_VERSION_BOUND} (0: version 1)")
        low, high = self.schema_versions
        if low > high:
            raise _invalid("min_schema_version", f"{low} is above max_schema_version {high}")

    @property
    def schema_versions(self) -> tuple[int, int]:
        """The report schema versions in force under this version: (oldest, newest) allowed."""
        return self.min_schema_version or 1, self.max_schema_version or 1

    @property
    def delivery_lag_ms(self) -> int:
        """The maximum delivery lag in force under this version (the default for 0)."""
        return self.max_delivery_lag_ms or DEFAULT_MAX_DELIVERY_LAG_MS

    def organization(self, org: str) -> Organization | None:
        """The organization with this id, or None."""
        return next((o for o in self.organizations if o.org == org), None)

    def zone(self, zone_id: str) -> Zone | None:
        """The zone with this id, or None."""
        for z in self.zones:  # a loop, not next(generator): called for every report
            if z.id == zone_id:
                return z
        return None

    def to_pb(self) -> trust_pb2.Mandate:
        """The generated protobuf message (for the codec only)."""
        return trust_pb2.Mandate(
            mandate_id=self.mandate_id,
            version=self.version,
            zones=[
                trust_pb2.Zone(
                    id=z.id,
                    name=z.name,
                    min_lat=z.min_lat,
                    min_lon=z.min_lon,
                    max_lat=z.max_lat,
                    max_lon=z.max_lon,
                )
                for z in self.zones
            ],
            not_before_ms=self.not_before_ms,
            not_after_ms=self.not_after_ms,
            organizations=[
                trust_pb2.Organization(org=o.org, name=o.name, root_public_key=o.root_public_key)
                for o in self.organizations
            ],
            threshold=self.threshold,
            description=self.description,
            max_delivery_lag_ms=self.max_delivery_lag_ms,
            min_schema_version=self.min_schema_version,
            max_schema_version=self.max_schema_version,
        )

    @classmethod
    def decode(cls, data: bytes) -> Mandate:
        """Parse and validate mandate payload bytes (malformed / invalid_field)."""
        pb = _parse(trust_pb2.Mandate, data, "mandate")
        return cls(
            mandate_id=pb.mandate_id,
            version=pb.version,
            zones=tuple(
                Zone(z.id, z.name, z.min_lat, z.min_lon, z.max_lat, z.max_lon) for z in pb.zones
            ),
            not_before_ms=pb.not_before_ms,
            not_after_ms=pb.not_after_ms,
            organizations=tuple(
                Organization(o.org, o.name, bytes(o.root_public_key)) for o in pb.organizations
            ),
            threshold=pb.threshold,
            description=pb.description,
            max_delivery_lag_ms=pb.max_delivery_lag_ms,
            min_schema_version=pb.min_schema_version,
            max_schema_version=pb.max_schema_version,
        )


@dataclass(frozen=True, slots=True)
class Accreditation:
    """An organization vouches for a subject's key in a role, for a validity window."""

    subject_id: str
    org: str
    role: Role
    public_key: bytes
    not_before_ms: int
    not_after_ms: int
    serial: int
    mandate_id: str
    # SHA-256 of public_key, computed once here: the key ring asks for it on every report.
    _key_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_id("subject_id", self.subject_id)
        check_id("org", self.org)
        check_id("mandate_id", self.mandate_id)
        if len(self.public_key) != ED25519_PUBLIC_KEY_BYTES:
            raise _invalid("public_key", "must be 32 bytes")
        if not 0 < self.not_before_ms < self.not_after_ms:
            raise _invalid("not_after_ms", "need 0 < not_before_ms < not_after_ms")
        # frozen dataclass: __post_init__ is the one place that may set a field.
        object.__setattr__(self, "_key_id", sha256(self.public_key))

    @property
    def key_id(self) -> bytes:
        """SHA-256 of the accredited public key."""
        return self._key_id

    def to_pb(self) -> trust_pb2.Accreditation:
        """The generated protobuf message (for the codec only)."""
        return trust_pb2.Accreditation(
            subject_id=self.subject_id,
            org=self.org,
            role=int(self.role),  # type: ignore[arg-type]
            public_key=self.public_key,
            not_before_ms=self.not_before_ms,
            not_after_ms=self.not_after_ms,
            serial=self.serial,
            mandate_id=self.mandate_id,
        )

    @classmethod
    def decode(cls, data: bytes) -> Accreditation:
        """Parse and validate accreditation payload bytes (malformed / invalid_field)."""
        pb = _parse(trust_pb2.Accreditation, data, "accreditation")
        try:
            role = Role(pb.role)
        except ValueError:
            raise _invalid("role", f"{pb.role} is not a known role") from None
        return cls(
            pb.subject_id,
            pb.org,
            role,
            bytes(pb.public_key),
            pb.not_before_ms,
            pb.not_after_ms,
            pb.serial,
            pb.mandate_id,
        )


@dataclass(frozen=True, slots=True)
class Revocation:
    """An organization withdraws a key; reports with seq > last_valid_seq stop counting."""

    org: str
    key_id: bytes
    last_valid_seq: int
    revoked_at_ms: int
    reason: str
    serial: int
    mandate_id: str

    def __post_init__(self) -> None:
        check_id("org", self.org)
        check_id("mandate_id", self.mandate_id)
        if len(self.key_id) != DIGEST_BYTES:
            raise _invalid("key_id", f"must be {DIGEST_BYTES} bytes")

    def to_pb(self) -> trust_pb2.Revocation:
        """The generated protobuf message (for the codec only)."""
        return trust_pb2.Revocation(
            org=self.org,
            key_id=self.key_id,
            last_valid_seq=self.last_valid_seq,
            revoked_at_ms=self.revoked_at_ms,
            reason=self.reason,
            serial=self.serial,
            mandate_id=self.mandate_id,
        )

    @classmethod
    def decode(cls, data: bytes) -> Revocation:
        """Parse and validate revocation payload bytes (malformed / invalid_field)."""
        pb = _parse(trust_pb2.Revocation, data, "revocation")
        return cls(
            pb.org,
            bytes(pb.key_id),
            pb.last_valid_seq,
            pb.revoked_at_ms,
            pb.reason,
            pb.serial,
            pb.mandate_id,
        )


# ---------------------------------------------------------------------------------------------
# Receipts (observer delivery). Kept together at the end of the module.

from bus._pb.obus.v1 import receipt_pb2  # noqa: E402 - this section is self-contained

PAYLOAD_RECEIPT: Final = "application/vnd.obus.receipt.v1+protobuf"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A node's signed statement that it published a report (schemas/obus/v1/receipt.proto)."""

    report_id: str
    envelope_digest: bytes
    topic: str
    partition: int
    offset: int
    logged_at_ms: int
    issued_at_ms: int
    org: str
    node_id: str
    node_key_id: bytes
    observer_id: str
    seq: int
    mandate_id: str

    def __post_init__(self) -> None:
        if not _UUID7_RE.fullmatch(self.report_id):
            raise _invalid("report_id", "must be a lower-case UUIDv7")
        if len(self.envelope_digest) != DIGEST_BYTES:
            raise _invalid("envelope_digest", f"must be {DIGEST_BYTES} bytes")
        if len(self.node_key_id) != DIGEST_BYTES:
            raise _invalid("node_key_id", f"must be {DIGEST_BYTES} bytes")
        if not self.topic or len(self.topic) > 249:  # Kafka's topic name limit
            raise _invalid("topic", "must be 1..249 characters")
        if self.partition < 0 or self.offset < 0:
            raise _invalid("offset", "partition and offset must be >= 0")
        if self.issued_at_ms <= 0:
            raise _invalid("issued_at_ms", "must be positive Unix milliseconds")
        for name in ("org", "node_id", "observer_id", "mandate_id"):
            check_id(name, getattr(self, name))
        if self.seq < 1:
            raise _invalid("seq", "must be >= 1")

    def to_pb(self) -> receipt_pb2.Receipt:
        """The generated protobuf message (for the codec only)."""
        return receipt_pb2.Receipt(
            report_id=self.report_id,
            envelope_digest=self.envelope_digest,
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            logged_at_ms=self.logged_at_ms,
            issued_at_ms=self.issued_at_ms,
            org=self.org,
            node_id=self.node_id,
            node_key_id=self.node_key_id,
            observer_id=self.observer_id,
            seq=self.seq,
            mandate_id=self.mandate_id,
        )

    @classmethod
    def decode(cls, data: bytes) -> Receipt:
        """Parse and validate receipt payload bytes (malformed / invalid_field)."""
        pb = _parse(receipt_pb2.Receipt, data, "receipt")
        return cls(
            report_id=pb.report_id,
            envelope_digest=bytes(pb.envelope_digest),
            topic=pb.topic,
            partition=pb.partition,
            offset=pb.offset,
            logged_at_ms=pb.logged_at_ms,
            issued_at_ms=pb.issued_at_ms,
            org=pb.org,
            node_id=pb.node_id,
            node_key_id=bytes(pb.node_key_id),
            observer_id=pb.observer_id,
            seq=pb.seq,
            mandate_id=pb.mandate_id,
        )


# ---------------------------------------------------------------------------------------------
# Restricted reports and encryption keys (schemas/obus/v1/sealed.proto). Kept together at the
# end of the module.

from bus._pb.obus.v1 import sealed_pb2  # noqa: E402 - this section is self-contained

PAYLOAD_SEALED_REPORT: Final = "application/vnd.obus.sealed-report.v2+protobuf"
PAYLOAD_ENCRYPTION_KEY: Final = "application/vnd.obus.encryption-key.v1+protobuf"
X25519_PUBLIC_KEY_BYTES: Final = 32
HPKE_ENC_BYTES: Final = 32  # DHKEM(X25519) encapsulated key, RFC 9180 §7.1 Nenc
WRAPPED_KEY_BYTES: Final = 32 + 16  # a 32-byte content key plus the AES-GCM tag
GCM_NONCE_BYTES: Final = 12
GCM_TAG_BYTES: Final = 16
KEY_COMMITMENT_BYTES: Final = 32  # HMAC-SHA256 of the content key (bus.sealed)
# Bounded so one record cannot make every node do unbounded HPKE work; 16 is more than the
# organizations of any mandate we know of.
MAX_RECIPIENTS: Final = 16


@dataclass(frozen=True, slots=True)
class SealedRecipient:
    """One recipient organization's HPKE-wrapped copy of a sealed report's content key."""

    org: str
    key_id: bytes
    enc: bytes
    wrapped_key: bytes

    def __post_init__(self) -> None:
        check_id("recipients.org", self.org)
        if len(self.key_id) != DIGEST_BYTES:
            raise _invalid("recipients.key_id", f"must be {DIGEST_BYTES} bytes")
        if len(self.enc) != HPKE_ENC_BYTES:
            raise _invalid("recipients.enc", f"must be {HPKE_ENC_BYTES} bytes")
        if len(self.wrapped_key) != WRAPPED_KEY_BYTES:
            raise _invalid("recipients.wrapped_key", f"must be {WRAPPED_KEY_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class SealedReport:
    """A report encrypted to named organizations; routing fields in clear (sealed.proto)."""

    report_id: str
    mandate_id: str
    zone: str
    observer_id: str
    org: str
    seq: int
    prev_digest: bytes
    signed_at_ms: int
    recipients: tuple[SealedRecipient, ...]
    nonce: bytes
    ciphertext: bytes
    key_commitment: bytes

    def __post_init__(self) -> None:
        if not _UUID7_RE.fullmatch(self.report_id):
            raise _invalid("report_id", "must be a lower-case UUIDv7")
        for name in ("mandate_id", "zone", "observer_id", "org"):
            check_id(name, getattr(self, name))
        if self.seq < 1:
            raise _invalid("seq", "must start at 1")
        if self.seq == 1 and self.prev_digest:
            raise _invalid("prev_digest", "must be empty when seq is 1")
        if self.seq > 1 and len(self.prev_digest) != DIGEST_BYTES:
            raise _invalid("prev_digest", f"must be {DIGEST_BYTES} bytes when seq > 1")
        if self.signed_at_ms <= 0:
            raise _invalid("signed_at_ms", "must be positive Unix milliseconds")
        if not 1 <= len(self.recipients) <= MAX_RECIPIENTS:
            raise _invalid("recipients", f"need 1..{MAX_RECIPIENTS} recipient organizations")
        orgs = [r.org for r in self.recipients]
        if len(set(orgs)) != len(orgs):
            raise _invalid("recipients", "an organization is named twice")
        if len(self.nonce) != GCM_NONCE_BYTES:
            raise _invalid("nonce", f"must be {GCM_NONCE_BYTES} bytes")
        if len(self.ciphertext) < GCM_TAG_BYTES:
            raise _invalid("ciphertext", "shorter than the AES-GCM tag")
        if len(self.key_commitment) != KEY_COMMITMENT_BYTES:
            raise _invalid("key_commitment", f"must be {KEY_COMMITMENT_BYTES} bytes")

    @property
    def recipient_orgs(self) -> tuple[str, ...]:
        """The organizations that can read the content, in the order named."""
        return tuple(r.org for r in self.recipients)

    def to_pb(self) -> sealed_pb2.SealedReport:
        """The generated protobuf message (for the codec only)."""
        return sealed_pb2.SealedReport(
            report_id=self.report_id,
            mandate_id=self.mandate_id,
            zone=self.zone,
            observer_id=self.observer_id,
            org=self.org,
            seq=self.seq,
            prev_digest=self.prev_digest,
            signed_at_ms=self.signed_at_ms,
            recipients=[
                sealed_pb2.SealedRecipient(
                    org=r.org, key_id=r.key_id, enc=r.enc, wrapped_key=r.wrapped_key
                )
                for r in self.recipients
            ],
            nonce=self.nonce,
            ciphertext=self.ciphertext,
            key_commitment=self.key_commitment,
        )

    @classmethod
    def decode(cls, data: bytes) -> SealedReport:
        """Parse and validate sealed report payload bytes (malformed / invalid_field)."""
        pb = _parse(sealed_pb2.SealedReport, data, "sealed report")
        return cls(
            report_id=pb.report_id,
            mandate_id=pb.mandate_id,
            zone=pb.zone,
            observer_id=pb.observer_id,
            org=pb.org,
            seq=pb.seq,
            prev_digest=bytes(pb.prev_digest),
            signed_at_ms=pb.signed_at_ms,
            recipients=tuple(
                SealedRecipient(r.org, bytes(r.key_id), bytes(r.enc), bytes(r.wrapped_key))
                for r in pb.recipients
            ),
            nonce=bytes(pb.nonce),
            ciphertext=bytes(pb.ciphertext),
            key_commitment=bytes(pb.key_commitment),
        )


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """An organization's X25519 key for restricted reports, vouched for by its root key."""

    org: str
    public_key: bytes
    not_before_ms: int
    not_after_ms: int
    serial: int
    mandate_id: str

    def __post_init__(self) -> None:
        check_id("org", self.org)
        check_id("mandate_id", self.mandate_id)
        if len(self.public_key) != X25519_PUBLIC_KEY_BYTES:
            raise _invalid("public_key", f"must be {X25519_PUBLIC_KEY_BYTES} bytes")
        if not 0 < self.not_before_ms < self.not_after_ms:
            raise _invalid("not_after_ms", "need 0 < not_before_ms < not_after_ms")

    @property
    def key_id(self) -> bytes:
        """SHA-256 of the raw X25519 public key."""
        return sha256(self.public_key)

    def to_pb(self) -> sealed_pb2.EncryptionKey:
        """The generated protobuf message (for the codec only)."""
        return sealed_pb2.EncryptionKey(
            org=self.org,
            public_key=self.public_key,
            not_before_ms=self.not_before_ms,
            not_after_ms=self.not_after_ms,
            serial=self.serial,
            mandate_id=self.mandate_id,
        )

    @classmethod
    def decode(cls, data: bytes) -> EncryptionKey:
        """Parse and validate encryption key payload bytes (malformed / invalid_field)."""
        pb = _parse(sealed_pb2.EncryptionKey, data, "encryption key")
        return cls(
            pb.org,
            bytes(pb.public_key),
            pb.not_before_ms,
            pb.not_after_ms,
            pb.serial,
            pb.mandate_id,
        )
