"""The auditor: verify a whole log, live from Kafka or from an exported file, and name every
violation.

One judge, :class:`AuditRun`, is fed the log section by section in the order of the export
format (:mod:`bus.export`): mandate versions, registry, checkpoints, then every report record.
:func:`audit` feeds it from the broker (replaying every topic from the start with its own
consumer, no group, nothing committed); :func:`audit_export` feeds it from an export file. It
uses the same verification path as the nodes (:class:`bus.ingest.Ingestor`) and reports every
violation with its topic, partition, offset and reason code. Exit code 0 means the whole log
verified; 1 means at least one violation.

What it checks besides each report: the mandate chain and the registry (as every node does,
:class:`bus.lifecycle.TrustTimeline`); every checkpoint record's signatures by accredited node
keys (:func:`bus.checkpoint.verify_checkpoint`); two signed checkpoints of one partition and
size with different roots (``split_view``); the records of every report partition against
every checkpoint of it (``checkpoint_root_mismatch`` when they hash to another root at a signed
size, ``checkpoint_beyond_log`` when a signed size exceeds the records held); offsets missing
(``record_missing``) or out of order (``record_out_of_order``); and, with
``require_witnessed``, that a checkpoint signed by a quorum (the mandate threshold) of
organizations covers every record (``witness_quorum_not_met``). It recomputes every root from
the records, which is stronger than checking inclusion and consistency proofs between
checkpoints: every checkpoint that matches one append-only tree is consistent with the others.

Memory does not grow with the log: one frontier-only Merkle tree per partition (at most 64
hashes), report ids for duplicate detection and the checkpoints in a temporary SQLite file, and
counters by organization, zone and day. Only the list of violations grows, with violations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bus.checkpoint import NoteKeys, origin_for, parse_origin, verify_checkpoint
from bus.errors import Reason, VerificationError
from bus.export import ExportProblem, ExportReader, LogRecord
from bus.idfilter import IdFilter
from bus.ingest import Accepted, AcceptedSealed, Ingestor, RecordRef
from bus.kafka.admin import end_offsets
from bus.kafka.client import KafkaSecurity
from bus.kafka.replay import replay
from bus.lifecycle import TrustTimeline
from bus.merkle import MerkleTree
from bus.model import Envelope, Mandate, Role
from bus.topics import Topics
from bus.trust import verify_mandate
from bus.verify import ChainBook, Limits
from nodes.runtime.preverify import PreVerifier

log = structlog.get_logger(__name__)

# Report ids are flushed from the chain book's memory to the on-disk index this often.
_ID_FLUSH: Final = 1000
EXPORT_TOPIC: Final = "(export file)"  # Violation.topic of problems with the file itself


@dataclass(frozen=True, slots=True)
class Violation:
    """One record (or checkpoint, or line of an export file) that failed verification."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str


@dataclass
class AuditResult:
    """Counts per organization and every violation found."""

    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    registry_records: int = 0
    mandate_versions: list[int] = field(default_factory=list)  # versions applied from the topic
    sealed_verified: int = 0  # restricted reports verified without reading them
    by_zone: Counter[str] = field(default_factory=Counter)
    by_day: Counter[str] = field(default_factory=Counter)
    checkpoint_records: int = 0
    checkpoint_texts: int = 0
    witness: list[dict[str, Any]] = field(default_factory=list)  # per report partition
    quorum: int = 0
    source: str = ""
    trust_root: str = "given"  # or "embedded": the export's own root mandate was used

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.violations

    def violations_by_kind(self) -> Counter[str]:
        """How many violations of each reason code."""
        return Counter(v.reason for v in self.violations)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable summary."""
        return {
            "ok": self.ok,
            "source": self.source,
            "trust_root": self.trust_root,
            "registry_records": self.registry_records,
            "mandate_versions": self.mandate_versions,
            "sealed_verified": self.sealed_verified,
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "reports_by_zone": dict(self.by_zone),
            "reports_by_day": dict(sorted(self.by_day.items())),
            "checkpoint_records": self.checkpoint_records,
            "checkpoint_texts": self.checkpoint_texts,
            "quorum": self.quorum,
            "witness": self.witness,
            "violations_by_kind": dict(self.violations_by_kind()),
            "violations": [dataclasses.asdict(v) for v in self.violations],
        }


@dataclass
class _Partition:
    """Streaming state of one report partition."""

    tree: MerkleTree = field(default_factory=lambda: MerkleTree(store_leaves=False))
    max_offset: int = -1
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [start, end) never seen yet
    next_size: int | None = None  # next checkpointed size to compare at
    last_offset: int = -1
    witnessed_size: int = 0
    witnessed_orgs: tuple[str, ...] = ()
    witnessed_offset: int = -1
    checked: int = 0
    mismatched: int = 0


class _Index:
    """Temporary on-disk tables: report ids seen, and every verified checkpoint attestation."""

    def __init__(self, work_dir: Path | None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="obus-audit-", dir=work_dir)
        self.db = sqlite3.connect(str(Path(self._tmp.name) / "index.db"), isolation_level=None)
        self.db.executescript(
            """
            PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-2048;
            CREATE TABLE ids (report_id TEXT PRIMARY KEY, digest BLOB NOT NULL) WITHOUT ROWID;
            CREATE TABLE texts (id INTEGER PRIMARY KEY, origin TEXT NOT NULL,
                size INTEGER NOT NULL, root BLOB NOT NULL, "offset" INTEGER NOT NULL,
                UNIQUE (origin, size, root));
            CREATE TABLE atts (text_id INTEGER NOT NULL, org TEXT NOT NULL,
                PRIMARY KEY (text_id, org)) WITHOUT ROWID;
            """
        )

    def close(self) -> None:
        self.db.close()
        self._tmp.cleanup()

    def digest(self, report_id: str) -> bytes | None:
        row = self.db.execute("SELECT digest FROM ids WHERE report_id = ?", (report_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def ids(self) -> Iterator[str]:
        """Every report id added so far."""
        for (report_id,) in self.db.execute("SELECT report_id FROM ids"):
            yield report_id

    def add_ids(self, rows: list[tuple[str, bytes]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?)", rows)
        self.db.execute("COMMIT")

    def add_checkpoint(
        self, origin: str, size: int, root: bytes, offset: int, orgs: set[str]
    ) -> None:
        self.db.execute(
            'INSERT OR IGNORE INTO texts (origin, size, root, "offset") VALUES (?,?,?,?)',
            (origin, size, root, offset),
        )
        (tid,) = self.db.execute(
            "SELECT id FROM texts WHERE origin = ? AND size = ? AND root = ?", (origin, size, root)
        ).fetchone()
        self.db.executemany(
            "INSERT OR IGNORE INTO atts VALUES (?, ?)", [(tid, o) for o in sorted(orgs)]
        )

    def next_size(self, origin: str, above: int) -> int | None:
        (size,) = self.db.execute(
            "SELECT min(size) FROM texts WHERE origin = ? AND size > ?", (origin, above)
        ).fetchone()
        return None if size is None else int(size)

    def roots_at(self, origin: str, size: int) -> list[tuple[bytes, list[str], int]]:
        """(root, signing orgs, first offset) of every checkpoint of origin at size."""
        rows = self.db.execute(
            'SELECT t.root, group_concat(a.org), t."offset" FROM texts t JOIN atts a'
            " ON a.text_id = t.id WHERE t.origin = ? AND t.size = ? GROUP BY t.id",
            (origin, size),
        )
        return [(bytes(r), sorted(set(orgs.split(","))), off) for r, orgs, off in rows]

    def split_views(self) -> Iterator[tuple[str, int]]:
        rows = self.db.execute(
            "SELECT origin, size FROM texts GROUP BY origin, size HAVING count(*) > 1"
            " ORDER BY origin, size"
        )
        yield from rows.fetchall()

    def origins(self) -> list[tuple[str, int]]:
        """(origin, largest signed size) of every origin with a checkpoint."""
        return list(self.db.execute("SELECT origin, max(size) FROM texts GROUP BY origin"))

    def count_texts(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM texts").fetchone()[0])


class AuditRun:
    """Judges one log fed in sections (see module docstring); :meth:`finish` gives the result.

    Args:
        mandate: the verified trust root (out-of-band mandate).
        topics: topic naming of the log.
        limits: verification limits (must match the nodes').
        require_witnessed: every report record must be covered by a checkpoint signed by a
            quorum of organizations (``witness_quorum_not_met`` otherwise).
        work_dir: where the temporary index goes (default: the system's temp directory).
    """

    def __init__(
        self,
        mandate: Mandate,
        *,
        topics: Topics,
        limits: Limits | None = None,
        require_witnessed: bool = False,
        work_dir: Path | None = None,
    ) -> None:
        self.result = AuditResult()
        self.topics = topics
        self.require_witnessed = require_witnessed
        self.timeline = TrustTimeline(mandate)
        self._limits = limits or Limits()
        self._index = _Index(work_dir)
        self._ingestor: Ingestor | None = None
        # Report ids already seen: the index behind a Bloom filter (bus.idfilter).
        self._ids = IdFilter(self._index.digest, self._index.ids)
        self._pending_ids: list[tuple[str, bytes]] = []
        # (public key, raw) pairs whose signatures worker processes accepted (live audit with
        # verify_workers; see nodes/runtime/preverify.py); empty otherwise.
        self.preverified: Container[tuple[bytes, bytes]] = frozenset()
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._note_keys: dict[int, NoteKeys] = {}
        self._checkpoints_done = False
        self.records = 0

    def close(self) -> None:
        """Remove the temporary index."""
        self._index.close()

    def _violation(self, rec: LogRecord, reason: str, detail: str) -> None:
        self.result.violations.append(
            Violation(rec.topic, rec.partition, rec.offset, reason, detail)
        )

    # -- sections ----------------------------------------------------------------------------

    def problem(self, p: ExportProblem) -> None:
        """A problem with the export file itself, at a line number."""
        self.result.violations.append(
            Violation(EXPORT_TOPIC, -1, p.line_no, Reason.EXPORT_CORRUPT.value, p.detail)
        )

    def record(self, rec: LogRecord) -> None:
        """Dispatch a record by its section."""
        handler = {
            "mandate": self.mandate_record,
            "registry": self.registry_record,
            "checkpoints": self.checkpoint_record,
            "reports": self.report_record,
        }[rec.section]
        handler(rec)

    def mandate_record(self, rec: LogRecord) -> None:
        """A record of the mandate topic: a newer version, a copy, or an alarm."""
        try:
            env = Envelope.decode(rec.value or b"")
            if self.timeline.offer_mandate(env, log_time_ms=rec.timestamp_ms) is not None:
                self.result.mandate_versions.append(self.timeline.mandate.version)
        except VerificationError as exc:
            self._violation(rec, exc.reason.value, exc.message)

    def registry_record(self, rec: LogRecord) -> None:
        """An accreditation or revocation record."""
        self.result.registry_records += 1
        try:
            self.timeline.apply_registry(Envelope.decode(rec.value or b""))
        except VerificationError as exc:
            self._violation(rec, exc.reason.value, exc.message)

    def checkpoint_record(self, rec: LogRecord) -> None:
        """A checkpoint or cosignature note: verified, then indexed by (origin, size, root)."""
        self.result.checkpoint_records += 1
        keyring = self.timeline.at(rec.timestamp_ms)
        keys = self._note_keys.get(id(keyring))
        if keys is None or keys.stale():
            keys = self._note_keys[id(keyring)] = NoteKeys(keyring)
        try:
            vc = verify_checkpoint(
                rec.value or b"", keyring, at_ms=rec.timestamp_ms, seq=rec.offset + 1, keys=keys
            )
        except VerificationError as exc:
            self._violation(rec, exc.reason.value, exc.message)
            return
        if self.topics.org_of_report_topic(vc.topic) is None:
            self._violation(
                rec,
                Reason.CHECKPOINT_UNKNOWN_ORIGIN.value,
                f"origin {vc.checkpoint.origin} is not a report partition of this log",
            )
            return
        cp = vc.checkpoint
        self._index.add_checkpoint(cp.origin, cp.size, cp.root, rec.offset, set(vc.orgs))

    def _end_checkpoints(self) -> None:
        if self._checkpoints_done:
            return
        self._checkpoints_done = True
        self.result.checkpoint_texts = self._index.count_texts()
        for origin, size in self._index.split_views():
            roots = self._index.roots_at(origin, size)
            detail = "; ".join(
                f"root {r.hex()[:16]}… signed by {', '.join(o)}" for r, o, _ in roots
            )
            self.result.violations.append(
                Violation(
                    self.topics.checkpoints,
                    0,
                    min(off for _, _, off in roots),
                    Reason.SPLIT_VIEW.value,
                    f"{origin} size {size}: {detail}",
                )
            )

    def report_record(self, rec: LogRecord) -> None:
        """A record of a report topic: verified, chained, counted and put in its tree."""
        self._end_checkpoints()
        self.records += 1
        if self._ingestor is None:
            chain = ChainBook({}, self._ids)
            self._ingestor = Ingestor(
                self.timeline.current, chain, limits=self._limits, timeline=self.timeline
            )
        self._ingestor.preverified = self.preverified
        org = self.topics.org_of_report_topic(rec.topic)
        ref = RecordRef(rec.topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key)
        outcome = self._ingestor.judge(ref, rec.value, org)
        owner = org or rec.topic
        if isinstance(outcome, Accepted):
            report = outcome.verified.report
            self.result.accepted[owner] += 1
            self.result.by_zone[report.zone] += 1
            day = dt.datetime.fromtimestamp(report.observed_at_ms / 1000, dt.UTC).date()
            self.result.by_day[day.isoformat()] += 1
            self._pending_ids.append((report.report_id, outcome.verified.envelope_digest))
            if len(self._pending_ids) >= _ID_FLUSH:
                self._flush_ids()
        elif isinstance(outcome, AcceptedSealed):
            # Authorship, accreditation, mandate and chain verified; the content stays sealed.
            sealed = outcome.verified.sealed
            self.result.accepted[owner] += 1
            self.result.sealed_verified += 1
            self.result.by_zone[sealed.zone] += 1
            self._pending_ids.append((sealed.report_id, outcome.verified.envelope_digest))
            if len(self._pending_ids) >= _ID_FLUSH:
                self._flush_ids()
        else:
            self.result.rejected[owner] += 1
            self._violation(rec, outcome.reason, outcome.detail)
        self._witness(rec)

    def _flush_ids(self) -> None:
        if self._pending_ids and self._ingestor is not None:
            self._index.add_ids(self._pending_ids)
            for report_id, _ in self._pending_ids:
                self._ids.add(report_id)
            self._pending_ids.clear()
            self._ingestor.chain.flushed()

    # -- the witnessed log ---------------------------------------------------------------------

    def _origin(self, topic: str, partition: int) -> str:
        return origin_for(self.timeline.mandate.mandate_id, topic, partition)

    def _partition(self, topic: str, partition: int) -> _Partition:
        key = (topic, partition)
        state = self._parts.get(key)
        if state is None:
            state = self._parts[key] = _Partition()
            state.next_size = self._index.next_size(self._origin(topic, partition), -1)
            self._compare(topic, partition, state)  # a checkpoint of size 0, if any
        return state

    def _witness(self, rec: LogRecord) -> None:
        state = self._partition(rec.topic, rec.partition)
        o = rec.offset
        if o > state.max_offset + 1:
            state.gaps.append((state.max_offset + 1, o))
        if o > state.max_offset:
            state.max_offset = o
        else:
            gap = next((g for g in state.gaps if g[0] <= o < g[1]), None)
            if gap is not None:
                state.gaps.remove(gap)
                state.gaps.extend(g for g in ((gap[0], o), (o + 1, gap[1])) if g[0] < g[1])
                detail = f"offset {o} comes after offset {state.max_offset}"
            else:
                detail = f"offset {o} appears again"
            self._violation(rec, Reason.RECORD_OUT_OF_ORDER.value, detail)
        state.tree.append(rec.value or b"")
        state.last_offset = o
        self._compare(rec.topic, rec.partition, state)

    def _compare(self, topic: str, partition: int, state: _Partition) -> None:
        size = state.tree.size
        if state.next_size != size:
            return
        origin = self._origin(topic, partition)
        ours = state.tree.root()
        for root, orgs, _ in self._index.roots_at(origin, size):
            state.checked += 1
            if root == ours:
                if len(orgs) >= self.timeline.mandate.threshold and size >= state.witnessed_size:
                    state.witnessed_size, state.witnessed_orgs = size, tuple(orgs)
                    state.witnessed_offset = state.last_offset
                continue
            state.mismatched += 1
            self.result.violations.append(
                Violation(
                    topic,
                    partition,
                    state.last_offset,
                    Reason.CHECKPOINT_ROOT_MISMATCH.value,
                    f"the first {size} records hash to {ours.hex()[:16]}…, but a checkpoint of"
                    f" that size signed by {', '.join(orgs)} has root {root.hex()[:16]}…",
                )
            )
        state.next_size = self._index.next_size(origin, size)

    def finish(self) -> AuditResult:
        """Close every partition and return the result."""
        self._end_checkpoints()
        self._flush_ids()
        result = self.result
        result.quorum = self.timeline.mandate.threshold
        for (topic, partition), state in sorted(self._parts.items()):
            for start, end in state.gaps:
                missing = f"offset {start}" if end == start + 1 else f"offsets {start}..{end - 1}"
                result.violations.append(
                    Violation(
                        topic, partition, start, Reason.RECORD_MISSING.value,
                        f"{missing} of {topic}[{partition}] missing from the log",
                    )
                )  # fmt: skip
            unwitnessed = state.tree.size - state.witnessed_size
            if self.require_witnessed and unwitnessed > 0:
                result.violations.append(
                    Violation(
                        topic, partition, state.witnessed_offset + 1,
                        Reason.WITNESS_QUORUM_NOT_MET.value,
                        f"{unwitnessed} record(s) after leaf {state.witnessed_size} are covered"
                        f" by no checkpoint signed by {result.quorum} organizations",
                    )
                )  # fmt: skip
            result.witness.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "records": state.tree.size,
                    "root": state.tree.root().hex(),
                    "checkpoints_checked": state.checked,
                    "checkpoints_mismatched": state.mismatched,
                    "witnessed_size": state.witnessed_size,
                    "witnessed_by": list(state.witnessed_orgs),
                    "unwitnessed": unwitnessed,
                }
            )
        for origin, largest in self._index.origins():
            _, topic, part = parse_origin(origin)
            held = self._parts.get((topic, part))
            size = 0 if held is None else held.tree.size
            if largest > size:
                result.violations.append(
                    Violation(
                        topic, part, size, Reason.CHECKPOINT_BEYOND_LOG.value,
                        f"a checkpoint signs {largest} records of {topic}[{part}];"
                        f" the log holds {size}",
                    )
                )  # fmt: skip
        log.info(
            "audit_finished",
            ok=result.ok,
            records=self.records,
            violations=len(result.violations),
            source=result.source,
        )
        return result


def _progress(console: Console | None, what: str) -> Progress:
    return Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=console is None, transient=False,
    )  # fmt: skip


def _as_record(section: str, rec: Any) -> LogRecord:
    return LogRecord(
        section, rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value
    )


async def audit(
    bootstrap: str,
    mandate: Mandate,
    *,
    topics: Topics | None = None,
    limits: Limits | None = None,
    console: Console | None = None,
    require_witnessed: bool = False,
    work_dir: Path | None = None,
    verify_workers: int = 0,
    security: KafkaSecurity | None = None,
) -> AuditResult:
    """Replay the mandate, registry, checkpoints and every report topic and verify it all.

    Args:
        bootstrap: Kafka bootstrap servers.
        mandate: the verified out-of-band mandate.
        topics: topic naming (default prefix ``obus.``).
        limits: verification limits (must match the nodes').
        console: where the progress bar goes (None: no progress bar).
        require_witnessed: every report record must be covered by a quorum checkpoint.
        work_dir: where the temporary index goes.
        verify_workers: processes that check the Ed25519 signatures of the next batch of
            records while this one judges the current batch (as ``obus node
            --verify-workers``: same rule, same verdicts; rejections are always re-checked
            here). 0: every check in this process.
        security: how to authenticate to the brokers (None: PLAINTEXT).
    """
    topics = topics or Topics()
    run = AuditRun(
        mandate, topics=topics, limits=limits, require_witnessed=require_witnessed,
        work_dir=work_dir,
    )  # fmt: skip
    run.result.source = f"kafka {bootstrap} (prefix {topics.prefix})"
    try:
        # Checkpoints are read before the reports, so each one covers records replayed next.
        for section, name in (
            ("mandate", topics.mandate),
            ("registry", topics.registry),
            ("checkpoints", topics.checkpoints),
        ):
            async for rec in replay(bootstrap, [name], security=security):
                run.record(_as_record(section, rec))
        ends = await end_offsets(bootstrap, topics.reports_pattern, security=security)
        total = sum(ends.values())
        with _progress(console, "audit") as progress:
            task = progress.add_task("records", total=total)
            if verify_workers > 0:
                await _reports_with_workers(
                    run,
                    bootstrap,
                    topics,
                    verify_workers,
                    lambda n: progress.advance(task, n),
                    security=security,
                )
            else:
                async for rec in replay(
                    bootstrap, pattern=topics.reports_pattern, security=security
                ):
                    run.report_record(_as_record("reports", rec))
                    progress.advance(task)
        return run.finish()
    finally:
        run.close()


# Records per batch handed to the signature workers by the live audit.
_AUDIT_BATCH: Final = 2000


async def _reports_with_workers(
    run: AuditRun,
    bootstrap: str,
    topics: Topics,
    workers: int,
    advance: Callable[[int], None],
    *,
    security: KafkaSecurity | None,
) -> None:
    """The report topics in log order, the next batch's signatures checked by a pool while
    the current batch is judged (one batch ahead, as the node does)."""
    pool = PreVerifier(workers)
    await pool.start()

    def keys() -> dict[bytes, bytes]:
        ring = run.timeline.current
        return {a.key_id: a.public_key for a in ring.accreditations(Role.OBSERVER)}

    async def judge(
        batch: list[LogRecord], verdicts: asyncio.Task[set[tuple[bytes, bytes]]]
    ) -> None:
        run.preverified = await verdicts
        for rec in batch:
            run.report_record(rec)
        run.preverified = frozenset()
        advance(len(batch))

    try:
        ahead: tuple[list[LogRecord], asyncio.Task[set[tuple[bytes, bytes]]]] | None = None
        batch: list[LogRecord] = []
        async for rec in replay(bootstrap, pattern=topics.reports_pattern, security=security):
            batch.append(_as_record("reports", rec))
            if len(batch) >= _AUDIT_BATCH:
                raws = [r.value for r in batch if r.value]
                nxt = (batch, asyncio.create_task(pool.verdicts(raws, keys())))
                if ahead is not None:
                    await judge(*ahead)
                ahead, batch = nxt, []
        if ahead is not None:
            await judge(*ahead)
        if batch:
            raws = [r.value for r in batch if r.value]
            await judge(batch, asyncio.create_task(pool.verdicts(raws, keys())))
    finally:
        await asyncio.to_thread(pool.close)


def audit_export(
    path: Path,
    mandate: Mandate | None,
    *,
    limits: Limits | None = None,
    console: Console | None = None,
    require_witnessed: bool = False,
    work_dir: Path | None = None,
) -> AuditResult:
    """Verify an export file (:mod:`bus.export`) offline, streaming it once.

    Args:
        path: the export file.
        mandate: the trust root; None uses the mandate embedded in the file (verified against
            itself and the file's time) and says so in the result (``trust_root``).
        limits: verification limits.
        console: where the progress bar goes (None: none).
        require_witnessed: every report record must be covered by a quorum checkpoint.
        work_dir: where the temporary index goes.

    Raises:
        VerificationError: ``EXPORT_CORRUPT`` when the header is unusable, or the embedded
            mandate does not verify (``threshold_not_met``, ...).
        OSError: the file cannot be read.
    """
    with path.open("rb") as f:
        reader = ExportReader(f)
        header = reader.header
        trust_root = "given"
        if mandate is None:
            mandate = verify_mandate(
                Envelope.decode(header.root_mandate), previous=None, now_ms=header.created_at_ms
            )
            trust_root = "embedded"
        if mandate.mandate_id != header.mandate_id:
            raise VerificationError(
                Reason.WRONG_MANDATE,
                f"export is of mandate {header.mandate_id!r}, not {mandate.mandate_id!r}",
            )
        run = AuditRun(
            mandate, topics=Topics(header.topic_prefix), limits=limits,
            require_witnessed=require_witnessed, work_dir=work_dir,
        )  # fmt: skip
        run.result.source = str(path)
        run.result.trust_root = trust_root
        size = path.stat().st_size
        try:
            with _progress(console, "audit") as progress:
                task = progress.add_task("bytes", total=size)
                done = 0
                for item in reader:
                    if isinstance(item, ExportProblem):
                        run.problem(item)
                    else:
                        run.record(item)
                    if reader.bytes_read - done > 1 << 20:
                        progress.update(task, completed=reader.bytes_read)
                        done = reader.bytes_read
                progress.update(task, completed=reader.bytes_read)
            return run.finish()
        finally:
            run.close()


def render(result: AuditResult, console: Console) -> None:
    """Print the per-organization summary, the witness summary and every violation."""
    table = Table(title="Audit: reports per organization")
    table.add_column("organization")
    table.add_column("verified", justify="right")
    table.add_column("violations", justify="right")
    for org in sorted(set(result.accepted) | set(result.rejected)):
        table.add_row(org, str(result.accepted[org]), str(result.rejected[org]))
    console.print(table)
    if result.witness and result.checkpoint_records:
        wt = Table(title=f"Witnessed log (quorum: {result.quorum} organizations)")
        for col in ("partition", "records", "checked", "witnessed up to", "signed by"):
            wt.add_column(col)
        for w in result.witness:
            wt.add_row(
                f"{w['topic']}[{w['partition']}]", str(w["records"]),
                str(w["checkpoints_checked"]), str(w["witnessed_size"]),
                f"{len(w['witnessed_by'])} orgs",
                style="red" if w["checkpoints_mismatched"] else None,
            )  # fmt: skip
        console.print(wt)
    if result.ok:
        console.print("[green]VERDICT: every record verified[/green]")
        return
    vt = Table(title=f"{len(result.violations)} violation(s)")
    for col in ("topic", "partition", "offset", "reason", "detail"):
        vt.add_column(col)
    for v in result.violations:
        vt.add_row(v.topic, str(v.partition), str(v.offset), v.reason, v.detail)
    console.print(vt)
    kinds = ", ".join(f"{k} x{n}" for k, n in sorted(result.violations_by_kind().items()))
    console.print(f"[red]VERDICT: {len(result.violations)} violation(s): {kinds}[/red]")


def write_json(result: AuditResult, path: Path) -> None:
    """Write the machine-readable audit report."""
    path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True), encoding="utf-8")
