"""How many connections the gateway serves at once, and what the others get.

:class:`ConnectionGate` is the listening socket's protocol factory, in front of aiohttp's
:class:`aiohttp.web.Server`. Every accepted connection (with HTTPS: once its handshake is done)
is either *admitted*, handed to aiohttp and counted until it closes, or, once ``limit``
connections are open, *refused*: answered at once with a fixed ``503`` (JSON reason
``too_many_connections``, ``Retry-After``, ``Connection: close``) without reading its request,
its sending half shut, whatever the client still sends read and discarded, and closed when the
client closes or after :data:`LINGER_S`. Reading before closing is what lets the client see the
503: closing a socket with unread bytes resets the connection, and the reset can destroy the
answer in flight. At most :data:`MAX_REFUSING` refusals linger at once; beyond that a
connection is reset without an answer, so that a flood cannot turn refusals into the descriptor
exhaustion the limit prevents.

Refusals are logged as one warning when they begin and then at most every
:data:`LOG_EVERY_S` seconds with their count, never once per connection.

:func:`fit_open_files` sizes the process for the limit: it raises the open-files soft limit as
far as the hard limit allows, and says how many connections fit beside :data:`FD_RESERVE`
descriptors kept for everything else (lingering refusals, Kafka, SQLite, logs, TLS handshakes in
progress). Without it the kernel would refuse ``accept()`` first (``EMFILE``) and asyncio would
log an error for it every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import resource
import time
from collections.abc import Callable, Mapping
from typing import Final, cast

import structlog

REASON: Final = "too_many_connections"
LINGER_S: Final = 1.0
MAX_REFUSING: Final = 256
FD_RESERVE: Final = 512
LOG_EVERY_S: Final = 10.0


def fit_open_files(connections: int) -> int:
    """Raise the open-files soft limit towards ``connections`` + :data:`FD_RESERVE`; returns how
    many connections fit under the limit then in force (at most ``connections``, at least 1)."""
    need = connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            with contextlib.suppress(ValueError, OSError):  # not allowed here: keep the soft limit
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - FD_RESERVE))


def refusal_answer(limit: int, retry_after_s: int, headers: Mapping[str, str]) -> bytes:
    """The bytes of the 503 a refused connection gets, with ``headers`` (security headers)."""
    body = json.dumps(
        {"reason": REASON, "detail": f"the gateway serves at most {limit} connections at once"}
    ).encode()
    head = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Retry-After": str(retry_after_s),
        "Connection": "close",
        **headers,
    }
    lines = ["HTTP/1.1 503 Service Unavailable", *(f"{k}: {v}" for k, v in head.items())]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


class ConnectionGate:
    """The protocol factory of the gateway's listening socket (``loop.create_server(gate, ...)``).

    ``server`` makes the protocol of an admitted connection (aiohttp's ``web.Server``);
    ``answer`` is what a refused one gets (:func:`refusal_answer`).
    """

    def __init__(
        self,
        server: Callable[[], asyncio.Protocol],
        *,
        limit: int,
        answer: bytes,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.server = server
        self.limit = limit
        self.open = 0  # admitted connections not yet closed
        self.refused = 0  # since start
        self._answer = answer
        self._log = log
        self._refusing: set[_Connection] = set()
        self._unlogged = 0
        self._next_log_at = -math.inf

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    def counts(self) -> dict[str, int]:
        """Open connections, the limit and the refusals so far (for ``/healthz``)."""
        return {"open": self.open, "limit": self.limit, "refused": self.refused}

    def close(self) -> None:
        """Reset the refused connections still lingering (the gateway is stopping)."""
        for conn in list(self._refusing):
            conn.abort()

    def _admit(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def _refuse(self, conn: _Connection, transport: asyncio.Transport) -> None:
        self.refused += 1
        self._unlogged += 1
        now = time.monotonic()
        if now >= self._next_log_at:
            self._log.warning(
                "connections_refused", refused=self._unlogged, open=self.open, limit=self.limit
            )
            self._unlogged, self._next_log_at = 0, now + LOG_EVERY_S
        if len(self._refusing) >= MAX_REFUSING:
            transport.abort()
            return
        self._refusing.add(conn)
        transport.write(self._answer)
        if transport.can_write_eof():  # plain TCP: FIN after the answer (TLS has no half-close)
            transport.write_eof()
        conn.linger(asyncio.get_running_loop().call_later(LINGER_S, conn.abort))

    def _closed(self, conn: _Connection, *, admitted: bool) -> None:
        if admitted:
            self.open -= 1
        else:
            self._refusing.discard(conn)


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol when admitted, else a refusal."""

    __slots__ = ("_gate", "_inner", "_timer", "_transport")

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Counted here and released in connection_lost, both called once per connection (a
        # failed TLS handshake calls neither), so the count is exact.
        if self._gate._admit():
            self._inner = self._gate.server()
            self._inner.connection_made(transport)
        else:
            self._transport = cast(asyncio.Transport, transport)  # a stream socket's transport
            self._gate._refuse(self, self._transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        # refused: the request is read only to be discarded

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None  # refused: the client is done; the transport closes

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._gate._closed(self, admitted=self._inner is not None)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def linger(self, timer: asyncio.TimerHandle) -> None:
        """Reset the refused connection when ``timer`` fires, unless it closed before."""
        self._timer = timer

    def abort(self) -> None:
        """Reset a refused connection now."""
        if self._transport is not None:
            self._transport.abort()
