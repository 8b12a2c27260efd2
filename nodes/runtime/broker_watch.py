"""Whether this process reaches its brokers, and the Kafka client's error flood cut down to one
event per change.

While the brokers are unreachable, aiokafka logs every failed connection attempt, metadata
request, heartbeat and fetch of every client of the process: a node wrote about 370 such lines a
second during a 50 s outage, which buries everything else in the log. :class:`KafkaLogGate` is a
:class:`logging.Filter` on the process's log handlers that turns this into one event per state
change:

* ``reachable``: aiokafka's lines pass as usual. The first of its warnings or errors that says a
  connection failed (:func:`connection_failure`) or a failed probe turns the state
  ``unreachable`` and logs one ``kafka_broker_unreachable`` event with what failed.
* ``unreachable``: every warning and error of aiokafka is counted and dropped (never silently:
  the count is logged at the next change and exported as a metric). A probe that reaches the
  brokers makes the state reachable again at once (readiness follows it), but the clients of
  the process take a moment to reconnect and keep logging failures meanwhile: those are still
  counted and dropped until the next probe also answers, which ends the outage with one
  ``kafka_broker_reachable`` event saying how long it lasted (to the first answer) and how many
  lines were suppressed. A probe that fails before then continues the same outage (no event).

:class:`BrokerWatch` is the probe: every :data:`PROBE_INTERVAL_S` (and at once after a failure
line) a fresh client asks the bootstrap servers for the cluster's metadata, bounded by
:data:`PROBE_TIMEOUT_S`. It is the only way back to ``reachable``, so it runs whether or not the
process serves its ops port; the ops server's ``/readyz`` reads its verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from bus.kafka.client import BrokerUnreachableError, KafkaSecurity, probe_brokers

log = structlog.get_logger(__name__)

PROBE_INTERVAL_S: Final = 5.0
PROBE_TIMEOUT_S: Final = 5.0
KAFKA_LOGGER: Final = "aiokafka"
# What aiokafka says when a broker cannot be reached (its own texts, and the errors it names).
_FAILURE = re.compile(
    r"unable connect|unable to (request|update) metadata|connection|connect ?error|"
    r"timed? ?out|timeout|coordinator dead|coordinator request failed|node ?not ?ready|"
    r"heartbeat send request failed|failed fetch|cannot send|could not send",
    re.IGNORECASE,
)
_MAX_FIRST_CHARS: Final = 300  # the failure line quoted in the event


def connection_failure(record: logging.LogRecord) -> bool:
    """Whether an aiokafka warning or error says a broker could not be reached."""
    if record.levelno < logging.WARNING or not record.name.startswith(KAFKA_LOGGER):
        return False
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += f" {record.exc_info[1]!r}"
    return _FAILURE.search(text) is not None


@dataclass(frozen=True, slots=True)
class BrokerState:
    """Where the watch stands: ``reachable`` (None: not probed yet), why not, since when
    (monotonic seconds), and the counts exported as metrics."""

    reachable: bool | None
    why: str
    since_s: float
    suppressed_now: int
    suppressed_total: int
    changes_total: int


class KafkaLogGate(logging.Filter):
    """The filter (module docstring). Thread-safe: aiokafka may log from any thread.

    Args:
        clock: monotonic seconds (outage durations).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._lock = threading.Lock()
        self._reachable: bool | None = None
        self._why = "not probed yet"
        self._since = clock()
        self._suppressed = 0
        self._suppressed_total = 0
        self._changes = 0
        self._settling = False  # reachable again, the outage not closed yet (docstring)
        self._outage_s = 0.0
        self._handlers: list[logging.Handler] = []
        self._last: tuple[logging.LogRecord, bool] | None = None  # the record judged last
        self.on_failure: Callable[[], None] | None = None  # called when a line turns it

    def state(self) -> BrokerState:
        """A snapshot of the state and counts."""
        with self._lock:
            return BrokerState(
                self._reachable, self._why, self._since, self._suppressed,
                self._suppressed_total, self._changes,
            )  # fmt: skip

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop (and count) aiokafka's warnings and errors while unreachable; turn the state
        on the first connection failure. Every handler of the root logger asks about the same
        record: it is judged (and counted) once."""
        if record.levelno < logging.WARNING or not record.name.startswith(KAFKA_LOGGER):
            return True
        with self._lock:
            if self._last is not None and self._last[0] is record:
                return self._last[1]
        keep = self._judge(record)
        with self._lock:
            self._last = (record, keep)
        return keep

    def _judge(self, record: logging.LogRecord) -> bool:
        with self._lock:
            if self._reachable is False or self._settling:
                self._suppressed += 1
                self._suppressed_total += 1
                return False
        if not connection_failure(record):
            return True
        self.unreachable(f"{record.name}: {record.getMessage()}"[:_MAX_FIRST_CHARS])
        if self.on_failure is not None:
            self.on_failure()
        return False

    def unreachable(self, why: str) -> None:
        """The brokers could not be reached: one event when this starts an outage."""
        with self._lock:
            if self._reachable is False:
                return
            self._reachable, self._why = False, why
            if self._settling:  # the same outage goes on
                self._settling = False
                return
            self._since = self._clock()
            self._suppressed = 0
            self._changes += 1
        log.warning(
            "kafka_broker_unreachable", why=why,
            note="further Kafka client warnings are counted, not logged, until it is reachable",
        )  # fmt: skip

    def reachable(self) -> None:
        """The brokers answered: reachable at once; after an outage, the second answer in a
        row ends it with one event (with the suppressed count)."""
        with self._lock:
            if self._reachable is False:
                self._reachable, self._why, self._settling = True, "", True
                self._outage_s = self._clock() - self._since
                return
            if self._reachable is True and not self._settling:
                return
            settled, suppressed = self._settling, self._suppressed
            self._reachable, self._why, self._settling = True, "", False
            self._since = self._clock()
            self._suppressed = 0
            if settled:
                self._changes += 1
        if settled:
            log.info(
                "kafka_broker_reachable", outage_s=round(self._outage_s, 1),
                suppressed_lines=suppressed,
            )  # fmt: skip

    def install(self) -> None:
        """Filter every handler the root logger has now (logs.configure() set them up)."""
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)
                self._handlers.append(handler)

    def uninstall(self) -> None:
        """Remove the filter; an outage still on is logged once with its suppressed count."""
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers.clear()
        state = self.state()
        with self._lock:
            open_outage = state.reachable is False or self._settling
        if open_outage and state.suppressed_now:
            log.warning(
                "kafka_broker_unreachable_at_exit", why=state.why,
                outage_s=round(self._clock() - state.since_s, 1),
                suppressed_lines=state.suppressed_now,
            )  # fmt: skip


async def probe(bootstrap: str, security: KafkaSecurity | None, timeout_s: float) -> str:
    """Ask the bootstrap servers for the cluster's metadata; "" when they answered, otherwise
    why not (one line)."""
    try:
        await probe_brokers(bootstrap, security, timeout_s, quiet=False)
    except BrokerUnreachableError as exc:
        return f"{bootstrap}: {exc.detail}"[:_MAX_FIRST_CHARS]
    return ""


class BrokerWatch:
    """Probes the brokers until :meth:`stop` and keeps :class:`KafkaLogGate` in step.

    ``async with BrokerWatch(bootstrap, security):`` installs the gate on the log handlers and
    starts probing; leaving uninstalls it.
    """

    def __init__(
        self,
        bootstrap: str,
        security: KafkaSecurity | None,
        *,
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
        gate: KafkaLogGate | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self._security = security
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self.gate = gate or KafkaLogGate()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.probes_total = 0
        self.probe_failures_total = 0

    def state(self) -> BrokerState:
        """The gate's state."""
        return self.gate.state()

    async def check(self) -> bool:
        """Probe once and update the state; whether the brokers answered."""
        why = await probe(self.bootstrap, self._security, self._timeout_s)
        self.probes_total += 1
        if why:
            self.probe_failures_total += 1
            self.gate.unreachable(why)
            return False
        self.gate.reachable()
        return True

    def _poke(self) -> None:
        # Called from the filter, possibly on another thread than the loop's.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        """Install the gate and start probing (the first probe runs at once)."""
        self._loop = asyncio.get_running_loop()
        self.gate.on_failure = self._poke
        self.gate.install()
        self._task = asyncio.create_task(self._run(), name="broker-watch")

    async def stop(self) -> None:
        """Stop probing and uninstall the gate."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.gate.on_failure = None
        self._loop = None
        self.gate.uninstall()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.check()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()

    async def __aenter__(self) -> BrokerWatch:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
