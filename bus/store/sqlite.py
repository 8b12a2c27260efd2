"""The one SQLite transaction helper every store of this project uses."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from bus.errors import StoreError

if TYPE_CHECKING:
    pass


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
