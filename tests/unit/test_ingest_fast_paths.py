"""The node ingest's cheaper per-record paths give exactly what the plain ones give.

Each shortcut taken for speed (bench/README.md, "Node ingest per CPU-second") is compared here
with the code it stands for: the report-id filter's written-out bit positions with
``IdFilter._positions``, the straight-line constructors with the classes' own ``__init__``, the
chain book's inline link check with :func:`bus.verify.check_link`; and the collector settings
of :func:`nodes.org_node.ingest.ingest_collections` are undone when the last node stops.
"""

from __future__ import annotations

import dataclasses
import gc
import sqlite3
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import VerificationError
from bus.idfilter import IdFilter
from bus.ingest import Accepted, RecordRef, _new_accepted, record_ref
from bus.store.node import STORE_CACHE_MIB, STORE_PAGE_SIZE, NodeStore
from bus.verify import (
    ChainBook,
    ChainHead,
    VerifiedReport,
    _new_head,
    _new_verified,
    check_link,
)
from nodes.org_node.ingest import GC_GEN0, ingest_collections


def _bits_of(f: IdFilter, ids: list[str]) -> set[int]:
    return {p for i in ids for p in f._positions(i)}


def _set_bits(f: IdFilter) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(f._bits) for b in range(8) if byte >> b & 1}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), max_size=200), st.data())
def test_filter_sets_and_tests_exactly_the_positions_of_each_id(
    ids: list[str], data: st.DataObject
) -> None:
    f = IdFilter(lambda _rid: None, list)
    split = data.draw(st.integers(0, len(ids)))
    for i in ids[:split]:
        f.add(i)
    f.add_many(ids[split:])
    assert _set_bits(f) == _bits_of(f, ids)
    assert f._count == len(ids)
    probes = ids + data.draw(st.lists(st.text(max_size=40), max_size=200))
    for p in probes:
        want = all(f._bits[q >> 3] & (1 << (q & 7)) for q in f._positions(p))
        assert f.might_contain(p) is want
        assert f.might_contain(p) or p not in ids  # never a false negative


def test_add_many_grows_past_its_capacity_like_add() -> None:
    stored: list[str] = []
    one, many = IdFilter(lambda _r: None, lambda: stored), IdFilter(lambda _r: None, lambda: stored)
    ids = [str(uuid.uuid4()) for _ in range(70_000)]  # past the first capacity (65,536)
    for i in ids:
        stored.append(i)
        one.add(i)
    many.add_many(ids)  # ids already "stored" when it rebuilds, as after a commit
    assert one._capacity == many._capacity > 65_536
    assert all(many.might_contain(i) for i in ids)


def test_straight_line_constructors_build_the_same_objects() -> None:
    ref = record_ref("t", 1, 2, 3, b"k")
    assert ref == RecordRef("t", 1, 2, 3, b"k")
    assert hash(ref) == hash(RecordRef("t", 1, 2, 3, b"k"))
    assert record_ref("t", 1, 2, 3, None) == RecordRef("t", 1, 2, 3)
    head = _new_head(4, b"d")
    assert head == ChainHead(4, b"d")
    vr = _new_verified(None, b"d", b"k")  # type: ignore[arg-type]
    assert vr == VerifiedReport(None, b"d", b"k")  # type: ignore[arg-type]
    acc = _new_accepted(ref, vr, b"raw")
    assert acc == Accepted(ref, vr, b"raw")
    for obj, name in ((ref, "offset"), (head, "seq"), (vr, "key_id"), (acc, "raw")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 9)


@dataclasses.dataclass(frozen=True)
class _Link:
    report_id: str
    observer_id: str
    seq: int
    prev_digest: bytes


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.builds(ChainHead, st.integers(1, 4), st.sampled_from([b"a", b"b"]))),
    st.integers(0, 6),
    st.sampled_from([b"a", b"b", b""]),
)
def test_chain_book_links_exactly_as_check_link(
    head: ChainHead | None, seq: int, prev: bytes
) -> None:
    book = ChainBook({} if head is None else {"o": head}, lambda _rid: None)
    try:
        check_link("observer o", head, seq, prev)
        want: tuple[str, str, dict[str, object]] | None = None
    except VerificationError as exc:
        want = (exc.reason, exc.message, dict(exc.context))
    try:
        book.accept_link(_Link("r1", "o", seq, prev), b"digest")
        got: tuple[str, str, dict[str, object]] | None = None
    except VerificationError as exc:
        got = (exc.reason, exc.message, dict(exc.context))
    assert got == want
    if want is None:
        assert book.head("o") == ChainHead(seq, b"digest")
    else:
        assert book.head("o") == head
    assert book.bases() == {"o": head}  # the verdict rested on that head either way


def test_collections_are_tuned_while_any_node_ingests_then_restored() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with ingest_collections():
        assert gc.get_threshold()[0] == max(before[0], GC_GEN0)
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() >= frozen
        with ingest_collections():  # a second node in the same process
            pass
        assert gc.get_threshold()[0] == max(before[0], GC_GEN0)  # the first still runs
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_collections_restored_when_the_loop_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), ingest_collections():
        raise RuntimeError("the store failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_store_connections_get_the_larger_page_cache(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "node.db")
    try:
        size = store._db.execute("PRAGMA cache_size").fetchone()[0]
        assert size == -STORE_CACHE_MIB * 1024
    finally:
        store.close()
    # A fresh connection (another program) gets SQLite's default: nothing is stored in the file.
    with sqlite3.connect(tmp_path / "node.db") as con:
        assert con.execute("PRAGMA cache_size").fetchone()[0] != -STORE_CACHE_MIB * 1024


def test_new_stores_get_larger_pages_and_older_stores_keep_theirs(tmp_path: Path) -> None:
    NodeStore(tmp_path / "new.db").close()
    with sqlite3.connect(tmp_path / "new.db") as con:
        assert con.execute("PRAGMA page_size").fetchone()[0] == STORE_PAGE_SIZE
    # A store created with SQLite's default page size (as before) opens and keeps it.
    with sqlite3.connect(tmp_path / "old.db") as con:
        con.execute("PRAGMA page_size=4096")
        con.execute("CREATE TABLE marker (x INTEGER)")
    store = NodeStore(tmp_path / "old.db")
    try:
        assert store.count_reports() == 0
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "old.db") as con:
        assert con.execute("PRAGMA page_size").fetchone()[0] == 4096
