"""The auditor's judge: a whole log, fed section by section, judged by its final verdicts alone.

One judge, :class:`AuditRun`, is fed the log in the sections of the export format
(:mod:`bus.export`): seals, mandate, registry, reports, decisions, statements, attachments, in
any order and any interleaving of partitions. :mod:`nodes.auditor.run` feeds it, live from the
broker or from an export file. Every record of the seals topic and of every sealed partition
goes to a :class:`nodes.auditor.sealed.FinalCollector`, which judges them with the bus reader
every node runs (:attr:`AuditResult.final`): final seals with their roots recomputed from the
records, and every record of a judged epoch with its final verdict (signature, accreditation,
revocation, chain, report-id scope, the seals' clock), in the one canonical order. So the
auditor and every honest node reach the same verdicts, reason codes and state digest, whatever
order either read the log in.

What fails an audit (:attr:`AuditResult.violations`, exit 1):

* a record whose final verdict rejects it: quarantined (its reason code) or accepted and later
  withdrawn by a revocation (``revoked_after_acceptance``);
* a sealed record altered or deleted (``sealed_root_mismatch``, naming the partition and the
  sealed size);
* a first proposal that seals registry records the log does not hold (``seal_beyond_log``): no
  seal after it can become final at any reader;
* a problem of the export file itself, or one offset given two values (``export_corrupt``).

An organization that signed two seal texts for one epoch is evidence against it, shown beside
the verdict (:attr:`AuditResult.clean` is false; ``obus audit --strict`` fails on it). Records
after the last judged epoch have no verdict yet ("not sealed yet", listed per partition).

**Checkpoints.** Export files of versions 1 and 2 carry a ``checkpoints`` section (the
per-partition Merkle checkpoints that seals replaced). Its records are skipped, counted in
:attr:`AuditResult.checkpoint_records_skipped` and named in a note of the report: they decide
nothing (a seal commits to every partition, checkpoints to report partitions only, and their
signatures counted at broker timestamps, which the operator sets).

Memory: the records wait in a temporary SQLite file (:class:`nodes.auditor.index.AuditIndex`),
the bus reader holds about one epoch's records at a time, and the final verdicts go to another
temporary SQLite file as each epoch is judged (:class:`nodes.auditor.verdicts.VerdictTable`);
the counts per organization, zone and day are read from it at the end. What still grows with
the log in memory: the violations, with the records that fail; one row per judged epoch; and
the final judge's own per-report state (:mod:`bus.judge`: every accepted report's chain link,
id and amendment state, which replays, duplicates, amendments and revocations are judged
against), about 0.4 KiB per accepted report (bench/README.md, "Auditor").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from bus.errors import Reason
from bus.export import ExportProblem, LogRecord
from bus.judge import Status
from bus.model import Mandate
from bus.topics import Topics
from bus.verify import Limits
from nodes.auditor.header import AuditHeader
from nodes.auditor.index import AuditIndex
from nodes.auditor.sealed import FinalAudit, FinalCollector, b64

log = structlog.get_logger(__name__)

# Days the per-day counts span at most with zero-filled days (ten years); a wider span (an
# observation date far off) lists the days with reports only, and says so.
MAX_DAYS: Final = 3660
EXPORT_TOPIC: Final = "(export file)"  # Violation.topic of problems with the file itself
CHECKPOINTS_NOTE: Final = (
    "{n} record(s) of the checkpoints section of this export (format version {version}) were"
    " skipped: per-partition checkpoints are no longer verified, final seals replace them"
)


@dataclass(frozen=True, slots=True)
class Violation:
    """One record (or seals record, or line of an export file) that fails the audit."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str


@dataclass
class AuditResult:
    """The final verdicts and every violation (module docstring).

    :attr:`ok` is the exit rule of ``obus audit``: no violation; :attr:`clean` the strict rule:
    besides, no organization signed two seal texts for one epoch. ``accepted`` and ``rejected``
    count report records by their final verdict per organization (accepted: ``accepted``;
    rejected: ``quarantined`` or ``revoked_after_acceptance``); ``by_zone`` and ``by_day``
    (observation day, UTC) count the accepted ones. Records not sealed yet count nowhere.
    """

    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    sealed_verified: int = 0  # restricted reports accepted without reading their content
    by_zone: Counter[str] = field(default_factory=Counter)
    by_day: Counter[str] = field(default_factory=Counter)
    checkpoint_records_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    source: str = ""
    trust_root: str = "given"  # or "embedded": the export's own root mandate was used
    final: FinalAudit | None = None
    header: AuditHeader | None = None  # set by nodes.auditor.run when the audit has finished

    @property
    def ok(self) -> bool:
        """True when no final verdict rejects a record and the log is consistent."""
        return not self.violations

    @property
    def clean(self) -> bool:
        """True when, besides, no organization signed two seal texts for one epoch."""
        return self.ok and not (self.final and self.final.equivocations)

    @property
    def mandate_versions(self) -> list[int]:
        """The mandate versions applied from the mandate topic, by their final verdicts."""
        return [] if self.final is None else list(self.final.mandate_versions)

    def final_digest(self) -> dict[str, Any] | None:
        """The last judged epoch and the state digest after it (base64; None before the first
        epoch), the pair ``obus node final-state`` prints from a node's store; None before the
        run is finished."""
        f = self.final
        if f is None:
            return None
        digest = b64(f.state_digest) if f.last_epoch else None
        return {"epoch": f.last_epoch, "state_digest": digest}

    def days(self) -> tuple[list[tuple[str, int]], bool]:
        """Accepted reports per observation day (UTC), every day from the first to the last,
        days without a report as 0; and whether it is so (False when the span is over
        :data:`MAX_DAYS` days: then only the days with reports are listed)."""
        if not self.by_day:
            return [], True
        first, last = (dt.date.fromisoformat(d) for d in (min(self.by_day), max(self.by_day)))
        span = (last - first).days + 1
        if span > MAX_DAYS:
            return sorted(self.by_day.items()), False
        every = (first + dt.timedelta(days=i) for i in range(span))
        return [(d.isoformat(), self.by_day.get(d.isoformat(), 0)) for d in every], True

    def violations_by_kind(self) -> Counter[str]:
        """How many violations of each reason code."""
        return Counter(v.reason for v in self.violations)

    def to_json(self, *, verdicts: bool = True) -> dict[str, Any]:
        """A JSON-serializable summary; ``verdicts=False`` leaves the final verdicts' per-record
        list out (:meth:`FinalAudit.to_json`)."""
        return {
            "header": None if self.header is None else self.header.to_json(),
            "ok": self.ok,
            "clean": self.clean,
            "source": self.source,
            "trust_root": self.trust_root,
            "notes": self.notes,
            "mandate_versions": self.mandate_versions,
            "sealed_verified": self.sealed_verified,
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "reports_by_zone": dict(self.by_zone),
            "reports_by_day": dict(self.days()[0]),
            "reports_by_day_complete": self.days()[1],
            "checkpoint_records_skipped": self.checkpoint_records_skipped,
            "violations_by_kind": dict(self.violations_by_kind()),
            "violations": [dataclasses.asdict(v) for v in self.violations],
            "final_digest": self.final_digest(),
            "final": None if self.final is None else self.final.to_json(verdicts=verdicts),
        }


class AuditRun:
    """Judges one log fed in sections (module docstring); :meth:`finish` gives the result.

    Args:
        mandate: the verified trust root: the version the bus began under.
        topics: topic naming of the log.
        limits: verification limits (must match the nodes').
        work_dir: where the temporary index goes (default: the system's temp directory).
        export_version: the format version of the export file fed (None: a live replay).
        verify_workers: worker processes checking signatures ahead of the final judge
            (:mod:`nodes.auditor.preverify`); 0: none. The verdicts are the same.
    """

    def __init__(
        self,
        mandate: Mandate,
        *,
        topics: Topics,
        limits: Limits | None = None,
        work_dir: Path | None = None,
        export_version: int | None = None,
        verify_workers: int = 0,
    ) -> None:
        self.result = AuditResult()
        self.topics = topics
        self._export_version = export_version
        self._index = AuditIndex(work_dir)
        self._final = FinalCollector(
            mandate, topics, self._index, limits, work_dir=work_dir, verify_workers=verify_workers
        )
        self.records = 0
        self.ends: dict[tuple[str, int], int] = {}  # every partition's end as read

    def close(self) -> None:
        """Remove the temporary index."""
        self._index.close()

    def problem(self, p: ExportProblem) -> None:
        """A problem with the export file itself, at a line number."""
        self.result.violations.append(
            Violation(EXPORT_TOPIC, -1, p.line_no, Reason.EXPORT_CORRUPT.value, p.detail)
        )

    def record(self, rec: LogRecord) -> None:
        """One record of any section (module docstring: checkpoints are skipped)."""
        self.records += 1
        ref = (rec.topic, rec.partition)
        self.ends[ref] = max(self.ends.get(ref, 0), rec.offset + 1)
        if rec.section == "checkpoints":
            self.result.checkpoint_records_skipped += 1
        elif rec.section == "seals":
            self._final.seal(rec)
        else:
            self._final.record(rec)

    def finish(self) -> AuditResult:
        """Judge the sealed log and return the result."""
        result = self.result
        if result.checkpoint_records_skipped:
            result.notes.append(
                CHECKPOINTS_NOTE.format(
                    n=result.checkpoint_records_skipped, version=self._export_version
                )
            )
        final = result.final = self._final.judge()
        self._count(result, final)
        for pos, row in final.verdicts.failed():
            result.violations.append(Violation(*pos, row.reason or row.status, row.detail))
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
        result.violations.sort(key=lambda v: (v.topic, v.partition, v.offset, v.reason, v.detail))
        log.info(
            "audit_finished",
            ok=result.ok,
            records=self.records,
            violations=len(result.violations),
            final_epoch=final.last_epoch,
            source=result.source,
        )
        return result

    def _count(self, result: AuditResult, final: FinalAudit) -> None:
        """Report records per organization, zone and day by their final verdicts."""
        rejected = (Status.QUARANTINED.value, Status.REVOKED_AFTER_ACCEPTANCE.value)
        for topic, status, zone, day, n in final.verdicts.counts():
            org = self.topics.org_of_report_topic(topic)
            if org is None:
                continue
            if status == Status.ACCEPTED.value:
                result.accepted[org] += n
                result.by_zone[zone] += n
                if day:
                    result.by_day[day] += n
                else:
                    result.sealed_verified += n
            elif status in rejected:
                result.rejected[org] += n
