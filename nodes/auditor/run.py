"""Running an audit: live from Kafka or from an export file, and showing its result.

:func:`audit` feeds the judge (:class:`nodes.auditor.judge.AuditRun`) from the broker,
replaying every topic from the start with its own consumer (no group, nothing committed),
optionally with signature workers one batch ahead; :func:`audit_export` feeds it from an export
file. Both read the seals topic first, then every other topic, as the exporter does
(:mod:`nodes.auditor.log_export`), so every seal covers records the replays after it find.
:func:`render` prints the result to a console and :func:`write_json` writes it as JSON.
Exit code 0 means the log is consistent and every record verified, by its final verdict where
it has one (findings against one organization's checkpoints or seals are printed beside it); 1
means at least one violation, or, strict, any finding (``obus audit --strict``).

This module is the auditor's entry point: it also exports what an audit returns
(:class:`~nodes.auditor.judge.AuditResult`, :class:`~nodes.auditor.judge.Violation`,
:class:`~nodes.auditor.judge.Finding`, :data:`~nodes.auditor.judge.EXPORT_TOPIC`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bus.errors import Reason, VerificationError
from bus.export import ExportProblem, ExportReader, LogRecord
from bus.kafka.admin import end_offsets
from bus.kafka.client import KafkaSecurity
from bus.kafka.replay import replay
from bus.model import Envelope, Mandate, Role
from bus.topics import Topics
from bus.trust import verify_mandate
from bus.verify import Limits
from nodes.auditor.judge import EXPORT_TOPIC, AuditResult, AuditRun, Finding, Violation
from nodes.auditor.log_export import later_sections, seals_pattern
from nodes.auditor.sealed import b64
from nodes.runtime.preverify import PreVerifier

__all__ = [
    "EXPORT_TOPIC",
    "AuditResult",
    "Finding",
    "Violation",
    "audit",
    "audit_export",
    "render",
    "write_json",
]


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
    """Replay the seals, the mandate, registry, checkpoints, every report topic and every other
    sealed topic, and verify it all.

    Args:
        bootstrap: Kafka bootstrap servers.
        mandate: the verified out-of-band mandate: the version the bus began under (the root
            every node starts from; the final verdicts and state digests chain from it).
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
        # The seals first: every seal then covers records the replays below still find.
        async for rec in replay(bootstrap, pattern=seals_pattern(topics), security=security):
            run.record(_as_record("seals", rec))
        # Checkpoints are read before the reports, so each one covers records replayed next.
        for section, name in (
            ("mandate", topics.mandate),
            ("registry", topics.registry),
            ("checkpoints", topics.checkpoints),
        ):
            async for rec in replay(bootstrap, [name], security=security):
                run.record(_as_record(section, rec))
        run.end_trust()  # the signature workers take the final key state
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
        for section, pattern in later_sections(topics):
            async for rec in replay(bootstrap, pattern=pattern, security=security):
                run.record(_as_record(section, rec))
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
    """Verify an export file (:mod:`bus.export`, version 1 or 2) offline, streaming it once.

    Args:
        path: the export file.
        mandate: the trust root, the version the bus began under; None uses the mandate
            embedded in the file (verified against itself and the file's time) and says so in
            the result (``trust_root``).
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
    """Print the per-organization summary, the witness summary, every finding, the final
    verdicts, every violation and the verdict (violations decide it; findings are named beside
    it)."""
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
    if result.findings:
        ft = Table(title=f"{len(result.findings)} finding(s) against checkpoint signers")
        for col in ("kind", "against", "partition", "size", "detail"):
            ft.add_column(col)
        for f in result.findings:
            ft.add_row(
                f.kind, ", ".join(f.against) or "(undecided)", f"{f.topic}[{f.partition}]",
                str(f.size), f.detail,
            )  # fmt: skip
        console.print(ft)
        by_org = ", ".join(f"{o} x{n}" for o, n in sorted(result.findings_by_org().items()))
        console.print(f"[yellow]findings counted against: {by_org or 'nobody'}[/yellow]")
    _render_final(result, console)
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


# Rows of the longer final-verdict tables shown on the console; the JSON report has all.
_CONSOLE_ROWS: Final = 20


def _render_final(result: AuditResult, console: Console) -> None:
    """The final verdicts: counts, the last epochs, the final state, what is not sealed yet,
    equivocations, the differences from the legacy audit, and what stopped the judging."""
    f = result.final
    if f is None:
        return
    if f.root_warning:
        console.print(f"[yellow]root mandate: {f.root_warning}[/yellow]")
    if f.seals_records == 0:
        console.print(
            "[yellow]final verdicts: none, the log holds no seals (an export of format version"
            " 1, or a bus that is not sealed); every record keeps the legacy audit's verdict"
            "[/yellow]"
        )
    else:
        st = Table(title=f"Final verdicts ({f.last_epoch} epoch(s) judged; these count)")
        st.add_column("status")
        st.add_column("records", justify="right")
        for status, n in sorted(f.by_status().items()):
            st.add_row(status, str(n))
        console.print(st)
        if f.epochs:
            et = Table(title=f"Final seals (the last {min(len(f.epochs), _CONSOLE_ROWS)})")
            for col in ("epoch", "t_e", "signers", "records", "seal digest", "state digest"):
                et.add_column(col)
            for e in f.epochs[-_CONSOLE_ROWS:]:
                et.add_row(
                    str(e.epoch), str(e.time_ms), ", ".join(e.signers), str(e.records),
                    b64(e.digest), b64(e.state_digest),
                )  # fmt: skip
            console.print(et)
    if f.last_epoch:
        console.print(f"final state: epoch {f.last_epoch}, state digest {b64(f.state_digest)}")
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
    if result.differences:
        dt = Table(
            title=f"{len(result.differences)} record(s) where the legacy audit differs from the"
            " final verdict (the final verdict counts)"
        )
        for col in ("topic", "partition", "offset", "epoch", "legacy", "final"):
            dt.add_column(col)
        for d in result.differences[:_CONSOLE_ROWS]:
            dt.add_row(
                d.topic, str(d.partition), str(d.offset), str(d.epoch),
                " ".join(filter(None, (d.legacy_status, d.legacy_reason))),
                " ".join(filter(None, (d.final_status, d.final_reason))),
            )  # fmt: skip
        console.print(dt)
    if f.mismatch is not None:
        m = f.mismatch
        console.print(
            f"[red]sealed record altered or deleted: {m.topic}\\[{m.partition}] at sealed size"
            f" {m.size}: {escape(m.message)}[/red]"
        )
    if f.stuck is not None:
        console.print(f"[red]seals offset {f.stuck.offset}: {escape(f.stuck.detail)}[/red]")


def write_json(result: AuditResult, path: Path) -> None:
    """Write the machine-readable audit report."""
    path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True), encoding="utf-8")
