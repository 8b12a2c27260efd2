"""The auditor's final verdicts: the sealed bus read with the bus reader every node runs.

The auditor hands a :class:`FinalCollector` every record of the seals topic and of every sealed
partition (:meth:`bus.topics.Topics.is_sealed`: reports, decisions and attachments of every
organization, the registry, the mandate topic, statements), live from the broker or from an
export, in whatever order it reads them. They are held in the audit's on-disk index
(:class:`nodes.auditor.index.AuditIndex`); :meth:`FinalCollector.judge` then feeds them to one
:class:`bus.bus_reader.BusReader`, the object every node runs over the same bus, so a node and
the auditor reach the same final seals and verdicts by construction, and collects its answers
(:class:`FinalAudit`):

* per record of a judged epoch, its final verdict: status and reason code of
  :class:`bus.judge.Status` and :class:`bus.errors.Reason`, and the epoch it was sealed in
  (``deferred`` while the next epoch, which judges it again, is not judged yet;
  ``revoked_after_acceptance`` with the epoch a revocation withdrew it at);
* per epoch, its final seal (epoch, *t_e*, the organizations whose signatures made it final,
  its digest) and the state digest after it (:attr:`bus.judge.EpochVerdicts.state_digest`);
  the last pair is what ``obus node final-state`` prints from a node's store;
* equivocation evidence: an organization that signed two seal texts for one epoch (both texts,
  both signature lines, both offsets on the seals topic);
* the records after the last judged epoch, per partition: "not sealed yet", no final verdict;
* a sealed record altered or deleted: the partition whose records do not hash to the final
  seal's root at its size, or that lacks an offset it seals
  (:class:`bus.errors.SealedRootMismatchError`), named with topic, partition and size;
* a proposal for the first epoch that seals registry records the log does not hold: its
  signatures cannot be judged, so no seal after it can become final at any reader.

**The first seal over an altered registry.** The first seal's signatures count under the root
mandate plus the registry records that seal covers; when the log's registry records no longer
hash to the roots it states, no node key counts for it, so it never becomes final and the bus
reader has nothing to name: every reader would just see a log that was never sealed. When no
epoch could be judged, the collector therefore checks every proposal for epoch 1 against the
log: one whose roots the log's records contradict, signed by a quorum of organizations whose
node keys the log's registry (as it is) accredits, is named as a sealed record altered. Only a
quorum's signatures name it, so no minority can fail an audit with a bogus proposal.

**The root.** The reader starts from the mandate given to the auditor. It must be the version the
bus began under, the same root every node starts from: the state digests chain from it
(:func:`bus.judge.genesis_digest`), and a later version would judge the mandate topic's earlier
versions as rollbacks. The collector notes a mandate-topic record that claims an earlier version
of the same mandate (:attr:`FinalAudit.root_warning`).

**Order and memory.** The verdicts do not depend on the order records are offered in (the bus
reader's contract); the order only bounds memory. The seals are offered in offset order until
the chain waits for a trust state or has made a final seal not yet judged; every partition is
then fed up to that seal's sizes, which judges the epoch and lets the chain go on. The first
seal's trust is the root mandate plus the registry records it seals, so while the chain waits
for it the registry is fed in chunks. The reader thus holds about one epoch's records at a time;
the log itself stays on disk, and so do the final verdicts, written to a
:class:`nodes.auditor.verdicts.VerdictTable` as each epoch is judged.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import gc
import operator
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bus.bus_reader import BusReader, BusUpdate
from bus.epoch import GENESIS_DIGEST, FinalSeal, PartitionRef, PartitionSeal
from bus.errors import SealedRootMismatchError, VerificationError
from bus.export import LogRecord
from bus.judge import EpochVerdicts, FinalJudge, RecordPos, Status
from bus.merkle import MerkleTree
from bus.model import PAYLOAD_MANDATE, Mandate, Role
from bus.seal import Equivocation, SealProposal, parse_seal_record, verify_seal
from bus.sealed import VerifiedSealed
from bus.topics import Topics
from bus.trust import decode_mandate_record
from bus.verify import Limits, VerifiedReport
from nodes.auditor.index import AuditIndex
from nodes.auditor.preverify import MAX_AHEAD, EpochPreverifier
from nodes.auditor.verdicts import FinalRow, FlatRow, VerdictTable

__all__ = [
    "EpochRow",
    "FinalAudit",
    "FinalCollector",
    "FinalRow",
    "Stuck",
    "Unsealed",
    "verdict_json",
]

# Records written to the index per transaction, and read from it per query.
_FLUSH: Final = 1000
_CHUNK: Final = 1000
_SEALS_CHUNK: Final = 256
_position: Final = operator.itemgetter(0, 1, 2)  # (topic, partition, offset) of a flat row
_TOPICS_CACHED: Final = 1024  # topics whose sealedness is remembered (cleared when full)
# The collector's gen-0 threshold while it judges (the interpreter's default is 700): the judge
# keeps objects for every accepted report, and each collection walked them (about 7 % of an
# audit's CPU). Garbage is still collected, later and in larger batches.
GC_GEN0: Final = 100_000

FINAL_NOTE: Final = (
    "Final verdicts are those every node reaches from the sealed log (the seals topic and every"
    " sealed partition, read with the bus reader the nodes run); a record's final verdict is"
    " the one that counts, and the audit's only one: records after the last judged epoch have"
    " none yet."
)


def b64(data: bytes) -> str:
    """Standard padded base64 text."""
    return base64.b64encode(data).decode()


_DAY_MS: Final = 86_400_000
_DAYS_CACHED: Final = 4096  # observation days remembered as text (cleared when full)
_days: dict[int, str] = {}


def _day(observed_at_ms: int) -> str:
    """The UTC day (ISO 8601) of a time in ms since the epoch; each day's text computed once
    (:data:`_DAYS_CACHED` days at a time)."""
    k = observed_at_ms // _DAY_MS
    day = _days.get(k)
    if day is None:
        if len(_days) >= _DAYS_CACHED:
            _days.clear()
        day = _days[k] = dt.datetime.fromtimestamp(k * 86_400, dt.UTC).date().isoformat()
    return day


def _where_and_when(report: VerifiedReport | VerifiedSealed | None) -> tuple[str, str]:
    """(zone, UTC observation day) of a verified report, "" where unknown."""
    if report is None:
        return "", ""
    inner = report.report
    if inner is None:  # restricted, content unread: the zone is on the outside
        return (report.sealed.zone if isinstance(report, VerifiedSealed) else ""), ""
    return inner.zone, _day(inner.observed_at_ms)


@dataclass(frozen=True, slots=True)
class EpochRow:
    """One judged epoch: its final seal (and the voting round it was final in) and the state
    digest after it."""

    epoch: int
    round: int
    time_ms: int
    signers: tuple[str, ...]
    digest: bytes
    prev_digest: bytes
    seal_offset: int
    state_digest: bytes
    mandate_version: int
    records: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, digests in base64."""
        return {
            "epoch": self.epoch,
            "round": self.round,
            "t_e": self.time_ms,
            "signers": list(self.signers),
            "digest": b64(self.digest),
            "prev_digest": b64(self.prev_digest),
            "seal_offset": self.seal_offset,
            "state_digest": b64(self.state_digest),
            "mandate_version": self.mandate_version,
            "records": self.records,
        }


@dataclass(frozen=True, slots=True)
class Unsealed:
    """Records of one partition after its last judged size: no final verdict yet."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int


@dataclass(frozen=True, slots=True)
class Stuck:
    """A seals record the chain could not judge: offset on the seals topic, and why."""

    offset: int
    detail: str


@dataclass
class FinalAudit:
    """What the bus reader made of the sealed log (module docstring)."""

    root_mandate_id: str
    root_version: int
    verdicts: VerdictTable
    root_warning: str | None = None
    seals_records: int = 0
    seal_counts: Counter[str] = field(default_factory=Counter)
    epochs: list[EpochRow] = field(default_factory=list)
    equivocations: list[Equivocation] = field(default_factory=list)
    not_sealed: list[Unsealed] = field(default_factory=list)
    mismatch: SealedRootMismatchError | None = None
    stuck: Stuck | None = None
    last_epoch: int = 0
    state_digest: bytes = b""
    mandate_versions: list[int] = field(default_factory=list)  # applied from the topic
    in_force: Mandate | None = None  # the version in force at the last judged epoch

    def add_epoch(self, ev: EpochVerdicts, seal: FinalSeal) -> None:
        """Take one judged epoch's answer."""
        self.epochs.append(
            EpochRow(
                ev.epoch, seal.round, ev.time_ms, tuple(sorted(seal.signers)), seal.digest,
                seal.prev_digest, seal.offset, ev.state_digest, ev.mandate_version,
                sum(1 for v in ev.verdicts if v.epoch == ev.epoch),
            )
        )  # fmt: skip
        rows: list[FlatRow] = []
        applied, newest = Status.APPLIED, self.root_version
        if self.mandate_versions:
            newest = self.mandate_versions[-1]
        for v in ev.verdicts:  # a deferred report's final verdict replaces "deferred"
            status = v.status
            if status is applied:
                trust = v.trust
                if isinstance(trust, Mandate) and trust.version > newest:
                    self.mandate_versions.append(trust.version)  # not a copy of the one in force
                    newest = trust.version
            zone, day = _where_and_when(v.report) if v.report is not None else ("", "")
            rows.append((*v.pos, v.epoch, status.value, v.reason, v.detail, None, zone, day))
        # In position order, the table's key: its B-tree then grows at each partition's end
        # rather than at random pages (a stable sort: were a position given twice, the later
        # row would still replace the earlier).
        rows.sort(key=_position)
        self.verdicts.put_flat(rows)
        if ev.changes:
            self.verdicts.change((c.pos, c.status.value, c.detail, c.at_epoch) for c in ev.changes)

    def by_status(self) -> Counter[str]:
        """How many records hold each final status."""
        return self.verdicts.by_status()

    def to_json(self, *, verdicts: bool = True) -> dict[str, Any]:
        """JSON-ready; every list in an order that depends on the log alone (the verdicts by
        topic, partition and offset). ``verdicts=False`` leaves the per-record list out (one
        entry per sealed record: :func:`verdict_json` gives them one by one)."""
        m = self.mismatch
        return {
            "note": FINAL_NOTE,
            "root_mandate": {"mandate_id": self.root_mandate_id, "version": self.root_version},
            "root_warning": self.root_warning,
            "seals_records": self.seals_records,
            "seals_by_disposition": dict(self.seal_counts),
            "epochs": [e.to_json() for e in self.epochs],
            "last_epoch": self.last_epoch,
            "mandate_versions": self.mandate_versions,
            "state_digest": b64(self.state_digest) if self.last_epoch else None,
            "verdicts_by_status": dict(self.by_status()),
            **(
                {"verdicts": [verdict_json(row) for row in self.verdicts.items()]}
                if verdicts
                else {}
            ),
            "equivocations": [_equivocation_json(e) for e in self.equivocations],
            "not_sealed_yet": [dataclasses.asdict(u) for u in self.not_sealed],
            "sealed_root_mismatch": None
            if m is None
            else {"topic": m.topic, "partition": m.partition, "size": m.size, "detail": m.message},
            "seals_stuck": None if self.stuck is None else dataclasses.asdict(self.stuck),
        }


def _equivocation_json(e: Equivocation) -> dict[str, Any]:
    """An equivocation's evidence, its key ids in base64 like every other digest and key id
    the audit shows."""
    doc = e.to_json()
    doc["first"]["key_id"] = b64(e.first.key_id)
    doc["second"]["key_id"] = b64(e.second.key_id)
    return doc


def verdict_json(row: tuple[RecordPos, FinalRow]) -> dict[str, Any]:
    """One entry of the per-record verdict list of :meth:`FinalAudit.to_json`."""
    (t, p, o), r = row
    return {
        "topic": t,
        "partition": p,
        "offset": o,
        "epoch": r.epoch,
        "status": r.status,
        "reason": r.reason,
        "detail": r.detail,
        "changed_at_epoch": r.changed_at,
    }


@contextlib.contextmanager
def fewer_collections(gen0: int = GC_GEN0) -> Iterator[None]:
    """Raise the garbage collector's gen-0 threshold to at least ``gen0`` for the block (the
    judging loop is synchronous: nothing else runs meanwhile), then restore it."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], gen0), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


class FinalCollector:
    """Holds the seals topic and every sealed partition, then judges them (module docstring).

    Args:
        root: the mandate the bus began under.
        topics: topic naming of the log.
        index: the audit's on-disk index, where the records wait.
        limits: verification limits (the nodes').
        work_dir: where the verdict table's temporary file goes (default: the system's
            temporary directory).
        verify_workers: worker processes that check report signatures one epoch ahead of the
            judge (:mod:`nodes.auditor.preverify`; the verdicts are the same); 0: the judge
            checks every one itself.
    """

    def __init__(
        self,
        root: Mandate,
        topics: Topics,
        index: AuditIndex,
        limits: Limits | None = None,
        *,
        work_dir: Path | None = None,
        verify_workers: int = 0,
    ) -> None:
        if verify_workers < 0:
            raise ValueError("verify_workers must be >= 0")
        self._verify_workers = verify_workers
        self._root = root
        self._work_dir = work_dir
        self._topics = topics
        self._index = index
        self._limits = limits
        self._seals: list[tuple[int, bytes | None]] = []
        self._records: list[tuple[str, int, int, bytes | None]] = []
        self._earlier: int | None = None  # an earlier version of the root claimed on the log
        self._sealed_topics: dict[str, bool] = {}  # topic -> is_sealed, as met

    def seal(self, rec: LogRecord) -> None:
        """A record of the seals topic."""
        self._seals.append((rec.offset, rec.value))
        if len(self._seals) >= _FLUSH:
            self._flush()

    def record(self, rec: LogRecord) -> None:
        """A record of any topic: kept when seals cover its topic, else ignored."""
        topic = rec.topic
        sealed = self._sealed_topics.get(topic)
        if sealed is None:
            if len(self._sealed_topics) >= _TOPICS_CACHED:
                self._sealed_topics.clear()
            sealed = self._sealed_topics[topic] = self._topics.is_sealed(topic)
        if not sealed:
            return
        if topic == self._topics.mandate:
            self._note_version(rec.value)
        self._records.append((topic, rec.partition, rec.offset, rec.value))
        if len(self._records) >= _FLUSH:
            self._flush()

    def _note_version(self, value: bytes | None) -> None:
        """Remember the earliest version of the root's mandate a mandate record claims (decoded
        only, not verified: it raises a warning, never a verdict)."""
        try:
            env = decode_mandate_record(value or b"")
            if env.payload_type != PAYLOAD_MANDATE:
                return
            claimed = Mandate.decode(env.payload)
        except VerificationError:
            return  # claims nothing
        version = claimed.version
        if claimed.mandate_id == self._root.mandate_id and version < self._root.version:
            self._earlier = version if self._earlier is None else min(self._earlier, version)

    def _flush(self) -> None:
        if self._seals:
            self._index.add_seals(self._seals)
            self._seals = []
        if self._records:
            self._index.add_sealed(self._records)
            self._records = []

    def judge(self) -> FinalAudit:
        """Feed everything held to a new bus reader and collect its answers."""
        self._flush()
        out = FinalAudit(self._root.mandate_id, self._root.version, VerdictTable(self._work_dir))
        if self._earlier is not None:
            out.root_warning = (
                f"the mandate topic holds a record claiming version {self._earlier} of"
                f" {self._root.mandate_id}, earlier than the root given (version"
                f" {self._root.version}): if the bus began under it, audit with that version"
            )
        out.seals_records = self._index.count_seals()
        with contextlib.ExitStack() as stack:
            stack.enter_context(fewer_collections())
            pre = None
            if self._verify_workers:
                limit = (self._limits or Limits()).max_record_bytes
                pre = stack.enter_context(
                    EpochPreverifier(self._verify_workers, self._index, max_record_bytes=limit)
                )
            reader = BusReader(self._root, self._topics, self._limits, preverified=pre)
            feeder = _Feeder(reader, self._index, self._topics, out, pre)
            try:
                feeder.run()
            except SealedRootMismatchError as exc:
                out.mismatch = exc
        if out.mismatch is None and reader.judge.epoch == 0 and out.seals_records:
            out.mismatch = self._first_seal_contradicted()
        if out.mismatch is None and reader.chain.waiting:
            out.stuck = Stuck(
                reader.seals_from - 1,
                f"a proposal for epoch {reader.chain.open_epoch} seals registry records the log"
                " does not hold, so its signatures cannot be judged and no later seals record"
                " can make a seal final",
            )
        out.seal_counts = Counter(reader.chain.counts)
        out.last_epoch = reader.judge.epoch
        out.state_digest = reader.judge.digest
        out.in_force = next(
            (m for first, m in reversed(reader.judge.versions) if first <= out.last_epoch),
            self._root,
        )
        positions = reader.positions()
        for ref in self._index.sealed_partitions():
            tail = self._index.sealed_tail(ref, positions.get(ref, 0))
            if tail is not None:
                out.not_sealed.append(Unsealed(ref[0], ref[1], tail[1], tail[2], tail[0]))
        return out

    def _first_seal_contradicted(self) -> SealedRootMismatchError | None:
        """A proposal for epoch 1 that a quorum signed and the log's records contradict, named
        (module docstring, "The first seal over an altered registry"), or None."""
        texts: dict[bytes, tuple[int, SealProposal, list[bytes]]] = {}
        after = -1
        while rows := self._index.seals_after(after, _SEALS_CHUNK):
            after = rows[-1][0]
            for offset, value in rows:
                try:
                    record = parse_seal_record(value or b"")
                except VerificationError:
                    continue
                p = record.proposal
                if p.epoch == 1 and p.mandate_id == self._root.mandate_id:
                    texts.setdefault(record.digest, (offset, p, []))[2].append(value or b"")
        for offset, proposal, values in texts.values():
            named = self._contradiction(offset, proposal, values)
            if named is not None:
                return named
        return None

    def _contradiction(
        self, offset: int, proposal: SealProposal, values: list[bytes]
    ) -> SealedRootMismatchError | None:
        contradicted: tuple[PartitionRef, int] | None = None
        registry: dict[PartitionRef, tuple[PartitionSeal, list[bytes | None]]] = {}
        for ref, sealed in proposal.partitions.items():
            keep = ref[0] == self._topics.registry
            tree, kept = MerkleTree(store_leaves=False), list[bytes | None]()
            while tree.size < sealed.size:  # offsets 0.. without a gap, chunk by chunk
                rows = self._index.sealed_rows(ref, tree.size, sealed.size, _CHUNK)
                if not rows or rows[0][0] != tree.size:
                    break
                for at, v in rows:
                    if at != tree.size:
                        break
                    tree.append(v or b"")
                    if keep:
                        kept.append(v)
            whole = tree.size == sealed.size
            if (not whole or tree.root() != sealed.root) and contradicted is None:
                contradicted = (ref, sealed.size)
            if keep:
                if not whole:
                    return None  # the chain waits on it: named as such
                registry[ref] = (PartitionSeal(sealed.size, tree.root()), kept)
        if contradicted is None:
            return None
        # The trust the log's registry gives, as it is: who signed this text?
        scratch = FinalJudge(self._root, self._topics, self._limits)
        if registry:
            partitions = {ref: seal for ref, (seal, _) in registry.items()}
            as_is = FinalSeal(self._root.mandate_id, 1, proposal.time_ms, partitions,
                              proposal.digest, GENESIS_DIGEST)  # fmt: skip
            scratch.judge_epoch(as_is, {ref: records for ref, (_, records) in registry.items()})
        ring = scratch.keyring
        orgs: set[str] = set()
        for value in values:
            orgs |= verify_seal(value, ring).orgs
        if len(orgs) < ring.mandate.threshold:
            return None
        (topic, partition), size = contradicted
        return SealedRootMismatchError(
            f"{topic}[{partition}]: {', '.join(sorted(orgs))} signed the seal of epoch 1 (seals"
            f" offset {offset}) stating its first {size} records, and the log's records there"
            " hash to another root or lack an offset: a sealed record was altered or deleted"
            " (no seal can become final over it)",
            topic=topic,
            partition=partition,
            size=size,
        )


class _Feeder:
    """Feeds one bus reader from the index in the order of the module docstring."""

    def __init__(
        self,
        reader: BusReader,
        index: AuditIndex,
        topics: Topics,
        out: FinalAudit,
        pre: EpochPreverifier | None = None,
    ) -> None:
        self._pre = pre
        self._reader = reader
        self._index = index
        self._topics = topics
        self._out = out
        self._pos: dict[PartitionRef, int] = {}  # next offset to read from the index
        self._seals: deque[tuple[int, bytes | None]] = deque()
        self._seal_pos = -1  # last seals offset read from the index
        self._finals: dict[int, FinalSeal] = {}

    def run(self) -> None:
        """Feed until nothing more can be judged.

        Raises:
            SealedRootMismatchError: a sealed record was altered or deleted.
        """
        reader = self._reader
        while True:
            self._offer_seals()
            latest = reader.latest
            if latest is not None and latest.epoch > reader.judge.epoch:
                if self._pre is not None:
                    self._verify_ahead(latest)
                for ref in sorted(latest.partitions):
                    end = latest.size(ref)
                    while self._pos.get(ref, 0) < end and self._feed(ref, end):
                        pass
                if reader.judge.epoch < latest.epoch:
                    raise self._deleted(latest)
                continue
            if reader.chain.waiting and self._feed_registry():
                continue
            return

    def _verify_ahead(self, latest: FinalSeal) -> None:
        """Have the workers check the report records ``latest`` seals and as many again after
        them (the next epoch, checked while this one is judged)."""
        pre = self._pre
        assert pre is not None
        ring = self._reader.judge.keyring
        pre.set_keys({a.key_id: a.public_key for a in ring.accreditations(Role.OBSERVER)})
        sizes = self._reader.positions()
        for ref in sorted(latest.partitions):
            if self._topics.org_of_report_topic(ref[0]) is None:
                continue
            start, end = sizes.get(ref, 0), latest.size(ref)
            pre.ahead(ref, start, end + min(end - start, MAX_AHEAD))

    def _unjudged(self) -> bool:
        latest = self._reader.latest
        return latest is not None and latest.epoch > self._reader.judge.epoch

    def _offer_seals(self) -> None:
        """Seals records in offset order until the chain waits or a final seal awaits its
        records."""
        while not self._reader.chain.waiting and not self._unjudged():
            if not self._seals:
                self._seals.extend(self._index.seals_after(self._seal_pos, _SEALS_CHUNK))
                if not self._seals:
                    return
                self._seal_pos = self._seals[-1][0]
            offset, value = self._seals.popleft()
            self._take(self._reader.offer_seal(offset, value))

    def _feed(self, ref: PartitionRef, end: int | None) -> int:
        """Offer the next chunk of ``ref`` below ``end`` (None: no bound); the records
        offered. Offsets absent from the index are left out of the offers (deleted)."""
        rows = self._index.sealed_rows(ref, self._pos.get(ref, 0), end, _CHUNK)
        if not rows:
            return 0
        start, values = rows[0][0], list[bytes | None]()
        for offset, value in rows:
            if offset != start + len(values):
                self._take(self._reader.offer_records(ref, start, values))
                start, values = offset, []
            values.append(value)
        self._take(self._reader.offer_records(ref, start, values))
        self._pos[ref] = rows[-1][0] + 1
        return len(rows)

    def _feed_registry(self) -> bool:
        """The next chunk of the registry (what the first seal's trust reads), if any."""
        for ref in self._index.sealed_partitions():
            if ref[0] == self._topics.registry and self._feed(ref, None):
                return True
        return False

    def _take(self, update: BusUpdate) -> None:
        for seal in update.finals:
            self._finals[seal.epoch] = seal
        self._out.equivocations.extend(update.equivocations)
        for ev in update.epochs:
            self._out.add_epoch(ev, self._finals.pop(ev.epoch))

    def _deleted(self, seal: FinalSeal) -> SealedRootMismatchError:
        """The mismatch for a final seal whose records the log lacks at a partition's end."""
        view = self._reader.view()
        topic, partition = next(
            ref for ref in sorted(seal.partitions) if view.size(ref) < seal.size(ref)
        )
        size = seal.size((topic, partition))
        first = view.size((topic, partition))
        return SealedRootMismatchError(
            f"{topic}[{partition}]: offset {first} is sealed by epoch {seal.epoch} (size {size})"
            " but absent from the log: a sealed record was deleted",
            topic=topic,
            partition=partition,
            size=size,
        )
