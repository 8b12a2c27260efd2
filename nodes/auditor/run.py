"""Running an audit: live from Kafka or from an export file, and showing its result.

:func:`audit` feeds the judge (:class:`nodes.auditor.judge.AuditRun`) from the broker,
replaying every sealed topic from the start with its own consumer (no group, nothing
committed); :func:`audit_export` feeds it from an export file. Both read the seals topic first,
then every other topic, as the exporter does (:mod:`nodes.auditor.log_export`), so every seal
covers records the replays after it find. :func:`render` prints the result to a console and
:func:`write_json` writes it as JSON. Exit code 0 means no final verdict rejects a record and
the log is consistent with its final seals (an organization's seal equivocation is printed
beside it); 1 means at least one violation, or, strict, a seal equivocation too
(``obus audit --strict``).

This module is the auditor's entry point: it also exports what an audit returns
(:class:`~nodes.auditor.judge.AuditResult`, :class:`~nodes.auditor.judge.Violation`,
:data:`~nodes.auditor.judge.EXPORT_TOPIC`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bus.errors import Reason, VerificationError
from bus.export import ExportProblem, ExportReader, LogRecord
from bus.kafka.admin import end_offsets
from bus.kafka.client import KafkaSecurity
from bus.kafka.replay import replay
from bus.model import Envelope, Mandate
from bus.topics import Topics
from bus.trust import verify_mandate
from bus.verify import Limits
from nodes.auditor.header import (
    AuditHeader,
    ExportSource,
    HashingReader,
    LiveSource,
    MandateRef,
    tool_version,
)
from nodes.auditor.judge import EXPORT_TOPIC, AuditResult, AuditRun, Violation
from nodes.auditor.log_export import later_sections, seals_pattern
from nodes.auditor.sealed import FinalAudit, b64, verdict_json

__all__ = [
    "EXPORT_TOPIC",
    "AuditResult",
    "Violation",
    "audit",
    "audit_export",
    "render",
    "render_header",
    "write_json",
]


def _progress(console: Console | None, what: str) -> Progress:
    return Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=console is None, transient=False,
    )  # fmt: skip


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _header(
    result: AuditResult,
    root: Mandate,
    started_ms: int,
    command: Sequence[str],
    source: ExportSource | LiveSource,
) -> AuditHeader:
    """The report's header (:mod:`nodes.auditor.header`), the audit just finished."""
    final = result.final
    in_force = root if final is None or final.in_force is None else final.in_force
    return AuditHeader(
        started_ms, _now_ms(), tool_version(), tuple(command), MandateRef.of(root),
        MandateRef.of(in_force), source,
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
    work_dir: Path | None = None,
    security: KafkaSecurity | None = None,
    command: Sequence[str] = (),
    verify_workers: int = 0,
) -> AuditResult:
    """Replay the seals, the mandate, the registry, every report topic and every other sealed
    topic, and judge them by their final verdicts.

    Args:
        bootstrap: Kafka bootstrap servers.
        mandate: the verified out-of-band mandate: the version the bus began under (the root
            every node starts from; the final verdicts and state digests chain from it).
        topics: topic naming (default prefix ``obus.``).
        limits: verification limits (must match the nodes').
        console: where the progress bar goes (None: no progress bar).
        work_dir: where the temporary index goes.
        security: how to authenticate to the brokers (None: PLAINTEXT).
        command: the command line, secrets redacted, for the report's header.
        verify_workers: worker processes checking signatures one epoch ahead of the final
            judge (:mod:`nodes.auditor.preverify`); 0: none. The verdicts are the same.
    """
    started = _now_ms()
    topics = topics or Topics()
    run = AuditRun(
        mandate, topics=topics, limits=limits, work_dir=work_dir, verify_workers=verify_workers
    )
    run.result.source = f"kafka {bootstrap} (prefix {topics.prefix})"
    try:
        # The seals first: every seal then covers records the replays below still find.
        async for rec in replay(bootstrap, pattern=seals_pattern(topics), security=security):
            run.record(_as_record("seals", rec))
        for section, name in (("mandate", topics.mandate), ("registry", topics.registry)):
            async for rec in replay(bootstrap, [name], security=security):
                run.record(_as_record(section, rec))
        ends = await end_offsets(bootstrap, topics.reports_pattern, security=security)
        with _progress(console, "audit") as progress:
            task = progress.add_task("records", total=sum(ends.values()))
            async for rec in replay(bootstrap, pattern=topics.reports_pattern, security=security):
                run.record(_as_record("reports", rec))
                progress.advance(task)
        for section, pattern in later_sections(topics):
            async for rec in replay(bootstrap, pattern=pattern, security=security):
                run.record(_as_record(section, rec))
        result = run.finish()
        newest = result.final.epochs[-1] if result.final and result.final.epochs else None
        end = LiveSource(
            bootstrap, topics.prefix, dict(run.ends), 0 if newest is None else newest.epoch,
            None if newest is None else newest.time_ms, None if newest is None else newest.digest,
        )  # fmt: skip
        result.header = _header(result, mandate, started, command, end)
        return result
    finally:
        run.close()


def audit_export(
    path: Path,
    mandate: Mandate | None,
    *,
    limits: Limits | None = None,
    console: Console | None = None,
    work_dir: Path | None = None,
    command: Sequence[str] = (),
    verify_workers: int = 0,
) -> AuditResult:
    """Verify an export file (:mod:`bus.export`, any version it reads) offline, streaming it
    once (the checkpoints section of versions 1 and 2 is skipped with a note).

    Args:
        path: the export file.
        mandate: the trust root, the version the bus began under; None uses the mandate
            embedded in the file (verified against itself and the file's time) and says so in
            the result (``trust_root``).
        limits: verification limits.
        console: where the progress bar goes (None: none).
        work_dir: where the temporary index goes.
        command: the command line, secrets redacted, for the report's header (which also
            gives the SHA-256 of every byte of the file, read as it is audited).
        verify_workers: as for :func:`audit`.

    Raises:
        VerificationError: ``EXPORT_CORRUPT`` when the header is unusable, or the embedded
            mandate does not verify (``threshold_not_met``, ...).
        OSError: the file cannot be read.
    """
    started = _now_ms()
    with path.open("rb") as f:
        hashing = HashingReader(f)
        # ExportReader reads lines only: the digest covers the bytes it judged.
        reader = ExportReader(cast(BinaryIO, hashing))
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
            mandate, topics=Topics(header.topic_prefix), limits=limits, work_dir=work_dir,
            export_version=header.version, verify_workers=verify_workers,
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
            result = run.finish()
            digest = hashing.drain()
            source = ExportSource(str(path), hashing.size, digest)
            result.header = _header(result, mandate, started, command, source)
            return result
        finally:
            run.close()


def render_header(result: AuditResult, console: Console) -> None:
    """Print the report's header (:mod:`nodes.auditor.header`), each value on one line in full:
    never cropped or wrapped, whatever the console's width (a pipe's included)."""
    if result.header is None:
        return
    console.print("[bold]observer-bus audit[/bold]")
    for label, value in result.header.lines():
        console.print(f"{label}: {escape(value)}", soft_wrap=True, highlight=False)
    console.print(
        "encodings: "
        + "; ".join(f"{escape(what)}: {escape(how)}" for what, how in result.header.legend),
        soft_wrap=True,
        highlight=False,
    )


def render(result: AuditResult, console: Console) -> None:
    """Print the header, the reports per organization, the notes, the final verdicts, every
    violation and the verdict. Reason codes are never cut: their column is as wide as the
    longest and never wraps (a console that is not a terminal is 80 columns wide unless told:
    the other columns fold instead)."""
    render_header(result, console)
    table = Table(title="Audit: reports per organization (final verdicts)")
    table.add_column("organization")
    table.add_column("verified", justify="right")
    table.add_column("violations", justify="right")
    for org in sorted(set(result.accepted) | set(result.rejected)):
        table.add_row(org, str(result.accepted[org]), str(result.rejected[org]))
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note: {escape(note)}[/yellow]")
    _render_final(result, console)
    if result.ok:
        console.print("[green]VERDICT: every sealed record verified[/green]")
        return
    vt = Table(title=f"{len(result.violations)} violation(s)")
    widest = max(len(v.reason) for v in result.violations)
    vt.add_column("topic", overflow="fold")
    vt.add_column("partition", overflow="fold")
    vt.add_column("offset", overflow="fold")
    vt.add_column("reason", no_wrap=True, min_width=widest, overflow="ignore")
    vt.add_column("detail", overflow="fold")
    for v in result.violations:
        vt.add_row(v.topic, str(v.partition), str(v.offset), v.reason, escape(v.detail))
    console.print(vt)
    kinds = ", ".join(f"{k} x{n}" for k, n in sorted(result.violations_by_kind().items()))
    console.print(
        f"[red]VERDICT: {len(result.violations)} violation(s): {kinds}[/red]", soft_wrap=True
    )


# Rows of the longer final-verdict tables shown on the console; the JSON report has all.
_CONSOLE_ROWS: Final = 20


def _render_final(result: AuditResult, console: Console) -> None:
    """The final verdicts: counts, the last epochs, the final state, what is not sealed yet,
    equivocations, and what stopped the judging."""
    f = result.final
    if f is None:
        return
    if f.root_warning:
        console.print(f"[yellow]root mandate: {escape(f.root_warning)}[/yellow]")
    if f.seals_records == 0:
        console.print(
            "[yellow]final verdicts: none, the log holds no seals (a bus not sealed yet, or an"
            " export of format version 1): no record has a verdict[/yellow]"
        )
    else:
        st = Table(title=f"Final verdicts ({f.last_epoch} epoch(s) judged)")
        st.add_column("status", no_wrap=True, overflow="ignore")
        st.add_column("records", justify="right")
        for status, n in sorted(f.by_status().items()):
            st.add_row(status, str(n))
        console.print(st)
        if f.epochs:
            et = Table(title=f"Final seals (the last {min(len(f.epochs), _CONSOLE_ROWS)})")
            for col in ("epoch", "t_e", "signers", "records"):
                et.add_column(col, overflow="fold")
            for col in ("seal digest", "state digest"):  # base64, 44 characters, never cut
                et.add_column(col, no_wrap=True, min_width=44, overflow="ignore")
            for e in f.epochs[-_CONSOLE_ROWS:]:
                et.add_row(
                    str(e.epoch), str(e.time_ms), ", ".join(e.signers), str(e.records),
                    b64(e.digest), b64(e.state_digest),
                )  # fmt: skip
            console.print(et)
    if f.last_epoch:
        console.print(
            f"final state: epoch {f.last_epoch}, state digest {b64(f.state_digest)}",
            soft_wrap=True,
        )
    if f.not_sealed:
        n = sum(u.records for u in f.not_sealed)
        console.print(
            f"not sealed yet (no final verdict): {n} record(s) in {len(f.not_sealed)}"
            " partition(s), after the last judged epoch"
        )
    for eq in f.equivocations:
        console.print(
            f"[yellow]seal equivocation: {eq.org} signed two texts for epoch {eq.epoch} (seals"
            f" offsets {eq.first_offset} and {eq.second_offset})[/yellow]"
        )
    if f.mismatch is not None:
        m = f.mismatch
        console.print(
            f"[red]sealed record altered or deleted: {m.topic}\\[{m.partition}] at sealed size"
            f" {m.size}: {escape(m.message)}[/red]"
        )
    if f.stuck is not None:
        console.print(f"[red]seals offset {f.stuck.offset}: {escape(f.stuck.detail)}[/red]")


class _Streamed(list[Any]):
    """A JSON array whose items are produced while it is written: json's encoder (the
    pure-Python one :func:`json.dump` uses when indenting) asks a list only whether it is
    empty and then iterates it, so the per-record verdicts go from the verdict table to the
    file one by one and never sit in memory together."""

    def __init__(self, final: FinalAudit) -> None:
        super().__init__()
        self._final = final

    def __iter__(self) -> Iterator[Any]:
        return (verdict_json(row) for row in self._final.verdicts.items())

    def __bool__(self) -> bool:
        return len(self._final.verdicts) > 0


def write_json(result: AuditResult, path: Path) -> None:
    """Write the machine-readable audit report (:meth:`AuditResult.to_json`), streaming the
    per-record verdicts."""
    doc = result.to_json(verdicts=False)
    if result.final is not None:
        doc["final"]["verdicts"] = _Streamed(result.final)
    with path.open("w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
