"""Report files written by people (YAML or JSON) -> a validated report draft.

A report file holds what the observer saw; the observer client adds who, when signed and where
in the chain. ``examples/report.yaml`` is the documented example. Fields:

=================  ========  ==================================================================
field              required  allowed
=================  ========  ==================================================================
zone               yes       a zone id of the mandate (``north``, ...)
observed_at        yes       ISO 8601 date-time with a time zone (``2026-11-01T06:30:00Z``),
                             not in the future, inside the mandate's validity window
location.lat/lon   yes       WGS 84 degrees; the point must lie inside the zone
location.precision_m  no     metres of uncertainty, 0..1,000,000 (default 0)
location.place     no        place name, up to 200 characters
category           yes       ``armed_clash``, ``shelling``, ``ceasefire_violation``,
                             ``troop_movement``, ``heavy_weapons``, ``civilian_casualties``,
                             ``humanitarian_access``, ``detention``, ``protest``, ``other``
sub_type           no        free text, up to 64 characters (``artillery``, ``sniper``, ...)
severity           yes       integer 1 (minor) .. 5 (grave)
confidence         yes       number 0.0 .. 1.0
casualties         no        ``killed``, ``injured``, ``missing``: integers >= 0;
                             ``civilian``: true/false
narrative          no        text, up to 20,000 characters
attachments        no        list (up to 64) of ``{sha256, size, media_type, name}``, or of
                             ``{path, media_type?, name?}`` when the caller can hash files
corrects           no        report id (UUIDv7) of an earlier report this one corrects
language           no        BCP 47 tag of the narrative's language (``uk``, ``en``,
                             ``sr-Latn``); schema version 2: refused until the mandate allows it
retracts           no        report id (UUIDv7) of an earlier report this one retracts; not with
                             ``corrects``; schema version 3: refused until the mandate allows it
retraction_reason  with      why the report is retracted, 1..500 characters; exactly with
                   retracts  ``retracts``
mandate_id, org,   no        if present, must equal the observer's own (a guard against
observer_id                  submitting a colleague's file with the wrong identity)
=================  ========  ==================================================================

``report_id``, ``seq``, ``prev_digest`` and ``signed_at`` are filled in by the client and are
refused in a file. So is the schema version: :meth:`ReportDraft.to_report` states the lowest
version that covers the fields used and the mandate allows
(:func:`bus.model.stamp_schema_version`); a field of a version the mandate does not allow yet
is refused (``schema_not_allowed``). Unknown fields are refused (a typo must not silently drop
data).

Every problem found is reported at once as a :class:`FieldProblem` (which field, what is wrong,
what is allowed) inside one :class:`ReportFileError` (a
:class:`~bus.errors.VerificationError` with reason ``invalid_field``; ``malformed`` when the
text is not YAML/JSON at all). Pure: reads no files itself (attachment paths go through an
injected resolver).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import mimetypes
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from bus.errors import Reason, VerificationError
from bus.model import (
    FIELD_VERSIONS,
    LANGUAGE_TAG_RE,
    MAX_ATTACHMENT_NAME_CHARS,
    MAX_ATTACHMENTS,
    MAX_CONFIDENCE,
    MAX_LANGUAGE_CHARS,
    MAX_LAT,
    MAX_LON,
    MAX_NARRATIVE_CHARS,
    MAX_PLACE_CHARS,
    MAX_PRECISION_M,
    MAX_RETRACTION_REASON_CHARS,
    MAX_SEVERITY,
    MAX_SUB_TYPE_CHARS,
    MIN_CONFIDENCE,
    MIN_SEVERITY,
    Attachment,
    Casualties,
    Category,
    Location,
    Mandate,
    Report,
    stamp_schema_version,
)

# Devices' clocks drift; an observation a few minutes "in the future" is a clock, not a lie.
# Same bound as the verifier's default clock skew (bus.verify.DEFAULT_MAX_CLOCK_SKEW_MS).
MAX_FUTURE_MS: Final = 5 * 60 * 1000
# Casualty counts on the wire are unbounded integers; a file (and the web form) stays within a
# count no event reaches, so a typo of extra digits is caught before it is signed.
MAX_CASUALTIES: Final = 1_000_000

_TOP_FIELDS: Final = (
    "zone", "observed_at", "location", "category", "sub_type", "severity", "confidence",
    "casualties", "narrative", "attachments", "corrects", "mandate_id", "org", "observer_id",
    "language", "retracts", "retraction_reason",
)  # fmt: skip
_CLIENT_FIELDS: Final = ("report_id", "seq", "prev_digest", "signed_at", "signed_at_ms")
_LOCATION_FIELDS: Final = ("lat", "lon", "precision_m", "place")
_CASUALTY_FIELDS: Final = ("killed", "injured", "missing", "civilian")
_ATTACHMENT_FIELDS: Final = ("sha256", "size", "media_type", "name", "path")
_UUID7_RE: Final = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)
_SHA256_HEX_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_MEDIA_TYPE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")

# (path) -> (sha256 digest, size in bytes); raises OSError when the file cannot be read.
PathResolver = Callable[[str], tuple[bytes, int]]


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem in a report file: the field (dotted path), what is wrong, what is allowed."""

    field: str
    problem: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}; allowed: {self.allowed}"


class ReportFileError(VerificationError):
    """A report file was refused; ``problems`` lists every problem found (never empty)."""

    def __init__(self, problems: list[FieldProblem], *, source: str, reason: Reason) -> None:
        head = f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        body = "\n".join(f"  {p}" for p in problems)
        super().__init__(reason, f"{head}\n{body}", source=source)
        self.problems = tuple(problems)

    def diagnostics(self) -> str:
        """The problems, one per line (the context adds nothing for a person)."""
        return self.message


@dataclass(frozen=True, slots=True)
class Identity:
    """Who submits: filled into every report and checked against the file's optional fields."""

    observer_id: str
    org: str
    mandate_id: str


@dataclass(frozen=True, slots=True)
class ReportDraft:
    """A validated report without the client-filled fields (id, signing time, chain position)."""

    identity: Identity
    zone: str
    observed_at_ms: int
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
    mandate: Mandate | None = None

    def to_report(self, *, report_id: str, signed_at_ms: int) -> Report:
        """The report to sign; seq and prev_digest are placeholders the signer replaces.

        Its schema version is the lowest that covers its fields and the mandate the draft was
        parsed under allows (without one, the versions every mandate allows by default).

        Raises:
            VerificationError: ``invalid_field`` (e.g. a report id that is not a UUIDv7),
                ``schema_not_allowed`` (a field of a version the mandate does not allow).
        """
        ident = self.identity
        report = Report(
            report_id=report_id,
            mandate_id=ident.mandate_id,
            zone=self.zone,
            observer_id=ident.observer_id,
            org=ident.org,
            seq=1,
            prev_digest=b"",
            observed_at_ms=self.observed_at_ms,
            signed_at_ms=max(signed_at_ms, self.observed_at_ms),
            location=self.location,
            category=self.category,
            severity=self.severity,
            confidence=self.confidence,
            sub_type=self.sub_type,
            casualties=self.casualties,
            narrative=self.narrative,
            attachments=self.attachments,
            corrects=self.corrects,
            language=self.language,
            retracts=self.retracts,
            retraction_reason=self.retraction_reason,
        )
        return stamp_schema_version(report, self.mandate)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML would silently keep the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_document(text: str, *, fmt: str, source: str = "report") -> Any:
    """Parse YAML or JSON text.

    Raises:
        ReportFileError: reason ``malformed`` naming the line and column of the syntax error.
        ValueError: ``fmt`` is neither ``yaml`` nor ``json``.
    """
    if fmt == "json":
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            problem = FieldProblem("(file)", f"not valid JSON: {exc}", "a JSON object")
            raise ReportFileError([problem], source=source, reason=Reason.MALFORMED) from exc
    if fmt == "yaml":
        try:
            return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        # Constructors raise more than YAMLError: ValueError for a timestamp like 2026-10-35
        # (found by make fuzz), TypeError for an unhashable key, RecursionError for deep nesting.
        except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
            problem = FieldProblem("(file)", f"not valid YAML: {exc}", "a YAML mapping")
            raise ReportFileError([problem], source=source, reason=Reason.MALFORMED) from exc
    raise ValueError(f"unknown report file format {fmt!r}: use yaml or json")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} is given twice")
        out[k] = v
    return out


def format_of(name: str) -> str:
    """``json`` for ``*.json``, otherwise ``yaml`` (YAML is what people write)."""
    return "json" if name.lower().endswith(".json") else "yaml"


def parse_report(
    text: str,
    *,
    identity: Identity,
    now_ms: int,
    fmt: str = "yaml",
    mandate: Mandate | None = None,
    resolve_path: PathResolver | None = None,
    source: str = "report",
) -> ReportDraft:
    """Validate a report file's text into a :class:`ReportDraft`.

    Args:
        text: the file's text.
        identity: the submitting observer (fills observer_id, org, mandate_id).
        now_ms: the current time (observations may not lie in the future).
        fmt: ``yaml`` or ``json``.
        mandate: when given, zone, location and time are checked against it, as the gateway
            will, so that a report is refused before it is signed and chained, not after.
        resolve_path: hashes an attachment given by ``path``; None refuses ``path``.
        source: name used in messages (the file name).

    Raises:
        ReportFileError: every problem found (``invalid_field``), or ``malformed`` text.
    """
    doc = load_document(text, fmt=fmt, source=source)
    return _Parser(identity, now_ms, mandate, resolve_path).run(doc, source)


class _Parser:
    def __init__(
        self,
        identity: Identity,
        now_ms: int,
        mandate: Mandate | None,
        resolve_path: PathResolver | None,
    ) -> None:
        self.identity = identity
        self.now_ms = now_ms
        self.mandate = mandate
        self.resolve_path = resolve_path
        self.problems: list[FieldProblem] = []

    def bad(self, name: str, problem: str, allowed: str) -> None:
        self.problems.append(FieldProblem(name, problem, allowed))

    def run(self, doc: Any, source: str) -> ReportDraft:
        if not isinstance(doc, Mapping):
            self.bad("(file)", f"is a {_kind(doc)}", "a mapping of field names to values")
            raise ReportFileError(self.problems, source=source, reason=Reason.INVALID_FIELD)
        self._unknown(doc, "", _TOP_FIELDS)
        self._identity(doc)
        zone = self._zone(doc.get("zone"))
        observed = self._time(doc.get("observed_at"))
        location = self._location(doc.get("location"), zone)
        category = self._category(doc.get("category"))
        severity = self._int(
            doc,
            "severity",
            MIN_SEVERITY,
            MAX_SEVERITY,
            required=True,
            allowed=f"an integer {MIN_SEVERITY}..{MAX_SEVERITY}",
        )
        confidence = self._number(
            doc.get("confidence"), "confidence", MIN_CONFIDENCE, MAX_CONFIDENCE
        )
        sub_type = self._text(doc, "sub_type", MAX_SUB_TYPE_CHARS)
        narrative = self._text(doc, "narrative", MAX_NARRATIVE_CHARS)
        casualties = self._casualties(doc.get("casualties"))
        attachments = self._attachments(doc.get("attachments"))
        corrects = self._corrects(doc.get("corrects"))
        language = self._language(doc)
        retracts, reason = self._retraction(doc, corrects)
        if self.problems:
            raise ReportFileError(self.problems, source=source, reason=Reason.INVALID_FIELD)
        assert zone is not None and observed is not None and location is not None
        assert category is not None and severity is not None and confidence is not None
        return ReportDraft(
            identity=self.identity,
            zone=zone,
            observed_at_ms=observed,
            location=location,
            category=category,
            severity=severity,
            confidence=confidence,
            sub_type=sub_type,
            casualties=casualties,
            narrative=narrative,
            attachments=attachments,
            corrects=corrects,
            language=language,
            retracts=retracts,
            retraction_reason=reason,
            mandate=self.mandate,
        )

    # -- fields ------------------------------------------------------------------------------

    def _unknown(self, doc: Mapping[Any, Any], prefix: str, known: tuple[str, ...]) -> None:
        for key in doc:
            name = f"{prefix}{key}"
            if key in _CLIENT_FIELDS and not prefix:
                self.bad(name, "is filled in by the observer client", "remove it from the file")
            elif key not in known:
                self.bad(name, "is not a known field", ", ".join(known))

    def _identity(self, doc: Mapping[Any, Any]) -> None:
        for name in ("mandate_id", "org", "observer_id"):
            if name in doc and doc[name] != getattr(self.identity, name):
                mine = getattr(self.identity, name)
                self.bad(name, f"{doc[name]!r} is not this observer's", f"{mine!r} or omit it")

    def _zone(self, value: Any) -> str | None:
        zones = [z.id for z in self.mandate.zones] if self.mandate else []
        allowed = ", ".join(zones) if zones else "a zone id of the mandate"
        if value is None:
            self.bad("zone", "is required", allowed)
            return None
        if not isinstance(value, str) or (zones and value not in zones):
            self.bad("zone", f"{value!r} is not a zone of the mandate", allowed)
            return None
        return value

    def _time(self, value: Any) -> int | None:
        allowed = "ISO 8601 date-time with a time zone, e.g. 2026-11-01T06:30:00Z"
        if value is None:
            self.bad("observed_at", "is required", allowed)
            return None
        when: dt.datetime | None = None
        if isinstance(value, dt.datetime):
            when = value
        elif isinstance(value, str):
            try:
                when = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                self.bad("observed_at", f"{value!r} is not a date-time", allowed)
                return None
        else:
            self.bad("observed_at", f"is a {_kind(value)}", allowed)
            return None
        if when.tzinfo is None:
            self.bad("observed_at", f"{value!s} has no time zone", allowed)
            return None
        ms = int(when.timestamp() * 1000)
        if ms <= 0:
            self.bad("observed_at", "is before 1970", allowed)
            return None
        if ms > self.now_ms + MAX_FUTURE_MS:
            self.bad("observed_at", f"{value!s} is in the future", "a time up to now")
            return None
        m = self.mandate
        if m is not None and not m.not_before_ms <= ms <= m.not_after_ms:
            window = f"{_iso(m.not_before_ms)} .. {_iso(m.not_after_ms)}"
            self.bad("observed_at", f"{value!s} is outside the mandate", window)
            return None
        return ms

    def _location(self, value: Any, zone_id: str | None) -> Location | None:
        if value is None:
            self.bad("location", "is required", "a mapping with lat, lon, precision_m, place")
            return None
        if not isinstance(value, Mapping):
            self.bad("location", f"is a {_kind(value)}", "a mapping with lat, lon, ...")
            return None
        self._unknown(value, "location.", _LOCATION_FIELDS)
        lat = self._number(value.get("lat"), "location.lat", -MAX_LAT, MAX_LAT)
        lon = self._number(value.get("lon"), "location.lon", -MAX_LON, MAX_LON)
        precision = self._int(value, "precision_m", 0, MAX_PRECISION_M, prefix="location.")
        place = self._text(value, "place", MAX_PLACE_CHARS, prefix="location.")
        if lat is None or lon is None:
            return None
        zone = self.mandate.zone(zone_id) if self.mandate and zone_id else None
        if zone is not None and not zone.contains(lat, lon):
            box = (
                f"inside zone {zone.id}: lat {zone.min_lat}..{zone.max_lat},"
                f" lon {zone.min_lon}..{zone.max_lon}"
            )
            self.bad("location", f"({lat}, {lon}) is outside zone {zone.id}", box)
        return Location(lat, lon, precision or 0, place)

    def _category(self, value: Any) -> Category | None:
        allowed = ", ".join(c.label for c in Category)
        if value is None:
            self.bad("category", "is required", allowed)
            return None
        if isinstance(value, str):
            try:
                return Category.parse(value)
            except VerificationError:
                pass
        self.bad("category", f"{value!r} is not a category", allowed)
        return None

    def _casualties(self, value: Any) -> Casualties:
        if value is None:
            return Casualties()
        if not isinstance(value, Mapping):
            self.bad("casualties", f"is a {_kind(value)}", "a mapping: killed, injured, ...")
            return Casualties()
        self._unknown(value, "casualties.", _CASUALTY_FIELDS)
        counts = [
            self._int(value, name, 0, MAX_CASUALTIES, prefix="casualties.") or 0
            for name in ("killed", "injured", "missing")
        ]
        civilian = value.get("civilian", False)
        if not isinstance(civilian, bool):
            self.bad("casualties.civilian", f"{civilian!r} is not true/false", "true or false")
            civilian = False
        return Casualties(counts[0], counts[1], counts[2], civilian)

    def _attachments(self, value: Any) -> tuple[Attachment, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.bad("attachments", f"is a {_kind(value)}", "a list of attachments")
            return ()
        if len(value) > MAX_ATTACHMENTS:
            self.bad("attachments", f"{len(value)} given", f"at most {MAX_ATTACHMENTS}")
            return ()
        out = []
        for i, item in enumerate(value):
            att = self._attachment(item, f"attachments[{i}]")
            if att is not None:
                out.append(att)
        return tuple(out)

    def _attachment(self, item: Any, name: str) -> Attachment | None:
        allowed = "{sha256, size, media_type, name} or {path, media_type?, name?}"
        if not isinstance(item, Mapping):
            self.bad(name, f"is a {_kind(item)}", allowed)
            return None
        self._unknown(item, f"{name}.", _ATTACHMENT_FIELDS)
        label = self._text(item, "name", MAX_ATTACHMENT_NAME_CHARS, prefix=f"{name}.")
        path = item.get("path")
        if path is not None:
            if "sha256" in item or "size" in item:
                self.bad(name, "gives both path and sha256/size", allowed)
                return None
            if self.resolve_path is None or not isinstance(path, str):
                self.bad(f"{name}.path", "cannot be read here", "sha256 and size instead")
                return None
            try:
                digest, size = self.resolve_path(path)
            except OSError as exc:
                self.bad(f"{name}.path", f"cannot be read: {exc.strerror or exc}", "a file")
                return None
            label = label or path.rsplit("/", 1)[-1]
        else:
            hexd = item.get("sha256")
            if not isinstance(hexd, str) or not _SHA256_HEX_RE.fullmatch(hexd.lower()):
                self.bad(f"{name}.sha256", f"{hexd!r} is not a SHA-256", "64 hex characters")
                return None
            digest = bytes.fromhex(hexd)
            size_or_none = self._int(item, "size", 0, 2**53, prefix=f"{name}.", required=True)
            if size_or_none is None:
                return None
            size = size_or_none
        media_type = item.get("media_type") or mimetypes.guess_type(label or "")[0]
        if not isinstance(media_type, str) or not _MEDIA_TYPE_RE.fullmatch(media_type):
            self.bad(f"{name}.media_type", f"{media_type!r} is not a media type", "e.g. image/jpeg")
            return None
        try:
            return Attachment(digest, size, media_type, label)
        except VerificationError as exc:
            self.bad(name, exc.message, allowed)
            return None

    def _language(self, doc: Mapping[Any, Any]) -> str:
        value = self._text(doc, "language", MAX_LANGUAGE_CHARS)
        if not value:
            return ""
        tag = "a BCP 47 language tag such as uk, en or sr-Latn"
        if not LANGUAGE_TAG_RE.fullmatch(value):
            self.bad("language", f"{value!r} is not a language tag", tag)
            return ""
        version = FIELD_VERSIONS["language"]
        low, high = (1, 1) if self.mandate is None else self.mandate.schema_versions
        if high < version:
            self.bad(
                "language",
                f"needs report schema version {version}; the mandate allows {low}..{high}",
                "leave it out until the organizations raise the mandate's max_schema_version",
            )
            return ""
        return value

    def _retraction(self, doc: Mapping[Any, Any], corrects: str) -> tuple[str, str]:
        """``retracts`` and ``retraction_reason`` (a retraction: schema version 3)."""
        target = self._corrects(doc.get("retracts"), "retracts")
        reason = self._text(doc, "retraction_reason", MAX_RETRACTION_REASON_CHARS)
        if not target:
            if reason:
                self.bad("retraction_reason", "only a retraction has a reason", "add retracts")
            return "", ""
        if corrects:
            self.bad("retracts", "a report either corrects or retracts", "keep one of them")
        if not reason.strip():
            self.bad("retraction_reason", "is required with retracts", "say why, in a sentence")
        version = FIELD_VERSIONS["retracts"]
        low, high = (1, 1) if self.mandate is None else self.mandate.schema_versions
        if high < version:
            self.bad(
                "retracts",
                f"needs report schema version {version}; the mandate allows {low}..{high}",
                "wait until the organizations raise the mandate's max_schema_version",
            )
        return target, reason

    def _corrects(self, value: Any, name: str = "corrects") -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or not _UUID7_RE.fullmatch(value):
            self.bad(name, f"{value!r} is not a report id", "a lower-case UUIDv7")
            return ""
        return value

    # -- scalars -----------------------------------------------------------------------------

    def _number(self, value: Any, name: str, low: float, high: float) -> float | None:
        allowed = f"a number {low} .. {high}"
        if value is None:
            self.bad(name, "is required", allowed)
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(name, f"{value!r} is not a number", allowed)
            return None
        number = float(value)
        if not (math.isfinite(number) and low <= number <= high):
            self.bad(name, f"{value!r} is out of range", allowed)
            return None
        return number

    def _int(
        self,
        doc: Mapping[Any, Any],
        key: str,
        low: int,
        high: int,
        *,
        prefix: str = "",
        required: bool = False,
        allowed: str | None = None,
    ) -> int | None:
        name = f"{prefix}{key}"
        allowed = allowed or f"an integer {low}..{high:,}"
        value = doc.get(key)
        if value is None:
            if required:
                self.bad(name, "is required", allowed)
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(name, f"{value!r} is not an integer", allowed)
            return None
        if not low <= value <= high:
            self.bad(name, f"{value} is out of range", allowed)
            return None
        return value

    def _text(self, doc: Mapping[Any, Any], key: str, limit: int, *, prefix: str = "") -> str:
        value = doc.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.bad(f"{prefix}{key}", f"is a {_kind(value)}", f"text up to {limit:,} characters")
            return ""
        if len(value) > limit:
            self.bad(f"{prefix}{key}", f"has {len(value):,} characters", f"at most {limit:,}")
            return ""
        return value


def _kind(value: Any) -> str:
    names = {dict: "mapping", list: "list", str: "text", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat().replace("+00:00", "Z")
