"""A node's attachment store (SQLite and files, no broker): chunks in, verdicts and files out.

The node's own store holds the accepted reports whose references the attachment store reads,
exactly as beside a running node. Waiting times are driven by explicit ``now_ms`` values.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bus.attachment import AttachmentLimits, Chunk, split
from bus.errors import Reason
from bus.ingest import Ingestor
from bus.model import Attachment
from bus.store.node import NodeStore
from bus.verify import ChainBook
from nodes.org_node.attachment_store import (
    PARTIAL,
    QUARANTINED,
    VERIFIED,
    AttachmentStore,
    ChunkRecord,
)
from tests.mission import Mission, make_mission, ref

DATA = bytes(range(256)) * 100  # 25,600 bytes
CS = 4096  # 7 chunks
TOPIC = "obus.attachments.un"
HOUR = 3_600_000


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class World:
    def __init__(self, tmp: Path, **limits: int) -> None:
        self.m: Mission = make_mission()
        self.node_db = tmp / "node.db"
        self.node = NodeStore(self.node_db)
        self.store = AttachmentStore(
            tmp / "node.attachments.db", tmp / "blobs", self.node_db,
            AttachmentLimits(unreferenced_ttl_ms=HOUR, incomplete_ttl_ms=HOUR, **limits),
        )  # fmt: skip
        self.offset = 0
        self.report_offset = 0

    def accept_report(self, *attachments: Attachment) -> None:
        chain = ChainBook(self.node.chain_heads(), self.node.report_digest)
        ing = Ingestor(self.m.keyring, chain, clock=self.m.clock)
        out = ing.judge(
            ref(offset=self.report_offset), self.m.next_report(attachments=attachments), "un"
        )
        self.report_offset += 1
        self.node.commit_batch([out], ing.chain.heads(), [], {("obus.reports.un", 0): 1})

    def records(self, raws: list[bytes]) -> list[ChunkRecord]:
        out = []
        for raw in raws:
            out.append(ChunkRecord(TOPIC, 0, self.offset, raw))
            self.offset += 1
        return out

    def feed(self, raws: list[bytes], now_ms: int = 0) -> dict[str, int]:
        touched = self.store.ingest(self.records(raws), now_ms=now_ms)
        self.store.refresh_refs()
        out: dict[str, int] = {}
        for lay in touched:
            state = self.store.settle(lay, now_ms=now_ms)
            out[state] = out.get(state, 0) + 1
        return out

    def reasons(self) -> list[str]:
        return [q.reason for q in self.store.quarantine_rows()]


def _ref(data: bytes = DATA, size: int | None = None) -> Attachment:
    return Attachment(_sha(data), len(data) if size is None else size, "image/jpeg", "crater.jpg")


def _records(data: bytes = DATA) -> list[bytes]:
    return [c.encode() for c in split(data, chunk_size=CS)]


def test_referenced_attachment_is_stored_content_addressed(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.accept_report(_ref())
    raws = _records()
    assert w.feed(raws[::2]) == {PARTIAL: 1}
    assert w.feed(raws[1::2]) == {"stored": 1}
    item = w.store.stored(_sha(DATA))
    assert item is not None
    assert item.path == tmp_path / "blobs" / _sha(DATA).hex()[:2] / _sha(DATA).hex()
    assert item.path.read_bytes() == DATA and w.store.verify_file(item)
    assert (item.media_type, item.name, item.size) == ("image/jpeg", "crater.jpg", len(DATA))
    assert w.store.open_assemblies() == []
    assert w.store.positions() == {(TOPIC, 0): len(raws)}
    # a re-publication of the same chunks changes nothing and is not quarantined
    assert w.feed(raws) == {}
    assert w.reasons() == []


def test_chunks_before_their_report_wait_then_are_stored(tmp_path: Path) -> None:
    w = World(tmp_path)
    assert w.feed(_records()) == {VERIFIED: 1}
    w.accept_report(_ref())
    w.store.refresh_refs()
    assert w.store.sweep(now_ms=10) == {"stored": 1}
    assert w.reasons() == []


def test_unreferenced_is_quarantined_after_the_wait_and_kept(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.feed(_records(), now_ms=0)
    assert w.store.sweep(now_ms=HOUR - 1) == {VERIFIED: 1}
    assert w.store.sweep(now_ms=HOUR) == {QUARANTINED: 1}
    assert w.store.sweep(now_ms=HOUR + 1) == {QUARANTINED: 1}
    assert w.reasons() == [Reason.ATTACHMENT_UNREFERENCED.value]  # one event, not one a sweep
    # kept: a referencing report arriving even later still brings it in
    w.accept_report(_ref())
    w.store.refresh_refs()
    assert w.store.sweep(now_ms=2 * HOUR) == {"stored": 1}


def test_incomplete_is_quarantined_after_the_wait_then_completed(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.accept_report(_ref())
    raws = _records()
    w.feed(raws[:-1], now_ms=0)
    assert w.store.sweep(now_ms=HOUR) == {QUARANTINED: 1}
    (q,) = w.store.quarantine_rows()
    assert q.reason == Reason.ATTACHMENT_INCOMPLETE.value and "1 of 7" in q.detail
    assert w.feed(raws[-1:], now_ms=HOUR + 1) == {"stored": 1}


def test_tampered_chunk_is_a_hash_mismatch_until_the_genuine_one_comes(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.accept_report(_ref())
    chunks = split(DATA, chunk_size=CS)
    bad = Chunk(chunks[3].layout, 3, b"\x00" * len(chunks[3].data)).encode()
    raws = [c.encode() for c in chunks]
    assert w.feed([*raws[:3], bad, *raws[4:]]) == {QUARANTINED: 1}
    assert w.reasons() == [Reason.ATTACHMENT_HASH_MISMATCH.value]
    assert w.feed(raws[3:4]) == {"stored": 1}
    # a tampered chunk of the stored attachment: quarantined with its raw bytes, nothing changes
    assert w.feed([bad]) == {}
    last = w.store.quarantine_rows()[-1]
    assert last.reason == Reason.ATTACHMENT_HASH_MISMATCH.value
    assert (last.topic, last.offset) == (TOPIC, w.offset - 1)
    item = w.store.stored(_sha(DATA))
    assert item is not None and w.store.verify_file(item)


def test_size_other_than_the_report_says(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.accept_report(_ref(size=len(DATA) + 1))
    assert w.feed(_records()) == {QUARANTINED: 1}
    assert w.reasons() == [Reason.ATTACHMENT_SIZE_MISMATCH.value]


def test_bad_records_and_oversized_are_quarantined_with_raw_bytes(tmp_path: Path) -> None:
    w = World(tmp_path, max_bytes=len(DATA) - 1)
    assert w.feed([b"junk", _records()[0]]) == {}
    assert w.reasons() == [Reason.MALFORMED.value, Reason.OVERSIZED.value]
    assert w.store.quarantine_rows()[1].sha256 == _sha(DATA)
    assert w.store.positions() == {(TOPIC, 0): 2}


def test_restart_resumes_and_settles_what_a_crash_left(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.accept_report(_ref())
    raws = _records()
    # every chunk stored, but the process died before settling
    w.store.ingest(w.records(raws), now_ms=0)
    w.store.close()
    again = AttachmentStore(tmp_path / "node.attachments.db", tmp_path / "blobs", w.node_db)
    assert again.positions() == {(TOPIC, 0): len(raws)}
    again.refresh_refs()
    assert again.sweep(now_ms=1) == {"stored": 1}
    assert again.stored(_sha(DATA)) is not None


@pytest.mark.parametrize("size", [0, 1, CS, CS + 1])
def test_edge_sizes(tmp_path: Path, size: int) -> None:
    w = World(tmp_path)
    data = DATA[:size]
    w.accept_report(_ref(data))
    assert w.feed(_records(data)) == {"stored": 1}
