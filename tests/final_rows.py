"""Reading a sealer's final store from a test while the sealer runs.

A report whose key is accredited in the same epoch is stored ``deferred`` at that epoch and
settled by the next epoch's answer (:mod:`bus.store.final`). Whether the registry and the
reports of a test fall in one epoch or two depends on the broker's timing, so a test that
waits "until every record has a final verdict" must wait for *settled* verdicts: counting a
``deferred`` row as final made such tests pass or fail by timing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bus.store.final import FinalStore

Pos = tuple[str, int, int]


def settled_verdicts(db: Path, positions: Iterable[Pos]) -> dict[Pos, tuple[str, str]]:
    """(status, reason) of the settled final verdicts the final store ``db`` holds on
    ``positions``: rows of judged epochs that are not ``deferred``; empty while the store does
    not exist yet."""
    if not db.exists():
        return {}
    store = FinalStore(db, read_only=True)
    try:
        rows = {pos: store.verdict(*pos) for pos in positions}
    finally:
        store.close()
    return {
        pos: (r["status"], r["reason"])
        for pos, r in rows.items()
        if r is not None and r["status"] != "deferred"
    }


def last_epoch(db: Path) -> int:
    """The last epoch the final store ``db`` holds (0 while it holds none or does not exist)."""
    if not db.exists():
        return 0
    store = FinalStore(db, read_only=True)
    try:
        last = store.last_epoch()
    finally:
        store.close()
    return 0 if last is None else last[0]
