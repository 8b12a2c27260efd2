"""An organization node's operator dashboard and read API (aiohttp), on 127.0.0.1 by default.

It reads the node's SQLite store through read-only connections (one per request, in a worker
thread) and never writes, so it stays decoupled from the ingest loop and from the follow-up.
Everything is served by this process: the page has no external script, style sheet, font or
map tile; the map (over a basemap generated from the mandate's zones) and the charts are
inline SVG.

Every route but the login page needs credentials (:mod:`~nodes.org_node.dashboard.auth`:
a session cookie from ``POST /login``, or a trusted reverse proxy's user header); without them
a page answers 303 to ``/login`` and everything else 401 ``{"reason": "login_required"}``.
The reports routes take the filters and paging of :mod:`bus.store.report_query`
(:mod:`~nodes.org_node.dashboard.reports_view`: newest first, keyset ``cursor``); an unknown
or wrong parameter is 400 ``{"reason": "invalid_parameter", "parameter"}``. Health and metrics
are served on the ops port (:mod:`nodes.runtime.ops`), never beside reports.

Routes (JSON unless said otherwise):

====================================  =========================================================
``GET /login``, ``POST /login``       the login page (HTML) and the login (sets the cookie)
``POST /logout``                      ends the session
``GET /``                             the dashboard (HTML): one page of the filtered reports
``GET /reports/<id>``                 one report (HTML): envelope facts, verdict and seal,
                                      amendments, attachments with their hash check
``GET /attachments/<sha256>``         a kept attachment's bytes, only when they hash to it
``GET /api/openapi.json``             the OpenAPI document of this API
``GET /api/reports``                  one page of reports: ``{reports, next_cursor}``
``GET /api/reports/<id>``             one report with its attachments and previous digest
``GET /api/reports.csv|.geojson|.hxl`` every matching report, streamed (the analyst export)
``GET /api/summary``                  counts, mandate, policy
``GET /api/quarantine``               rejected records with reason codes (reports and board),
                                      each with its ``verdict``
``GET /api/seals``                    the newest final seals, the sealer's status, alarms and
                                      equivocations, and the seal state
``GET /api/verdicts/changed``         records whose final verdict differs from the provisional
                                      one, newest epoch first, one page (``?limit=&offset=``;
                                      400 naming an unknown or invalid query parameter)
``GET /api/decisions``                this organization's decisions, evidence, publication
``GET /api/decisions/others``         other organizations' published, verified decisions, with
                                      whether their evidence matches the reports stored here
``GET /api/trends``                   early-warning series per rule and group, reports per day
``GET /api/statements``               joint statements, who signed, valid at k of n
``GET /map.svg``                      the map of one page of reports (SVG, the same filters)
====================================  =========================================================

Every answer carries security headers (:func:`security_headers`): a Content-Security-Policy
that allows nothing external (the page's one inline style sheet is allowed by its SHA-256, no
script runs), ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and
``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Final

import structlog
from aiohttp import web

from bus.errors import ConfigError, StoreError
from bus.store.report_query import FilterError
from nodes.org_node.dashboard import auth
from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.openapi import openapi_document
from nodes.org_node.dashboard.page import (
    map_points,
    render_detail,
    render_login,
    render_map,
    render_page,
)
from nodes.org_node.dashboard.read_model import CHANGED_LIMIT, ReadModel
from nodes.org_node.dashboard.reports_view import (
    INLINE_TYPES,
    ReportsView,
    dashboard_params,
    report_json,
)
from nodes.org_node.export import CONTENT_TYPES, SUFFIXES, Format

log = structlog.get_logger(__name__)

Status = Callable[[], dict[str, Any]]

MAX_PAGE: Final = 10_000  # rows per answer of a paged route, whatever the client asks
_MAX_DIGITS: Final = 18  # a query number fits SQLite's 64-bit integers
_MAX_NUMBER: Final = 10**_MAX_DIGITS - 1

# Everything but the page: nothing may load, nothing may frame it.
_CSP_DEFAULT = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_STYLE_RE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


def page_csp(html: str) -> str:
    """The Content-Security-Policy of a dashboard page: its inline style sheets by their SHA-256,
    images only from this server (the map) or data: URLs (the empty favicon), links and forms
    only to this server, no script, no frame, nothing external."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in _STYLE_RE.findall(html)
    )
    style = hashes or "'none'"
    return (
        f"default-src 'none'; style-src {style}; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


def security_headers(response: web.StreamResponse) -> None:
    """Set the headers every dashboard answer carries (the page sets its own CSP first)."""
    response.headers.setdefault("Content-Security-Policy", _CSP_DEFAULT)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"


async def _on_prepare(_request: web.Request, response: web.StreamResponse) -> None:
    security_headers(response)


class Dashboard:
    """The HTTP server: ``await start()`` ... ``await stop()``.

    Args:
        config: where to listen and what to read.
        status: live counters of a running node (lag, counts); None when run on a store alone.
    """

    def __init__(self, config: DashboardConfig, status: Status | None = None) -> None:
        self.config = config
        self.model = ReadModel(config)
        self.reports = ReportsView(config)
        self.sessions = auth.Sessions(config.auth)
        self._status = status
        self._runner: web.AppRunner | None = None
        self.port = config.port

    @property
    def url(self) -> str:
        """The dashboard's base URL."""
        return f"http://{self.config.host}:{self.port}/"

    def app(self) -> web.Application:
        """The aiohttp application (routes in the module docstring)."""
        app = web.Application(middlewares=[auth.middleware(self.sessions)])
        app.on_response_prepare.append(_on_prepare)
        app.add_routes(
            [
                web.get(auth.LOGIN_PATH, self._login_page),
                web.post(auth.LOGIN_PATH, self._login),
                web.post(auth.LOGOUT_PATH, self._logout),
                web.get("/", self._page),
                web.get("/reports/{report_id}", self._detail_page),
                web.get("/attachments/{sha256}", self._attachment),
                web.get("/map.svg", self._map),
                web.get("/api/summary", self._json(lambda r: self.model.summary())),
                web.get("/api/openapi.json", self._openapi),
                web.get("/api/reports", self._json(self._reports)),
                web.get("/api/reports.csv", self._exporter(Format.CSV)),
                web.get("/api/reports.geojson", self._exporter(Format.GEOJSON)),
                web.get("/api/reports.hxl", self._exporter(Format.HXL)),
                web.get("/api/reports/{report_id}", self._json(self._report)),
                web.get("/api/quarantine", self._json(lambda r: self.model.quarantine())),
                web.get("/api/decisions", self._json(lambda r: self.model.decisions())),
                web.get("/api/decisions/others", self._json(lambda r: self.model.peer_decisions())),
                web.get("/api/trends", self._json(lambda r: self.model.trends())),
                web.get("/api/statements", self._json(lambda r: self.model.statements())),
                web.get("/api/seals", self._json(lambda r: self.model.seals(self._seal_now()))),
                web.get("/api/verdicts/changed", self._json(self._changed)),
            ]
        )
        return app

    async def start(self) -> None:
        """Listen (binds ``host:port``; port 0 picks a free one).

        Raises:
            ConfigError: the address cannot be bound (names --http-port and the fix).
        """
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                "--http-port",
                f"cannot listen on {self.config.host}:{self.config.port} ({exc.strerror})",
                "choose a free port",
            ) from exc
        server = site._server  # aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._runner = runner
        log.info("dashboard_listening", org=self.config.org, url=self.url)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _status_now(self) -> dict[str, Any] | None:
        return None if self._status is None else self._status()

    def _seal_now(self) -> dict[str, Any] | None:
        status = self._status_now()
        return None if status is None else status.get("seal")

    def _changed(self, request: web.Request) -> Any:
        query = _query(request, {"limit": CHANGED_LIMIT, "offset": 0})
        limit = min(query["limit"], MAX_PAGE)
        return self.model.verdict_changes(limit=limit, offset=query["offset"])

    def _reports(self, request: web.Request) -> Any:
        f, page = dashboard_params(_params(request))
        got = self.reports.page(f, page)
        return {
            "reports": [report_json(r) for r in got.rows],
            "next_cursor": got.next_cursor,
            "limit": page.limit,
            "order": "newest" if page.newest_first else "oldest",
        }

    def _report(self, request: web.Request) -> Any:
        if request.query:
            raise FilterError(next(iter(request.query)), "is no parameter here", "give none")
        found = self.reports.detail(request.match_info["report_id"])
        if found is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no such report here", "reason": "not_found"}),
                content_type="application/json",
            )
        return {
            **found["report"],
            "verdict_detail": found["verdict"],
            "prev_digest": found["prev_digest"],
            "attachments": found["attachments"],
        }

    def _json(self, fn: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            try:
                data = await asyncio.to_thread(fn, request)
            except FilterError as exc:
                return _bad_parameter(exc)
            except (StoreError, sqlite3.Error) as exc:
                return web.json_response({"error": str(exc)}, status=503)
            return web.json_response(data, dumps=lambda o: json.dumps(o, default=str))

        return handler

    async def _page(self, request: web.Request) -> web.Response:
        status = self._status_now()
        params = _params(request)
        try:
            f, page = dashboard_params(params, drop_empty=True)
            feed = await asyncio.to_thread(self.reports.page, f, page)
            reasons = await asyncio.to_thread(self.reports.retraction_reasons, feed.rows)
            body = await asyncio.to_thread(
                render_page,
                self.model,
                status,
                feed=feed,
                reasons=reasons,
                params=params,
                user=request[auth.USER_KEY],
            )
        except FilterError as exc:
            return web.Response(status=400, text=f"query parameter {exc.key!r}: {exc.message}")
        except (StoreError, sqlite3.Error) as exc:
            return web.Response(status=503, text=f"store unavailable: {exc}")
        return _html(body)

    async def _detail_page(self, request: web.Request) -> web.Response:
        report_id = request.match_info["report_id"]
        try:
            found = await asyncio.to_thread(self.reports.detail, report_id)
        except (StoreError, sqlite3.Error) as exc:
            return web.Response(status=503, text=f"store unavailable: {exc}")
        if found is None:
            return web.Response(status=404, text=f"no report {report_id[:80]!r} in this store")
        return _html(render_detail(self.config.org, found, user=request[auth.USER_KEY]))

    async def _attachment(self, request: web.Request) -> web.Response:
        """A kept attachment's bytes, served only when they hash to the address asked for:
        images inline, anything else as a download (never rendered by the browser)."""
        try:
            found = await asyncio.to_thread(
                self.reports.attachment_bytes, request.match_info["sha256"]
            )
        except StoreError as exc:
            return web.Response(status=503, text=f"store unavailable: {exc}")
        if found is None:
            return web.Response(status=404, text="no verified attachment with this SHA-256 here")
        data, media_type, name = found
        inline = media_type in INLINE_TYPES
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or request.match_info["sha256"]
        return web.Response(
            body=data,
            headers={
                "Content-Type": media_type if inline else "application/octet-stream",
                "Content-Disposition": f"{'inline' if inline else 'attachment'}; "
                f'filename="{filename}"',
                "Cache-Control": "private, max-age=3600, immutable",
            },
        )

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.config.org))

    async def _login_page(self, request: web.Request) -> web.Response:
        target = auth.safe_next(request.query.get("next", "/"))
        return _html(render_login(self.config.org, self.config.auth.configured, target, ""))

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        target = auth.safe_next(str(form.get("next", "/")))
        if auth.NAME_RE.fullmatch(user) and await self.sessions.login(user, password):
            log.info("dashboard_login", org=self.config.org, user=user, peer=request.remote)
            response = web.HTTPSeeOther(target)
            response.set_cookie(
                auth.COOKIE,
                self.sessions.issue(user),
                max_age=round(self.config.auth.session_hours * 3600),
                path="/",
                httponly=True,
                samesite="Strict",
                secure=request.secure,
            )
            raise response
        log.warning(
            "dashboard_login_refused", org=self.config.org, user=user[:64], peer=request.remote
        )
        body = render_login(
            self.config.org, self.config.auth.configured, target, "wrong user name or password"
        )
        return _html(body, status=401)

    async def _logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther(auth.LOGIN_PATH)
        response.del_cookie(auth.COOKIE, path="/")
        raise response

    def _exporter(self, fmt: Format) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                f, page = dashboard_params(_params(request), export=True)
            except FilterError as exc:
                return _bad_parameter(exc)
            name = f"{self.config.org}-reports{SUFFIXES[fmt]}"
            response = web.StreamResponse(
                headers={
                    "Content-Type": CONTENT_TYPES[fmt],
                    "Content-Disposition": f'attachment; filename="{name}"',
                }
            )
            await response.prepare(request)
            try:
                await stream_text(response, lambda sink: self.reports.export(f, page, fmt, sink))
                await response.write_eof()
            except ConnectionResetError:  # the client went away: its reading thread stopped
                log.info("dashboard_export_abandoned", org=self.config.org, format=str(fmt))
            return response

        return handler

    async def _map(self, request: web.Request) -> web.Response:
        """The reports of one page of the feed (same filters) on the map."""
        try:
            f, page = dashboard_params(_params(request))
        except FilterError as exc:
            return _bad_parameter(exc)
        feed = await asyncio.to_thread(self.reports.page, f, page)
        svg = render_map(self.config.mandate, map_points(feed.rows))
        return web.Response(text=svg, content_type="image/svg+xml")


def _html(body: str, *, status: int = 200) -> web.Response:
    """An HTML page with its own Content-Security-Policy (its inline style by hash)."""
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={"Content-Security-Policy": page_csp(body)},
    )


def _params(request: web.Request) -> dict[str, list[str]]:
    """A request's query parameters, name -> every value given."""
    return {k: request.query.getall(k) for k in dict.fromkeys(request.query.keys())}


def _bad_parameter(exc: FilterError) -> web.Response:
    """400 naming the parameter (``parameter``) and what is wrong."""
    return web.json_response(
        {"error": exc.message, "reason": "invalid_parameter", "parameter": exc.key, "fix": exc.fix},
        status=400,
    )


class _StoppedError(Exception):
    """The client went away: the export's reading thread stops."""


class _ChunkSink:
    """A text sink for a worker thread that hands ~64 KiB chunks to the event loop through a
    bounded queue (the thread waits while the client is slow: constant memory)."""

    CHUNK: Final = 64 * 1024

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]) -> None:
        self._loop, self._queue = loop, queue
        self._parts: list[str] = []
        self._size = 0
        self.stop = threading.Event()

    def write(self, s: str, /) -> int:
        self._parts.append(s)
        self._size += len(s)
        if self._size >= self.CHUNK:
            self.flush()
        return len(s)

    def flush(self) -> None:
        if self._parts:
            self.put("".join(self._parts).encode())
            self._parts, self._size = [], 0

    def put(self, item: bytes | None) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        while True:
            try:
                fut.result(timeout=1)
            except concurrent.futures.TimeoutError:
                if self.stop.is_set():
                    fut.cancel()
                    raise _StoppedError from None
            else:
                return


async def stream_text(
    response: web.StreamResponse, produce: Callable[[_ChunkSink], object]
) -> None:
    """Run ``produce(sink)`` in a worker thread and write what it writes to ``response`` as it
    comes. A store failure midway ends the connection without the final chunk, so a client
    never takes a cut export for a whole one."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
    sink = _ChunkSink(loop, queue)

    def work() -> None:
        try:
            produce(sink)
            sink.flush()
        finally:
            with contextlib.suppress(_StoppedError):
                sink.put(None)

    task = asyncio.create_task(asyncio.to_thread(work))
    try:
        while (chunk := await queue.get()) is not None:
            await response.write(chunk)
    finally:
        sink.stop.set()
        while not queue.empty():
            queue.get_nowait()
        try:
            await task
        except _StoppedError:
            pass
        except (StoreError, sqlite3.Error) as exc:
            log.error("dashboard_export_failed", error=str(exc))  # noqa: TRY400 - no traceback for a store failure
            raise


def _query(request: web.Request, defaults: dict[str, int]) -> dict[str, int]:
    """A route's query parameters: whole numbers >= 0, each at most once, only those named in
    ``defaults`` (absent: its default).

    Raises:
        web.HTTPBadRequest: a parameter is unknown, repeated, or not a whole number >= 0
            (the text names it).
    """
    for name in request.query:
        if name not in defaults:
            allowed = ", ".join(sorted(defaults))
            raise web.HTTPBadRequest(text=f"unknown query parameter {name!r} (allowed: {allowed})")
    out = dict(defaults)
    for name in defaults:
        values = request.query.getall(name, [])
        if len(values) > 1:
            raise web.HTTPBadRequest(text=f"query parameter {name!r} given more than once")
        if values:
            value = values[0]
            if not (value.isascii() and value.isdigit() and len(value) <= _MAX_DIGITS):
                raise web.HTTPBadRequest(
                    text=f"query parameter {name!r} must be a whole number from 0 to {_MAX_NUMBER}"
                )
            out[name] = int(value)
    return out


async def serve(config: DashboardConfig) -> int:
    """Serve a store's dashboard alone (``obus dashboard``) until SIGINT/SIGTERM."""
    import signal  # noqa: PLC0415 - process entry point

    dash = Dashboard(config)
    await dash.start()
    print(f"dashboard of {config.org}: {dash.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await dash.stop()
    return 0
