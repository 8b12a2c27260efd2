"""Mandate versions and registry records fed to a trust timeline in log-time order.

An export (and the auditor's live replay) holds the mandate topic before the registry, but a
registry record must be judged under the mandate version in force when it was logged: an
accreditation signed by a root key that a later version rotates out, or by an organization that
a later version drops, was genuine when it was logged and must not become a violation then; a
revocation logged before a rotation must stay in force after it
(:class:`bus.lifecycle.TrustTimeline` carries revocations into a version only from the records
it has seen when that version takes effect). So mandate records are held back and each one is
offered just before the first registry record logged after it (at the same millisecond, the
version first, as :meth:`TrustTimeline.at <bus.lifecycle.TrustTimeline.at>` puts a version in
force from its own log time). The auditor and the prover read the trust state this one way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from bus.errors import VerificationError
from bus.export import LogRecord
from bus.lifecycle import RegistryEntry, TrustTimeline
from bus.model import Mandate
from bus.trust import decode_mandate_record, decode_registry_record

__all__ = ["MandateQueue", "MemoryQueue", "TrustFeed"]


class MandateQueue(Protocol):
    """Mandate records held back, in the order they were read."""

    def push(self, rec: LogRecord) -> None:
        """Hold one record back."""

    def take_until(self, log_time_ms: int | None) -> Iterator[LogRecord]:
        """Remove and yield the records in order while their log time is <= ``log_time_ms``
        (every record when None); stops at the first later one."""


class MemoryQueue:
    """A :class:`MandateQueue` in memory (the mandate topic holds one record per version)."""

    def __init__(self) -> None:
        self._held: deque[LogRecord] = deque()

    def push(self, rec: LogRecord) -> None:
        self._held.append(rec)

    def take_until(self, log_time_ms: int | None) -> Iterator[LogRecord]:
        while self._held and (log_time_ms is None or self._held[0].timestamp_ms <= log_time_ms):
            yield self._held.popleft()


MandateOutcome = Callable[[LogRecord, Mandate | None, VerificationError | None], None]
"""Told of every mandate record offered: the version applied (None: a copy or history), or
the error that refused it."""


class TrustFeed:
    """Feeds a :class:`TrustTimeline` the mandate and registry sections in log-time order.

    Args:
        timeline: the timeline to feed (started from the out-of-band mandate).
        on_mandate: told of the outcome of each mandate record when it is offered.
        queue: where mandate records wait (default: in memory).
    """

    def __init__(
        self,
        timeline: TrustTimeline,
        *,
        on_mandate: MandateOutcome | None = None,
        queue: MandateQueue | None = None,
    ) -> None:
        self.timeline = timeline
        self._on_mandate = on_mandate
        self._queue: MandateQueue = queue if queue is not None else MemoryQueue()

    def mandate(self, rec: LogRecord) -> None:
        """A record of the mandate section: held back until the registry reaches its time."""
        self._queue.push(rec)

    def registry(self, rec: LogRecord) -> RegistryEntry:
        """A record of the registry section, judged under the version in force at its log time.

        Raises:
            VerificationError: that version refuses it (see
                :meth:`TrustTimeline.apply_registry <bus.lifecycle.TrustTimeline.apply_registry>`).
        """
        self._offer(rec.timestamp_ms)
        return self.timeline.apply_registry(decode_registry_record(rec.value or b""))

    def settle(self) -> None:
        """Offer every mandate record still held (the trust sections are over)."""
        self._offer(None)

    def _offer(self, until_ms: int | None) -> None:
        for rec in self._queue.take_until(until_ms):
            try:
                applied = self.timeline.offer_mandate(
                    decode_mandate_record(rec.value or b""), log_time_ms=rec.timestamp_ms
                )
            except VerificationError as exc:
                if self._on_mandate is not None:
                    self._on_mandate(rec, None, exc)
                continue
            if self._on_mandate is not None:
                self._on_mandate(rec, applied, None)
