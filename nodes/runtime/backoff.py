"""How every long-running loop waits out brokers it cannot reach, and which failures are
worth waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bus.errors import TransportError

# Backoff while the brokers cannot be reached (see OutageBackoff): first and longest wait.
OUTAGE_RETRY_FIRST_S = 0.5


OUTAGE_RETRY_MAX_S = 10.0


class OutageBackoff:
    """How every loop of a node waits for brokers it cannot reach (trust catch-up, follow-up,
    sealer): log ``broker_unavailable_waiting``, wait 0.5 s doubling up to 10 s, or until
    stop is asked; :meth:`reset` after a turn that reached the brokers."""

    def __init__(self, log: Any, what: str, stopping: asyncio.Event) -> None:
        self._log = log
        self._what = what
        self._stopping = stopping
        self.delay = OUTAGE_RETRY_FIRST_S

    def reset(self) -> None:
        """The brokers answered: the next outage starts from the shortest wait again."""
        self.delay = OUTAGE_RETRY_FIRST_S

    async def wait(self, exc: BaseException) -> None:
        """Log the failure (a :func:`transient` one) and wait before the next try."""
        self._log.warning(
            "broker_unavailable_waiting", what=self._what, error=repr(exc), retry_in_s=self.delay
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.delay)
        self.delay = min(2 * self.delay, OUTAGE_RETRY_MAX_S)


def transient(exc: BaseException) -> bool:
    """True for a broker failure that waiting can cure: the cluster unreachable, a request
    timed out, a leader moving (a retriable :class:`~bus.errors.TransportError`; the Kafka
    adapter marks aiokafka's retriable errors and its timeouts so, see
    :func:`bus.kafka.client.wrap`). Refusals (authorization, bad configuration) are not
    transient."""
    return isinstance(exc, TransportError) and exc.retriable
