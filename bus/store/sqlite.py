"""The SQLite helpers every store of this project uses: one way to open a store (read-write in
WAL mode with its schema, or read-only), one transaction helper.

Every store (the node's, the final store, the attachments', the gateway's, the observer's
outbox, the auditor's index) opens through :func:`open_db` so that the same failure ends as the same
:class:`~bus.errors.StoreError`, and the same durability choice is written in one place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from bus.errors import StoreError

Synchronous = Literal["OFF", "NORMAL", "FULL"]


def open_db(
    path: Path | str,
    *,
    what: str,
    schema: str = "",
    read_only: bool = False,
    synchronous: Synchronous = "FULL",
    wal: bool = True,
    timeout_s: float = 30,
    threads: bool = False,
    cache_mib: int | None = None,
    page_size: int | None = None,
) -> sqlite3.Connection:
    """Open the SQLite database at ``path`` as an autocommit connection.

    Args:
        path: the database file (created unless ``read_only``).
        what: what the store is, for the error message ("store", "outbox", ...).
        schema: SQL script run once on a read-write open (``CREATE TABLE IF NOT EXISTS ...``).
        read_only: open an existing file for reading only (``mode=ro``; waits 10 s for locks).
        synchronous: ``PRAGMA synchronous``: FULL survives power loss; NORMAL in WAL mode
            survives process crashes (a store whose positions let it read again what a power
            loss took may choose it).
        wal: journal in WAL mode, so readers never block the writer.
        timeout_s: how long a write waits for another connection's transaction.
        threads: the connection may be used from another thread than the one that opened it
            (one at a time: ``asyncio.to_thread``).
        cache_mib: the connection's page cache (``PRAGMA cache_size``; None: SQLite's 2 MiB),
            an upper bound that fills only as pages are read.
        page_size: the page size of a database this call creates (``PRAGMA page_size``; None:
            SQLite's 4 KiB); an existing file keeps its own.

    Raises:
        StoreError: the file cannot be opened or the schema cannot be applied.
    """
    try:
        if read_only:
            return sqlite3.connect(
                f"file:{path}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=10,
                check_same_thread=not threads,
            )
        db = sqlite3.connect(
            str(path), isolation_level=None, timeout=timeout_s, check_same_thread=not threads
        )
        if page_size is not None:  # before WAL mode and the first table, else it is ignored
            db.execute(f"PRAGMA page_size={int(page_size)}")
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        if cache_mib is not None:
            db.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
        if schema:
            db.executescript(schema)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {what} {path}: {exc}", path=str(path)) from exc
    return db


@contextmanager
def sqlite_transaction(db: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction on an autocommit connection: all or nothing.

    Raises:
        StoreError: any SQLite failure (naming ``what``); the transaction is rolled back.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"{what} transaction failed: {exc}") from exc
