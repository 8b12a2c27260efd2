"""Report rows carry stored_at_ms; stores created before that column get it on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bus.ingest import Ingestor
from bus.store.node import NodeStore
from bus.verify import ChainBook
from tests.mission import make_mission, ref

# The reports table as the first release created it (no stored_at_ms).
_OLD_REPORTS = """
CREATE TABLE reports (
    report_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    observer_id TEXT NOT NULL, org TEXT NOT NULL, seq INTEGER NOT NULL,
    zone TEXT NOT NULL, category TEXT NOT NULL, severity INTEGER NOT NULL,
    observed_at_ms INTEGER NOT NULL, log_time_ms INTEGER NOT NULL,
    digest BLOB NOT NULL, key_id BLOB NOT NULL, envelope BLOB NOT NULL,
    UNIQUE (topic, partition, "offset"), UNIQUE (observer_id, seq)
);
"""


def _commit(store: NodeStore, n: int, stored_at_ms: int | None) -> None:
    m = make_mission()
    ing = Ingestor(m.keyring, ChainBook(store.chain_heads(), store.report_digest), clock=m.clock)
    outs = [ing.judge(ref(offset=i), m.next_report(), "un") for i in range(n)]
    store.commit_batch(
        outs, ing.chain.heads(), [], {("obus.reports.un", 0): n}, stored_at_ms=stored_at_ms
    )


def _stored_at(path: Path) -> list[int | None]:
    with sqlite3.connect(path) as con:
        return [r[0] for r in con.execute("SELECT stored_at_ms FROM reports ORDER BY rowid")]


def test_new_store_records_when_each_batch_was_stored(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    _commit(store, 3, 1_234)
    store.close()
    assert _stored_at(tmp_path / "n.db") == [1_234] * 3


def test_default_stored_at_is_now(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    _commit(store, 1, None)
    store.close()
    (value,) = _stored_at(tmp_path / "n.db")
    assert value is not None
    assert value > 1_700_000_000_000


def test_old_store_gets_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as con:
        con.executescript(_OLD_REPORTS)
        con.execute(
            "INSERT INTO reports VALUES ('r0', 't', 0, 0, 'o', 'un', 1, 'north', 'shelling', 3,"
            " 1, 2, x'00', x'00', x'00')"
        )
    store = NodeStore(path)
    _commit(store, 2, 99)
    store.close()
    assert _stored_at(path) == [None, 99, 99]
    NodeStore(path).close()  # opening again is a no-op
    assert _stored_at(path) == [None, 99, 99]
