from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportRef(_message.Message):
    __slots__ = ("report_id", "envelope_digest")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    envelope_digest: bytes
    def __init__(self, report_id: _Optional[str] = ..., envelope_digest: _Optional[bytes] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "mandate_id", "org", "seq", "rule", "kind", "action", "priority", "zone", "group", "window_start_ms", "window_end_ms", "evidence", "decided_at_ms", "signed_at_ms", "summary", "policy_digest", "prev_digest", "seal_epoch", "seal_digest")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PREV_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEAL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    mandate_id: str
    org: str
    seq: int
    rule: str
    kind: str
    action: str
    priority: str
    zone: str
    group: str
    window_start_ms: int
    window_end_ms: int
    evidence: _containers.RepeatedCompositeFieldContainer[ReportRef]
    decided_at_ms: int
    signed_at_ms: int
    summary: str
    policy_digest: bytes
    prev_digest: bytes
    seal_epoch: int
    seal_digest: bytes
    def __init__(self, decision_id: _Optional[str] = ..., mandate_id: _Optional[str] = ..., org: _Optional[str] = ..., seq: _Optional[int] = ..., rule: _Optional[str] = ..., kind: _Optional[str] = ..., action: _Optional[str] = ..., priority: _Optional[str] = ..., zone: _Optional[str] = ..., group: _Optional[str] = ..., window_start_ms: _Optional[int] = ..., window_end_ms: _Optional[int] = ..., evidence: _Optional[_Iterable[_Union[ReportRef, _Mapping]]] = ..., decided_at_ms: _Optional[int] = ..., signed_at_ms: _Optional[int] = ..., summary: _Optional[str] = ..., policy_digest: _Optional[bytes] = ..., prev_digest: _Optional[bytes] = ..., seal_epoch: _Optional[int] = ..., seal_digest: _Optional[bytes] = ...) -> None: ...
