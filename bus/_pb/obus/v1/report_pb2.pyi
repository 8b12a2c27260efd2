from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Category(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATEGORY_UNSPECIFIED: _ClassVar[Category]
    ARMED_CLASH: _ClassVar[Category]
    SHELLING: _ClassVar[Category]
    CEASEFIRE_VIOLATION: _ClassVar[Category]
    TROOP_MOVEMENT: _ClassVar[Category]
    HEAVY_WEAPONS: _ClassVar[Category]
    CIVILIAN_CASUALTIES: _ClassVar[Category]
    HUMANITARIAN_ACCESS: _ClassVar[Category]
    DETENTION: _ClassVar[Category]
    PROTEST: _ClassVar[Category]
    OTHER: _ClassVar[Category]
CATEGORY_UNSPECIFIED: Category
ARMED_CLASH: Category
SHELLING: Category
CEASEFIRE_VIOLATION: Category
TROOP_MOVEMENT: Category
HEAVY_WEAPONS: Category
CIVILIAN_CASUALTIES: Category
HUMANITARIAN_ACCESS: Category
DETENTION: Category
PROTEST: Category
OTHER: Category

class Location(_message.Message):
    __slots__ = ("lat", "lon", "precision_m", "place")
    LAT_FIELD_NUMBER: _ClassVar[int]
    LON_FIELD_NUMBER: _ClassVar[int]
    PRECISION_M_FIELD_NUMBER: _ClassVar[int]
    PLACE_FIELD_NUMBER: _ClassVar[int]
    lat: float
    lon: float
    precision_m: int
    place: str
    def __init__(self, lat: _Optional[float] = ..., lon: _Optional[float] = ..., precision_m: _Optional[int] = ..., place: _Optional[str] = ...) -> None: ...

class Casualties(_message.Message):
    __slots__ = ("killed", "injured", "missing", "civilian")
    KILLED_FIELD_NUMBER: _ClassVar[int]
    INJURED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    CIVILIAN_FIELD_NUMBER: _ClassVar[int]
    killed: int
    injured: int
    missing: int
    civilian: bool
    def __init__(self, killed: _Optional[int] = ..., injured: _Optional[int] = ..., missing: _Optional[int] = ..., civilian: _Optional[bool] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("sha256", "size", "media_type", "name")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    size: int
    media_type: str
    name: str
    def __init__(self, sha256: _Optional[bytes] = ..., size: _Optional[int] = ..., media_type: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ObserverReport(_message.Message):
    __slots__ = ("report_id", "mandate_id", "zone", "observer_id", "org", "seq", "prev_digest", "observed_at_ms", "signed_at_ms", "location", "category", "sub_type", "severity", "confidence", "casualties", "narrative", "attachments", "corrects", "schema_version", "language", "retracts", "retraction_reason")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    OBSERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SUB_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CASUALTIES_FIELD_NUMBER: _ClassVar[int]
    NARRATIVE_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    CORRECTS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    RETRACTS_FIELD_NUMBER: _ClassVar[int]
    RETRACTION_REASON_FIELD_NUMBER: _ClassVar[int]
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
    sub_type: str
    severity: int
    confidence: float
    casualties: Casualties
    narrative: str
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    corrects: str
    schema_version: int
    language: str
    retracts: str
    retraction_reason: str
    def __init__(self, report_id: _Optional[str] = ..., mandate_id: _Optional[str] = ..., zone: _Optional[str] = ..., observer_id: _Optional[str] = ..., org: _Optional[str] = ..., seq: _Optional[int] = ..., prev_digest: _Optional[bytes] = ..., observed_at_ms: _Optional[int] = ..., signed_at_ms: _Optional[int] = ..., location: _Optional[_Union[Location, _Mapping]] = ..., category: _Optional[_Union[Category, str]] = ..., sub_type: _Optional[str] = ..., severity: _Optional[int] = ..., confidence: _Optional[float] = ..., casualties: _Optional[_Union[Casualties, _Mapping]] = ..., narrative: _Optional[str] = ..., attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ..., corrects: _Optional[str] = ..., schema_version: _Optional[int] = ..., language: _Optional[str] = ..., retracts: _Optional[str] = ..., retraction_reason: _Optional[str] = ...) -> None: ...
