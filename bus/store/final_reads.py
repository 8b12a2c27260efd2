"""Reads of a node's final store (:mod:`bus.store.final`) for the follow-up and the statement
commands: the final seals in epoch order, and the final verdicts on accepted reports in the
order the final judge judged them.

A separate read-only connection on the sealer's file (the sealer writes each judged epoch with
its seal in one transaction, so a reader sees an epoch whole or not at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bus.epoch import FinalSeal
from bus.errors import ConfigError, StoreError, VerificationError
from bus.policy import SealRef
from bus.seal import parse_seal
from bus.store.sqlite import open_db


@dataclass(frozen=True, slots=True)
class AcceptedReport:
    """A report record the final judge accepted: where it sits, the epoch it was sealed in and
    the epoch whose answer accepted it (the next one for a deferred report), and whose it is."""

    topic: str
    partition: int
    offset: int
    epoch: int
    judged_epoch: int
    org: str
    observer_id: str
    report_id: str
    seq: int


class FinalReads:
    """Read-only access to a final store (see the module docstring).

    Raises:
        StoreError: the file does not exist or cannot be read.
    """

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise StoreError(f"no final store at {path}", path=str(path))
        self.path = path
        self._db = open_db(path, what="final store", read_only=True, threads=True)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def check_root(self, root_digest: bytes) -> None:
        """Refuse a final store judged from another root mandate.

        Raises:
            ConfigError: the store names another root (or none: never written by a sealer).
        """
        row = self._db.execute("SELECT value FROM meta WHERE key = 'root'").fetchone()
        if row is None or row[0] != root_digest.hex():
            raise ConfigError(
                "final store",
                f"{self.path} was not judged from this root mandate",
                "pass the final store of a node of this bus and version 1 of its mandate"
                " (--root-mandate)",
            )

    def last_epoch(self) -> int:
        """The last epoch judged and stored (0: none)."""
        row = self._db.execute("SELECT coalesce(max(epoch), 0) FROM seals").fetchone()
        return int(row[0])

    def seals(self, after: int = 0, limit: int = 1000) -> list[FinalSeal]:
        """The final seals of the epochs after ``after``, in epoch order, at most ``limit``.

        Raises:
            StoreError: a stored seal text does not parse (a corrupt store).
        """
        rows = self._db.execute(
            "SELECT epoch, digest, text, signers, seal_offset FROM seals WHERE epoch > ?"
            " ORDER BY epoch LIMIT ?",
            (after, limit),
        ).fetchall()
        out = []
        for epoch, digest, text, signers, offset in rows:
            try:
                proposal = parse_seal(bytes(text))
            except VerificationError as exc:
                raise StoreError(
                    f"final store {self.path}: the seal of epoch {epoch} does not parse",
                    path=str(self.path),
                ) from exc
            out.append(
                proposal.final(
                    digest=bytes(digest),
                    signers=[s for s in str(signers).split(",") if s],
                    offset=int(offset),
                )
            )
        return out

    def seal_refs(self, first: int, last: int) -> list[SealRef]:
        """(epoch, digest, *t_e*) of the final seals of epochs ``first`` .. ``last`` stored."""
        rows = self._db.execute(
            "SELECT epoch, digest, time_ms FROM seals WHERE epoch BETWEEN ? AND ? ORDER BY epoch",
            (first, last),
        )
        return [SealRef(int(e), bytes(d), int(t)) for e, d, t in rows]

    def seal_digest(self, epoch: int) -> bytes | None:
        """The digest of the final seal of ``epoch``, or None when it is not stored."""
        row = self._db.execute("SELECT digest FROM seals WHERE epoch = ?", (epoch,)).fetchone()
        return None if row is None else bytes(row[0])

    def accepted_reports(self, first: int, last: int) -> list[AcceptedReport]:
        """Reports accepted by the answers of epochs ``first`` .. ``last``, in the final order:
        the answering epoch, then the judge's order inside it (reports deferred from the epoch
        before first, then by (organization, observer id, seq), then position)."""
        rows = self._db.execute(
            'SELECT topic, partition, "offset", epoch, judged_epoch, org, observer_id,'
            " report_id, seq FROM verdicts WHERE status = 'accepted' AND report_id IS NOT NULL"
            " AND judged_epoch BETWEEN ? AND ?"
            ' ORDER BY judged_epoch, epoch, org, observer_id, seq, topic, partition, "offset"',
            (first, last),
        )
        return [AcceptedReport(*r) for r in rows]
