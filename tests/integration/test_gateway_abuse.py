"""The gateway under slow, abusive and hanging-up clients, over HTTP and HTTPS, on the real broker.

Each test is named after the failure it prevents. The clients are real TCP clients (asyncio
streams and plain sockets) on 127.0.0.1, bounded in count and in time; the gateway is the real
one (``GatewayServer`` in this process, or ``obus gateway`` as a child process for the 10,000
connections). Timeouts are set short here so that the tests are quick; nothing asserts how long
anything took (every ``asyncio.timeout`` is a guard against hanging, not a measurement).

All tests of the module share one mission on the broker (topics, registry) and one gateway
database, so the observer's chain runs on from test to test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import ssl
import struct
import warnings
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bench.gateway_idle import SPARE_FDS, gateway_process, measure, raise_open_files
from bus.kafka.admin import end_offsets
from bus.receipt import verify_receipt
from nodes.gateway.http import GatewayServer
from nodes.observer.client import GatewayClient
from tests.integration.test_observer_gateway import World, _world
from tests.kafka_broker import free_ports
from tests.logcapture import capture_all_logs
from tests.unit.test_gateway_edge import self_signed

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="module")]
GUARD_S = 30  # bound on every wait for the gateway (never an assertion about time)
SHORT_S = 0.5  # the timeouts under test, short so that the tests are quick
SECURITY = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    return await _world(kafka_bootstrap, tmp_path_factory.mktemp("abuse"))


@asynccontextmanager
async def _gateway(w: World, **changes: object) -> AsyncIterator[GatewayServer]:
    (port,) = free_ports(1)
    async with GatewayServer(w.config(port=port, **changes)) as server:
        yield server


def _port(server: GatewayServer) -> int:
    return server.gateway.config.port


def _request(
    method: str, path: str, body: bytes, content_type: str | None = "application/protobuf",
    *, length: int | None = None, extra: str = "",
) -> bytes:  # fmt: skip
    """An HTTP/1.1 request's bytes; ``length`` overrides Content-Length (a half-sent body)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body) if length is None else length}\r\n{extra}\r\n"
    return head.encode() + body


async def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(GUARD_S):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split(" ")[1]), headers, body


async def _published(w: World) -> int:
    ends = await end_offsets(w.bootstrap, "^" + w.topics.reports("un").replace(".", r"\.") + "$")
    return sum(ends.values())


async def _until(check: Any, what: str) -> None:
    async with asyncio.timeout(GUARD_S):
        while not check():  # noqa: ASYNC110 - the gateway's tasks change it
            await asyncio.sleep(0.02)
    assert check(), what


@contextlib.contextmanager
def _stdlib_records(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Every standard-library record (aiohttp's, asyncio's) logged inside, at every level."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        yield caplog.records


def _loud(events: list[MutableMapping[str, Any]], records: list[logging.LogRecord]) -> list[str]:
    """Warnings, errors and tracebacks among structlog events and stdlib records (a traceback
    at debug level is not written at the gateway's levels, info and up)."""
    loud = [f"{e['log_level']} {e['event']}" for e in events
            if e["log_level"] not in ("debug", "info") or e.get("exc_info")]  # fmt: skip
    loud += [f"{r.levelname} {r.name} {r.getMessage()}" for r in records
             if r.levelno >= logging.WARNING or (r.exc_info and r.levelno >= logging.INFO)]  # fmt: skip
    return loud


# -- slow clients ------------------------------------------------------------------------------


async def test_a_half_sent_body_is_dropped_after_the_body_timeout(world: World) -> None:
    """A client that sends the headers and part of the body, then nothing, held a connection
    and a handler forever; now it is answered 408 and closed, and nothing is published."""
    before = await _published(world)
    envelope = world.m.next_report("un", 1)
    async with _gateway(world, body_timeout_s=SHORT_S) as gw:
        with capture_all_logs() as logs:
            half = _request("POST", "/v1/reports", envelope[:100], length=len(envelope))
            status, headers, body = _parse(await _exchange(_port(gw), half))
        assert (status, json.loads(body)["reason"]) == (408, "body_timeout")
        assert headers["Connection"] == "close"
        timeouts = [e for e in logs if e["event"] == "client_body_timeout"]
        assert [(e["log_level"], e["received"]) for e in timeouts] == [("info", 100)]
        await _until(lambda: gw.gate is not None and gw.gate.open == 0, "the connection is gone")
        # The same envelope sent whole is published: the half was dropped, not kept.
        async with GatewayClient(f"http://127.0.0.1:{_port(gw)}") as client:
            assert (await client.submit(envelope)).status == 201
    assert await _published(world) == before + 1


async def test_headers_never_finished_are_dropped_after_the_header_timeout(world: World) -> None:
    """Silent connections, half-sent headers and headers dripped a byte at a time (slowloris)
    were held forever; now each is closed once the header timeout has passed since it opened,
    whatever it sent meanwhile."""
    async with _gateway(world, header_timeout_s=SHORT_S) as gw:
        port = _port(gw)
        assert await _exchange(port, b"") == b"", "a silent connection is closed, unanswered"
        half = b"POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applic"
        assert await _exchange(port, half) == b"", "half-sent headers are closed, unanswered"

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/reports HTTP/1.1\r\nX-Drip: ")
        closed = asyncio.create_task(reader.read())
        dripped = 0
        async with asyncio.timeout(GUARD_S):
            while not closed.done():  # one byte every 50 ms: never a whole header line
                with contextlib.suppress(ConnectionError):
                    writer.write(b"a")
                    dripped += 1
                await asyncio.sleep(0.05)
        assert await closed == b"" and dripped > 0
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await _until(lambda: gw.gate is not None and gw.gate.open == 0, "all three are gone")


# -- too many connections ----------------------------------------------------------------------


async def test_the_connection_limit_answers_503_and_a_genuine_submit_succeeds_after(
    world: World,
) -> None:
    """Idle connections could exhaust the gateway's descriptors and starve genuine clients with
    timeouts and a flood of tracebacks; now, at the limit, a new connection gets a clear 503
    (JSON reason, Retry-After) at once, and once the abusers go a genuine submit is published."""
    envelope = world.m.next_report("un", 1)
    async with _gateway(world, max_connections=4) as gw:
        assert gw.gate is not None
        port, url = _port(gw), f"http://127.0.0.1:{_port(gw)}"
        abusers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await _until(lambda: gw.gate is not None and gw.gate.open == 4, "the abusers are in")

        status, headers, body = _parse(
            await _exchange(port, _request("POST", "/v1/reports", envelope))
        )
        assert (status, json.loads(body)["reason"]) == (503, "too_many_connections")
        assert headers["Retry-After"] == "1" and headers["Connection"] == "close"
        assert SECURITY.items() <= headers.items()
        async with GatewayClient(url) as client:  # what the observer sees: retry later
            answer = await client.submit(envelope)
        assert (answer.status, answer.error()[0], answer.retry_after_s) == (
            503, "too_many_connections", 1.0,
        )  # fmt: skip

        for _, writer in abusers:
            writer.close()
        await _until(lambda: gw.gate is not None and gw.gate.open == 0, "the abusers are gone")
        async with GatewayClient(url) as client:
            answer = await client.submit(envelope)
        assert answer.status == 201
        verify_receipt(answer.body, world.m.keyring, envelope=envelope)
        assert gw.gate.counts()["refused"] == 2


# -- clients that hang up ----------------------------------------------------------------------


async def test_a_client_hanging_up_mid_body_leaves_one_info_event_and_no_traceback(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Every client that hung up mid-body left an error-level traceback (aiohttp's "Error
    handling request"); now a hang-up (FIN) and a reset (RST) are one info event each."""
    envelope = world.m.next_report("un", 1)
    half = _request("POST", "/v1/reports", envelope[:100], length=len(envelope))
    async with _gateway(world) as gw:
        port = _port(gw)
        with capture_all_logs() as logs, _stdlib_records(caplog) as records:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(half)
            await writer.drain()
            await _until(lambda: gw.gate is not None and gw.gate.open == 1, "it is in")
            writer.close()  # hangs up: FIN
            await writer.wait_closed()
            await _until(lambda: len(logs) >= 1, "the hang-up is logged")

            rst = socket.create_connection(("127.0.0.1", port))
            rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rst.sendall(half)
            await _until(lambda: gw.gate is not None and gw.gate.open == 1, "it is in")
            rst.close()  # resets: RST
            await _until(lambda: len(logs) >= 2, "the reset is logged")
            await _until(lambda: gw.gate is not None and gw.gate.open == 0, "both are gone")
            await asyncio.sleep(0.2)  # room for anything else they would make the gateway log
            gc.collect()  # "Task exception was never retrieved" is logged at collection
        assert [(e["event"], e["log_level"], e["received"]) for e in logs] == [
            ("client_aborted", "info", 100),
            ("client_aborted", "info", 100),
        ]
        assert not _loud(logs, records)
        # and the gateway still serves
        async with GatewayClient(f"http://127.0.0.1:{port}") as client:
            assert (await client.submit(envelope)).status == 201


async def test_a_request_that_is_not_http_is_a_400_and_one_info_event(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp logged every request it could not parse as an error with a traceback; they are
    the client's doing: one info event each, and aiohttp's 400."""
    async with _gateway(world) as gw:
        with capture_all_logs() as logs, _stdlib_records(caplog) as records:
            bad = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n"
            status, _, _ = _parse(await _exchange(_port(gw), bad))
            chunked = (b"POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                       b"application/protobuf\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")  # fmt: skip
            status_chunked, _, _ = _parse(await _exchange(_port(gw), chunked))
        assert (status, status_chunked) == (400, 400)
        assert [(e["event"], e["log_level"]) for e in logs] == [("client_bad_request", "info")] * 2
        assert not _loud(logs, records)


# -- what the endpoints accept -----------------------------------------------------------------


async def test_a_body_not_sent_as_protobuf_or_octet_stream_is_refused_415(world: World) -> None:
    """A valid envelope posted as application/json (or as a browser form, text, compressed, or
    without a Content-Type) was accepted; now it is refused unread with 415."""
    before = await _published(world)
    envelope = world.m.next_report("un", 1)
    refused = {
        "application/json": _request("POST", "/v1/reports", envelope, "application/json"),
        "text/plain": _request("POST", "/v1/reports", envelope, "text/plain"),
        "a form": _request("POST", "/v1/reports", envelope, "application/x-www-form-urlencoded"),
        "multipart": _request("POST", "/v1/reports", envelope, "multipart/form-data; boundary=b"),
        "no Content-Type": _request("POST", "/v1/reports", envelope, None),
        "gzip": _request("POST", "/v1/reports", envelope, extra="Content-Encoding: gzip\r\n"),
        "attachment as JSON": _request(
            "PUT", "/v1/attachments/" + "00" * 32, b"{}", "application/json"
        ),
    }
    async with _gateway(world) as gw:
        for name, request in refused.items():
            status, headers, body = _parse(await _exchange(_port(gw), request))
            assert (status, json.loads(body)["reason"]) == (415, "unsupported_media_type"), name
            assert SECURITY.items() <= headers.items(), name
        assert await _published(world) == before
        # The envelope refused as JSON was a good one: as application/protobuf it is published.
        async with GatewayClient(f"http://127.0.0.1:{_port(gw)}") as client:
            assert (await client.submit(envelope)).status == 201
        again = _request("POST", "/v1/reports", envelope, "application/octet-stream")
        status, _, _ = _parse(await _exchange(_port(gw), again))
        assert status == 200  # the same bytes again: the same receipt
    assert await _published(world) == before + 1


async def test_every_answer_carries_the_security_headers(world: World) -> None:
    """The gateway sent no CSP, no-sniff, frame or referrer headers; now every answer does
    (success, refusal, unknown path, wrong method), and HSTS only over HTTPS."""
    envelope = world.m.next_report("un", 1)
    async with _gateway(world) as gw, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{_port(gw)}"
        protobuf = {"Content-Type": "application/protobuf"}
        answers = {}
        for name, method, path, body in [
            ("201", "POST", "/v1/reports", envelope),
            ("200 again", "POST", "/v1/reports", envelope),
            ("400", "POST", "/v1/reports", b"not an envelope"),
            ("422", "PUT", "/v1/attachments/" + "00" * 32, b"x"),
            ("node", "GET", "/v1/node", None),
            ("healthz", "GET", "/healthz", None),
            ("404", "GET", "/nothing/here", None),
            ("405", "GET", "/v1/reports", None),
        ]:
            async with s.request(method, url + path, data=body, headers=protobuf) as resp:
                await resp.read()
                answers[name] = (resp.status, resp.headers)
    assert [status for status, _ in answers.values()] == [201, 200, 400, 422, 200, 200, 404, 405]
    for name, (_, headers) in answers.items():
        assert {k: headers.get(k) for k in SECURITY} == SECURITY, name
        assert "Strict-Transport-Security" not in headers, name


# -- TLS ---------------------------------------------------------------------------------------


async def test_tls_round_trip_with_a_certificate_made_on_the_fly(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway served plain HTTP only; now, with --tls-cert/--tls-key, an observer that
    trusts the certificate submits over HTTPS (TLS 1.2 at least) and gets a receipt that
    verifies; a client that does not trust it, or speaks plain HTTP or TLS 1.1, gets nowhere,
    and none of that is an error in the gateway's log."""
    cert, key = self_signed(tmp_path)
    envelope = world.m.next_report("un", 1)
    async with _gateway(world, tls_cert=cert, tls_key=key) as gw:
        url = f"https://127.0.0.1:{_port(gw)}"
        assert gw.url == url
        trusting = ssl.create_default_context(cafile=cert)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as s,
            s.post(f"{url}/v1/reports", data=envelope,
                   headers={"Content-Type": "application/protobuf"}) as resp,
        ):  # fmt: skip
            receipt, status, headers = await resp.read(), resp.status, resp.headers
        assert status == 201
        verify_receipt(receipt, world.m.keyring, envelope=envelope)
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
        assert SECURITY.items() <= headers.items()
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(gw), ssl=trusting)
        version = writer.get_extra_info("ssl_object").version()
        writer.write(_request("GET", "/healthz", b"", None))
        async with asyncio.timeout(GUARD_S):
            assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
        assert version in ("TLSv1.2", "TLSv1.3")

        with capture_all_logs() as logs, _stdlib_records(caplog) as records:
            async with aiohttp.ClientSession() as s:  # the system's CAs: not trusted
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await s.get(f"{url}/healthz")
            old = ssl.create_default_context(cafile=cert)
            with warnings.catch_warnings():  # an outdated client, on purpose
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.set_ciphers("ALL:@SECLEVEL=0")
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=old)) as s:
                with pytest.raises(aiohttp.ClientError):
                    await s.get(f"{url}/healthz")
            plain = _request("GET", "/healthz", b"", None)
            assert not (await _exchange(_port(gw), plain)).startswith(b"HTTP/1.1 200")
            await _until(lambda: gw.gate is not None and gw.gate.open == 0, "all are gone")
        assert not _loud(logs, records)


# -- 10,000 idle connections -------------------------------------------------------------------


@pytest.mark.slow
async def test_ten_thousand_idle_connections_do_not_stop_a_genuine_submit(world: World) -> None:
    """1,100 idle partial uploads made a genuine request time out and flooded the log; now the
    gateway (started with the usual soft limit of 1,024 open files, which it raises itself)
    holds 10,000 idle connections and still answers a genuine submit, writing next to no log.
    The figures are printed (``-s``); bench/gateway_idle.py prints the same."""
    count = 10_000
    if raise_open_files(count + SPARE_FDS) is None:
        pytest.skip(f"the open-files hard limit is below the {count + SPARE_FDS} this client needs")
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    argv = ["--org", "un", "--mandate", str(world.tmp / "mandate.bin"),
            "--node-key", str(world.tmp / "node-key.json"),
            "--db", str(world.tmp / "idle-gateway.db"), "--port", str(port),
            "--final-db", str(world.final_db), "--bootstrap", world.bootstrap, "--topic-prefix", world.topics.prefix,
            "--header-timeout", "300"]  # fmt: skip
    log = world.tmp / "idle-gateway.log"
    async with gateway_process(argv, url, log) as proc:
        # Observer 2's chain: this gateway has a database of its own, where it starts at 1.
        figures = await measure(url, proc.pid, log, count, lambda: world.m.next_report("un", 2))
    print("\n" + "\n".join(figures.lines()))
    assert (figures.connections, figures.baseline_status, figures.status) == (count, 201, 201)
    assert figures.held >= count
    assert not [e for e in figures.log_events if not e.startswith("info ")], figures.log_events
    assert figures.log_lines < 20, figures.log_events
