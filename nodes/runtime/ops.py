"""The ops port of every long-running process (``obus node``, ``obus gateway``): liveness,
readiness and Prometheus metrics on their own listen address, apart from the dashboard and the
gateway's public port, so that a scraper never needs access to reports or observers.

Routes (nothing else; GET only; no request body is read):

==============  ===============================================================================
``/healthz``    liveness: 200 ``{"status": "ok", ...}`` while the process loop runs and its
                parts have not stopped; 503 ``{"status": "stopping" | <reason>, "detail"}``
                otherwise. A process whose event loop is stuck does not answer at all.
``/readyz``     readiness: 200 when every check holds, else 503; the body always lists every
                check ``{"ready": bool, "reasons": [code, ...], "checks": {name: {"ok",
                "reason", "detail"}}}``. The ``broker`` check is :class:`BrokerWatch`'s
                verdict; the process adds its own (a node: lag, consumer group, sealer alarm,
                stores writable; a gateway: trust state, store writable).
``/metrics``    Prometheus text format (version 0.0.4), from a registry of this server alone
                (never the library's global one, so that processes in one interpreter, as in
                tests, never share series): the process's own families, the readiness checks
                (``obus_ready``, ``obus_ready_check{check}``), the broker watch
                (``obus_broker_reachable``, ``obus_broker_state_changes_total``,
                ``obus_kafka_log_lines_suppressed_total``, ``obus_broker_probes_total``,
                ``obus_broker_probe_failures_total``) and the standard ``process_*`` ones.
==============  ===============================================================================

Cost per request is bounded: readiness and metrics are computed at most once per
:data:`CACHE_S` whatever the request rate (concurrent requests wait for the same evaluation),
and a check that raises counts as failed (``check_failed``), never as passed.

Conventions (Prometheus): counters only go up and end in ``_total``; units are in names
(``_seconds``, ``_bytes``); states are gauges.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from bus.errors import ConfigError
from nodes.runtime.broker_watch import BrokerWatch

log = structlog.get_logger(__name__)

DEFAULT_NODE_OPS: Final = "127.0.0.1:9464"
DEFAULT_GATEWAY_OPS: Final = "127.0.0.1:9465"
CACHE_S: Final = 1.0
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
STORE_LOCK_TIMEOUT_S: Final = 2.0
MIN_FREE_BYTES: Final = 64 * 1024 * 1024  # below this a store is about to stop committing
_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the ops server listens; ``explicit``: the operator named it (a taken port is then
    an error; the default address taken only costs the ops port, with an error logged)."""

    host: str
    port: int
    explicit: bool = True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str, flag: str = "--ops-listen", *, explicit: bool = True) -> Listen:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (127.0.0.1); port 0 picks a free one.

    Raises:
        ConfigError: anything else, or a port above 65535 (names ``flag``).
    """
    m = _LISTEN.match(text.strip())
    if m is None or int(m["port"]) > 65535:
        raise ConfigError(
            flag, f"{text!r} is not HOST:PORT", "write e.g. 127.0.0.1:9464, :9464 or [::1]:9464"
        )
    host = m["v6"] or m["host"] or "127.0.0.1"
    return Listen(host, int(m["port"]), explicit)


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness (or liveness) check: ``reason`` is a stable code when it fails."""

    name: str
    ok: bool
    reason: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form in ``/readyz``."""
        return {"ok": self.ok, "reason": self.reason, "detail": self.detail}


def store_writable(name: str, path: Path, *, min_free_bytes: int = MIN_FREE_BYTES) -> Check:
    """Whether a SQLite store takes a write now: it exists, its file system has room, and its
    write lock can be taken within :data:`STORE_LOCK_TIMEOUT_S` (taken and released at once,
    nothing written). Blocking: call it in a worker thread."""
    if not path.is_file():
        return Check(name, False, "store_missing", f"{path} does not exist")
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError as exc:
        return Check(name, False, "store_not_writable", f"{path}: {exc}")
    if free < min_free_bytes:
        return Check(
            name, False, "disk_full", f"{free} bytes free next to {path} (< {min_free_bytes})"
        )
    try:
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=rw",
            uri=True,
            timeout=STORE_LOCK_TIMEOUT_S,
            isolation_level=None,
        )
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Check(name, False, "store_not_writable", f"{path}: {exc}")
    return Check(name, True)


def broker_check(watch: BrokerWatch) -> Check:
    """The broker watch's verdict as a check (``broker_unreachable`` until the first probe
    answered)."""
    state = watch.state()
    if state.reachable:
        return Check("broker", True)
    return Check("broker", False, "broker_unreachable", state.why)


ReadyChecks = Callable[[], Awaitable[list[Check]]]
Families = Callable[[], Awaitable[list[Metric]]]


class _Scrape(Collector):
    """The families of the scrape being written (set just before generate_latest, no await
    between: one scrape at a time on the loop)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return self.families


@dataclass
class _Cached:
    at: float = -1e18
    value: Any = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OpsServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` (module docstring): ``await start()`` ...
    ``await stop()``.

    Args:
        listen: where to listen.
        what: the process, for logs (e.g. ``node un``).
        alive: liveness; a failed check makes ``/healthz`` 503.
        ready: the process's own readiness checks (the broker check is added).
        families: the process's own metric families.
        broker: the process's broker watch (None: no broker check, no broker families).
    """

    def __init__(
        self,
        listen: Listen,
        *,
        what: str,
        alive: Callable[[], Check],
        ready: ReadyChecks,
        families: Families,
        broker: BrokerWatch | None,
    ) -> None:
        self.listen = listen
        self.port = listen.port
        self._what = what
        self._alive = alive
        self._ready = ready
        self._families = families
        self._broker = broker
        self._started = time.monotonic()
        self._registry = CollectorRegistry(auto_describe=False)
        self._scrape = _Scrape()
        self._registry.register(self._scrape)
        ProcessCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)
        self._readiness = _Cached()
        self._metrics = _Cached()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The server's base URL (with the bound port)."""
        host = f"[{self.listen.host}]" if ":" in self.listen.host else self.listen.host
        return f"http://{host}:{self.port}/"

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=1024)
        app.on_response_prepare.append(_headers)
        app.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics_route),
            ]
        )
        return app

    async def start(self) -> bool:
        """Listen; False (and an error logged) when the default address is taken.

        Raises:
            ConfigError: an address the operator named cannot be bound.
        """
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.listen.host, self.listen.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if self.listen.explicit:
                raise ConfigError(
                    "--ops-listen",
                    f"cannot listen on {self.listen} ({exc.strerror})",
                    "choose a free address, or --no-ops",
                ) from exc
            log.error(  # noqa: TRY400 - no traceback for a taken port
                "ops_port_unavailable", process=self._what, listen=str(self.listen),
                error=exc.strerror, fix="pass --ops-listen HOST:PORT (a free one) or --no-ops",
            )  # fmt: skip
            return False
        sockets = getattr(site._server, "sockets", None) or []  # the bound port lives only here
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._runner = runner
        log.info("ops_listening", process=self._what, url=self.url)
        return True

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- evaluation ------------------------------------------------------------------------

    async def readiness(self) -> list[Check]:
        """Every readiness check (cached for :data:`CACHE_S`)."""
        return list(await self._cached(self._readiness, self._evaluate))

    async def _evaluate(self) -> list[Check]:
        checks = [] if self._broker is None else [broker_check(self._broker)]
        try:
            checks += await self._ready()
        except Exception as exc:  # a failing check is a failed check, not a 500
            log.exception("ready_check_failed", process=self._what)
            checks.append(Check("checks", False, "check_failed", repr(exc)))
        return checks

    async def metrics_text(self) -> bytes:
        """The exposition text (cached for :data:`CACHE_S`)."""
        return bytes(await self._cached(self._metrics, self._render))

    async def _render(self) -> bytes:
        checks = await self.readiness()
        fams = list(await self._families())
        fams += _readiness_families(checks)
        if self._broker is not None:
            fams += _broker_families(self._broker)
        self._scrape.families = fams
        try:
            return generate_latest(self._registry)
        finally:
            self._scrape.families = []

    @staticmethod
    async def _cached(slot: _Cached, compute: Callable[[], Awaitable[Any]]) -> Any:
        async with slot.lock:
            now = time.monotonic()
            if now - slot.at >= CACHE_S:
                slot.value = await compute()
                slot.at = time.monotonic()
            return slot.value

    # -- routes ------------------------------------------------------------------------------

    async def _healthz(self, _: web.Request) -> web.Response:
        try:
            alive = self._alive()
        except Exception as exc:  # noqa: BLE001 - liveness must answer
            alive = Check("alive", False, "check_failed", repr(exc))
        body = {
            "status": "ok" if alive.ok else alive.reason or "not_alive",
            "process": self._what,
            "detail": alive.detail,
            "uptime_seconds": round(time.monotonic() - self._started, 3),
        }
        return web.json_response(body, status=200 if alive.ok else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = await self.readiness()
        ready = all(c.ok for c in checks)
        body = {
            "ready": ready,
            "process": self._what,
            "reasons": [c.reason for c in checks if not c.ok],
            "checks": {c.name: c.as_dict() for c in checks},
        }
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics_route(self, _: web.Request) -> web.Response:
        return web.Response(body=await self.metrics_text(), headers={"Content-Type": CONTENT_TYPE})


async def _headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"


def _readiness_families(checks: list[Check]) -> list[Metric]:
    each = GaugeMetricFamily(
        "obus_ready_check", "1 while a readiness check holds (see /readyz)", labels=["check"]
    )
    for c in checks:
        each.add_metric([c.name], int(c.ok))
    return [
        GaugeMetricFamily(
            "obus_ready", "1 while every readiness check holds", int(all(c.ok for c in checks))
        ),
        each,
    ]


def _broker_families(watch: BrokerWatch) -> list[Metric]:
    state = watch.state()
    return [
        GaugeMetricFamily(
            "obus_broker_reachable",
            "1 while the last probe or Kafka client line says the brokers answer",
            int(bool(state.reachable)),
        ),
        CounterMetricFamily(
            "obus_broker_state_changes",
            "Changes between reachable and unreachable (each logged once)",
            state.changes_total,
        ),
        CounterMetricFamily(
            "obus_kafka_log_lines_suppressed",
            "Kafka client warnings and errors counted instead of logged while unreachable",
            state.suppressed_total,
        ),
        CounterMetricFamily("obus_broker_probes", "Broker probes sent", watch.probes_total),
        CounterMetricFamily(
            "obus_broker_probe_failures",
            "Broker probes that got no answer",
            watch.probe_failures_total,
        ),
    ]


# -- HTTP request metrics (the gateway's public port) ------------------------------------------

# Seconds; a report's answer waits for the brokers' acks=all, usually well under a second.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MAX_REASON_BODY: Final = 4096  # error bodies are small; anything larger is not parsed


class RequestMetrics:
    """Counts a web application's answers by route, method, status and reason code (the
    ``reason`` of a JSON error body ``{"reason": code, ...}``), and times the answers of one
    route and status as a histogram (for the gateway: ``POST /v1/reports`` answered 201, from
    the request's arrival to its receipt). Install :attr:`middleware` on the application.

    Routes are the application's route patterns (``/v1/proofs/{topic}/{partition}/{offset}``),
    never raw paths, and a path matching none is ``unmatched``: a client cannot grow the
    number of series.
    """

    def __init__(self, prefix: str, *, timed: tuple[str, str, int]) -> None:
        self._prefix = prefix
        self._timed = timed
        self.answers: dict[tuple[str, str, str, str], int] = {}
        self._buckets = [0] * len(LATENCY_BUCKETS)
        self._count = 0
        self._sum = 0.0

        @web.middleware
        async def middleware(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._count_answer(request, exc.status, "")
                raise
            self._count_answer(request, response.status, _reason(response))
            if (request.method, _route(request), response.status) == self._timed:
                self._observe(time.perf_counter() - started)
            return response

        self.middleware = middleware

    def _count_answer(self, request: web.Request, status: int, reason: str) -> None:
        key = (_route(request), request.method, str(status), reason)
        self.answers[key] = self.answers.get(key, 0) + 1

    def _observe(self, seconds: float) -> None:
        self._count += 1
        self._sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self._buckets[i] += 1

    def families(self) -> list[Metric]:
        """``<prefix>_requests_total{route,method,status,reason}`` and the latency histogram."""
        requests = CounterMetricFamily(
            f"{self._prefix}_requests",
            "Answers by route, method, HTTP status and reason code",
            labels=["route", "method", "status", "reason"],
        )
        for (route, method, status, reason), n in sorted(self.answers.items()):
            requests.add_metric([route, method, status, reason], n)
        t_method, t_route, t_status = self._timed
        latency = HistogramMetricFamily(
            f"{self._prefix}_publish_latency_seconds",
            f"Time from receiving {t_method} {t_route} to answering it {t_status}",
            buckets=[
                *((str(b), n) for b, n in zip(LATENCY_BUCKETS, self._buckets, strict=True)),
                ("+Inf", self._count),
            ],
            sum_value=self._sum,
        )
        return [requests, latency]


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return "unmatched" if info is None else info.canonical


def _reason(response: web.StreamResponse) -> str:
    """The reason code of a JSON error body (small ones only), else ""."""
    if response.status < 400 or not isinstance(response, web.Response):
        return ""
    body = response.body
    if not isinstance(body, bytes) or len(body) > _MAX_REASON_BODY:
        return ""
    m = re.match(rb'\s*\{\s*"reason"\s*:\s*"([a-z0-9_]{1,64})"', body)
    return "" if m is None else m[1].decode()


def gauge(name: str, doc: str, values: Mapping[str, int] | int, label: str = "") -> Metric:
    """A gauge family: one value, or one per ``label`` value."""
    if isinstance(values, int):
        return GaugeMetricFamily(name, doc, values)
    fam = GaugeMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        fam.add_metric([key], n)
    return fam


# -- the gateway's ops ------------------------------------------------------------------------


class GatewayOps:
    """The ops of ``obus gateway``: the broker watch for the whole process, request metrics on
    its public port (:attr:`requests`, installed by :func:`nodes.gateway.http.run_gateway`
    before it listens) and, unless ``listen`` is None (``--no-ops``), the ops server.

    The gateway is read through its public surface only (``server.gateway.ready``,
    ``not_ready()``, ``store.counts()``, ``store.attachment_count()``, ``trust.epoch``,
    ``config.db_path``; ``server.gate.counts()``), so this module needs no import of it.

    Readiness: the broker, the gateway's store writable, and ``trust``: the gateway publishes
    (a final trust state in which its node key is usable, earlier publications resolved;
    otherwise the reason it answers reports with: ``not_sealed_yet``, ``sealed_log_broken``,
    ``unavailable``).
    """

    def __init__(self, listen: Listen | None, *, bootstrap: str, security: Any) -> None:
        self.listen = listen
        self.watch = BrokerWatch(bootstrap, security)
        self.requests = RequestMetrics("obus_gateway", timed=("POST", "/v1/reports", 201))
        self.server: OpsServer | None = None
        self._gw: Any = None  # the GatewayServer, from start()

    async def start(self, gateway_server: Any) -> None:
        """Start the broker watch and the ops server (see :meth:`OpsServer.start`)."""
        self._gw = gateway_server
        await self.watch.start()
        if self.listen is None:
            return
        server = OpsServer(
            self.listen, what=f"gateway {gateway_server.gateway.config.org}",
            alive=lambda: Check("alive", True), ready=self._ready, families=self._families,
            broker=self.watch,
        )  # fmt: skip
        if await server.start():
            self.server = server

    async def stop(self) -> None:
        """Stop the ops server and the broker watch."""
        if self.server is not None:
            await self.server.stop()
            self.server = None
        await self.watch.stop()

    async def _ready(self) -> list[Check]:
        gw = self._gw.gateway
        checks = [await asyncio.to_thread(store_writable, "store", Path(gw.config.db_path))]
        if gw.ready:
            checks.append(Check("trust", True))
        else:
            reply = gw.not_ready()
            m = re.match(rb'\s*\{\s*"reason"\s*:\s*"([a-z0-9_]{1,64})"', reply.body)
            why = "unavailable" if m is None else m[1].decode()
            checks.append(Check("trust", False, why, reply.body.decode(errors="replace")[:300]))
        return checks

    async def _families(self) -> list[Metric]:
        gw = self._gw.gateway
        gate = self._gw.gate
        conns: Mapping[str, int] = {} if gate is None else gate.counts()
        return [
            *self.requests.families(),
            gauge(
                "obus_gateway_reports",
                "Reports in the gateway's store by state (publishing: waiting for Kafka's"
                " confirmation, the publish queue)",
                dict(gw.store.counts()),
                "state",
            ),
            gauge("obus_gateway_attachments", "Attachments published", gw.store.attachment_count()),
            gauge("obus_gateway_connections_open", "Open connections", conns.get("open", 0)),
            gauge("obus_gateway_connections_limit", "Connection limit", conns.get("limit", 0)),
            CounterMetricFamily(
                "obus_gateway_connections_refused",
                "Connections refused at the limit since the process started",
                conns.get("refused", 0),
            ),
            gauge(
                "obus_gateway_trust_epoch",
                "The epoch of the final trust state the gateway judges with",
                int(gw.trust.epoch),
            ),
            gauge("obus_gateway_ready", "1 while the gateway publishes", int(bool(gw.ready))),
        ]
