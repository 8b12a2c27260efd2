"""Reading topics to their end: :func:`replay` (auditor, exports) and :func:`read_until`.

Bounded read-ahead keeps memory flat; a read that makes no progress for :data:`READ_STALL_S`
gives up instead of hanging, and a log that starts above offset 0 is reported, never waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    KafkaError,
)

from bus.errors import TransportError
from bus.kafka.admin import topic_partitions
from bus.kafka.client import KafkaSecurity, client_options, wrap

log = structlog.get_logger(__name__)

# Read-ahead of a replay (auditor, exports): per partition and per fetch request.
REPLAY_PARTITION_FETCH_BYTES: Final = 256 * 1024
REPLAY_FETCH_BYTES: Final = 4 * 1024 * 1024
# A read up to the end offsets gives up when, for this long, no partition it still reads moved
# (a fetch neither returned records nor advanced a position): a broker that answers every fetch
# with nothing must not hang a replay forever. Generous, since a leader election after a broker
# failure stalls fetches for up to broker.session.timeout.ms (9 s) plus the metadata refresh.
READ_STALL_S: Final = 60.0


async def read_until(
    consumer: AIOKafkaConsumer,
    ends: Mapping[TopicPartition, int],
    *,
    stall_s: float = READ_STALL_S,
    max_records: int = 2000,
) -> AsyncIterator[Any]:
    """Yield the records of ``ends``' partitions from their current positions up to the end
    offsets (exclusive); records of one partition come in offset order.

    The consumer must have the partitions assigned and positioned (seek or seek_to_beginning);
    it should be built with ``auto_offset_reset="earliest"`` so that records deleted under the
    read (retention, delete-records) move it to the new log start, not past what is left.
    A partition is done when its position reaches its end offset, whether records or a log start
    offset moved it there (all records below the end deleted: nothing to return); finished
    partitions are paused.

    Raises:
        TransportError: no progress for ``stall_s`` (not retriable; the message names every
            unfinished topic-partition with its position and end), or a position could not be
            read within ``stall_s``.
    """
    loop = asyncio.get_running_loop()

    async def position(tp: TopicPartition) -> int:
        try:
            async with asyncio.timeout(stall_s):
                return int(await consumer.position(tp))
        except TimeoutError:
            raise TransportError(
                f"reading {tp.topic}[{tp.partition}] up to offset {ends[tp]}: no position "
                f"after {stall_s:g} s",
                retriable=True,
            ) from None

    positions: dict[TopicPartition, int] = {}
    for tp in sorted(ends):
        positions[tp] = await position(tp)
        if positions[tp] >= ends[tp]:
            consumer.pause(tp)
    remaining = {tp for tp in ends if positions[tp] < ends[tp]}
    stalled_since: float | None = None
    while remaining:
        fetched_at = loop.time()
        batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=max_records)
        for tp, records in batch.items():
            end = ends[tp]
            for rec in records:
                if rec.offset >= end:
                    break
                yield rec
        progressed = False
        for tp in sorted(remaining):
            before, now = positions[tp], await position(tp)
            if now != before:
                progressed = True
                positions[tp] = now
                # offsets skipped (no record at the old position): deleted, or compacted?
                records = batch.get(tp)
                first = records[0].offset if records else now
                if first > before:
                    await _warn_if_deleted(consumer, tp, before)
            if now >= ends[tp]:
                remaining.discard(tp)
                consumer.pause(tp)
        if progressed:
            stalled_since = None
        elif stalled_since is None:
            stalled_since = fetched_at
        elif loop.time() - stalled_since >= stall_s:
            stuck = ", ".join(
                f"{tp.topic}[{tp.partition}] at position {positions[tp]} of end {ends[tp]}"
                for tp in sorted(remaining)
            )
            raise TransportError(
                f"reading up to the end offsets made no progress for {stall_s:g} s: {stuck}",
                retriable=False,
            )


async def _warn_if_deleted(consumer: AIOKafkaConsumer, tp: TopicPartition, before: int) -> None:
    """Log when a position jumped because the records after it were deleted under the read.

    A compacted batch or a transaction marker moves a position without records too; only a log
    start offset above the old position means deleted records.
    """
    try:
        starts = await consumer.beginning_offsets([tp])
    except KafkaError as exc:
        log.warning("replay_log_start_unknown", topic=tp.topic, partition=tp.partition,
                    error=repr(exc))  # fmt: skip
        return
    if starts[tp] > before:
        log.warning(
            "replay_records_deleted_during_read", topic=tp.topic, partition=tp.partition,
            from_offset=before, log_start_offset=starts[tp],
        )  # fmt: skip


async def replay(
    bootstrap: str,
    topic_names: Sequence[str] = (),
    pattern: str | None = None,
    *,
    security: KafkaSecurity | None = None,
    stall_s: float = READ_STALL_S,
) -> AsyncIterator[Any]:
    """Yield every record of the topics from their log start up to the end offsets seen at the
    start.

    No consumer group is used: nothing is committed and nobody's position changes. Records of
    one partition come in offset order. Topics keep every record (:data:`KEEP_FOREVER`), so the
    log start is offset 0; where it is not (records deleted by retention or delete-records),
    the records below it are gone: the replay says so in a ``replay_log_start_above_zero``
    warning (topic, partition, log start offset) and returns what is left, so a reader's gap
    detection (chain seq gaps, missing offsets) is explained, not hidden.

    Raises:
        TransportError: Kafka failed, or the replay made no progress for ``stall_s``
            (see :func:`read_until`).
    """
    tps = await topic_partitions(bootstrap, topic_names, pattern, security=security)
    if not tps:
        return
    consumer = AIOKafkaConsumer(
        **client_options(bootstrap, security),
        enable_auto_commit=False,
        group_id=None,
        # records deleted under the replay: go on from the new log start, not from the end
        auto_offset_reset="earliest",
        # Bounded read-ahead: a replay of a long log must not hold megabytes per partition
        # (the defaults, 1 MiB per partition and 50 MiB per fetch, made the auditor's peak
        # memory grow with the log). Kafka still returns a record larger than these.
        max_partition_fetch_bytes=REPLAY_PARTITION_FETCH_BYTES,
        fetch_max_bytes=REPLAY_FETCH_BYTES,
    )
    try:
        await consumer.start()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            if starts[tp] > 0:
                log.warning(
                    "replay_log_start_above_zero", topic=tp.topic, partition=tp.partition,
                    log_start_offset=starts[tp], end_offset=ends[tp],
                )  # fmt: skip
        async for rec in read_until(consumer, ends, stall_s=stall_s):
            yield rec
    except KafkaError as exc:
        raise wrap(exc, "replaying topics") from exc
    finally:
        await consumer.stop()
