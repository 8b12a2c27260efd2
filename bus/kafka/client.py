"""The Kafka adapter's client side (aiokafka): security settings, client options, producers,
retries and error wrapping.

aiokafka's errors are wrapped here, at the edge, in :class:`~bus.errors.TransportError` with
``retriable`` taken from aiokafka's own flag (:func:`wrap`, :func:`kafka_errors`), so that code
in ``nodes/`` may build aiokafka clients yet catch only :mod:`bus.errors` types.
Topic names live in the pure :mod:`bus.topics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.helpers import create_ssl_context

from bus.errors import ConfigError, TransportError

log = structlog.get_logger(__name__)


SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# SCRAM keeps passwords off the wire and out of the brokers (salted keys in the metadata log);
# PLAIN is accepted for brokers that only offer it, and should only ever run over TLS.
SASL_MECHANISMS: Final = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How a client authenticates to the brokers; ``None`` wherever it is accepted: PLAINTEXT.

    Args:
        protocol: one of :data:`SECURITY_PROTOCOLS`.
        sasl_mechanism: one of :data:`SASL_MECHANISMS` (SASL_* protocols only).
        username: the SASL principal, e.g. the organization id (SASL_* only).
        password: its password (SASL_* only; never shown by ``repr``).
        ssl_cafile: CA bundle that signed the brokers' certificates (SSL, SASL_SSL).
        ssl_certfile: client certificate for mutual TLS (SSL only), with ``ssl_keyfile``.
        ssl_keyfile: its private key.

    Raises:
        ConfigError: a missing or contradictory setting (the message names the fix).
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                "security_protocol",
                f"{self.protocol!r} is unknown",
                f"use one of {SECURITY_PROTOCOLS}",
            )
        sasl = self.protocol.startswith("SASL_")
        if sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    "sasl_mechanism",
                    f"{self.sasl_mechanism!r} is not supported",
                    f"use one of {SASL_MECHANISMS}",
                )
            if not self.username or not self.password:
                raise ConfigError(
                    "sasl_username",
                    f"{self.protocol} needs a username and a password",
                    "give --sasl-username and --sasl-password-file (or OBUS_SASL_PASSWORD)",
                )
        elif self.sasl_mechanism or self.username or self.password:
            raise ConfigError(
                "security_protocol",
                f"SASL credentials given but the protocol is {self.protocol}",
                "use SASL_PLAINTEXT or SASL_SSL",
            )
        if not self.protocol.endswith("SSL") and (
            self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        ):
            raise ConfigError(
                "ssl_cafile",
                f"TLS files given but the protocol is {self.protocol}",
                "use SASL_SSL or SSL",
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError(
                "ssl_certfile", "a client certificate needs its key and vice versa", "give both"
            )

    def options(self) -> dict[str, Any]:
        """aiokafka client keyword arguments (security_protocol, sasl_*, ssl_context)."""
        opts: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.startswith("SASL_"):
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.username
            opts["sasl_plain_password"] = self.password
        if self.protocol.endswith("SSL"):
            opts["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return opts


def client_options(bootstrap: str, security: KafkaSecurity | None = None) -> dict[str, Any]:
    """Keyword arguments every aiokafka client of this process is built with."""
    return {"bootstrap_servers": bootstrap, **(security.options() if security else {})}


def wrap(exc: BaseException, what: str) -> TransportError:
    """A TransportError for a foreign exception, keeping aiokafka's retriable flag.

    aiokafka's timeouts (:class:`~aiokafka.errors.KafkaTimeoutError`: a request or a batch
    expired) are retriable too, although aiokafka does not mark them so: the brokers did not
    refuse anything, and waiting for them can cure it.
    """
    retriable = bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaTimeoutError)
    return TransportError(f"{what}: {exc!r}", retriable=retriable)


@contextmanager
def kafka_errors(what: str) -> Iterator[None]:
    """Re-raise an aiokafka error raised inside the block as a TransportError (see :func:`wrap`).

    ``with kafka_errors("consuming reports"): await consumer.getmany(...)``: the message starts
    with ``what``; any other exception passes through unchanged.

    Raises:
        TransportError: aiokafka failed inside the block (``from`` its error).
    """
    try:
        yield
    except KafkaError as exc:
        raise wrap(exc, what) from exc


# How long admin and offset look-ups retry retriable errors (a dead or frozen broker that the
# bootstrap list or a stale metadata snapshot still names). The controller fences a silent
# broker after broker.session.timeout.ms (Kafka default 9 s), after which metadata stops
# naming it; 60 s covers that several times and still bounds every call.
RETRY_S: Final = 60.0
_T = TypeVar("_T")


async def retrying(what: str, op: Callable[[], Awaitable[_T]], *, within_s: float = RETRY_S) -> _T:
    """Run ``op`` again while it fails with a retriable Kafka error, for at most ``within_s``.

    Retriable as aiokafka marks it: a timeout is not tried again here (each try of ``op`` may
    already have waited a whole request timeout), only wrapped as retriable for the caller.

    Raises:
        TransportError: a non-retriable error, or a retriable one after ``within_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    delay = 0.2
    while True:
        try:
            return await op()
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or loop.time() + delay > deadline:
                raise wrap(exc, what) from exc
            log.warning("kafka_retry", what=what, error=repr(exc), delay_s=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def reliable_producer(
    bootstrap: str, *, security: KafkaSecurity | None = None, **overrides: Any
) -> AIOKafkaProducer:
    """An idempotent producer with acks=all: no loss, no duplicates from its own retries."""
    options: dict[str, Any] = {
        **client_options(bootstrap, security),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "request_timeout_ms": 30_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


class BrokerUnreachableError(TransportError):
    """No bootstrap server answered a metadata request within the connect timeout.

    ``bootstrap`` names the servers tried; the message is one line with the fix.
    """

    def __init__(self, bootstrap: str, detail: str) -> None:
        self.bootstrap = bootstrap
        self.detail = detail
        super().__init__(
            f"broker unreachable: no Kafka broker answered at {bootstrap} ({detail}); fix: start"
            " the broker, or point --bootstrap (or OBUS_BOOTSTRAP) at a running one;"
            " --connect-timeout (OBUS_CONNECT_TIMEOUT) waits longer",
            retriable=True,
        )
        self.bootstrap = bootstrap


@contextmanager
def _quiet_kafka_client() -> Iterator[None]:
    """aiokafka logs every failed bootstrap attempt itself; the probe says it once."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def probe_brokers(
    bootstrap_servers: str,
    security: KafkaSecurity | None,
    timeout_s: float,
    *,
    quiet: bool = True,
) -> int:
    """Ask the bootstrap servers for the cluster's metadata, for at most ``timeout_s``;
    returns how many brokers the cluster has (at least 1). ``quiet`` silences aiokafka's own
    lines meanwhile (a one-shot command says it once); a long-running process that filters
    them itself (:mod:`nodes.runtime.broker_watch`) passes False.

    Raises:
        BrokerUnreachableError: no server answered in time (refused, unresolvable, silent,
            or the security handshake failed).
    """
    # The client tries the servers one after another: a silent one (a stopped broker) must not
    # use up the whole budget before a live one is asked.
    servers = max(1, len([s for s in bootstrap_servers.split(",") if s.strip()]))
    client = AIOKafkaClient(
        **client_options(bootstrap_servers, security),
        request_timeout_ms=max(1, int(timeout_s * 1000 / servers)),
    )
    try:
        with _quiet_kafka_client() if quiet else contextlib.nullcontext():
            await asyncio.wait_for(client.bootstrap(), timeout_s)
        return max(1, len(client.cluster.brokers()))
    except TimeoutError:
        detail = f"no answer within {timeout_s:g} s"
        raise BrokerUnreachableError(bootstrap_servers, detail) from None
    except (KafkaError, OSError):
        # aiokafka's text is a Python repr of its host tuples: the servers are named above
        detail = "connection refused, host unknown or handshake failed"
        raise BrokerUnreachableError(bootstrap_servers, detail) from None
    finally:
        with _quiet_kafka_client() if quiet else contextlib.nullcontext():
            await client.close()
