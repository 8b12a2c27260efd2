"""The auditor: replay every topic from the start with its own consumer and re-verify everything.

It uses the same verification path as the nodes (:class:`bus.ingest.Ingestor`) with its own
in-memory state, commits nothing, and reports every violation with its topic, partition, offset
and reason code. Exit code 0 means the whole log verified; 1 means at least one violation.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bus.errors import VerificationError
from bus.ingest import Ingestor
from bus.kafka import Topics, end_offsets, replay
from bus.lifecycle import TrustTimeline
from bus.model import Envelope, Mandate
from bus.store import Accepted, RecordRef
from bus.verify import ChainBook, Limits

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Violation:
    """One record that failed verification."""

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

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable summary."""
        return {
            "ok": self.ok,
            "registry_records": self.registry_records,
            "mandate_versions": self.mandate_versions,
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "violations": [v.__dict__ for v in self.violations],
        }


async def audit(
    bootstrap: str,
    mandate: Mandate,
    *,
    topics: Topics | None = None,
    limits: Limits | None = None,
    console: Console | None = None,
) -> AuditResult:
    """Replay the registry and every report topic and verify each record.

    Args:
        bootstrap: Kafka bootstrap servers.
        mandate: the verified out-of-band mandate.
        topics: topic naming (default prefix ``obus.``).
        limits: verification limits (must match the nodes').
        console: where the progress bar goes (None: no progress bar).
    """
    topics = topics or Topics()
    result = AuditResult()
    # Mandate versions first (each in effect from its log time), then the registry: the same
    # TrustTimeline rules as every node (README "Mandate versions").
    timeline = TrustTimeline(mandate)
    async for rec in replay(bootstrap, [topics.mandate]):
        try:
            env = Envelope.decode(rec.value or b"")
            if timeline.offer_mandate(env, log_time_ms=rec.timestamp) is not None:
                result.mandate_versions.append(timeline.mandate.version)
        except VerificationError as exc:
            result.violations.append(
                Violation(rec.topic, rec.partition, rec.offset, exc.reason.value, exc.message)
            )
    keyring = timeline.current
    async for rec in replay(bootstrap, [topics.registry]):
        result.registry_records += 1
        try:
            timeline.apply_registry(Envelope.decode(rec.value or b""))
        except VerificationError as exc:
            result.violations.append(
                Violation(rec.topic, rec.partition, rec.offset, exc.reason.value, exc.message)
            )
    digests: dict[str, bytes] = {}
    ingestor = Ingestor(keyring, ChainBook({}, digests.get), limits=limits or Limits())
    ingestor.timeline = timeline
    total = sum((await end_offsets(bootstrap, topics.reports_pattern)).values())
    progress = Progress(
        TextColumn("audit"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=console is None, transient=False,
    )  # fmt: skip
    with progress:
        task = progress.add_task("records", total=total)
        async for rec in replay(bootstrap, pattern=topics.reports_pattern):
            org = topics.org_of_report_topic(rec.topic)
            ref = RecordRef(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key)
            outcome = ingestor.judge(ref, rec.value, org)
            owner = org or rec.topic
            if isinstance(outcome, Accepted):
                result.accepted[owner] += 1
                digests[outcome.verified.report.report_id] = outcome.verified.envelope_digest
            else:
                result.rejected[owner] += 1
                result.violations.append(
                    Violation(rec.topic, rec.partition, rec.offset, outcome.reason, outcome.detail)
                )
            progress.advance(task)
    log.info("audit_finished", ok=result.ok, violations=len(result.violations))
    return result


def render(result: AuditResult, console: Console) -> None:
    """Print the per-organization summary and every violation."""
    table = Table(title="Audit: reports per organization")
    table.add_column("organization")
    table.add_column("verified", justify="right")
    table.add_column("violations", justify="right")
    for org in sorted(set(result.accepted) | set(result.rejected)):
        table.add_row(org, str(result.accepted[org]), str(result.rejected[org]))
    console.print(table)
    if result.ok:
        console.print("[green]VERDICT: every record verified[/green]")
        return
    vt = Table(title=f"{len(result.violations)} violation(s)")
    for col in ("topic", "partition", "offset", "reason", "detail"):
        vt.add_column(col)
    for v in result.violations:
        vt.add_row(v.topic, str(v.partition), str(v.offset), v.reason, v.detail)
    console.print(vt)
    console.print(f"[red]VERDICT: {len(result.violations)} violation(s)[/red]")


def write_json(result: AuditResult, path: Path) -> None:
    """Write the machine-readable audit report."""
    path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True), encoding="utf-8")
