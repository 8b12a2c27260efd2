"""The final store: what a node's sealer derived from the sealed bus (final seals, final
verdicts, chain heads, equivocation evidence), and what it needs to continue after a restart
(its reader's snapshot, its own organization's votes, one per round of an epoch).

Written by one :class:`~nodes.org_node.sealer.Sealer`, one transaction per batch of judged
epochs; read by the dashboard, the API and ``obus node final-state`` through a read-only
connection at any time.

**Same at every honest node.** The tables ``seals``, ``verdicts``, ``changes``, ``heads``
(observers' chains), ``decision_heads`` (organizations' decision chains), ``equivocations`` and
``amendments`` hold only what :class:`~bus.bus_reader.BusReader` derives from the sealed log,
so two nodes (or a node and an auditor) that judged the same epochs hold the same rows,
whatever order they read the log in and however often they restarted: :meth:`FinalStore.dump`
writes
them in one canonical byte form and :meth:`FinalStore.fingerprint` hashes it. ``seal_votes``,
``judged_at`` (when this node stored each epoch: for latency figures), ``snapshot`` and
``meta`` are this node's own and are not in the dump, nor is ``seal_alarms`` (fork evidence,
and a seal 1 whose carried trust differs from its registry: :class:`bus.seal.SealAlarm`),
which a node may find or miss depending on when it restarted.

A report deferred at its own epoch (its key accredited in the same epoch) is stored ``deferred``
and updated once, by the next epoch's answer: rows keep the epoch they were sealed in
(``epoch``) and the epoch whose answer set them (``judged_epoch``).

``amendments`` holds the final links (:mod:`bus.verify`, *Amendments*): report ``report_id`` of
chain (``org``, ``observer_id``) was corrected (``kind`` ``correction``) or retracted
(``retraction``, with its ``reason``) by ``by_report_id``, accepted at ``epoch``'s answer. It is
derived from the accepted reports of each answer; a link whose amending report a revocation
withdrew is removed with it (the target is the latest version again).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bus.epoch import FinalSeal
from bus.errors import ConfigError, StoreError
from bus.judge import EpochVerdicts, Status, Verdict
from bus.seal import Equivocation, SealAlarm, SealProposal
from bus.sealed import VerifiedSealed
from bus.store.sqlite import open_db, sqlite_transaction
from bus.verify import VerifiedReport

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seals (
    epoch INTEGER PRIMARY KEY, digest BLOB NOT NULL, time_ms INTEGER NOT NULL,
    seal_offset INTEGER NOT NULL, signers TEXT NOT NULL, text BLOB NOT NULL,
    state_digest BLOB NOT NULL, mandate_version INTEGER NOT NULL, records INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    epoch INTEGER NOT NULL, judged_epoch INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, org TEXT, observer_id TEXT, report_id TEXT,
    seq INTEGER, key_id BLOB,
    PRIMARY KEY (topic, partition, "offset")
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS verdicts_by_report ON verdicts (org, observer_id, report_id);
CREATE INDEX IF NOT EXISTS verdicts_by_status ON verdicts (status, reason);
CREATE TABLE IF NOT EXISTS changes (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    at_epoch INTEGER NOT NULL, status TEXT NOT NULL, org TEXT NOT NULL,
    observer_id TEXT NOT NULL, seq INTEGER NOT NULL, report_id TEXT NOT NULL,
    key_id BLOB NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (topic, partition, "offset", at_epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heads (
    org TEXT NOT NULL, observer_id TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL,
    PRIMARY KEY (org, observer_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decision_heads (
    org TEXT PRIMARY KEY, seq INTEGER NOT NULL, digest BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS equivocations (
    org TEXT NOT NULL, epoch INTEGER NOT NULL, evidence TEXT NOT NULL,
    round INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (org, epoch, round)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS amendments (
    org TEXT NOT NULL, observer_id TEXT NOT NULL, report_id TEXT NOT NULL, kind TEXT NOT NULL,
    by_report_id TEXT NOT NULL, reason TEXT NOT NULL, epoch INTEGER NOT NULL,
    PRIMARY KEY (org, observer_id, report_id, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS judged_at (
    epoch INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL
);
-- Votes per epoch, of seal texts without a round line that no reader parses any more.
DROP TABLE IF EXISTS votes;
CREATE TABLE IF NOT EXISTS seal_votes (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, digest BLOB NOT NULL, record BLOB NOT NULL,
    kind TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (epoch, round)
) WITHOUT ROWID;
-- Fork and carried-trust evidence (bus.seal.SealAlarm), kept once per (reason, epoch, record).
CREATE TABLE IF NOT EXISTS seal_alarms (
    reason TEXT NOT NULL, epoch INTEGER NOT NULL, seal_offset INTEGER NOT NULL,
    evidence TEXT NOT NULL,
    PRIMARY KEY (reason, epoch, seal_offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1), epoch INTEGER NOT NULL, state BLOB NOT NULL
);
"""

# The tables every honest reader holds alike, in the order and sort order of the dump.
_DUMPED: Final = (
    ("seals", "epoch"),
    ("verdicts", 'topic, partition, "offset"'),
    ("changes", 'topic, partition, "offset", at_epoch'),
    ("heads", "org, observer_id"),
    ("decision_heads", "org"),
    ("equivocations", "org, epoch, round"),
    ("amendments", "org, observer_id, report_id, kind"),
)


@dataclass(frozen=True, slots=True)
class Vote:
    """This organization's signature in one round of an epoch: the text's digest and the
    record sent."""

    epoch: int
    round: int
    digest: bytes
    record: bytes
    kind: str  # "cosign": a proposal is no vote (rows of kind "proposal" are dropped on open)


def _report_fields(v: Verdict) -> tuple[str | None, str | None, int | None, bytes | None]:
    """(report id, seq, key id) of an accepted report's verdict; Nones otherwise."""
    r = v.report
    if isinstance(r, VerifiedReport):
        return r.report.report_id, r.report.observer_id, r.report.seq, r.key_id
    if isinstance(r, VerifiedSealed):
        return r.sealed.report_id, r.sealed.observer_id, r.sealed.seq, r.key_id
    return None, None, None, None


def _value(v: object) -> object:
    if isinstance(v, bytes | memoryview):
        return base64.b64encode(bytes(v)).decode()
    return v


class FinalStore:
    """The final store's SQLite file. One writer; read-only readers at any time.

    Args:
        path: the file (created when missing).
        read_only: open an existing file for reading only.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        # NORMAL: a power loss may take the last epochs; the sealer judges them again from the
        # snapshot before them, and the rows it writes again are the same.
        self._db = open_db(
            path,
            what="final store",
            schema="" if read_only else _SCHEMA,
            read_only=read_only,
            synchronous="NORMAL",
            timeout_s=5,
            threads=True,
        )
        if not read_only:
            self._migrate()

    def _migrate(self) -> None:
        """Files made while a proposal counted as its proposer's vote hold proposals among the
        votes: a proposal is no vote, and its row would keep this organization from cosigning
        in that round, so those rows go. Files made before seal rounds keyed equivocations by
        (org, epoch): move their rows into the table keyed by (org, epoch, round), as round 1."""
        with sqlite_transaction(self._db, "final store") as db:
            db.execute("DELETE FROM seal_votes WHERE kind = 'proposal'")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(equivocations)")}
        if "round" in columns:
            return
        with sqlite_transaction(self._db, "final store") as db:
            db.execute("ALTER TABLE equivocations RENAME TO equivocations_before_rounds")
            db.execute(
                "CREATE TABLE equivocations (org TEXT NOT NULL, epoch INTEGER NOT NULL,"
                " evidence TEXT NOT NULL, round INTEGER NOT NULL DEFAULT 1,"
                " PRIMARY KEY (org, epoch, round)) WITHOUT ROWID"
            )
            db.execute(
                "INSERT INTO equivocations SELECT org, epoch, evidence, 1"
                " FROM equivocations_before_rounds"
            )
            db.execute("DROP TABLE equivocations_before_rounds")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def check_identity(self, org: str, mandate_id: str, root_digest: bytes) -> None:
        """Bind the file to one organization, mandate and root mandate; refuse to mix.

        Raises:
            ConfigError: the file was made for another organization, mandate or root.
        """
        pairs = (("org", org), ("mandate_id", mandate_id), ("root", root_digest.hex()))
        for key, value in pairs:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
            elif row[0] != value:
                raise ConfigError(
                    "final store",
                    f"{self.path} belongs to {key} {row[0]!r}, not {value!r}",
                    "give this node its own --final-db, or start it with the root mandate the"
                    " file was made with",
                )

    # -- writing -----------------------------------------------------------------------------

    def record(
        self,
        epochs: Sequence[EpochVerdicts],
        finals: Iterable[FinalSeal],
        equivocations: Iterable[Equivocation] = (),
        *,
        snapshot: tuple[int, bytes] | None = None,
        at_ms: int | None = None,
    ) -> None:
        """Store judged epochs (with their final seals) in one transaction.

        Args:
            epochs: the epochs judged, in order.
            finals: their final seals (at least one per epoch in ``epochs``).
            equivocations: evidence found.
            snapshot: (epoch, reader snapshot) to keep for restarts.
            at_ms: this host's time, kept per epoch in ``judged_at`` (first time only).
        """
        by_epoch = {f.epoch: f for f in finals}
        with sqlite_transaction(self._db, "final store") as db:
            for ev in epochs:
                seal = by_epoch[ev.epoch]
                db.execute(
                    "INSERT OR REPLACE INTO seals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ev.epoch,
                        seal.digest,
                        seal.time_ms,
                        seal.offset,
                        ",".join(sorted(seal.signers)),
                        SealProposal.of_final(seal).text(),
                        ev.state_digest,
                        ev.mandate_version,
                        len(ev.verdicts),
                    ),
                )
                if at_ms is not None:
                    db.execute("INSERT OR IGNORE INTO judged_at VALUES (?, ?)", (ev.epoch, at_ms))
                rows = []
                for v in ev.verdicts:
                    report_id, observer_id, seq, key_id = _report_fields(v)
                    org = None if v.observer is None else v.observer[0]
                    if observer_id is None and v.observer is not None:
                        observer_id = v.observer[1]
                    rows.append(
                        (
                            *v.pos,
                            v.epoch,
                            ev.epoch,
                            v.status.value,
                            v.reason,
                            v.detail,
                            org,
                            observer_id,
                            report_id,
                            seq,
                            key_id,
                        )
                    )
                db.executemany(
                    "INSERT OR REPLACE INTO verdicts VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.executemany(
                    "INSERT OR REPLACE INTO amendments VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (r.org, r.observer_id, r.amends,
                         "retraction" if r.retracts else "correction", r.report_id,
                         r.retraction_reason, ev.epoch)
                        for v in ev.verdicts
                        if v.status is Status.ACCEPTED and isinstance(v.report, VerifiedReport)
                        and (r := v.report.report).amends
                    ],
                )  # fmt: skip
                db.executemany(
                    "DELETE FROM amendments WHERE org = ? AND observer_id = ? AND by_report_id = ?",
                    [(c.observer[0], c.observer[1], c.report_id) for c in ev.changes],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO changes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            *c.pos,
                            c.at_epoch,
                            c.status.value,
                            c.observer[0],
                            c.observer[1],
                            c.seq,
                            c.report_id,
                            c.key_id,
                            c.detail,
                        )
                        for c in ev.changes
                    ],
                )
                for (org, observer_id), head in ev.heads.items():
                    if head is None:
                        db.execute(
                            "DELETE FROM heads WHERE org = ? AND observer_id = ?",
                            (org, observer_id),
                        )
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?)",
                            (org, observer_id, head.seq, head.digest),
                        )
                db.executemany(
                    "INSERT OR REPLACE INTO decision_heads VALUES (?, ?, ?)",
                    [(org, h.seq, h.digest) for org, h in ev.decision_heads.items()],
                )
            for eq in equivocations:
                db.execute(
                    "INSERT OR IGNORE INTO equivocations (org, epoch, round, evidence)"
                    " VALUES (?, ?, ?, ?)",
                    (eq.org, eq.epoch, eq.round, json.dumps(eq.to_json(), sort_keys=True)),
                )
            if snapshot is not None:
                db.execute(
                    "INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?)", (snapshot[0], snapshot[1])
                )

    def save_vote(self, vote: Vote, at_ms: int) -> None:
        """Remember this organization's vote before it is published (one per round).

        Raises:
            StoreError: a vote for that epoch and round is already stored (the caller must
                never sign two texts in one round).
        """
        with sqlite_transaction(self._db, "final store") as db:
            db.execute(
                "INSERT INTO seal_votes VALUES (?, ?, ?, ?, ?, ?)",
                (vote.epoch, vote.round, vote.digest, vote.record, vote.kind, at_ms),
            )

    # -- reading -----------------------------------------------------------------------------

    def votes(self, since_epoch: int = 0) -> dict[tuple[int, int], Vote]:
        """This organization's stored votes from ``since_epoch`` on, by (epoch, round)."""
        rows = self._db.execute(
            "SELECT epoch, round, digest, record, kind FROM seal_votes WHERE epoch >= ?",
            (since_epoch,),
        )
        return {(e, n): Vote(e, n, bytes(d), bytes(r), k) for e, n, d, r, k in rows}

    def snapshot(self) -> tuple[int, bytes] | None:
        """(epoch, reader snapshot) stored last, if any."""
        row = self._db.execute("SELECT epoch, state FROM snapshot WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def last_epoch(self) -> tuple[int, bytes] | None:
        """(epoch, state digest) of the last epoch stored."""
        row = self._db.execute(
            "SELECT epoch, state_digest FROM seals ORDER BY epoch DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def seals(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest final seals, newest first, as JSON-ready dicts."""
        rows = self._db.execute(
            "SELECT epoch, digest, time_ms, seal_offset, signers, state_digest,"
            " mandate_version, records FROM seals ORDER BY epoch DESC LIMIT ?",
            (limit,),
        )
        return [
            {
                "epoch": e,
                "digest": base64.b64encode(bytes(d)).decode(),
                "time_ms": t,
                "offset": o,
                "signers": s.split(",") if s else [],
                "state_digest": base64.b64encode(bytes(sd)).decode(),
                "mandate_version": mv,
                "records": n,
            }
            for e, d, t, o, s, sd, mv, n in rows
        ]

    def verdict(self, topic: str, partition: int, offset: int) -> dict[str, Any] | None:
        """The final verdict on one record, if its epoch is judged."""
        cur = self._db.execute(
            "SELECT epoch, judged_epoch, status, reason, detail FROM verdicts WHERE topic = ? AND"
            ' partition = ? AND "offset" = ?',
            (topic, partition, offset),
        )
        row = cur.fetchone()
        if row is None:
            return None
        e, je, status, reason, detail = row
        return {
            "epoch": e,
            "judged_epoch": je,
            "status": status,
            "reason": reason,
            "detail": detail,
        }

    def amendments(self, org: str, observer_id: str, report_id: str) -> dict[str, Any]:
        """The final links of one report: ``corrected_by`` and ``retracted_by`` (report ids,
        "" for none) and the ``retraction_reason``."""
        out: dict[str, Any] = {"corrected_by": "", "retracted_by": "", "retraction_reason": ""}
        for kind, by, reason in self._db.execute(
            "SELECT kind, by_report_id, reason FROM amendments WHERE org = ? AND observer_id = ?"
            " AND report_id = ?",
            (org, observer_id, report_id),
        ):
            if kind == "retraction":
                out["retracted_by"], out["retraction_reason"] = by, reason
            else:
                out["corrected_by"] = by
        return out

    def save_alarms(self, alarms: Iterable[SealAlarm]) -> None:
        """Keep seal alarms as evidence (each once; one transaction)."""
        rows = [
            (a.reason.value, a.epoch, a.offset, json.dumps(a.to_json(), sort_keys=True))
            for a in alarms
        ]
        if not rows:
            return
        with sqlite_transaction(self._db, "final store") as db:
            db.executemany("INSERT OR IGNORE INTO seal_alarms VALUES (?, ?, ?, ?)", rows)

    def alarms(self) -> list[dict[str, Any]]:
        """Every seal alarm kept, oldest first, as JSON-ready dicts."""
        cur = self._db.execute(
            "SELECT evidence FROM seal_alarms ORDER BY epoch, seal_offset, reason"
        )
        return [json.loads(row[0]) for row in cur]

    def counts(self) -> dict[str, int]:
        """Final verdicts by status, and quarantined ones by ``quarantined:<reason>``."""
        out: dict[str, int] = {}
        for status, reason, n in self._db.execute(
            "SELECT status, reason, count(*) FROM verdicts GROUP BY status, reason"
        ):
            out[status] = out.get(status, 0) + n
            if reason:
                out[f"{status}:{reason}"] = n
        out["revoked_after_acceptance"] = self._db.execute(
            "SELECT count(*) FROM changes"
        ).fetchone()[0]
        return out

    def dump(self) -> Iterator[bytes]:
        """Every row every honest reader holds alike, one canonical JSON line each (table
        name first), in a fixed order: equal dumps, equal final stores."""
        for table, order in _DUMPED:
            cur = self._db.execute(f"SELECT * FROM {table} ORDER BY {order}")  # noqa: S608
            for row in cur:
                line = json.dumps([table, *(_value(v) for v in row)], separators=(",", ":"))
                yield line.encode() + b"\n"

    def fingerprint(self) -> bytes:
        """SHA-256 of :meth:`dump`."""
        h = hashlib.sha256()
        for line in self.dump():
            h.update(line)
        return h.digest()


def provisional_verdicts(
    node_db: sqlite3.Connection, positions: Iterable[tuple[str, int, int]]
) -> dict[tuple[str, int, int], tuple[str, str]]:
    """The node store's provisional verdicts at ``positions``: (status, reason), status
    ``accepted`` (a stored report), ``revoked_after_acceptance`` (a stored report the node
    marked so when a revocation reached it) or ``quarantined``; positions not judged yet are
    absent.

    Args:
        node_db: a (read-only) connection to the node's store (:mod:`bus.store.node`).
        positions: (topic, partition, offset) of report records.
    """
    out: dict[tuple[str, int, int], tuple[str, str]] = {}
    for pos in positions:
        row = node_db.execute(
            'SELECT report_id FROM reports WHERE topic = ? AND partition = ? AND "offset" = ?', pos
        ).fetchone()
        if row is not None:
            revoked = node_db.execute(
                "SELECT 1 FROM revoked_after_acceptance WHERE report_id = ?", (row[0],)
            ).fetchone()
            out[pos] = ("revoked_after_acceptance" if revoked else "accepted", "")
            continue
        row = node_db.execute(
            'SELECT reason FROM quarantine WHERE topic = ? AND partition = ? AND "offset" = ?',
            pos,
        ).fetchone()
        if row is not None:
            out[pos] = ("quarantined", str(row[0]))
    return out


@contextlib.contextmanager
def read_final_store(path: Path) -> Iterator[FinalStore | None]:
    """A read-only final store, or None when the file does not exist (yet) or cannot be read."""
    if not path.exists():
        yield None
        return
    try:
        store = FinalStore(path, read_only=True)
    except StoreError:
        yield None
        return
    try:
        yield store
    finally:
        store.close()
