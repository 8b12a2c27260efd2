from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatementReference(_message.Message):
    __slots__ = ("report_id", "envelope_digest")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    envelope_digest: bytes
    def __init__(self, report_id: _Optional[str] = ..., envelope_digest: _Optional[bytes] = ...) -> None: ...

class JointStatement(_message.Message):
    __slots__ = ("statement_id", "mandate_id", "drafted_by", "title", "text", "references", "created_at_ms")
    STATEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_BY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    statement_id: str
    mandate_id: str
    drafted_by: str
    title: str
    text: str
    references: _containers.RepeatedCompositeFieldContainer[StatementReference]
    created_at_ms: int
    def __init__(self, statement_id: _Optional[str] = ..., mandate_id: _Optional[str] = ..., drafted_by: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., references: _Optional[_Iterable[_Union[StatementReference, _Mapping]]] = ..., created_at_ms: _Optional[int] = ...) -> None: ...
