"""The observer checks its receipts (signature, and inclusion through the gateway's proofs) also
once the mandate has ended: the mission's record is read after the mission; only signing and
delivering stop at the mandate's end. The gateway's answers are read up to a bound: a longer
one, declared or streamed, is refused (``oversized`` for a proof)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from bus.errors import ConfigError
from bus.model import Receipt, Role
from bus.receipt import sign_receipt
from nodes.observer.client import AnswerTooLarge, GatewayClient, Unreachable
from nodes.observer.delivery import NOT_SEALED_YET, NOT_VERIFIED, check_inclusion
from nodes.observer.device import Home, check_receipts, init_observer, submit_file
from nodes.observer.outbox import Outbox
from tests.kafka_broker import free_ports
from tests.mission import Mission, demo_key, make_mission

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_793_491_200_000 + 21 * 86_400_000  # inside the test mandate's window
NODE = demo_key("observer-receipts:un-node")


def _delivered(tmp: Path, m: Mission) -> tuple[Home, Outbox]:
    """An observer home with one report delivered and its receipt signed by UN's node key."""
    home = Home(tmp / "home")
    key = init_observer(
        home, observer_id="un-obs-7", org="un", mandate_envelope=m.scenario.mandate_envelope,
        gateway="http://127.0.0.1:9", passphrase="correct horse battery", at_ms=NOW,
        scrypt_n=2**10,
    )  # fmt: skip
    m.accredit("un-obs-7", "un", key, Role.OBSERVER)
    m.accredit("un-node", "un", NODE, Role.NODE)
    path = tmp / "report.yaml"
    path.write_text((ROOT / "examples" / "report.yaml").read_text())
    box = Outbox(home.outbox)
    e = submit_file(home, box, key, path, at_ms=NOW)
    receipt = sign_receipt(
        Receipt(e.report_id, e.digest, "obus.reports.un", 0, 7, NOW + 5, NOW + 6, "un",
                "un-node", NODE.key_id, "un-obs-7", e.seq, m.scenario.mandate.mandate_id),
        NODE,
    )  # fmt: skip
    box.mark_delivered(e.seq, receipt=receipt, receipt_ok=True, http_status=201, now_ms=NOW + 6)
    box.add_node_accreditation(NODE.key_id, m.registry[-1])
    return home, box


def test_receipts_verify_after_the_mandate_ended(tmp_path: Path) -> None:
    m = make_mission(1, now_ms=NOW)
    home, box = _delivered(tmp_path, m)
    try:
        ended = m.scenario.mandate.not_after_ms + 86_400_000
        for at in (NOW + 10, ended):
            [check] = check_receipts(home, box, at_ms=at)
            assert check.ok and (check.partition, check.offset) == (0, 7), (at, check)
        with pytest.raises(ConfigError, match="expired"):  # nothing is signed under it
            home.load_mandate(now_ms=ended)
    finally:
        box.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def _gateway_answering(status: int, doc: dict[str, str]) -> AsyncIterator[str]:
    """A gateway stand-in on 127.0.0.1 that answers every proof request with ``doc``."""

    async def proof(_: web.Request) -> web.Response:
        return web.json_response(doc, status=status)

    async with _serving(proof) as url:
        yield url


@asynccontextmanager
async def _serving(proof: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v1/proofs/{topic}/{partition}/{offset}", proof)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_inclusion_is_checked_after_the_mandate_ended(tmp_path: Path) -> None:
    m = make_mission(1, now_ms=NOW)
    home, box = _delivered(tmp_path, m)
    not_sealed = {"reason": "record_not_sealed", "detail": "no final seal covers it yet"}
    try:
        async with _gateway_answering(404, not_sealed) as url, GatewayClient(url) as client:
            ended = m.scenario.mandate.not_after_ms + 86_400_000
            [check] = await check_inclusion(home, box, client, at_ms=ended)
    finally:
        box.close()
    assert (check.state, check.reason) == (NOT_SEALED_YET, "record_not_sealed"), json.dumps(
        [check.state, check.reason, check.detail]
    )


async def _declared(_: web.Request) -> web.Response:
    return web.Response(body=b"x" * 5000, content_type="application/json")


async def _streamed(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()  # chunked: no length declared
    resp.content_type = "application/json"
    await resp.prepare(request)
    for _ in range(5):
        await resp.write(b"x" * 1000)
    await resp.write_eof()
    return resp


@pytest.mark.parametrize("handler", [_declared, _streamed], ids=["declared", "streamed"])
async def test_a_proof_answer_past_the_bound_is_refused_oversized(
    tmp_path: Path, handler: Handler
) -> None:
    m = make_mission(1, now_ms=NOW)
    home, box = _delivered(tmp_path, m)
    try:
        async with _serving(handler) as url:
            async with GatewayClient(url, max_answer_bytes=4999) as client:
                with pytest.raises(AnswerTooLarge):
                    await client.proof("obus.reports.un", 0, 7)
                [check] = await check_inclusion(home, box, client, at_ms=NOW + 10)
            async with GatewayClient(url, max_answer_bytes=5000) as client:  # at the bound
                answer = await client.proof("obus.reports.un", 0, 7)
    finally:
        box.close()
    assert (check.state, check.reason) == (NOT_VERIFIED, "oversized"), check
    assert (answer.status, answer.body) == (200, b"x" * 5000)


Reply = tuple[int, dict[str, str], str | None]


class _Replies:
    """A proof handler answering each request with the next reply (status, JSON, Retry-After),
    the last one again when they run out; ``asked`` counts the requests."""

    def __init__(self, *replies: Reply) -> None:
        self.replies, self.asked = replies, 0

    async def answer(self, _: web.Request) -> web.Response:
        status, doc, retry = self.replies[min(self.asked, len(self.replies) - 1)]
        self.asked += 1
        headers = {} if retry is None else {"Retry-After": retry}
        return web.json_response(doc, status=status, headers=headers)


BUSY: Reply = (503, {"reason": "unavailable", "detail": "too many proofs being served; retry"}, "1")
NOT_SEALED: Reply = (404, {"reason": "record_not_sealed", "detail": "not yet"}, "5")
BROKEN: Reply = (503, {"reason": "sealed_log_broken", "detail": "a record was deleted"}, "60")


@pytest.mark.parametrize(
    ("replies", "waits", "outcome"),
    [
        ((BUSY, NOT_SEALED), [1.0], NOT_SEALED_YET),  # busy a moment: asked again
        ((BUSY, BUSY, BUSY, NOT_SEALED), [1.0, 1.0], "unavailable"),  # stays busy: no verdict
        ((BROKEN, NOT_SEALED), [], "sealed_log_broken"),  # a long wait asked for: at once
    ],
    ids=["busy-then-answer", "stays-busy", "broken"],
)
async def test_a_busy_gateway_is_asked_again_a_few_times(
    tmp_path: Path,
    replies: tuple[Reply, ...],
    waits: list[float],
    outcome: str,
) -> None:
    m = make_mission(1, now_ms=NOW)
    home, box = _delivered(tmp_path, m)
    handler = _Replies(*replies)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    try:
        async with _serving(handler.answer) as url, GatewayClient(url) as client:
            try:
                [check] = await check_inclusion(home, box, client, at_ms=NOW + 10, sleep=sleep)
                got = check.state
            except Unreachable as exc:
                got = next(r for r in ("unavailable", "sealed_log_broken") if r in str(exc))
    finally:
        box.close()
    assert (got, slept) == (outcome, waits)
    assert handler.asked == len(waits) + 1
