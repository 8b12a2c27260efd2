"""``obus log export FILE``: copy the whole log from Kafka into a portable export file.

The file format is :mod:`bus.export` (version 3, JSON Lines; documented there and in the
README). Topics are read in the order of the format's sections, each from offset 0 to the end
offset seen when its replay starts (no consumer group, nothing committed): the seals topic, the
mandate topic, the registry, every report topic, then every decisions topic, the statements
topic and every attachments topic. Reading the seals before every topic they seal means every
genuine seal covers records that are in the file: a sealed record the file lacks was deleted
from the log. The file
is written under a temporary name and renamed when complete, so a crash never leaves a file
that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bus.export import ExportHeader, ExportWriter, LogRecord
from bus.kafka.admin import end_offsets
from bus.kafka.client import KafkaSecurity
from bus.kafka.replay import replay
from bus.model import Envelope, Mandate, encode
from bus.topics import Topics

log = structlog.get_logger(__name__)


def seals_pattern(topics: Topics) -> str:
    """Regex matching the seals topic (a pattern: a bus without seals has no such topic)."""
    return "^" + re.escape(topics.seals) + "$"


def later_sections(topics: Topics) -> tuple[tuple[str, str], ...]:
    """(section, topic regex) of the sealed topics after the reports, in section order: every
    organization's decisions topic, the statements topic, every attachments topic."""
    return (
        ("decisions", topics.decisions_pattern),
        ("statements", "^" + re.escape(topics.statements) + "$"),
        ("attachments", topics.attachments_pattern),
    )


async def export_log(
    bootstrap: str,
    topics: Topics,
    mandate: Mandate,
    root_mandate: bytes,
    path: Path,
    *,
    console: Console | None = None,
    security: KafkaSecurity | None = None,
) -> dict[str, int]:
    """Write every record of the log to ``path``.

    Args:
        bootstrap: Kafka bootstrap servers.
        topics: topic naming.
        mandate: the verified trust root (names the mandate in the header).
        root_mandate: its signed envelope bytes, embedded in the header.
        path: the export file to create (replaced if it exists).
        console: where the progress bar goes (None: none).
        security: how to authenticate to the brokers (None: PLAINTEXT).

    Returns:
        Records written per section.

    Raises:
        TransportError: the broker failed; no file is left behind.
        ValueError: ``root_mandate`` is not the envelope of ``mandate``.
    """
    if Envelope.decode(root_mandate).payload != encode(mandate):
        raise ValueError("root_mandate is not the envelope of the given mandate")
    header = ExportHeader(
        time.time_ns() // 1_000_000, mandate.mandate_id, topics.prefix, root_mandate
    )
    tmp = path.with_name(f".{path.name}.partial")
    progress = Progress(
        TextColumn("export"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=console is None, transient=False,
    )  # fmt: skip
    try:
        with tmp.open("wb") as f, progress:
            writer = ExportWriter(f, header)
            # The seals before everything they seal (module docstring).
            async for rec in replay(bootstrap, pattern=seals_pattern(topics), security=security):
                writer.write(_record("seals", rec))
            for section, name in (("mandate", topics.mandate), ("registry", topics.registry)):
                async for rec in replay(bootstrap, [name], security=security):
                    writer.write(_record(section, rec))
            ends = await end_offsets(bootstrap, topics.reports_pattern, security=security)
            task = progress.add_task("reports", total=sum(ends.values()))
            async for rec in replay(bootstrap, pattern=topics.reports_pattern, security=security):
                writer.write(_record("reports", rec))
                progress.advance(task)
            for section, pattern in later_sections(topics):
                async for rec in replay(bootstrap, pattern=pattern, security=security):
                    writer.write(_record(section, rec))
            writer.finish()
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info("log_exported", path=str(path), **writer.counts)
    return dict(writer.counts)


def _record(section: str, rec: Any) -> LogRecord:
    return LogRecord(
        section, rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value
    )
