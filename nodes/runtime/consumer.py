"""What every group consumer of a node shares: it resumes from its own store, and commits Kafka
group offsets only for operators' lag tooling, within a bound.

The ingest loop and the attachment reassembler each keep the next
offset of every partition in their own SQLite store, written in the same transaction as the
records it covers. On every partition assignment the consumer seeks to those positions
(:class:`SeekToStore`), so a crash between a store commit and a group-offset commit never loses
or doubles a record, and the group offsets (:func:`commit_offsets`) are a courtesy to lag
tooling: a commit that fails or hangs costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from bus.errors import TransportError
from bus.kafka.client import kafka_errors

# A group-offset commit still running after this long is given up: aiokafka retries a commit
# without limit while the group coordinator is unknown (a broker down), which would stall the
# loop that awaits it, and its stop().
OFFSET_COMMIT_TIMEOUT_S: Final = 10.0


class SeekToStore(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks every newly assigned partition to the store's position (the rebalance listener of
    a consumer that resumes from its own store).

    Args:
        seek: positions the consumer at the store's next offset of each assigned partition.
        lock: held by the consumer's owner around each store commit; when given, both callbacks
            wait for it, so a commit in flight finishes before its partitions go to another
            member, and before the store's positions are read for the new ones.
        log: when given, revocations are logged there (``partitions_revoked``, count).
    """

    def __init__(
        self,
        seek: Callable[[list[TopicPartition]], None],
        *,
        lock: asyncio.Lock | None = None,
        log: Any = None,
    ) -> None:
        self._seek = seek
        self._lock = lock
        self._log = log

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock or contextlib.nullcontext():
            if self._log is not None:
                self._log.info("partitions_revoked", count=len(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock or contextlib.nullcontext():
            self._seek(assigned)


async def commit_offsets(
    consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int], log: Any
) -> None:
    """Commit group offsets, giving up after :data:`OFFSET_COMMIT_TIMEOUT_S`; never raises.

    A commit lost to a rebalance or a failed-over coordinator (a broker killed or frozen, a
    member dropped after its session timeout), or still retrying after the timeout, is logged
    (``offset_commit_failed``: error, partitions) and the caller goes on: the consumer rejoins on
    its next poll and seeks to the store's positions, and the next stored batch commits its
    partitions' offsets again. Nothing is committed for an empty ``offsets``.
    """
    if not offsets:
        return
    try:
        with kafka_errors("committing group offsets"):
            await asyncio.wait_for(consumer.commit(dict(offsets)), OFFSET_COMMIT_TIMEOUT_S)
    except (TransportError, TimeoutError) as exc:
        log.warning("offset_commit_failed", error=repr(exc), partitions=len(offsets))
