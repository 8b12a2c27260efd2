"""The gateway's Kafka edge: its trust reader, its producer, the read-back of its topic, and the
log reader behind its inclusion proofs.

:class:`GatewayKafka` is the only part of the gateway that talks to aiokafka. Every aiokafka
failure leaves it as a :class:`~bus.errors.TransportError` (:func:`bus.kafka.client.wrap`,
which keeps aiokafka's ``retriable``), so the gateway's logic catches only :mod:`bus.errors`
types.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bus.attachment import CHUNK_OVERHEAD_BYTES
from bus.errors import ConfigError, StoreError, TransportError
from bus.kafka.admin import topic_partitions
from bus.kafka.attachments import Published, publish_attachment, topic_message_limit
from bus.kafka.client import KafkaSecurity, client_options, kafka_errors, reliable_producer
from bus.kafka.replay import read_until
from bus.model import Mandate, encode, sha256
from bus.store.final_reads import FinalReads
from bus.topics import Topics, report_headers
from nodes.gateway.proofs import ProofBook
from nodes.gateway.trust import SealedTrust


class Position(NamedTuple):
    """Where a record lies on the topic, and the broker's timestamp of it."""

    partition: int
    offset: int
    logged_at_ms: int


class GatewayKafka:
    """The Kafka clients of one organization's gateway.

    Args:
        bootstrap, security: how to reach the brokers.
        org: the gateway's organization (record headers).
        topic: its reports topic; ``attachment_topic``: its attachments topic.
        chunk_bytes: the attachment chunk size (the producer's request size makes room for one).
        log: the gateway's bound logger.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        security: KafkaSecurity | None,
        org: str,
        topic: str,
        attachment_topic: str,
        chunk_bytes: int,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.topic = topic
        self.attachment_topic = attachment_topic
        self._bootstrap, self._security = bootstrap, security
        self._org = org
        self._chunk_bytes = chunk_bytes
        self._log = log
        self._producer: AIOKafkaProducer | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the producer.

        Raises:
            TransportError: Kafka is unreachable.
        """
        with kafka_errors("starting the gateway"):
            # linger 0: one observer sends one report at a time, so waiting to batch is pure
            # latency; concurrent observers still share batches while a request is in flight.
            # max_request_size: room for one attachment chunk record (at least the default).
            request_max = max(1_048_576, self._chunk_bytes + CHUNK_OVERHEAD_BYTES)
            self._producer = reliable_producer(
                self._bootstrap, security=self._security, linger_ms=0, max_request_size=request_max
            )
            await self._producer.start()

    async def stop(self) -> None:
        """Stop the producer (when it was started)."""
        if self._producer is not None:
            await self._producer.stop()

    async def attachment_message_limit(self) -> int | None:
        """The attachments topic's ``max.message.bytes``, or None when it does not exist.

        Raises:
            TransportError: the broker cannot be asked.
        """
        return await topic_message_limit(
            self._bootstrap, self.attachment_topic, security=self._security
        )

    # -- publishing ----------------------------------------------------------------------------

    async def publish_report(
        self, envelope: bytes, *, report_id: str, observer_id: str
    ) -> Position:
        """Produce one report (keyed by its observer) and wait for Kafka's confirmation.

        Raises:
            TransportError: Kafka did not confirm (the outcome is unknown: the record may be on
                the topic).
        """
        assert self._producer is not None
        with kafka_errors(f"publishing to {self.topic}"):
            fut = await self._producer.send(
                self.topic,
                envelope,
                key=observer_id.encode(),
                headers=report_headers(report_id, self._org, observer_id),
            )
            md = await fut
        return Position(md.partition, md.offset, md.timestamp)

    async def publish_attachment(self, data: bytes) -> Published:
        """Produce every chunk of an attachment and wait for Kafka's confirmation of each.

        Raises:
            TransportError: a chunk was not confirmed (publishing again is safe: nodes drop
                identical chunks).
        """
        assert self._producer is not None
        with kafka_errors(f"publishing to {self.attachment_topic}"):
            return await publish_attachment(
                self._producer, self.attachment_topic, data,
                chunk_size=self._chunk_bytes, org=self._org,
            )  # fmt: skip

    # -- reading the topic back ----------------------------------------------------------------

    async def find(
        self, digests: set[bytes], from_offsets: dict[int, int]
    ) -> dict[bytes, Position]:
        """Read every partition from its offset in ``from_offsets`` (0 if absent) to the end;
        the positions of the records whose SHA-256 is in ``digests``.

        A partition is done when the consumer's position reaches the end offset read at the
        start, so records deleted below it (an offset under the log start offset, or records
        deleted during the scan) end the scan instead of hanging it.

        Raises:
            TransportError: Kafka failed, or the scan made no progress for
                :data:`bus.kafka.replay.READ_STALL_S`.
        """
        with kafka_errors(f"scanning {self.topic}"):
            return await self._find(digests, from_offsets)

    async def _find(
        self, digests: set[bytes], from_offsets: dict[int, int]
    ) -> dict[bytes, Position]:
        consumer = AIOKafkaConsumer(
            **client_options(self._bootstrap, self._security),
            group_id=None,
            enable_auto_commit=False,
            # deleted under the scan: go on from the new log start, not from the end
            auto_offset_reset="earliest",
        )
        found: dict[bytes, Position] = {}
        tps = await self._partitions()
        await consumer.start()
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:
                mark = from_offsets.get(tp.partition, 0)
                if mark < starts[tp]:
                    # the records in [mark, log start) are gone: a pending report among them
                    # cannot be found, and is published again
                    self._log.warning(
                        "scan_watermark_below_log_start", partition=tp.partition,
                        watermark=mark, log_start_offset=starts[tp], end_offset=ends[tp],
                    )  # fmt: skip
                consumer.seek(tp, min(max(mark, starts[tp]), ends[tp]))
            scanned = 0
            async for rec in read_until(consumer, ends, max_records=5000):
                scanned += 1
                d = sha256(rec.value or b"")
                if d in digests:
                    found[d] = Position(rec.partition, rec.offset, rec.timestamp)
            self._log.info("topic_scanned", records=scanned, looked_for=len(digests),
                           found=len(found), from_offsets=from_offsets)  # fmt: skip
        finally:
            await consumer.stop()
        return found

    async def end_offsets(self) -> dict[int, int]:
        """Per partition of the topic, the offset the next record will get.

        Raises:
            TransportError: Kafka failed, or the topic has no partitions.
        """
        with kafka_errors(f"reading the end offsets of {self.topic}"):
            consumer = AIOKafkaConsumer(
                **client_options(self._bootstrap, self._security), group_id=None
            )
            tps = await self._partitions()
            await consumer.start()
            try:
                ends = await consumer.end_offsets(tps)
            finally:
                await consumer.stop()
        return {tp.partition: o for tp, o in ends.items()}

    async def _partitions(self) -> list[TopicPartition]:
        tps = await topic_partitions(self._bootstrap, [self.topic], security=self._security)
        if not tps:
            raise TransportError(f"topic {self.topic} has no partitions", retriable=False)
        return tps


class TrustReader:
    """Feeds a :class:`~nodes.gateway.trust.SealedTrust`: the trust topics from the bus (one
    consumer without a group, every partition of ``<prefix>registry`` and ``<prefix>mandate``
    from offset 0) and the final seals from the node's final store (read-only).

    Args:
        bootstrap, security: how to reach the brokers.
        topics: topic names.
        trust: the trust state to feed.
        final_db: the organization's node's final store (``obus node --final-db``).
        root: version 1 of the mandate; the final store must have been judged from it.

    Raises (at construction):
        ConfigError: ``final_db`` is missing, unreadable, or judged from another root.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        security: KafkaSecurity | None,
        topics: Topics,
        trust: SealedTrust,
        final_db: Path,
        root: Mandate,
    ) -> None:
        self._bootstrap, self._security = bootstrap, security
        self._topics = topics
        self.trust = trust
        fix = "pass the final store of this organization's node (obus node --final-db FILE)"
        try:
            self._reads = FinalReads(final_db)
        except StoreError as exc:
            problem = f"{final_db} cannot be read: {exc.message}"
            raise ConfigError("--final-db", problem, fix) from exc
        try:
            self._reads.check_root(sha256(encode(root)))
        except ConfigError as exc:
            self._reads.close()
            raise ConfigError(
                "--final-db",
                f"{final_db} was not judged from version 1 of mandate {root.mandate_id}",
                f"{fix}, and version 1 of the mandate (--root-mandate FILE)",
            ) from exc
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and position the consumer where the trust state stands.

        Raises:
            TransportError: Kafka is unreachable, or a trust topic does not exist.
        """
        with kafka_errors("reading the trust topics"):
            names = [self._topics.registry, self._topics.mandate]
            self._tps = await topic_partitions(self._bootstrap, names, security=self._security)
            if {tp.topic for tp in self._tps} != set(names):
                raise TransportError(
                    f"the trust topics {', '.join(names)} do not all exist", retriable=True
                )
            self._consumer = AIOKafkaConsumer(
                **client_options(self._bootstrap, self._security),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await self._consumer.start()
            self._consumer.assign(self._tps)
            for tp in self._tps:
                self._consumer.seek(tp, self.trust.read_size((tp.topic, tp.partition)))

    async def stop(self) -> None:
        """Stop the consumer and close the final store."""
        if self._consumer is not None:
            await self._consumer.stop()
        self._reads.close()

    async def catch_up(self) -> int:
        """Read the trust topics to their current ends and judge every final seal stored since
        the last call that the records allow; how many epochs were judged.

        Raises:
            TransportError: Kafka failed.
            StoreError: the final store cannot be read.
            SealedRootMismatchError: a sealed trust record was altered or deleted.
        """
        assert self._consumer is not None
        async with self._lock:
            with kafka_errors("reading the trust topics"):
                ends = await self._consumer.end_offsets(self._tps)
                self._consumer.resume(*self._tps)  # read_until paused them at their ends
                async for rec in read_until(self._consumer, ends):
                    self.trust.offer_records((rec.topic, rec.partition), rec.offset, [rec.value])
            seals = await asyncio.to_thread(self._reads.seals, self.trust.epoch, 1000)
            return self.trust.advance(seals)


class ProofReader:
    """Feeds a :class:`~nodes.gateway.proofs.ProofBook`: the seals topic, the trust topics and
    the book's reports topic, every partition from where the book stands, with one consumer
    without a group, started on the first :meth:`ensure` (a gateway nobody asks for proofs reads
    nothing).

    Args:
        bootstrap, security: how to reach the brokers.
        book: the book to feed.
        min_interval_s: the log is read forward at most this often.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        security: KafkaSecurity | None,
        book: ProofBook,
        min_interval_s: float,
    ) -> None:
        self._bootstrap, self._security = bootstrap, security
        self.book = book
        self._min_interval_s = min_interval_s
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._lock = asyncio.Lock()
        self._last = -float("inf")

    async def stop(self) -> None:
        """Stop the consumer (when it was started)."""
        if self._consumer is not None:
            await self._consumer.stop()

    async def ensure(self, done: Callable[[], bool]) -> None:
        """Read the log forward to its current end unless ``done()`` holds already. Reads are
        at least ``min_interval_s`` apart: a caller that comes sooner after the last one waits
        for the interval to pass (and reads then, unless another caller's read made ``done()``
        hold), rather than being answered from a view of the log that may be up to that old
        (a record sealed a moment ago would be called not sealed). Callers queue on one lock;
        the gateway bounds how many wait (``proof_max_concurrent``).

        Raises:
            TransportError: Kafka failed, or a topic is missing.
            LogBrokenError: a record is missing, or the trust records contradict a final seal.
        """
        async with self._lock:
            if done():
                return
            wait = self._min_interval_s - (time.monotonic() - self._last)
            if wait > 0:
                await asyncio.sleep(wait)
                if done():
                    return
            with kafka_errors("reading the log for proofs"):
                await self._catch_up()
            self._last = time.monotonic()

    async def _catch_up(self) -> None:
        book = self.book
        if self._consumer is None:
            t = book.topics
            names = [t.seals, t.registry, t.mandate, book.topic]
            tps = await topic_partitions(self._bootstrap, names, security=self._security)
            if {tp.topic for tp in tps} != set(names):
                raise TransportError(
                    f"the topics {', '.join(names)} do not all exist", retriable=True
                )
            consumer = AIOKafkaConsumer(
                **client_options(self._bootstrap, self._security),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # deleted records show as a gap: the book names it
            )
            await consumer.start()
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, book.read_from((tp.topic, tp.partition)))
            self._consumer, self._tps = consumer, tps
        ends = await self._consumer.end_offsets(self._tps)
        self._consumer.resume(*self._tps)  # read_until leaves them paused at their ends
        async for rec in read_until(self._consumer, ends):
            book.offer(rec.topic, rec.partition, rec.offset, rec.value)
