"""Bounded cost per hostile record: quarantine rows keep at most the record limit (a 4 KiB
prefix beyond it) with the record's size and SHA-256, and each topic keeps at most its quota of
rejected bytes, past which rows keep no bytes, are counted, and the topic is alarmed once."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from bus.errors import ConfigError, Reason
from bus.ingest import QUARANTINE_PREFIX_BYTES, Ingestor, Quarantined, RecordRef
from bus.store.node import NodeStore
from bus.store.quarantine import MAX_DETAIL_CHARS, MAX_KEY_BYTES
from bus.verify import ChainBook, Limits
from nodes.org_node.attachment_store import RECORD_LIMIT_BYTES, AttachmentStore, ChunkRecord
from nodes.org_node.config import NodeConfig
from tests.logcapture import capture_all_logs
from tests.mission import make_mission, ref

UN = "obus.reports.un"
OSCE = "obus.reports.osce"
LIMIT = Limits().max_record_bytes


def _big(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


def _q(topic: str, offset: int, value: bytes, key: bytes | None = None) -> Quarantined:
    """An outcome built the way callers outside the Ingestor build it: around the whole value."""
    return Quarantined(RecordRef(topic, 0, offset, 1, key), "malformed", "not an envelope", value)


def _alarms(logs: list) -> list[str]:  # type: ignore[type-arg]
    return [e["topic"] for e in logs if e["event"] == "quarantine_quota_exceeded"]


def test_oversized_value_is_judged_on_its_length_and_keeps_size_sha256_and_prefix() -> None:
    m = make_mission()
    digests: dict[str, bytes] = {}
    ing = Ingestor(m.keyring, ChainBook({}, digests.get), clock=m.clock)
    value = bytes(5 * 1024 * 1024)  # 5 MiB of zeros, as a decompressed gzip bomb hands it over
    out = ing.judge(ref(UN, 0), value, "un")
    assert isinstance(out, Quarantined)
    assert out.reason == Reason.OVERSIZED.value
    assert out.detail == f"{len(value)} bytes > limit {LIMIT}"
    assert out.raw == value[:QUARANTINE_PREFIX_BYTES] and len(out.raw) == 4096
    assert out.size == out.value_size == len(value)
    assert out.sha256 == out.value_sha256 == hashlib.sha256(value).digest()
    # The next genuine report is judged as usual.
    assert not isinstance(ing.judge(ref(UN, 1), m.next_report(), "un"), Quarantined)


def test_store_keeps_a_bounded_row_for_a_big_value(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    big = _big(8 * 1024 * 1024)  # whole, as a caller outside the Ingestor may hand it over
    judged = Quarantined.bounded(ref(UN, 1), Reason.OVERSIZED, "too big", big, LIMIT)
    store.commit_batch([_q(UN, 0, big), judged], {}, [], {(UN, 0): 2})
    rows = store.quarantine_records()
    assert [(r.offset, r.size, r.sha256) for r in rows] == [
        (0, len(big), hashlib.sha256(big).digest()),
        (1, len(big), hashlib.sha256(big).digest()),
    ]
    assert all(r.raw == big[:QUARANTINE_PREFIX_BYTES] and not r.over_quota for r in rows)
    detail = store.quarantine_detail()[0]
    assert (detail["size"], detail["kept"], detail["sha256"]) == (
        len(big),
        QUARANTINE_PREFIX_BYTES,
        hashlib.sha256(big).hexdigest(),
    )
    store.close()
    size = sum(p.stat().st_size for p in tmp_path.glob("n.db*"))
    assert size < 1024 * 1024, f"store is {size} bytes after two 8 MiB records"


def test_rejected_record_within_the_limit_is_kept_whole_and_key_and_detail_are_cut(
    tmp_path: Path,
) -> None:
    store = NodeStore(tmp_path / "n.db")
    value = _big(LIMIT)  # exactly the limit: kept whole
    q = Quarantined(RecordRef(UN, 0, 0, 1, b"k" * 100_000), "bad_signature", "d" * 100_000, value)
    store.commit_batch([q], {}, [], {(UN, 0): 1})
    (row,) = store.quarantine_records()
    assert row.raw == value and row.size == LIMIT
    assert len(row.detail) == MAX_DETAIL_CHARS
    (shown,) = store.quarantine_detail()
    assert len(bytes.fromhex(shown["record_key"])) == MAX_KEY_BYTES


def test_quota_reached_rows_keep_no_bytes_are_counted_and_alarm_once(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db", quarantine_quota_bytes=10_000)
    four = _big(4000)
    with capture_all_logs() as logs:
        first = store.commit_batch(
            [_q(UN, i, four) for i in range(3)] + [_q(OSCE, 0, four)],
            {},
            [],
            {(UN, 0): 3, (OSCE, 0): 1},
        )
        second = store.commit_batch([_q(UN, 3, b"x")], {}, [], {(UN, 0): 4})
    # Two rows fit in 10,000 bytes; the third takes the topic past its quota.
    assert first.exceeded == (UN,) and first.unkept == {(UN, 0, 2)}
    assert second.exceeded == () and second.unkept == {(UN, 0, 3)}
    assert _alarms(logs) == [UN]  # once, though two batches went past it
    rows = {(r.topic, r.offset): r for r in store.quarantine_records()}
    assert [rows[(UN, i)].raw == four for i in range(2)] == [True, True]
    for i, value in ((2, four), (3, b"x")):  # counted, with size, digest and position
        r = rows[(UN, i)]
        assert (r.raw, r.over_quota, r.size) == (b"", True, len(value))
        assert r.sha256 == hashlib.sha256(value).digest()
    assert rows[(OSCE, 0)].raw == four  # another topic's quota is its own
    usage = store.quarantine_usage()
    assert (usage[UN].rows, usage[UN].kept_bytes, usage[UN].over_quota_rows) == (4, 8000, 2)
    assert usage[UN].exceeded and not usage[OSCE].exceeded
    assert store.positions() == {(UN, 0): 4, (OSCE, 0): 1}  # nothing lost: the node advances
    store.close()

    with capture_all_logs() as logs:  # the same quota again: still past it, no new alarm
        store = NodeStore(tmp_path / "n.db", quarantine_quota_bytes=10_000)
        store.commit_batch([_q(UN, 4, b"y")], {}, [], {(UN, 0): 5})
        store.close()
    assert _alarms(logs) == [] and not [e for e in logs if "restored" in e["event"]]

    with capture_all_logs() as logs:  # a raised quota: bytes are kept again
        store = NodeStore(tmp_path / "n.db", quarantine_quota_bytes=1_000_000)
        charge = store.commit_batch([_q(UN, 5, four)], {}, [], {(UN, 0): 6})
    assert [e["topic"] for e in logs if e["event"] == "quarantine_quota_restored"] == [UN]
    assert charge.unkept == frozenset()
    assert store.quarantine_records()[-1].raw == four
    assert not store.quarantine_usage()[UN].exceeded


def test_board_rejected_rows_are_bounded_and_charged_once(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db", quarantine_quota_bytes=5000)
    big = _big(3 * 1024 * 1024)
    topic = "obus.decisions.un"
    rejected = [_q(topic, 0, big), _q(topic, 1, big)]
    store.commit_board([], [], rejected, {(topic, 0): 2})
    store.commit_board([], [], rejected, {(topic, 0): 2})  # read again after a restart
    rows = store.quarantine_records(board=True)
    assert [(r.offset, len(r.raw), r.size, r.over_quota) for r in rows] == [
        (0, QUARANTINE_PREFIX_BYTES, len(big), False),
        (1, 0, len(big), True),
    ]
    assert store.board_rejected() == [(topic, 0, 0, "malformed", "not an envelope"),
                                      (topic, 0, 1, "malformed", "not an envelope")]  # fmt: skip
    usage = store.quarantine_usage()[topic]
    assert (usage.rows, usage.kept_bytes, usage.over_quota_rows) == (2, 4096, 1)


def test_existing_store_rows_get_size_and_sha256_and_are_bounded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    big, small = bytes(3 * 1024 * 1024), b"junk"
    con = sqlite3.connect(db)  # the quarantine table as stores before the bounds made it
    con.executescript(
        "CREATE TABLE quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
        ' partition INTEGER NOT NULL, "offset" INTEGER NOT NULL, reason TEXT NOT NULL,'
        " detail TEXT NOT NULL, log_time_ms INTEGER NOT NULL, record_key BLOB,"
        ' raw BLOB NOT NULL, UNIQUE (topic, partition, "offset"));'
        "CREATE TABLE board_rejected (topic TEXT NOT NULL, partition INTEGER NOT NULL,"
        ' "offset" INTEGER NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,'
        ' log_time_ms INTEGER NOT NULL, raw BLOB NOT NULL, PRIMARY KEY (topic, partition, "offset"));'
    )
    con.executemany(
        'INSERT INTO quarantine (topic, partition, "offset", reason, detail, log_time_ms,'
        " record_key, raw) VALUES (?,?,?,?,?,?,?,?)",
        [
            (UN, 0, 0, "oversized", "big", 1, b"k", big),
            (UN, 0, 1, "malformed", "x", 2, None, small),
        ],
    )
    con.commit()
    con.close()

    reader = NodeStore(db, read_only=True)  # a reader before the node migrated it
    assert [r.size for r in reader.quarantine_records()] == [len(big), len(small)]
    assert reader.quarantine_detail()[0]["kept"] == len(small)
    reader.close()

    store = NodeStore(db, quarantine_quota_bytes=100)
    rows = store.quarantine_records()
    assert [(r.size, r.sha256, r.raw) for r in rows] == [
        (len(big), hashlib.sha256(big).digest(), big[:QUARANTINE_PREFIX_BYTES]),
        (len(small), hashlib.sha256(small).digest(), small),
    ]
    assert store.quarantine_rows() == [(UN, 0, 0, "oversized", "big"), (UN, 0, 1, "malformed", "x")]
    usage = store.quarantine_usage()[UN]  # counted from the old rows, past this small quota
    assert (usage.rows, usage.kept_bytes, usage.exceeded) == (2, 4096 + 1 + 4, True)


def test_attachment_store_quarantine_is_bounded_too(tmp_path: Path) -> None:
    store = AttachmentStore(
        tmp_path / "a.db", tmp_path / "blobs", None, quarantine_quota_bytes=6000
    )
    topic = "obus.attachments.un"
    big = _big(RECORD_LIMIT_BYTES + 1)
    store.ingest(
        [ChunkRecord(topic, 0, 0, big), ChunkRecord(topic, 0, 1, b"\xff" * 3000),
         ChunkRecord(topic, 0, 2, b"\xff" * 10)]
    )  # fmt: skip
    con = sqlite3.connect(tmp_path / "a.db")
    rows = con.execute(
        'SELECT "offset", reason, length(raw), record_size, record_sha256, over_quota'
        ' FROM quarantine ORDER BY "offset"'
    ).fetchall()
    assert rows[0] == (0, "oversized", 4096, len(big), hashlib.sha256(big).digest(), 0)
    # 4,096 bytes kept leave 1,904 of the quota: the next record takes the topic past it.
    assert [(r[2], r[3], r[5]) for r in rows[1:]] == [(0, 3000, 1), (0, 10, 1)]
    assert [q.offset for q in store.quarantine_rows()] == [0, 1, 2]


def test_other_writers_use_the_bounds_the_node_opened_the_store_with(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    node = NodeStore(db, max_record_bytes=2048, quarantine_quota_bytes=3000)
    node.commit_batch([_q(UN, 0, _big(2000)), _q(UN, 1, _big(2000))], {}, [], {(UN, 0): 2})
    topic = "obus.statements"
    with capture_all_logs() as logs:  # the follow-up opens it without bounds of its own
        followup = NodeStore(db)
        followup.commit_board([], [], [_q(topic, 0, _big(4000)), _q(topic, 1, _big(1000))], {})
    # The node's topic stays past the node's quota (no "restored" from the second opener); the
    # board's rows are cut at the node's limit and charged against the node's quota.
    assert [e["event"] for e in logs if e["event"].startswith("quarantine_quota_")] == [
        "quarantine_quota_exceeded"
    ]
    assert _alarms(logs) == [topic]
    u = followup.quarantine_usage()
    assert (u[UN].exceeded, u[UN].kept_bytes) == (True, 2000)
    board = followup.quarantine_records(board=True)
    assert [(len(r.raw), r.size, r.over_quota) for r in board] == [
        (2048, 4000, False),
        (0, 1000, True),
    ]


def test_a_negative_quarantine_quota_is_refused(tmp_path: Path) -> None:
    m = make_mission()
    with pytest.raises(ConfigError, match="quarantine_quota_bytes"):
        NodeConfig(
            org="un",
            bootstrap="localhost:9092",
            db_path=tmp_path / "n.db",
            mandate=m.scenario.mandate,
            quarantine_quota_bytes=-1,
        )
