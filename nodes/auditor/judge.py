"""The auditor's judge: verify a whole log, fed section by section, and name every violation.

One judge, :class:`AuditRun`, is fed the log section by section in the order of the export
format (:mod:`bus.export`): seals, mandate versions, registry, checkpoints, every report record,
then decisions, statements and attachments (which only the final verdicts read).
:mod:`nodes.auditor.run` feeds it, live from the broker or from an export file. It uses the same
verification path as the nodes (:class:`bus.ingest.Ingestor`) and reports every violation with
its topic, partition, offset and reason code.

What it checks besides each report: the mandate chain and the registry (as every node does,
:class:`bus.lifecycle.TrustTimeline`), each registry record under the mandate version in force
when it was logged (:class:`nodes.auditor.trust_feed.TrustFeed`); every checkpoint record's
signatures by accredited node keys (:func:`bus.checkpoint.verify_checkpoint`); the records of
every report partition against every checkpoint of it; offsets missing (``record_missing``) or
out of order (``record_out_of_order``); and, with ``require_witnessed``, that a checkpoint
signed by a quorum (the mandate threshold) of organizations covers every record
(``witness_quorum_not_met``). It recomputes every root from the records, which is stronger
than checking inclusion and consistency proofs between checkpoints: every checkpoint that
matches one append-only tree is consistent with the others.

Only a quorum speaks for the log. A checkpoint text signed or cosigned by at least the
mandate's threshold of organizations is a *quorum checkpoint*; the others are *minority*
checkpoints. The verdicts on checkpoints:

* **The log forked** (violations, :attr:`AuditResult.violations`): two quorum checkpoints of one
  partition and size with different roots (``split_view``); a quorum checkpoint whose root is
  not the records' root at its size (``checkpoint_root_mismatch``) or whose size exceeds the
  records held (``checkpoint_beyond_log``).
* **Evidence against signers** (findings, :attr:`AuditResult.findings`; the records are judged
  as usual): an organization that signed two texts of one partition and size with different
  roots (``equivocation``: both texts, both signature lines, counted against it); a minority
  checkpoint whose root is not the records' root at a size a quorum checkpoint vouches for
  (``checkpoint_contradicts_quorum``, counted against its signers, except those already named
  for equivocation at that size); a minority checkpoint that contradicts records no quorum has
  witnessed, or signs more records than the log holds (``checkpoint_unconfirmed``: the
  signers' word against the log's, counted against nobody; ``require_witnessed`` makes those
  records violations).

**Final verdicts.** Besides this per-record audit (the *legacy* audit, which judges by log time
and read order), the run hands the seals topic and every sealed partition to a
:class:`nodes.auditor.sealed.FinalCollector`, which judges them with the bus reader every node
runs (:attr:`AuditResult.final`). Where a record has a final verdict, that verdict is the one
that counts: a record the final judge quarantines (or accepted and a revocation withdrew) is a
violation, and the legacy audit's verdict on it is not; where the two differ, the difference is
listed (:attr:`AuditResult.differences`). A sealed record altered or deleted
(``sealed_root_mismatch``), a proposal that seals registry records the log lacks
(``seal_beyond_log``) and, in an export, one offset given two values (``export_corrupt``) are
violations; an organization that signed two seal texts for one epoch is evidence against it
(:attr:`AuditResult.clean` is false). Records after the last judged epoch have no final verdict
("not sealed yet") and keep the legacy audit's.

Memory does not grow with the log: one frontier-only Merkle tree per partition (at most 64
hashes), report ids for duplicate detection, the checkpoints, the held-back mandate records and
the sealed records in a temporary SQLite file (:class:`nodes.auditor.index.AuditIndex`), and
counters by organization, zone and day. The lists of violations and findings grow with them, and
the final verdicts with the log (one small row per sealed record).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from bus.checkpoint import Checkpoint, NoteKeys, origin_for, parse_origin, verify_checkpoint
from bus.errors import Reason, VerificationError
from bus.export import ExportProblem, LogRecord
from bus.idfilter import IdFilter
from bus.ingest import Accepted, AcceptedSealed, Ingestor, RecordRef
from bus.judge import RecordPos, Status
from bus.lifecycle import TrustTimeline
from bus.merkle import MerkleTree
from bus.model import Envelope, Mandate
from bus.topics import Topics
from bus.verify import ChainBook, Limits
from nodes.auditor.index import AuditIndex, Text
from nodes.auditor.sealed import FinalAudit, FinalCollector, b64
from nodes.auditor.trust_feed import TrustFeed

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


class FindingKind(enum.StrEnum):
    """What a finding says about the organizations that signed checkpoints (module docstring)."""

    EQUIVOCATION = "equivocation"
    CHECKPOINT_CONTRADICTS_QUORUM = "checkpoint_contradicts_quorum"
    CHECKPOINT_UNCONFIRMED = "checkpoint_unconfirmed"


@dataclass(frozen=True, slots=True)
class Evidence:
    """A signed checkpoint text a finding rests on: the text, one organization's signature line
    on it, and the offset on the checkpoints topic of the record that carried that line."""

    text: str
    org: str
    line: str
    offset: int


@dataclass(frozen=True, slots=True)
class Finding:
    """Evidence against the signers of checkpoints, not a fault of the log.

    ``against`` holds the organizations it counts against (empty: undecided); ``signers`` every
    organization that signed the text(s) in question; ``size`` the checkpoint size at stake.
    """

    kind: str
    against: tuple[str, ...]
    signers: tuple[str, ...]
    topic: str
    partition: int
    size: int
    detail: str
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True, slots=True)
class Difference:
    """A record on which the legacy per-record audit and the final verdict disagree (the final
    verdict counts)."""

    topic: str
    partition: int
    offset: int
    epoch: int
    legacy_status: str
    legacy_reason: str
    final_status: str
    final_reason: str


@dataclass
class AuditResult:
    """Counts per organization, every violation and every finding, and the final verdicts.

    :attr:`ok` is the exit rule of ``obus audit``: no violation. Findings do not change it
    (:attr:`clean` is the strict rule: no violation, no finding and no seal equivocation).
    ``accepted``, ``rejected``, ``by_zone`` and ``by_day`` count the legacy audit's verdicts;
    :attr:`final` holds the final ones (module docstring) once the run is finished.
    """

    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
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
    final: FinalAudit | None = None
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the log is consistent and every record verified (no violation)."""
        return not self.violations

    @property
    def clean(self) -> bool:
        """True when, besides, no organization's checkpoints were found wanting and none
        signed two seal texts for one epoch."""
        return self.ok and not self.findings and not (self.final and self.final.equivocations)

    def final_digest(self) -> dict[str, Any] | None:
        """The last judged epoch and the state digest after it (base64; None before the first
        epoch), the pair ``obus node final-state`` prints from a node's store; None before the
        run is finished."""
        f = self.final
        if f is None:
            return None
        digest = b64(f.state_digest) if f.last_epoch else None
        return {"epoch": f.last_epoch, "state_digest": digest}

    def violations_by_kind(self) -> Counter[str]:
        """How many violations of each reason code."""
        return Counter(v.reason for v in self.violations)

    def findings_by_org(self) -> Counter[str]:
        """How many findings count against each organization."""
        return Counter(org for f in self.findings for org in f.against)

    def findings_by_kind(self) -> Counter[str]:
        """How many findings of each kind."""
        return Counter(f.kind for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable summary."""
        return {
            "ok": self.ok,
            "clean": self.clean,
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
            "findings_by_org": dict(self.findings_by_org()),
            "findings_by_kind": dict(self.findings_by_kind()),
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "final_digest": self.final_digest(),
            "final": None
            if self.final is None
            else {
                **self.final.to_json(),
                "differences": [dataclasses.asdict(d) for d in self.differences],
            },
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
    mismatched: int = 0  # quorum checkpoints the records contradict
    disputed: int = 0  # minority checkpoints the records contradict


@dataclass(frozen=True, slots=True)
class _Dispute:
    """A minority checkpoint the records contradict, judged once every size is known."""

    origin: str
    topic: str
    partition: int
    text: Text
    ours: bytes


def _short(root: bytes) -> str:
    return f"{root.hex()[:16]}…"


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
        self._index = AuditIndex(work_dir)
        self._trust = TrustFeed(self.timeline, on_mandate=self._mandate_outcome, queue=self._index)
        self._ingestor: Ingestor | None = None
        # Report ids already seen: the index behind a Bloom filter (bus.idfilter).
        self._ids = IdFilter(self._index.digest, self._index.ids)
        self._pending_ids: list[tuple[str, bytes]] = []
        # (public key, raw) pairs whose signatures worker processes accepted (live audit with
        # verify_workers; see nodes/runtime/preverify.py); empty otherwise.
        self.preverified: Container[tuple[bytes, bytes]] = frozenset()
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._note_keys: dict[int, NoteKeys] = {}
        self._trust_done = False
        self._checkpoints_done = False
        # (origin, size) -> organizations that signed two roots there; the records' root there
        self._equivocated: dict[tuple[str, int], set[str]] = {}
        self._roots_seen: dict[tuple[str, int], bytes] = {}
        self._equivocations: list[tuple[str, int, dict[str, list[Text]]]] = []
        self._disputes: list[_Dispute] = []
        # Registry records the version in force at their log time refused, with why; a later
        # version may still count them (see registry_record).
        self._refused: list[tuple[LogRecord, VerificationError]] = []
        # The legacy audit's rejections of report and trust records, by position.
        self._legacy: dict[RecordPos, Violation] = {}
        self._final = FinalCollector(mandate, topics, self._index, limits)
        self.records = 0

    def close(self) -> None:
        """Remove the temporary index."""
        self._index.close()

    def _violation(self, rec: LogRecord, reason: str, detail: str) -> None:
        self.result.violations.append(
            Violation(rec.topic, rec.partition, rec.offset, reason, detail)
        )

    def _rejected(self, rec: LogRecord, reason: str, detail: str) -> None:
        """The legacy audit rejects a report or trust record (a verdict a final one replaces)."""
        v = Violation(rec.topic, rec.partition, rec.offset, reason, detail)
        self.result.violations.append(v)
        self._legacy.setdefault((rec.topic, rec.partition, rec.offset), v)

    @property
    def quorum(self) -> int:
        """Organizations a checkpoint needs to speak for the log (the newest threshold)."""
        return self.timeline.mandate.threshold

    # -- sections ----------------------------------------------------------------------------

    def problem(self, p: ExportProblem) -> None:
        """A problem with the export file itself, at a line number."""
        self.result.violations.append(
            Violation(EXPORT_TOPIC, -1, p.line_no, Reason.EXPORT_CORRUPT.value, p.detail)
        )

    def record(self, rec: LogRecord) -> None:
        """Dispatch a record by its section."""
        handler = {
            "seals": self.seal_record,
            "mandate": self.mandate_record,
            "registry": self.registry_record,
            "checkpoints": self.checkpoint_record,
            "reports": self.report_record,
            "decisions": self.sealed_record,
            "statements": self.sealed_record,
            "attachments": self.sealed_record,
        }[rec.section]
        handler(rec)

    def seal_record(self, rec: LogRecord) -> None:
        """A record of the seals topic (for the final verdicts)."""
        self._final.seal(rec)

    def sealed_record(self, rec: LogRecord) -> None:
        """A record of a sealed topic only the final judge reads (decisions, statements,
        attachments)."""
        self._final.record(rec)

    def mandate_record(self, rec: LogRecord) -> None:
        """A record of the mandate topic, offered once the registry reaches its log time."""
        self._final.record(rec)
        self._trust.mandate(rec)

    def _mandate_outcome(
        self, rec: LogRecord, applied: Mandate | None, error: VerificationError | None
    ) -> None:
        if error is not None:
            self._rejected(rec, error.reason.value, error.message)
        elif applied is not None:
            self.result.mandate_versions.append(applied.version)
            still: list[tuple[LogRecord, VerificationError]] = []
            for refused, exc in self._refused:
                try:  # counted by the new version from its start (as every node counts it)
                    self.timeline.current.apply(Envelope.decode(refused.value or b""))
                except VerificationError:
                    still.append((refused, exc))
            self._refused = still

    def registry_record(self, rec: LogRecord) -> None:
        """An accreditation, revocation or encryption-key record.

        It is judged under the version in force when it was logged, so a later rotation or
        membership change never turns a record genuine then into a violation. One refused
        there is a violation only if no later version counts it either (an organization that
        accredits a key just before the version that admits it is logged: the key counts from
        that version on, at every node).
        """
        self.result.registry_records += 1
        self._final.record(rec)
        try:
            self._trust.registry(rec)
        except VerificationError as exc:
            self._refused.append((rec, exc))

    def end_trust(self) -> None:
        """The mandate and registry sections are over: every held mandate version is offered.

        Called by the first checkpoint or report record; a feeder that needs the final key
        state before that (signature workers) calls it itself.
        """
        if not self._trust_done:
            self._trust_done = True
            self._trust.settle()
            for rec, exc in self._refused:
                self._rejected(rec, exc.reason.value, exc.message)
            self._refused.clear()

    def checkpoint_record(self, rec: LogRecord) -> None:
        """A checkpoint or cosignature note: verified, then indexed by (origin, size, root)."""
        self.end_trust()
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
        self._index.add_checkpoint(
            cp.origin, cp.size, cp.root, rec.offset, [(a.org, a.line) for a in vc.attestations]
        )

    def _end_checkpoints(self) -> None:
        """Every checkpoint is indexed: name the forks and the equivocations among them."""
        self.end_trust()
        if self._checkpoints_done:
            return
        self._checkpoints_done = True
        self.result.checkpoint_texts = self._index.count_texts()
        for origin, size in self._index.split_views():
            texts = self._index.roots_at(origin, size)
            quorum_texts = [t for t in texts if len(t.orgs) >= self.quorum]
            if len(quorum_texts) > 1:
                detail = "; ".join(
                    f"root {_short(t.root)} signed by {', '.join(t.orgs)}" for t in quorum_texts
                )
                self.result.violations.append(
                    Violation(
                        self.topics.checkpoints,
                        0,
                        min(t.offset for t in quorum_texts),
                        Reason.SPLIT_VIEW.value,
                        f"{origin} size {size}: two quorum checkpoints: {detail}",
                    )
                )
            signed: dict[str, list[Text]] = {}
            for t in texts:
                for org in t.orgs:
                    signed.setdefault(org, []).append(t)
            twice = {org: ts for org, ts in sorted(signed.items()) if len(ts) > 1}
            if twice:
                self._equivocated[(origin, size)] = set(twice)
                self._equivocations.append((origin, size, twice))

    def report_record(self, rec: LogRecord) -> None:
        """A record of a report topic: verified, chained, counted and put in its tree."""
        self._end_checkpoints()
        self._final.record(rec)
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
            self._rejected(rec, outcome.reason, outcome.detail)
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
        if (origin, size) in self._equivocated:
            self._roots_seen[(origin, size)] = ours
        for text in self._index.roots_at(origin, size):
            state.checked += 1
            quorum = len(text.orgs) >= self.quorum
            if text.root == ours:
                if quorum and size >= state.witnessed_size:
                    state.witnessed_size, state.witnessed_orgs = size, text.orgs
                    state.witnessed_offset = state.last_offset
                continue
            if not quorum:  # the signers' word against the log's: judged in finish()
                state.disputed += 1
                self._disputes.append(_Dispute(origin, topic, partition, text, ours))
                continue
            state.mismatched += 1
            self.result.violations.append(
                Violation(
                    topic,
                    partition,
                    state.last_offset,
                    Reason.CHECKPOINT_ROOT_MISMATCH.value,
                    f"the first {size} records hash to {_short(ours)}, but a quorum checkpoint"
                    f" of that size signed by {', '.join(text.orgs)} has root {_short(text.root)}",
                )
            )
        state.next_size = self._index.next_size(origin, size)

    # -- findings ------------------------------------------------------------------------------

    def _evidence(self, origin: str, text: Text, org: str) -> Evidence:
        att = self._index.attestation(origin, text.size, text.root, org)
        body = Checkpoint(origin, text.size, text.root).text().decode()
        return Evidence(body, org, att.line.decode(), att.offset)

    def _finding(
        self, kind: FindingKind, against: tuple[str, ...], origin: str, text: Text, detail: str
    ) -> None:
        _, topic, partition = parse_origin(origin)
        self.result.findings.append(
            Finding(
                kind.value, against, text.orgs, topic, partition, text.size, detail,
                tuple(self._evidence(origin, text, org) for org in text.orgs),
            )
        )  # fmt: skip

    def _equivocation_findings(self) -> None:
        for origin, size, twice in self._equivocations:
            _, topic, partition = parse_origin(origin)
            ours = self._roots_seen.get((origin, size))
            held = (
                f"the records hash to {_short(ours)}"
                if ours is not None
                else f"the log holds fewer than {size} records"
            )
            for org, texts in twice.items():
                roots = " and ".join(_short(t.root) for t in texts)
                self.result.findings.append(
                    Finding(
                        FindingKind.EQUIVOCATION.value, (org,),
                        tuple(sorted({o for t in texts for o in t.orgs})), topic, partition, size,
                        f"{org} signed {len(texts)} roots for {origin} at size {size}: {roots};"
                        f" {held}",
                        tuple(self._evidence(origin, t, org) for t in texts),
                    )
                )  # fmt: skip

    def _dispute_findings(self) -> None:
        for d in self._disputes:
            size = d.text.size
            witnessed = self._parts[(d.topic, d.partition)].witnessed_size >= size
            named = self._equivocated.get((d.origin, size), set())
            against = tuple(o for o in d.text.orgs if o not in named)
            says = (
                f"the first {size} records hash to {_short(d.ours)}, but a minority checkpoint"
                f" signed by {', '.join(d.text.orgs)} has root {_short(d.text.root)}"
            )
            if witnessed and not against:
                continue  # every signer is named for equivocation at this size already
            if witnessed:
                self._finding(
                    FindingKind.CHECKPOINT_CONTRADICTS_QUORUM, against, d.origin, d.text,
                    f"{says}; a quorum checkpoint vouches for those records",
                )  # fmt: skip
            else:
                self._finding(
                    FindingKind.CHECKPOINT_UNCONFIRMED, (), d.origin, d.text,
                    f"{says}; no quorum checkpoint covers those records yet: the signers' word"
                    " against the log's (--require-witnessed makes such records violations)",
                )  # fmt: skip

    def _beyond_log(self, result: AuditResult) -> None:
        for origin in self._index.origins():
            _, topic, part = parse_origin(origin)
            held = self._parts.get((topic, part))
            size = 0 if held is None else held.tree.size
            beyond = self._index.texts_above(origin, size)
            quorum_sizes = [t.size for t in beyond if len(t.orgs) >= self.quorum]
            if quorum_sizes:
                result.violations.append(
                    Violation(
                        topic, part, size, Reason.CHECKPOINT_BEYOND_LOG.value,
                        f"a quorum checkpoint signs {max(quorum_sizes)} records of"
                        f" {topic}[{part}]; the log holds {size}",
                    )
                )  # fmt: skip
            for t in beyond:
                if len(t.orgs) < self.quorum:
                    self._finding(
                        FindingKind.CHECKPOINT_UNCONFIRMED, (), origin, t,
                        f"a minority checkpoint signed by {', '.join(t.orgs)} signs {t.size}"
                        f" records of {topic}[{part}]; the log holds {size}",
                    )  # fmt: skip

    def finish(self) -> AuditResult:
        """Close every partition and return the result."""
        self._end_checkpoints()
        self._flush_ids()
        result = self.result
        result.quorum = self.quorum
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
                    "checkpoints_disputed": state.disputed,
                    "witnessed_size": state.witnessed_size,
                    "witnessed_by": list(state.witnessed_orgs),
                    "unwitnessed": unwitnessed,
                }
            )
        self._beyond_log(result)
        self._equivocation_findings()
        self._dispute_findings()
        self._final_verdicts(result)
        result.violations.sort(key=lambda v: (v.topic, v.partition, v.offset, v.reason, v.detail))
        log.info(
            "audit_finished",
            ok=result.ok,
            records=self.records,
            violations=len(result.violations),
            findings=len(result.findings),
            final_epoch=result.final.last_epoch if result.final else 0,
            source=result.source,
        )
        return result

    # -- final verdicts --------------------------------------------------------------------------

    def _legacy_judged(self, topic: str) -> bool:
        """Whether the legacy audit gives records of ``topic`` a verdict of their own."""
        t = self.topics
        return topic in (t.registry, t.mandate) or t.org_of_report_topic(topic) is not None

    def _final_verdicts(self, result: AuditResult) -> None:
        """Judge the sealed log; its verdicts replace the legacy ones where they exist."""
        final = result.final = self._final.judge()
        pending = Status.DEFERRED.value
        superseded = {
            v
            for pos, v in self._legacy.items()
            if pos in final.verdicts and final.verdicts[pos].status != pending
        }
        result.violations = [v for v in result.violations if v not in superseded]
        for pos in final.failed():
            row = final.verdicts[pos]
            result.violations.append(Violation(*pos, row.reason or row.status, row.detail))
        for (topic, partition, offset), row in final.verdicts.items():
            if row.status == pending or not self._legacy_judged(topic):
                continue
            legacy = self._legacy.get((topic, partition, offset))
            if legacy is not None:
                was = (Status.QUARANTINED.value, legacy.reason)
            elif self.topics.org_of_report_topic(topic) is not None:
                was = (Status.ACCEPTED.value, "")
            else:
                was = (Status.APPLIED.value, "")
            if was != (row.status, row.reason):
                result.differences.append(
                    Difference(topic, partition, offset, row.epoch, *was, row.status, row.reason)
                )
        m = final.mismatch
        if m is not None:
            result.violations.append(
                Violation(
                    m.topic, m.partition, m.size, Reason.SEALED_ROOT_MISMATCH.value, m.message
                )
            )
        if final.stuck is not None:
            result.violations.append(
                Violation(
                    self.topics.seals, 0, final.stuck.offset, Reason.SEAL_BEYOND_LOG.value,
                    final.stuck.detail,
                )
            )  # fmt: skip
        for where, part, at, times in self._index.conflicts():
            result.violations.append(
                Violation(
                    where or self.topics.seals, part, at, Reason.EXPORT_CORRUPT.value,
                    f"offset {at} is given again with other bytes ({times} time(s)); the first"
                    " value is the one judged",
                )
            )  # fmt: skip
