"""The gateway's HTTP edge: aiohttp routes in front of :class:`~nodes.gateway.service.Gateway`.

``POST /v1/reports`` (body: the envelope bytes, at most ``max_body_bytes``, sent as
``application/protobuf`` or ``application/octet-stream``):

======  ============================================================================  ==========
status  when                                                                          body
======  ============================================================================  ==========
201     verified, chained and published (acks=all)                                   receipt
200     the same bytes were published before (same report id, same digest)           same receipt
400     ``malformed``, ``missing_signature``, ``wrong_payload_type``                 JSON
403     key/organization problems: ``unknown_key``, ``bad_signature``,               JSON
        ``key_expired``, ``key_revoked``, ``wrong_role``, ``wrong_org``,
        ``wrong_topic`` (an observer of another organization), ``subject_mismatch``
409     ``duplicate_conflict`` (same id, other bytes), ``chain_gap``, ``chain_fork``   JSON
413     ``oversized``                                                                 JSON
422     every other verification reason (``outside_zone``, ``clock_skew``, ...)      JSON
429     ``rate_limited`` (token bucket per observer), with ``Retry-After``           JSON
503     ``unavailable``: Kafka did not confirm; retry (with ``Retry-After``)          JSON
503     ``not_sealed_yet``: no final seal judged yet, so no trust state to judge     JSON
        with (:mod:`nodes.gateway.trust`); ``sealed_log_broken``: a sealed trust
        record was altered or deleted (both with ``Retry-After``)
======  ============================================================================  ==========

``PUT /v1/attachments/<sha256 hex>`` (body: the attachment's bytes, sent as
``application/octet-stream`` or ``application/protobuf``) publishes an attachment that a report
of this organization, already published here, references (README "Attachments"):

======  ============================================================================  ==========
status  when                                                                          body
======  ============================================================================  ==========
201     verified (SHA-256 and size as the report says) and its chunks published      JSON
200     published before (the body is not read again)                                same JSON
400     ``malformed``: the path is not a lower-case hex SHA-256                       JSON
413     ``oversized``: larger than ``attachments.max_bytes``                          JSON
422     ``attachment_unreferenced`` (no published report of this organization        JSON
        references it), ``attachment_hash_mismatch``, ``attachment_size_mismatch``
503     ``unavailable``: the attachments topic is missing or Kafka did not confirm    JSON
======  ============================================================================  ==========

Both, before anything else:

======  ============================================================================  ==========
status  when                                                                          body
======  ============================================================================  ==========
415     ``unsupported_media_type``: no ``Content-Type``, or another one (a browser    JSON
        form, ``text/plain``, ``application/json``, ...), or a ``Content-Encoding``
        (the gateway never decompresses); the body is not read
408     ``body_timeout``: no byte of the body arrived for ``body_timeout_s``; the     JSON
        connection is closed
503     ``too_many_connections``: ``max_connections`` are open; sent as soon as the   JSON
        connection is accepted, then it is closed (with ``Retry-After``)
======  ============================================================================  ==========

Slow clients (:class:`GatewayServer`): a connection that has not sent a request's headers
``header_timeout_s`` after it opened (or after its previous answer; an idle keep-alive
connection alike, and a TLS handshake) is closed without an answer; a body that stops arriving
is answered 408 and closed; the connection limit is :mod:`nodes.gateway.connections`'s. A client
that hangs up or resets mid-request is one ``client_aborted`` info event, a request aiohttp
cannot parse one ``client_bad_request`` info event (and aiohttp's 400), never a traceback: both
are the client's doing. Errors with tracebacks are left for the gateway's own faults.

Reads for observers (JSON, no body; from the gateway's own state and its final trust state):

``GET /v1/time``
    ``{"now_ms": int, "max_skew_ms": int}``: the gateway's clock and how far a report's
    ``signed_at`` may run ahead of it (the nodes' limit): a device checks its clock before
    signing.
``GET /v1/observers/{observer_id}/head``
    ``{"org", "observer_id", "seq", "digest_b64", "as_of_ms", "node_key_id_b64",
    "signature_b64"}``: the observer's chain head accepted here, signed by the node key over
    :func:`~bus.receipt.head_payload` (seq 0 and an empty digest before its first
    report): a new device continues the chain from it. 422 ``invalid_field`` for a malformed
    id; 503 while the node key is not usable.
``GET /v1/recipients``
    ``{"suite", "info", "mandate_id", "epoch", "recipients": [{"org", "key_id_b64",
    "public_key_b64", "serial", "not_before_ms", "not_after_ms"}]}``: each organization's
    current encryption key for restricted reports in the final trust state (what the nodes
    decrypt with); 503 ``not_sealed_yet`` before the first seal.
``GET /v1/proofs/{topic}/{partition}/{offset}``
    The inclusion proof of a report published through this gateway against the first final
    seal that covers it (:mod:`nodes.gateway.proofs`), the JSON of
    :meth:`bus.seal_proof.SealProof.to_json` (format ``obus-seal-proof/v1``): an observer
    checks it against its receipt and mandate file alone
    (:func:`bus.seal_proof.check_receipt_inclusion`). Only this organization's reports topic.

    ======  ======================================================================  ==========
    status  when                                                                    body
    ======  ======================================================================  ==========
    200     the proof                                                               JSON
    400     ``malformed``: partition or offset not a decimal integer                 JSON
    404     ``record_not_sealed``: no final seal covers it yet (``Retry-After``);    JSON
            ``record_missing``: no report published here at that position;
            ``wrong_topic``: not this organization's reports topic
    503     ``unavailable``: too many proofs being served, or Kafka failed;           JSON
            ``sealed_log_broken``: the log lost a record or contradicts a final
            seal (all with ``Retry-After``)
    ======  ======================================================================  ==========

A receipt is a signed envelope (``application/protobuf``; see :mod:`bus.receipt`); JSON error
bodies are ``{"reason": code, "detail": text}`` with the stable codes of
:class:`bus.errors.Reason` (and the three above). ``GET /v1/node`` returns the gateway's
node-key accreditation (so an observer can check receipts offline); ``GET /healthz`` returns
counts, the open connections among them. Every answer carries :data:`SECURITY_HEADERS` (and
``Strict-Transport-Security`` over HTTPS), the 503 of a refused connection included; only
aiohttp's own 400 for bytes that are not HTTP goes without them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bus.errors import BusError, Reason, VerificationError
from nodes.gateway.connections import ConnectionGate, fit_open_files, refusal_answer
from nodes.gateway.service import (
    JSON_CONTENT_TYPE,
    RECEIPT_CONTENT_TYPE,
    Gateway,
    GatewayConfig,
    Outcome,
    Reply,
    error_body,
)
from nodes.gateway.tls import server_context
from nodes.gateway.webapp import add_webapp
from nodes.runtime.ops import GatewayOps

log = structlog.get_logger(__name__)

UNSUPPORTED_MEDIA_TYPE: Final = "unsupported_media_type"
BODY_TIMEOUT: Final = "body_timeout"
# What the observer sends (nodes/observer/client.py), and the generic type for bytes. Neither
# can be sent by a browser from another site without a CORS preflight, which the gateway never
# grants; forms and text/plain can, so they are refused with every other type.
BODY_MEDIA_TYPES: Final = frozenset({RECEIPT_CONTENT_TYPE, "application/octet-stream"})
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
HSTS: Final = {"Strict-Transport-Security": "max-age=31536000"}
RETRY_AFTER_FULL_S: Final = 1  # a refused connection's Retry-After
BACKLOG: Final = 1024  # the kernel queue of accepted connections; a burst of clients waits there

_STATUS: Final = {
    Reason.MALFORMED: 400,
    Reason.MISSING_SIGNATURE: 400,
    Reason.WRONG_PAYLOAD_TYPE: 400,
    Reason.OVERSIZED: 413,
    Reason.RATE_LIMITED: 429,
    Reason.DUPLICATE_CONFLICT: 409,
    Reason.CHAIN_GAP: 409,
    Reason.CHAIN_FORK: 409,
    Reason.REPLAYED: 409,
    **dict.fromkeys(
        (
            Reason.BAD_SIGNATURE,
            Reason.MALFORMED_KEY,
            Reason.UNKNOWN_KEY,
            Reason.KEY_REVOKED,
            Reason.KEY_EXPIRED,
            Reason.WRONG_ROLE,
            Reason.WRONG_ORG,
            Reason.WRONG_TOPIC,
            Reason.SUBJECT_MISMATCH,
        ),
        403,
    ),
}
# GET /v1/proofs/...: what is not there (yet) is 404, whatever it would be for a report.
_PROOF_STATUS: Final = {
    Reason.RECORD_NOT_SEALED: 404,
    Reason.RECORD_MISSING: 404,
    Reason.WRONG_TOPIC: 404,
}
_OUTCOME_STATUS: Final = {Outcome.PUBLISHED: 201, Outcome.KNOWN: 200, Outcome.UNAVAILABLE: 503}


def http_status(reason: Reason) -> int:
    """The HTTP status the gateway answers a refusal with (422 when not listed)."""
    return _STATUS.get(reason, 422)


def make_app(
    gateway: Gateway,
    *,
    tls: bool = False,
    connection_counts: Callable[[], Mapping[str, int]] = dict,
) -> web.Application:
    """The aiohttp application: POST /v1/reports, PUT /v1/attachments/<sha256>, GET /v1/node,
    GET /v1/time, GET /v1/observers/{observer_id}/head, GET /v1/recipients,
    GET /v1/proofs/{topic}/{partition}/{offset}, GET /healthz;
    ``tls`` adds ``Strict-Transport-Security``; ``connection_counts`` goes into
    ``/healthz`` (:meth:`~nodes.gateway.connections.ConnectionGate.counts`)."""
    limit = gateway.config.max_body_bytes
    body_timeout_s = gateway.config.body_timeout_s

    async def post_report(request: web.Request) -> web.StreamResponse:
        if (refusal := _media_type_refusal(request)) is not None:
            return refusal
        if request.content_length is not None and request.content_length > limit:
            reply = gateway.refuse(
                VerificationError(Reason.OVERSIZED, f"{request.content_length} bytes > {limit}")
            )
            return _response(reply)
        body = await _read_body(request, limit, body_timeout_s)
        if isinstance(body, int):
            return _response(
                gateway.refuse(
                    VerificationError(Reason.OVERSIZED, f"body larger than {limit} bytes")
                )
            )
        try:
            reply = await gateway.submit(body)
        except BusError as exc:
            log.exception("gateway_error", error=exc.diagnostics())
            reply = Reply.unavailable(exc.message, retry_after_s=1)
        except Exception:  # a bug of ours: answer (retriable) and log it loudly
            log.exception("gateway_internal_error")
            return _internal_error()
        return _response(reply)

    async def get_node(_: web.Request) -> web.Response:
        if not gateway.node_accreditation:
            return _response(gateway.not_ready())
        return web.Response(body=gateway.node_accreditation, content_type=RECEIPT_CONTENT_TYPE)

    async def put_attachment(request: web.Request) -> web.StreamResponse:
        if (refusal := _media_type_refusal(request)) is not None:
            return refusal
        hex_digest = request.match_info["sha256"]
        most, refusal_reply = gateway.attachment_limit(hex_digest)
        if refusal_reply is not None:
            return _response(refusal_reply)
        size_limit = gateway.config.attachments.max_bytes
        if request.content_length is not None and request.content_length > size_limit:
            exc = VerificationError(
                Reason.OVERSIZED, f"{request.content_length} bytes > {size_limit}"
            )
            return _response(gateway.refuse(exc))
        body = await _read_body(request, most, body_timeout_s)
        if isinstance(body, int):  # larger than any report says: refused without reading it all
            reason = Reason.OVERSIZED if body > size_limit else Reason.ATTACHMENT_SIZE_MISMATCH
            detail = f"more than {most} bytes, the size the report gives"
            return _response(gateway.refuse(VerificationError(reason, detail)))
        try:
            reply = await gateway.put_attachment(hex_digest, body)
        except BusError as exc:
            log.exception("gateway_error", error=exc.diagnostics())
            reply = Reply.unavailable(exc.message, retry_after_s=1)
        except Exception:  # a bug of ours: answer (retriable) and log it loudly
            log.exception("gateway_internal_error")
            return _internal_error()
        return _response(reply)

    async def get_time(_: web.Request) -> web.Response:
        return web.json_response(gateway.clock())

    async def get_head(request: web.Request) -> web.Response:
        reply = gateway.observer_head(request.match_info["observer_id"])
        return _response(reply)

    async def get_recipients(_: web.Request) -> web.Response:
        return _response(gateway.recipients())

    async def get_proof(request: web.Request) -> web.Response:
        m = request.match_info
        try:
            reply = await gateway.proof(m["topic"], m["partition"], m["offset"])
        except Exception:  # a bug of ours: answer (retriable) and log it loudly
            log.exception("gateway_internal_error")
            return _internal_error()
        if reply.outcome is Outcome.REFUSED and reply.reason in _PROOF_STATUS:
            return _web_response(_PROOF_STATUS[reply.reason], reply.body, reply.content_type,
                                 reply.retry_after_s)  # fmt: skip
        return _response(reply)

    async def healthz(_: web.Request) -> web.Response:
        counts = gateway.store.counts()
        return web.json_response(
            {"org": gateway.config.org, "topic": gateway.topic, **counts,
             "attachments": gateway.store.attachment_count(),
             "connections": dict(connection_counts())}
        )  # fmt: skip

    headers = {**SECURITY_HEADERS, **(HSTS if tls else {})}

    async def security_headers(_: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    @web.middleware
    async def slow_or_gone_clients(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A stalled body is answered 408 and the connection closed; a client that hung up is
        one info event (its answer can no longer be delivered)."""
        where = {"method": request.method, "path": request.path, "peer": request.remote,
                 "expected": request.content_length}  # fmt: skip
        try:
            return await handler(request)
        except _ClientGoneError as exc:
            log.info("client_aborted", **where, received=exc.received, error=repr(exc.error))
            return web.Response(status=400)  # for aiohttp only: nobody is left to read it
        except _BodyStalledError as exc:
            log.info("client_body_timeout", **where, received=exc.received)
            detail = f"no byte of the body arrived for {body_timeout_s:g} s"
            resp = _web_response(408, error_body(BODY_TIMEOUT, detail), JSON_CONTENT_TYPE, 0)
            resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
            # Drop it now: aiohttp would otherwise go on reading the rest of the body.
            request.protocol.force_close()
            return resp
        except _BadFramingError as exc:
            log.info("client_bad_request", **where, error="body framing", detail=str(exc)[:200])
            resp = _web_response(400, error_body(Reason.MALFORMED.value, str(exc)[:200]),
                                 JSON_CONTENT_TYPE, 0)  # fmt: skip
            resp.force_close()  # the rest of the stream cannot be trusted to frame a request
            return resp

    app = web.Application(client_max_size=limit + 1, middlewares=[slow_or_gone_clients])
    app.on_response_prepare.append(security_headers)
    app.router.add_put("/v1/attachments/{sha256}", put_attachment)
    app.router.add_post("/v1/reports", post_report)
    app.router.add_get("/v1/node", get_node)
    app.router.add_get("/v1/time", get_time)
    app.router.add_get("/v1/observers/{observer_id}/head", get_head)
    app.router.add_get("/v1/recipients", get_recipients)
    app.router.add_get("/v1/proofs/{topic}/{partition}/{offset}", get_proof)
    app.router.add_get("/healthz", healthz)
    add_webapp(app)  # the observers' web form at /app/ (nodes/gateway/webapp.py)
    return app


class _BodyStalledError(Exception):
    """No byte of the request body arrived within the body timeout."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class _ClientGoneError(Exception):
    """The client hung up or reset the connection before its body was read."""

    def __init__(self, received: int, error: BaseException) -> None:
        super().__init__(received, error)
        self.received, self.error = received, error


class _BadFramingError(Exception):
    """The body's framing is broken (a malformed chunk, as aiohttp's pure-Python parser reports
    it; its C parser answers 400 itself when the chunk comes with the headers, and otherwise
    leaves the body waiting, which the body timeout ends)."""


async def _read_body(request: web.Request, most: int, timeout_s: float) -> bytes | int:
    """The request body; or, once it is larger than ``most``, the count of bytes read by then
    (it is read no further).

    Raises:
        _BodyStalledError: ``timeout_s`` passed without a byte arriving.
        _ClientGoneError: the connection was lost.
    """
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await request.content.readany()
        except TimeoutError as exc:
            raise _BodyStalledError(total) from exc
        except ConnectionError as exc:  # aiohttp: the connection was lost or reset
            raise _ClientGoneError(total, exc) from exc
        except (web.RequestPayloadError, HttpProcessingError) as exc:
            raise _BadFramingError(str(exc)) from exc
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > most:
            return total
        chunks.append(chunk)


def _media_type_refusal(request: web.Request) -> web.Response | None:
    """The 415 for a request body not sent as one of :data:`BODY_MEDIA_TYPES`, or sent with a
    content coding (the gateway never decompresses: a small compressed body can inflate to any
    size), else None."""
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding != "identity":
        detail = f"Content-Encoding {coding[:50]!r} is not accepted; send the bytes as they are"
    elif "Content-Type" in request.headers and request.content_type in BODY_MEDIA_TYPES:
        return None
    else:
        given = request.headers.get("Content-Type", "no Content-Type")
        detail = f"{given[:100]!r} is not accepted; send {' or '.join(sorted(BODY_MEDIA_TYPES))}"
    log.info("report_refused", reason=UNSUPPORTED_MEDIA_TYPE, path=request.path, detail=detail)
    body = error_body(UNSUPPORTED_MEDIA_TYPE, detail)
    return _web_response(415, body, JSON_CONTENT_TYPE, retry_after_s=0)


def _response(reply: Reply) -> web.Response:
    if reply.outcome is Outcome.REFUSED:
        assert reply.reason is not None
        status = http_status(reply.reason)
    else:
        status = _OUTCOME_STATUS[reply.outcome]
    return _web_response(status, reply.body, reply.content_type, reply.retry_after_s)


def _internal_error() -> web.Response:
    body = error_body(Reason.INTERNAL_ERROR.value, "internal error")
    return _web_response(500, body, JSON_CONTENT_TYPE, retry_after_s=1)


def _web_response(
    status: int, body: bytes, content_type: str, retry_after_s: float
) -> web.Response:
    resp = web.Response(status=status, body=body, content_type=content_type)
    if retry_after_s:
        resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return resp


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger. A request aiohttp cannot parse, or a connection lost under it,
    is the client's doing: one info event, no traceback. Anything else stays an error with its
    traceback (a fault of ours)."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError | ConnectionError):
            detail = getattr(exc, "message", None) or str(exc)
            what = str(msg) % args if args else str(msg)
            log.info("client_bad_request", what=what, error=type(exc).__name__,
                     detail=" ".join(str(detail).split())[:200])  # fmt: skip
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kw)


class _GatedSite(web.BaseSite):
    """Listens on ``host:port`` with :class:`~nodes.gateway.connections.ConnectionGate` as the
    protocol factory, so every connection passes the limit before aiohttp sees it."""

    __slots__ = ("_gate", "_handshake_timeout_s", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        gate: ConnectionGate,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout_s: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=BACKLOG)
        self._host, self._port, self._gate = host, port, gate
        self._handshake_timeout_s = handshake_timeout_s

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._gate,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout_s if self._ssl_context else None,
        )

    async def stop(self) -> None:
        await super().stop()
        self._gate.close()


class GatewayServer:
    """A started gateway listening on ``host:port``: ``async with GatewayServer(cfg) as gw``.

    Raises (at construction):
        ConfigError: the TLS certificate or key (``--tls-cert``/``--tls-key``) is unusable.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self._tls: ssl.SSLContext | None = None
        if config.tls_cert is not None and config.tls_key is not None:
            self._tls = server_context(config.tls_cert, config.tls_key)
        self.gateway = Gateway(config)
        self.gate: ConnectionGate | None = None
        self._runner: web.AppRunner | None = None
        self.middlewares: list[Any] = []  # added last (innermost), e.g. GatewayOps.requests

    @property
    def url(self) -> str:
        """``http(s)://host:port``."""
        cfg = self.gateway.config
        return f"{'https' if self._tls else 'http'}://{cfg.host}:{cfg.port}"

    async def start(self) -> None:
        """Start the gateway (recovery included), then listen."""
        await self.gateway.start()
        cfg = self.gateway.config
        limit = fit_open_files(cfg.max_connections)
        if limit < cfg.max_connections:
            log.warning(
                "connection_limit_lowered", max_connections=cfg.max_connections, limit=limit,
                fix="raise the open-files hard limit (ulimit -Hn, LimitNOFILE=) or lower"
                    " --max-connections",
            )  # fmt: skip
        app = make_app(
            self.gateway,
            tls=self._tls is not None,
            connection_counts=lambda: {} if self.gate is None else self.gate.counts(),
        )
        app.middlewares.extend(self.middlewares)
        # keepalive_timeout: aiohttp closes a connection that has not sent a request's headers
        # this long after it opened or after its last answer, whatever it sent meanwhile.
        self._runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=cfg.header_timeout_s, auto_decompress=False,
            logger=_ServerLog(logging.getLogger("aiohttp.server")),
        )  # fmt: skip
        await self._runner.setup()
        assert self._runner.server is not None
        headers = {**SECURITY_HEADERS, **(HSTS if self._tls else {})}
        self.gate = ConnectionGate(
            self._runner.server,
            limit=limit,
            answer=refusal_answer(limit, RETRY_AFTER_FULL_S, headers),
            log=log,
        )
        site = _GatedSite(
            self._runner, cfg.host, cfg.port, gate=self.gate, ssl_context=self._tls,
            handshake_timeout_s=cfg.header_timeout_s,
        )  # fmt: skip
        await site.start()
        log.info(
            "gateway_listening", url=self.url, max_connections=limit,
            header_timeout_s=cfg.header_timeout_s, body_timeout_s=cfg.body_timeout_s,
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop listening, then stop the gateway."""
        if self._runner is not None:
            await self._runner.cleanup()
        await self.gateway.stop()

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_gateway(config: GatewayConfig, ops: GatewayOps | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns a process exit code. ``ops``: the broker watch,
    request metrics and ops server (:mod:`nodes.runtime.ops`).

    Raises:
        ConfigError: the TLS files are unusable (before anything starts).
    """
    import signal  # noqa: PLC0415 - only the process entry point handles signals

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    server = GatewayServer(config)
    if ops is not None:
        server.middlewares.append(ops.requests.middleware)
        await ops.start(server)
    try:
        try:
            await server.start()
        except BusError as exc:
            log.error("gateway_failed", org=config.org, error=exc.diagnostics())  # noqa: TRY400
            await server.gateway.stop()
            return 1
        try:
            await stopping.wait()
        finally:
            await server.stop()
    finally:
        if ops is not None:
            await ops.stop()
    return 0
