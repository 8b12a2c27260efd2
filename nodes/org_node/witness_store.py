"""A witness's SQLite file: the leaf hashes of its Merkle trees, the positions of its
consumers, what it published, the attestations it saw, pending and rejected checkpoint records,
and its split-view alarms; and the read-only views of it that the dashboard, the API and the
demos show.

:class:`WitnessStore` is written by one :class:`~nodes.org_node.witness.Witness`, one
transaction per loop turn (:class:`Turn`); readers open the file read-only at any time
(:func:`witness_status`, :func:`split_view_alarms`, :func:`witness_fingerprint`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bus.errors import ConfigError
from bus.merkle import MerkleTree
from bus.store.sqlite import open_db, sqlite_transaction
from bus.witness import SplitViewAlarm

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    UNIQUE (topic, partition)
);
CREATE TABLE IF NOT EXISTS leaves (
    pid INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (pid, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS published (
    origin TEXT PRIMARY KEY, size INTEGER NOT NULL, at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attestations (
    "offset" INTEGER NOT NULL, origin TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL,
    org TEXT NOT NULL, kind TEXT NOT NULL, line BLOB NOT NULL,
    PRIMARY KEY ("offset", org, kind)
);
CREATE INDEX IF NOT EXISTS attestations_by_tree ON attestations (origin, size, root);
CREATE TABLE IF NOT EXISTS pending (
    "offset" INTEGER PRIMARY KEY, origin TEXT NOT NULL, size INTEGER NOT NULL,
    log_time_ms INTEGER NOT NULL, raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_by_origin ON pending (origin, size);
CREATE TABLE IF NOT EXISTS rejected (
    "offset" INTEGER PRIMARY KEY, reason TEXT NOT NULL, detail TEXT NOT NULL,
    log_time_ms INTEGER NOT NULL, raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, topic TEXT NOT NULL,
    partition INTEGER NOT NULL, size INTEGER NOT NULL, their_root BLOB NOT NULL,
    our_root BLOB NOT NULL, signed_by TEXT NOT NULL, "offset" INTEGER NOT NULL,
    detected_at_ms INTEGER NOT NULL, UNIQUE (origin, size, their_root, signed_by)
);
"""


@dataclass
class Turn:
    """What one loop turn will commit."""

    leaves: list[tuple[str, int, int, bytes]] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    published: dict[str, tuple[int, int]] = field(default_factory=dict)
    attestations: list[tuple[int, str, int, bytes, str, str, bytes]] = field(default_factory=list)
    pending_add: list[tuple[int, str, int, int, bytes]] = field(default_factory=list)
    pending_done: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str, str, int, bytes]] = field(default_factory=list)
    alarms: list[SplitViewAlarm] = field(default_factory=list)
    outgoing: list[tuple[str, bytes, str]] = field(default_factory=list)  # (origin, note, kind)


class WitnessStore:
    """The witness's SQLite file. One writer; readers may open it read-only at any time."""

    def __init__(self, path: Path) -> None:
        # NORMAL: a power loss may take the last turns; the witness reads them again from the
        # positions stored before them. Store calls run in a worker thread, one at a time.
        self._db = open_db(
            path,
            what="witness store",
            schema=_SCHEMA,
            synchronous="NORMAL",
            timeout_s=5,
            threads=True,
        )
        self._pids: dict[tuple[str, int], int] = {
            (t, p): i for i, t, p in self._db.execute("SELECT id, topic, partition FROM partitions")
        }

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def check_identity(self, org: str, mandate_id: str) -> None:
        """Bind the file to one organization and mandate; refuse to mix.

        Raises:
            ConfigError: the file belongs to another organization or mandate.
        """
        for key, value in (("org", org), ("mandate_id", mandate_id)):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
            elif row[0] != value:
                raise ConfigError(
                    "witness db", f"belongs to {key} {row[0]!r}, not {value!r}", "use its own file"
                )

    def trees(self) -> Iterator[tuple[str, int, list[bytes]]]:
        """(topic, partition, leaf hashes in order) of every partition with leaves."""
        for (topic, partition), pid in sorted(self._pids.items()):
            rows = self._db.execute("SELECT hash FROM leaves WHERE pid = ? ORDER BY idx", (pid,))
            yield topic, partition, [bytes(h) for (h,) in rows]

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset per (topic, partition), report topics and the checkpoints topic."""
        rows = self._db.execute("SELECT topic, partition, next_offset FROM positions")
        return {(t, p): o for t, p, o in rows}

    def published(self) -> dict[str, tuple[int, int]]:
        """origin -> (size, time) of the last checkpoint this witness published."""
        rows = self._db.execute("SELECT origin, size, at_ms FROM published")
        return {o: (s, t) for o, s, t in rows}

    def pending_upto(self, origin: str, size: int) -> list[tuple[int, int, bytes]]:
        """(offset, log time, raw) of pending checkpoint records of origin with size <= size."""
        rows = self._db.execute(
            'SELECT "offset", log_time_ms, raw FROM pending WHERE origin = ? AND size <= ?'
            ' ORDER BY "offset"',
            (origin, size),
        )
        return [(o, t, bytes(r)) for o, t, r in rows]

    def _pid(self, db: sqlite3.Connection, topic: str, partition: int) -> int:
        pid = self._pids.get((topic, partition))
        if pid is None:
            cur = db.execute(
                "INSERT INTO partitions (topic, partition) VALUES (?, ?)", (topic, partition)
            )
            pid = int(cur.lastrowid or 0)
            self._pids[(topic, partition)] = pid
        return pid

    def commit(self, turn: Turn) -> None:
        """Store one loop turn atomically.

        Raises:
            StoreError: nothing of the turn was stored.
        """
        pids_before = dict(self._pids)
        try:
            with sqlite_transaction(self._db, "witness store"):
                self._write(turn)
        except BaseException:
            self._pids = pids_before  # partitions added by the turn were not stored either
            raise

    def _write(self, turn: Turn) -> None:
        db = self._db
        db.executemany(
            "INSERT INTO leaves VALUES (?, ?, ?)",
            [(self._pid(db, t, p), i, h) for t, p, i, h in turn.leaves],
        )
        db.executemany(
            "INSERT INTO positions VALUES (?,?,?) ON CONFLICT(topic, partition) DO UPDATE"
            " SET next_offset = excluded.next_offset",
            [(t, p, o) for (t, p), o in turn.positions.items()],
        )
        db.executemany(
            "INSERT INTO published VALUES (?,?,?) ON CONFLICT(origin) DO UPDATE"
            " SET size = excluded.size, at_ms = excluded.at_ms",
            [(o, s, t) for o, (s, t) in turn.published.items()],
        )
        db.executemany(
            "INSERT OR IGNORE INTO attestations VALUES (?,?,?,?,?,?,?)", turn.attestations
        )
        db.executemany("INSERT OR IGNORE INTO pending VALUES (?,?,?,?,?)", turn.pending_add)
        db.executemany('DELETE FROM pending WHERE "offset" = ?', [(o,) for o in turn.pending_done])
        db.executemany("INSERT OR IGNORE INTO rejected VALUES (?,?,?,?,?)", turn.rejected)
        db.executemany(
            "INSERT OR IGNORE INTO alarms (origin, topic, partition, size, their_root, our_root,"
            ' signed_by, "offset", detected_at_ms) VALUES (?,?,?,?,?,?,?,?,?)',
            [
                (a.origin, a.topic, a.partition, a.size, a.their_root, a.our_root,
                 ",".join(a.signed_by), a.offset, a.detected_at_ms)
                for a in turn.alarms
            ],
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Read side: what the dashboard and the API show.


def _read_only(db_path: Path) -> sqlite3.Connection:
    return open_db(db_path, what="witness store", read_only=True)


def split_view_alarms(db_path: Path) -> list[dict[str, Any]]:
    """Every split-view alarm a witness raised, oldest first (JSON-ready dicts).

    Keys: origin, topic, partition, size, their_root, our_root (hex), signed_by (list of
    organizations whose signature the contradicting checkpoint carried), offset (on the
    checkpoints topic), detected_at_ms.
    """
    if not db_path.exists():
        return []
    with contextlib.closing(_read_only(db_path)) as db:
        rows = db.execute(
            'SELECT origin, topic, partition, size, their_root, our_root, signed_by, "offset",'
            " detected_at_ms FROM alarms ORDER BY id"
        ).fetchall()
    return [
        SplitViewAlarm(o, t, p, s, bytes(tr), bytes(orr), tuple(sb.split(",")), off, at).to_json()
        for o, t, p, s, tr, orr, sb, off, at in rows
    ]


def witness_status(db_path: Path, threshold: int) -> dict[str, Any]:
    """Per partition: own tree size and root, last published size, and the largest checkpoint
    signed or cosigned by at least ``threshold`` organizations; plus pending, rejected and
    alarm counts. JSON-ready.
    """
    if not db_path.exists():
        return {"partitions": [], "pending": 0, "rejected": 0, "alarms": []}
    with contextlib.closing(_read_only(db_path)) as db:
        sizes = {
            (t, p): n
            for t, p, n in db.execute(
                "SELECT topic, partition, count(*) FROM leaves JOIN partitions ON pid = id"
                " GROUP BY topic, partition"
            )
        }
        published = dict(db.execute("SELECT origin, size FROM published"))
        quorum: dict[str, tuple[int, bytes, list[str]]] = {}
        for origin, size, root, orgs in db.execute(
            "SELECT origin, size, root, group_concat(DISTINCT org) FROM attestations"
            " GROUP BY origin, size, root HAVING count(DISTINCT org) >= ? ORDER BY size",
            (threshold,),
        ):
            quorum[origin] = (size, bytes(root), sorted(orgs.split(",")))
        pending = db.execute("SELECT count(*) FROM pending").fetchone()[0]
        rejected = db.execute("SELECT count(*) FROM rejected").fetchone()[0]
        mandate = db.execute("SELECT value FROM meta WHERE key = 'mandate_id'").fetchone()
    mandate_id = mandate[0] if mandate else ""
    parts = []
    for (topic, partition), n in sorted(sizes.items()):
        origin = f"obus/{mandate_id}/{topic}/{partition}"
        q = quorum.get(origin)
        parts.append(
            {
                "origin": origin,
                "topic": topic,
                "partition": partition,
                "size": n,
                "published_size": published.get(origin, 0),
                "quorum_size": q[0] if q else 0,
                "quorum_root": base64.b64encode(q[1]).decode() if q else None,
                "quorum_orgs": q[2] if q else [],
            }
        )
    return {
        "partitions": parts,
        "pending": pending,
        "rejected": rejected,
        "alarms": split_view_alarms(db_path),
    }


def default_witness_db(node_db: Path) -> Path:
    """The witness's own SQLite file next to the node's: ``<node db stem>.witness.db``."""
    return node_db.with_name(node_db.stem + ".witness.db")


def witness_fingerprint(db_path: Path) -> str:
    """A short digest of every partition's (topic, partition, size, root), for comparisons."""
    h = hashlib.sha256()
    with contextlib.closing(_read_only(db_path)) as db:
        parts = db.execute("SELECT id, topic, partition FROM partitions ORDER BY topic, partition")
        for pid, topic, partition in parts.fetchall():
            tree = MerkleTree(store_leaves=False)
            for (leaf,) in db.execute("SELECT hash FROM leaves WHERE pid = ? ORDER BY idx", (pid,)):
                tree.append_leaf_hash(bytes(leaf))
            h.update(f"{topic}/{partition}/{tree.size}/".encode() + tree.root())
    return h.hexdigest()[:16]
