from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    OBSERVER: _ClassVar[Role]
    NODE: _ClassVar[Role]
    AUDITOR: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
OBSERVER: Role
NODE: Role
AUDITOR: Role

class Organization(_message.Message):
    __slots__ = ("org", "name", "root_public_key")
    ORG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROOT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    org: str
    name: str
    root_public_key: bytes
    def __init__(self, org: _Optional[str] = ..., name: _Optional[str] = ..., root_public_key: _Optional[bytes] = ...) -> None: ...

class Zone(_message.Message):
    __slots__ = ("id", "name", "min_lat", "min_lon", "max_lat", "max_lon")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_LAT_FIELD_NUMBER: _ClassVar[int]
    MIN_LON_FIELD_NUMBER: _ClassVar[int]
    MAX_LAT_FIELD_NUMBER: _ClassVar[int]
    MAX_LON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., min_lat: _Optional[float] = ..., min_lon: _Optional[float] = ..., max_lat: _Optional[float] = ..., max_lon: _Optional[float] = ...) -> None: ...

class Mandate(_message.Message):
    __slots__ = ("mandate_id", "version", "zones", "not_before_ms", "not_after_ms", "organizations", "threshold", "description", "max_delivery_lag_ms", "min_schema_version", "max_schema_version")
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATIONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVERY_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    mandate_id: str
    version: int
    zones: _containers.RepeatedCompositeFieldContainer[Zone]
    not_before_ms: int
    not_after_ms: int
    organizations: _containers.RepeatedCompositeFieldContainer[Organization]
    threshold: int
    description: str
    max_delivery_lag_ms: int
    min_schema_version: int
    max_schema_version: int
    def __init__(self, mandate_id: _Optional[str] = ..., version: _Optional[int] = ..., zones: _Optional[_Iterable[_Union[Zone, _Mapping]]] = ..., not_before_ms: _Optional[int] = ..., not_after_ms: _Optional[int] = ..., organizations: _Optional[_Iterable[_Union[Organization, _Mapping]]] = ..., threshold: _Optional[int] = ..., description: _Optional[str] = ..., max_delivery_lag_ms: _Optional[int] = ..., min_schema_version: _Optional[int] = ..., max_schema_version: _Optional[int] = ...) -> None: ...

class Accreditation(_message.Message):
    __slots__ = ("subject_id", "org", "role", "public_key", "not_before_ms", "not_after_ms", "serial", "mandate_id")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    org: str
    role: Role
    public_key: bytes
    not_before_ms: int
    not_after_ms: int
    serial: int
    mandate_id: str
    def __init__(self, subject_id: _Optional[str] = ..., org: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., public_key: _Optional[bytes] = ..., not_before_ms: _Optional[int] = ..., not_after_ms: _Optional[int] = ..., serial: _Optional[int] = ..., mandate_id: _Optional[str] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("org", "key_id", "last_valid_seq", "revoked_at_ms", "reason", "serial", "mandate_id")
    ORG_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_VALID_SEQ_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    org: str
    key_id: bytes
    last_valid_seq: int
    revoked_at_ms: int
    reason: str
    serial: int
    mandate_id: str
    def __init__(self, org: _Optional[str] = ..., key_id: _Optional[bytes] = ..., last_valid_seq: _Optional[int] = ..., revoked_at_ms: _Optional[int] = ..., reason: _Optional[str] = ..., serial: _Optional[int] = ..., mandate_id: _Optional[str] = ...) -> None: ...
