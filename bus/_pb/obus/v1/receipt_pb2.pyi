from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Receipt(_message.Message):
    __slots__ = ("report_id", "envelope_digest", "topic", "partition", "offset", "logged_at_ms", "issued_at_ms", "org", "node_id", "node_key_id", "observer_id", "seq", "mandate_id")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LOGGED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
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
    def __init__(self, report_id: _Optional[str] = ..., envelope_digest: _Optional[bytes] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., logged_at_ms: _Optional[int] = ..., issued_at_ms: _Optional[int] = ..., org: _Optional[str] = ..., node_id: _Optional[str] = ..., node_key_id: _Optional[bytes] = ..., observer_id: _Optional[str] = ..., seq: _Optional[int] = ..., mandate_id: _Optional[str] = ...) -> None: ...
