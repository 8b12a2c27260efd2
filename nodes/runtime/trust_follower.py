"""Follow ``<prefix>mandate`` and ``<prefix>registry`` into a :class:`~bus.lifecycle.TrustTimeline`.

Thin Kafka adapter: one consumer without a group, assigned partition 0 of both topics (one
partition each, append-only: every record is kept), read from offset 0 on start.
:meth:`TrustFollower.catch_up` reads both topics to the end offsets seen at the call (mandate
first, so a registry record of an organization that a new version admits is judged under that
version) and returns the revocations it newly applied, so the node can mark reports it accepted
before the revocation reached it.

A node judges by the newest version it has applied (:attr:`TrustTimeline.current
<bus.lifecycle.TrustTimeline.current>`); a version's freshness (``mandate_expired``) is judged at
this machine's clock when the record is read (``clock``). The broker's timestamp of a trust
record, which the operator sets, is not read at all.

Refused mandate versions (rollback, threshold not met, expired, ...) are logged as
``mandate_alarm`` and counted, never applied. Refused registry records are logged as
``registry_record_rejected`` and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.errors import VerificationError
from bus.ingest import wall_clock_ms
from bus.kafka.client import KafkaSecurity, client_options, kafka_errors
from bus.lifecycle import TrustTimeline
from bus.model import Revocation
from bus.trust import KeyRing, decode_mandate_record, decode_registry_record

log = structlog.get_logger(__name__)


class TrustFollower:
    """Reads the mandate and registry topics into a timeline, catching up on demand.

    Args:
        clock: "now" in milliseconds, at which a new mandate version's freshness is judged
            (default: this machine's clock).
    """

    def __init__(
        self,
        bootstrap: str,
        mandate_topic: str,
        registry_topic: str,
        timeline: TrustTimeline,
        *,
        security: KafkaSecurity | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.timeline = timeline
        self.clock = clock
        self.alarms: Counter[str] = Counter()  # mandate alarms by reason
        self.rejected = 0  # registry records refused by the newest version
        self.applied_versions = 0
        self._mandate_tp = TopicPartition(mandate_topic, 0)
        self._registry_tp = TopicPartition(registry_topic, 0)
        self._consumer = AIOKafkaConsumer(**client_options(bootstrap, security), group_id=None)
        self._positions = {self._mandate_tp: 0, self._registry_tp: 0}

    async def start(self) -> list[Revocation]:
        """Connect and read both topics to their current end; returns revocations applied.

        Raises:
            TransportError: the brokers failed (see :meth:`catch_up`).
        """
        with kafka_errors("following trust topics"):
            await self._consumer.start()
            self._consumer.assign(list(self._positions))
            for tp in self._positions:
                self._consumer.seek(tp, 0)
        return await self.catch_up()

    async def stop(self) -> None:
        """Disconnect."""
        await self._consumer.stop()

    async def catch_up(self) -> list[Revocation]:
        """Apply both topics up to the end offsets seen now; returns new revocations.

        Raises:
            TransportError: the brokers failed; retriable when waiting can cure it (a timeout
                too: a node waits out an outage rather than stopping for it).
        """
        with kafka_errors("following trust topics"):
            ends = await self._consumer.end_offsets(list(self._positions))
            await self._read(self._mandate_tp, ends[self._mandate_tp], self._on_mandate)
            revocations: list[Revocation] = []
            await self._read(
                self._registry_tp,
                ends[self._registry_tp],
                lambda r: self._on_registry(r, revocations),
            )
        return revocations

    async def _read(self, tp: TopicPartition, end: int, handle: Callable[[Any], None]) -> None:
        # Caught up, the partition stays paused: an idle long-poll fetch (fetch_max_wait_ms,
        # 500 ms) would otherwise sit on the broker connection, and the broker answers one
        # request per connection at a time, so every end_offsets() above waited behind it
        # (~230 ms per node batch, measured by make bench).
        if self._positions[tp] >= end:
            self._consumer.pause(tp)
            return
        self._consumer.resume(tp)
        while self._positions[tp] < end:
            batch = await self._consumer.getmany(tp, timeout_ms=1000, max_records=1000)
            for rec in batch.get(tp, []):
                self._positions[tp] = rec.offset + 1
                handle(rec)
        self._consumer.pause(tp)

    def _on_mandate(self, rec: Any) -> None:
        offset, now = rec.offset, self.clock()
        try:
            env = decode_mandate_record(rec.value or b"")
            mandate = self.timeline.offer_mandate(env, now_ms=now)
        except VerificationError as exc:
            self.alarms[exc.reason.value] += 1
            log.error(  # noqa: TRY400 - refused input, not a bug: no traceback
                "mandate_alarm",
                topic=self._mandate_tp.topic,
                offset=offset,
                reason=exc.reason.value,
                detail=exc.message,
            )
            return
        if mandate is not None:
            self.applied_versions += 1
            log.info(
                "mandate_version_applied",
                mandate_id=mandate.mandate_id,
                version=mandate.version,
                organizations=[o.org for o in mandate.organizations],
                threshold=mandate.threshold,
                applied_at_ms=now,
                offset=offset,
            )

    def _on_registry(self, rec: Any, revocations: list[Revocation]) -> None:
        offset = rec.offset
        try:
            entry = self.timeline.apply_registry(decode_registry_record(rec.value or b""))
        except VerificationError as exc:
            self.rejected += 1
            log.warning(
                "registry_record_rejected",
                offset=offset,
                reason=exc.reason.value,
                detail=exc.message,
            )
            return
        log.debug("registry_applied", kind=type(entry).__name__, offset=offset)
        if isinstance(entry, Revocation):
            revocations.append(entry)


class RegistryFollower:
    """Reads ``obus.registry`` (one partition) into a :class:`KeyRing`, catching up on demand.

    Rejected registry records are logged and counted, never applied. Broker failures come out
    as aiokafka raises them: each caller wraps them with what it was doing
    (:func:`bus.kafka.client.kafka_errors`).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        keyring: KeyRing,
        *,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.keyring = keyring
        self.rejected = 0
        self._tp = TopicPartition(topic, 0)
        self._consumer = AIOKafkaConsumer(**client_options(bootstrap, security), group_id=None)
        self._position = 0

    async def start(self) -> None:
        """Connect and read the registry to its current end."""
        await self._consumer.start()
        self._consumer.assign([self._tp])
        self._consumer.seek(self._tp, 0)
        await self.catch_up()

    async def stop(self) -> None:
        """Disconnect."""
        await self._consumer.stop()

    async def catch_up(self) -> int:
        """Apply registry records up to the end offset seen now; returns how many were read."""
        end = (await self._consumer.end_offsets([self._tp]))[self._tp]
        read = 0
        while self._position < end:
            batch = await self._consumer.getmany(self._tp, timeout_ms=1000, max_records=1000)
            for rec in batch.get(self._tp, []):
                self._position = rec.offset + 1
                read += 1
                try:
                    entry = self.keyring.apply(decode_registry_record(rec.value or b""))
                    log.debug("registry_applied", kind=type(entry).__name__, offset=rec.offset)
                except VerificationError as exc:
                    self.rejected += 1
                    log.warning(
                        "registry_record_rejected",
                        offset=rec.offset,
                        reason=exc.reason.value,
                        detail=exc.message,
                    )
        return read
