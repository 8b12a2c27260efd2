"""The gateway's HTTP edge: aiohttp routes in front of :class:`~nodes.gateway.service.Gateway`.

``POST /v1/reports`` (body: the envelope bytes, at most ``max_body_bytes``):

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
======  ============================================================================  ==========

``PUT /v1/attachments/<sha256 hex>`` (body: the attachment's bytes) publishes an attachment
that a report of this organization, already published here, references (README "Attachments"):

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

A receipt is a signed envelope (``application/protobuf``; see :mod:`bus.receipt`); JSON error
bodies are ``{"reason": code, "detail": text}`` with the stable codes of
:class:`bus.errors.Reason`. ``GET /v1/node`` returns the gateway's node-key accreditation (so an
observer can check receipts offline); ``GET /healthz`` returns counts.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final

import structlog
from aiohttp import web

from bus.errors import BusError, Reason, VerificationError
from nodes.gateway.service import (
    JSON_CONTENT_TYPE,
    RECEIPT_CONTENT_TYPE,
    Gateway,
    GatewayConfig,
    Outcome,
    Reply,
    error_body,
)

log = structlog.get_logger(__name__)

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
_OUTCOME_STATUS: Final = {Outcome.PUBLISHED: 201, Outcome.KNOWN: 200, Outcome.UNAVAILABLE: 503}


def http_status(reason: Reason) -> int:
    """The HTTP status the gateway answers a refusal with (422 when not listed)."""
    return _STATUS.get(reason, 422)


def make_app(gateway: Gateway) -> web.Application:
    """The aiohttp application: POST /v1/reports, PUT /v1/attachments/<sha256>, GET /v1/node,
    GET /healthz."""
    limit = gateway.config.max_body_bytes

    async def post_report(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > limit:
            reply = gateway.refuse(
                VerificationError(Reason.OVERSIZED, f"{request.content_length} bytes > {limit}")
            )
            return _response(reply)
        chunks, total = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > limit:
                return _response(
                    gateway.refuse(
                        VerificationError(Reason.OVERSIZED, f"body larger than {limit} bytes")
                    )
                )
            chunks.append(chunk)
        try:
            reply = await gateway.submit(b"".join(chunks))
        except BusError as exc:
            log.exception("gateway_error", error=exc.diagnostics())
            reply = Reply.unavailable(exc.message, retry_after_s=1)
        except Exception:  # a bug of ours: answer (retriable) and log it loudly
            log.exception("gateway_internal_error")
            return _internal_error()
        return _response(reply)

    async def get_node(_: web.Request) -> web.Response:
        return web.Response(body=gateway.node_accreditation, content_type=RECEIPT_CONTENT_TYPE)

    async def put_attachment(request: web.Request) -> web.Response:
        hex_digest = request.match_info["sha256"]
        most, refusal = gateway.attachment_limit(hex_digest)
        if refusal is not None:
            return _response(refusal)
        size_limit = gateway.config.attachments.max_bytes
        if request.content_length is not None and request.content_length > size_limit:
            exc = VerificationError(
                Reason.OVERSIZED, f"{request.content_length} bytes > {size_limit}"
            )
            return _response(gateway.refuse(exc))
        chunks, total = [], 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            total += len(chunk)
            if total > most:  # larger than any report says: refuse without reading it all
                reason = Reason.OVERSIZED if total > size_limit else Reason.ATTACHMENT_SIZE_MISMATCH
                detail = f"more than {most} bytes, the size the report gives"
                return _response(gateway.refuse(VerificationError(reason, detail)))
            chunks.append(chunk)
        try:
            reply = await gateway.put_attachment(hex_digest, b"".join(chunks))
        except BusError as exc:
            log.exception("gateway_error", error=exc.diagnostics())
            reply = Reply.unavailable(exc.message, retry_after_s=1)
        except Exception:  # a bug of ours: answer (retriable) and log it loudly
            log.exception("gateway_internal_error")
            return _internal_error()
        return _response(reply)

    async def healthz(_: web.Request) -> web.Response:
        counts = gateway.store.counts()
        return web.json_response(
            {"org": gateway.config.org, "topic": gateway.topic, **counts,
             "attachments": gateway.store.attachment_count()}
        )  # fmt: skip

    app = web.Application(client_max_size=limit + 1)
    app.router.add_put("/v1/attachments/{sha256}", put_attachment)
    app.router.add_post("/v1/reports", post_report)
    app.router.add_get("/v1/node", get_node)
    app.router.add_get("/healthz", healthz)
    return app


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


class GatewayServer:
    """A started gateway listening on ``host:port``: ``async with GatewayServer(cfg) as gw``."""

    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = Gateway(config)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Start the gateway (recovery included), then listen."""
        await self.gateway.start()
        self._runner = web.AppRunner(make_app(self.gateway), access_log=None)
        await self._runner.setup()
        cfg = self.gateway.config
        await web.TCPSite(self._runner, cfg.host, cfg.port).start()
        log.info("gateway_listening", url=f"http://{cfg.host}:{cfg.port}")

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


async def run_gateway(config: GatewayConfig) -> int:
    """Serve until SIGINT/SIGTERM; returns a process exit code."""
    import signal  # noqa: PLC0415 - only the process entry point handles signals

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    server = GatewayServer(config)
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
    return 0
