"""Attachments, pure core: chunk layout and codec, reassembly, checks against the report."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus._pb.obus.v1 import attachment_pb2
from bus.attachment import (
    MAX_CANDIDATES,
    MAX_CHUNK_BYTES,
    Added,
    Assembly,
    AttachmentLimits,
    Chunk,
    Completed,
    Layout,
    Reassembler,
    Waiting,
    check_reference,
    check_upload,
    chunk_count,
    matches,
    split,
)
from bus.errors import BusError, Reason, VerificationError
from bus.model import Attachment

DATA = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes
CS = 1000  # 11 chunks, the last one 244 bytes


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _pb(**fields: object) -> bytes:
    base: dict[str, object] = {
        "sha256": _sha(b"abc"), "total_size": 3, "chunk_size": 2, "index": 0, "count": 2,
        "data": b"ab",
    }  # fmt: skip
    base.update(fields)
    return attachment_pb2.AttachmentChunk(**base).SerializeToString(deterministic=True)  # type: ignore[arg-type]


# -- layout and codec ---------------------------------------------------------------------------


def test_split_layout_and_round_trip() -> None:
    chunks = split(DATA, chunk_size=CS)
    assert len(chunks) == 11 == chunk_count(len(DATA), CS)
    assert [len(c.data) for c in chunks] == [CS] * 10 + [244]
    assert b"".join(c.data for c in chunks) == DATA
    assert all(c.layout == Layout(_sha(DATA), len(DATA), CS) for c in chunks)
    for c in chunks:
        back = Chunk.decode(c.encode())
        assert back == c
        assert c.key == _sha(DATA).hex().encode()


def test_empty_attachment_is_one_empty_chunk() -> None:
    (only,) = split(b"", chunk_size=CS)
    assert only.layout.count == 1 and only.data == b""
    assert Chunk.decode(only.encode()) == only


BAD_RECORDS: dict[str, tuple[bytes, Reason]] = {
    "not protobuf": (b"\xff\xff\xff", Reason.MALFORMED),
    "unknown field": (_pb() + b"\x38\x01", Reason.MALFORMED),
    "repeated field": (_pb() + _pb(index=1, data=b"c"), Reason.MALFORMED),
    "short digest": (_pb(sha256=b"x" * 31), Reason.INVALID_FIELD),
    "chunk size 0": (_pb(chunk_size=0), Reason.INVALID_FIELD),
    "chunk size too big": (_pb(chunk_size=MAX_CHUNK_BYTES + 1), Reason.INVALID_FIELD),
    "count disagrees": (_pb(count=3), Reason.INVALID_FIELD),
    "index beyond count": (_pb(index=2), Reason.INVALID_FIELD),
    "data too short": (_pb(data=b"a"), Reason.INVALID_FIELD),
    "last chunk too long": (_pb(index=1, data=b"cd"), Reason.INVALID_FIELD),
    "attachment oversized": (_pb(total_size=2**40, count=2**31), Reason.OVERSIZED),
    "record oversized": (b"\x00" * (MAX_CHUNK_BYTES + 5000), Reason.OVERSIZED),
}


@pytest.mark.parametrize("name", BAD_RECORDS)
def test_bad_chunk_records_are_refused_with_their_reason(name: str) -> None:
    raw, reason = BAD_RECORDS[name]
    with pytest.raises(VerificationError) as exc:
        Chunk.decode(raw)
    assert exc.value.reason is reason


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        AttachmentLimits(chunk_bytes=0)
    with pytest.raises(ValueError, match="max_bytes"):
        AttachmentLimits(max_bytes=-1)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_decode_any_bytes_returns_a_chunk_or_a_bus_error(raw: bytes) -> None:
    try:
        chunk = Chunk.decode(raw)
    except BusError:
        return
    assert chunk.encode() == raw


# -- reassembly ---------------------------------------------------------------------------------


def _feed_all(records: list[bytes]) -> tuple[Reassembler, list[Completed | Waiting]]:
    r = Reassembler()
    return r, [r.feed(raw) for raw in records]


def test_in_order() -> None:
    _, events = _feed_all([c.encode() for c in split(DATA, chunk_size=CS)])
    assert all(isinstance(e, Waiting) for e in events[:-1])
    assert isinstance(events[-1], Completed) and events[-1].data == DATA


def test_out_of_order_with_duplicates() -> None:
    records = [c.encode() for c in split(DATA, chunk_size=CS)]
    shuffled = records[::-1] + records[3:6]
    _, events = _feed_all(shuffled)
    done = [e for e in events if isinstance(e, Completed)]
    assert len(done) == 1 and done[0].data == DATA
    # after completion, the same chunks again are harmless duplicates
    assert [e.added for e in events[len(records) :] if isinstance(e, Waiting)] == [
        Added.DUPLICATE
    ] * 3


def test_a_missing_chunk_leaves_it_waiting_and_names_itself() -> None:
    chunks = split(DATA, chunk_size=CS)
    r, events = _feed_all([c.encode() for i, c in enumerate(chunks) if i != 7])
    assert not any(isinstance(e, Completed) for e in events)
    (asm,) = r.pending()
    assert asm.missing() == [7]
    with pytest.raises(VerificationError) as exc:
        asm.resolve()
    assert exc.value.reason is Reason.ATTACHMENT_INCOMPLETE


def _tamper(chunk: Chunk) -> bytes:
    data = bytes([chunk.data[0] ^ 1]) + chunk.data[1:]
    return Chunk(chunk.layout, chunk.index, data).encode()


def test_a_tampered_chunk_is_a_hash_mismatch() -> None:
    chunks = split(DATA, chunk_size=CS)
    records = [c.encode() for c in chunks]
    records[4] = _tamper(chunks[4])
    r = Reassembler()
    for raw in records[:-1]:
        r.feed(raw)
    with pytest.raises(VerificationError) as exc:
        r.feed(records[-1])
    assert exc.value.reason is Reason.ATTACHMENT_HASH_MISMATCH
    # the genuine chunk arriving later (a re-publication) still completes it
    event = r.feed(chunks[4].encode())
    assert isinstance(event, Completed) and event.data == DATA


def test_a_forged_chunk_read_first_cannot_block_the_genuine_one() -> None:
    chunks = split(DATA, chunk_size=CS)
    records = [_tamper(chunks[2]), _tamper(chunks[9])] + [c.encode() for c in chunks]
    _, events = _feed_all(records)
    assert isinstance(events[-1], Completed) and events[-1].data == DATA


def test_a_wrong_digest_for_self_consistent_chunks_is_a_hash_mismatch() -> None:
    lay = Layout(_sha(b"something else"), len(DATA), CS)
    records = [Chunk(lay, c.index, c.data).encode() for c in split(DATA, chunk_size=CS)]
    r = Reassembler()
    with pytest.raises(VerificationError) as exc:
        for raw in records:
            r.feed(raw)
    assert exc.value.reason is Reason.ATTACHMENT_HASH_MISMATCH


def test_too_many_versions_of_one_chunk_are_refused() -> None:
    (c,) = split(b"x" * 10, chunk_size=16)
    asm = Assembly(c.layout)
    for i in range(MAX_CANDIDATES):
        asm.add(Chunk(c.layout, 0, bytes([i]) * 10))
    with pytest.raises(VerificationError) as exc:
        asm.add(c)
    assert exc.value.reason is Reason.ATTACHMENT_HASH_MISMATCH


def test_a_chunk_contradicting_a_verified_attachment_is_a_hash_mismatch() -> None:
    chunks = split(DATA, chunk_size=CS)
    r, _ = _feed_all([c.encode() for c in chunks])
    assert matches(chunks[3], DATA)
    with pytest.raises(VerificationError) as exc:
        r.feed(_tamper(chunks[3]))
    assert exc.value.reason is Reason.ATTACHMENT_HASH_MISMATCH
    # another layout of the same bytes is checked against them too
    other = split(DATA, chunk_size=4096)
    assert isinstance(r.feed(other[1].encode()), Waiting)


@given(
    data=st.binary(max_size=5000),
    chunk_size=st.integers(1, 700),
    seed=st.integers(0, 2**32),
    duplicates=st.integers(0, 5),
)
@settings(max_examples=200, deadline=None)
def test_round_trip_in_any_order_with_any_duplicates(
    data: bytes, chunk_size: int, seed: int, duplicates: int
) -> None:
    rng = random.Random(seed)
    records = [c.encode() for c in split(data, chunk_size=chunk_size)]
    records += [rng.choice(records) for _ in range(duplicates)]
    rng.shuffle(records)
    _, events = _feed_all(records)
    done = [e for e in events if isinstance(e, Completed)]
    assert len(done) == 1
    assert done[0].data == data


# -- checks against the report and the upload ---------------------------------------------------


def _ref(data: bytes = DATA, size: int | None = None) -> Attachment:
    return Attachment(_sha(data), len(data) if size is None else size, "image/jpeg", "a.jpg")


UPLOADS: dict[str, tuple[Callable[[], Attachment], Reason | None]] = {
    "good": (lambda: check_upload(_sha(DATA).hex(), DATA, [_ref()], max_bytes=10**6), None),
    "not hex": (lambda: check_upload("zz" * 32, DATA, [_ref()], max_bytes=10**6), Reason.MALFORMED),
    "upper-case hex": (
        lambda: check_upload(_sha(DATA).hex().upper(), DATA, [_ref()], max_bytes=10**6),
        Reason.MALFORMED,
    ),
    "oversized": (
        lambda: check_upload(_sha(DATA).hex(), DATA, [_ref()], max_bytes=100),
        Reason.OVERSIZED,
    ),
    "unreferenced": (
        lambda: check_upload(_sha(DATA).hex(), DATA, [_ref(b"other")], max_bytes=10**6),
        Reason.ATTACHMENT_UNREFERENCED,
    ),
    "other bytes": (
        lambda: check_upload(_sha(DATA).hex(), DATA[:-1] + b"!", [_ref()], max_bytes=10**6),
        Reason.ATTACHMENT_HASH_MISMATCH,
    ),
    "report says another size": (
        lambda: check_upload(_sha(DATA).hex(), DATA, [_ref(size=5)], max_bytes=10**6),
        Reason.ATTACHMENT_SIZE_MISMATCH,
    ),
}


@pytest.mark.parametrize("name", UPLOADS)
def test_upload_checks(name: str) -> None:
    call, reason = UPLOADS[name]
    if reason is None:
        assert call() == _ref()
        return
    with pytest.raises(VerificationError) as exc:
        call()
    assert exc.value.reason is reason


def test_reference_with_matching_size_wins() -> None:
    refs = [_ref(size=1), _ref()]
    assert check_reference(_sha(DATA), len(DATA), refs) == _ref()
