"""The field observers' web form, served by the gateway at ``/app/`` (same origin as ``/v1/``).

The form is built by ``make web`` into ``nodes/observer_web/dist`` (npm from the lockfile; see
the README, "Web form for observers"). :func:`add_webapp` serves that directory's files, and
only them (a fixed list read at start, so no path from a request ever reaches the file system):

* ``GET /app`` redirects to ``/app/``; ``GET /app/`` is ``index.html``;
* every answer has the MIME type of its file, ``Cache-Control: no-cache`` (the service worker
  keeps the offline copy; the browser revalidates so a new build is picked up), and a strict
  Content-Security-Policy in place of the gateway's ``default-src 'none'``: scripts, styles,
  the manifest and the worker from this origin only, ``connect-src 'self'`` (the form talks
  to this gateway and nothing else), images from this origin and ``blob:`` (photo previews),
  no frames, no plugins, no form posts, no base URI;
* ``sw.js`` is sent with ``Service-Worker-Allowed: /app/`` so its scope is the app, never the
  gateway's API.

When the bundle is missing the gateway starts anyway: ``/app/`` answers 503 with the command
that builds it, and a warning says the same at start.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

DIST: Final = Path(__file__).resolve().parents[1] / "observer_web" / "dist"
PREFIX: Final = "/app/"
BUILD_HINT: Final = "run `make web` (npm ci, generate, bundle) and restart the gateway"
APP_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:;"
    " connect-src 'self'; manifest-src 'self'; worker-src 'self'; frame-ancestors 'none';"
    " base-uri 'none'; form-action 'none'; object-src 'none'"
)
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


def _content_type(name: str) -> str:
    suffix = Path(name).suffix
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def load_bundle(dist: Path = DIST) -> dict[str, tuple[bytes, str]]:
    """The built files by name (``index.html`` also under ``""``), or {} when not built."""
    if not (dist / "index.html").is_file():
        return {}
    files = {p.name: (p.read_bytes(), _content_type(p.name)) for p in dist.iterdir() if p.is_file()}
    files[""] = files["index.html"]
    return files


def add_webapp(app: web.Application, dist: Path = DIST) -> None:
    """Serve the built form at ``/app/`` on the gateway's application (see the module doc)."""
    files = load_bundle(dist)
    if files:
        log.info("webapp_ready", url_path=PREFIX, files=len(files) - 1)
    else:
        log.warning("webapp_not_built", dist=str(dist), fix=BUILD_HINT)

    async def redirect(_: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(PREFIX)

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not files:
            text = f"the observers' web form is not built: {BUILD_HINT}\n"
            return web.Response(status=503, text=text, headers={"Retry-After": "60"})
        found = files.get(name)
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        headers = {"Cache-Control": "no-cache"}
        if name == "sw.js":
            headers["Service-Worker-Allowed"] = PREFIX
        return web.Response(body=body, headers={**headers, "Content-Type": content_type})

    async def app_csp(request: web.Request, response: web.StreamResponse) -> None:
        # Runs after the gateway's own security headers: only the form's pages get this CSP.
        if request.path == PREFIX[:-1] or request.path.startswith(PREFIX):
            response.headers["Content-Security-Policy"] = APP_CSP

    app.on_response_prepare.append(app_csp)
    app.router.add_get(PREFIX[:-1], redirect)
    app.router.add_get(PREFIX + "{name:[A-Za-z0-9._-]*}", serve)
