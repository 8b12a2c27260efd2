"""The node store: one transaction per batch, unique positions, resumable state."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import StoreError
from bus.ingest import Accepted, Ingestor, Quarantined
from bus.store.node import NodeStore
from bus.verify import ChainBook
from tests.mission import make_mission, ref


def _batch(store: NodeStore, start: int, n: int):  # type: ignore[no-untyped-def]
    m = _batch.mission  # type: ignore[attr-defined]
    ing = Ingestor(m.keyring, ChainBook(store.chain_heads(), store.report_digest), clock=m.clock)
    outs = [ing.judge(ref(offset=start + i), m.next_report(), "un") for i in range(n)]
    outs.append(ing.judge(ref(offset=start + n), b"junk", "un"))
    return outs, ing.chain.heads()


def test_commit_batch_and_read_back(tmp_path: Path) -> None:
    _batch.mission = make_mission()  # type: ignore[attr-defined]
    store = NodeStore(tmp_path / "n.db")
    outs, heads = _batch(store, 0, 4)
    store.commit_batch(outs, heads, [], {("obus.reports.un", 0): 5})
    assert store.count_reports() == 4
    assert [r[3] for r in store.quarantine_rows()] == ["malformed"]
    assert store.positions() == {("obus.reports.un", 0): 5}
    assert store.chain_heads()["un-obs-1"].seq == 4
    assert len(list(store.envelopes())) == 4


def test_failed_batch_stores_nothing(tmp_path: Path) -> None:
    _batch.mission = make_mission()  # type: ignore[attr-defined]
    store = NodeStore(tmp_path / "n.db")
    outs, heads = _batch(store, 0, 2)
    store.commit_batch(outs, heads, [], {("obus.reports.un", 0): 3})
    dup = [o for o in outs if isinstance(o, Accepted)][:1]  # same report id again
    more, heads2 = _batch(store, 3, 2)
    with pytest.raises(StoreError):
        store.commit_batch([*more, *dup], heads2, [], {("obus.reports.un", 0): 99})
    assert store.count_reports() == 2
    assert store.positions() == {("obus.reports.un", 0): 3}
    assert store.chain_heads()["un-obs-1"].seq == 2


def test_read_only_database_raises_store_error(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    NodeStore(db).close()
    store = NodeStore(db, read_only=True)
    with pytest.raises(StoreError):
        store.commit_batch([Quarantined(ref(), "malformed", "x", b"x")], {}, [], {})
