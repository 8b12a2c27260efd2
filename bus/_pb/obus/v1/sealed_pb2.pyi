from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SealedRecipient(_message.Message):
    __slots__ = ("org", "key_id", "enc", "wrapped_key")
    ORG_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENC_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    org: str
    key_id: bytes
    enc: bytes
    wrapped_key: bytes
    def __init__(self, org: _Optional[str] = ..., key_id: _Optional[bytes] = ..., enc: _Optional[bytes] = ..., wrapped_key: _Optional[bytes] = ...) -> None: ...

class SealedReport(_message.Message):
    __slots__ = ("report_id", "mandate_id", "zone", "observer_id", "org", "seq", "prev_digest", "signed_at_ms", "recipients", "nonce", "ciphertext", "key_commitment")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    OBSERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    mandate_id: str
    zone: str
    observer_id: str
    org: str
    seq: int
    prev_digest: bytes
    signed_at_ms: int
    recipients: _containers.RepeatedCompositeFieldContainer[SealedRecipient]
    nonce: bytes
    ciphertext: bytes
    key_commitment: bytes
    def __init__(self, report_id: _Optional[str] = ..., mandate_id: _Optional[str] = ..., zone: _Optional[str] = ..., observer_id: _Optional[str] = ..., org: _Optional[str] = ..., seq: _Optional[int] = ..., prev_digest: _Optional[bytes] = ..., signed_at_ms: _Optional[int] = ..., recipients: _Optional[_Iterable[_Union[SealedRecipient, _Mapping]]] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ..., key_commitment: _Optional[bytes] = ...) -> None: ...

class EncryptionKey(_message.Message):
    __slots__ = ("org", "public_key", "not_before_ms", "not_after_ms", "serial", "mandate_id")
    ORG_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    org: str
    public_key: bytes
    not_before_ms: int
    not_after_ms: int
    serial: int
    mandate_id: str
    def __init__(self, org: _Optional[str] = ..., public_key: _Optional[bytes] = ..., not_before_ms: _Optional[int] = ..., not_after_ms: _Optional[int] = ..., serial: _Optional[int] = ..., mandate_id: _Optional[str] = ...) -> None: ...
