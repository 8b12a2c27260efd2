"""A small Chrome DevTools Protocol client over aiohttp, driving Debian's headless Chromium:
``make demo`` fills the observers' web form with it, and the browser tests drive the form, the
dashboard and the audit report with it.

No browser download: it starts ``/usr/bin/chromium`` (Debian package ``chromium``; ``make
browser`` installs it) with the flags this machine needs (no sandbox as root, no GPU, no
background networking: the sandbox network is closed) and a throwaway profile, reads the
DevTools address Chromium prints, and speaks CDP in flattened-session mode. What goes wrong
(Chromium exits, a DevTools error, a page script that throws, a wait that runs out) raises
:class:`BrowserError`. The tests that need Chromium fail, never skip, when it is missing; the
demo says so in one line and goes on without the form.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bus.errors import BusError

CHROMIUM_CANDIDATES = ("chromium", "/usr/bin/chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
_DEVTOOLS = re.compile(rb"DevTools listening on (ws://\S+)")


class BrowserError(BusError):
    """Chromium did not start, DevTools refused a command, a page script threw, or the page
    did not get where it was asked to in time."""


def find_chromium() -> str | None:
    """Path of the Chromium binary, or None."""
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Page:
    """One tab, attached in flattened mode."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session_id=self.session_id, **params)

    async def goto(self, url: str, timeout_s: float = 30) -> None:
        """Navigate and wait for the load event."""
        waiter = self.browser.expect("Page.loadEventFired", self.session_id)
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(waiter, timeout_s)

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page; returns the JSON value."""
        res = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in res:
            raise BrowserError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def click(self, selector: str, timeout_s: float = 30) -> None:
        """Click an element with a real mouse event at its centre; waits for a navigation."""
        sel = json.dumps(selector)
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({sel}); e.scrollIntoView();"
            " const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        waiter = self.browser.expect("Page.loadEventFired", self.session_id)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                clickCount=1,
            )  # fmt: skip
        await asyncio.wait_for(waiter, timeout_s)

    async def until(self, expression: str, what: str, timeout_s: float = 90) -> Any:
        """Evaluate ``expression`` until its value is truthy and return it; a navigation in
        between is waited out. Raises :class:`BrowserError` naming ``what`` on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    with contextlib.suppress(BrowserError):
                        got = await self.evaluate(expression)
                        if got:
                            return got
                    await asyncio.sleep(0.25)
        except TimeoutError as exc:
            raise BrowserError(f"waited {timeout_s:g} s for {what}") from exc

    async def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose ``paths`` in the file input ``selector`` (as a user picking files would)."""
        doc = await self.send("DOM.getDocument")
        node = await self.send("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector=selector)
        await self.send(
            "DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(p) for p in paths]
        )

    async def screenshot(self, path: Path) -> bytes:
        """A full-page PNG, written to path."""
        size = await self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=max(1280, size[0]),
            height=min(size[1], 16000), deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])
        await asyncio.to_thread(_write, path, data)
        return data


class Browser:
    """A Chromium process and its DevTools WebSocket."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.console: list[str] = []

    async def send(
        self, method: str, session_id: str | None = None, **params: Any
    ) -> dict[str, Any]:
        assert self._ws is not None
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session_id:
            msg["sessionId"] = session_id
        await self._ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, 30)

    def expect(self, method: str, session_id: str | None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event ``method`` (of that session)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, fut))
        return fut

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                fut = self._pending.pop(data["id"])
                if "error" in data:
                    fut.set_exception(BrowserError(f"DevTools: {data['error']}"))
                else:
                    fut.set_result(data.get("result", {}))
                continue
            method, session = data.get("method"), data.get("sessionId")
            if method == "Runtime.consoleAPICalled":
                self.console.append(str(data["params"].get("args")))
            for waiter in list(self._waiters):
                if waiter[0] == method and waiter[1] in (None, session) and not waiter[2].done():
                    waiter[2].set_result(data.get("params", {}))
                    self._waiters.remove(waiter)

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, binary: str) -> AsyncIterator[Browser]:
        """Start Chromium headless with a throwaway profile; stop it and remove the profile."""
        browser = cls()
        profile = tempfile.mkdtemp(prefix="obus-chromium-")
        proc = await asyncio.create_subprocess_exec(
            binary, *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        session = aiohttp.ClientSession()
        drain: asyncio.Task[bytes] | None = None
        try:
            assert proc.stderr is not None
            seen = b""
            async with asyncio.timeout(60):
                while (m := _DEVTOOLS.search(seen)) is None:
                    line = await proc.stderr.readline()
                    if not line:
                        raise BrowserError(f"chromium exited: {seen.decode(errors='replace')}")
                    seen += line
            # keep reading stderr so Chromium never blocks on a full pipe
            drain = asyncio.create_task(proc.stderr.read())
            browser._ws = await session.ws_connect(m.group(1).decode(), max_msg_size=0)
            browser._reader = asyncio.create_task(browser._read())
            yield browser
        finally:
            if browser._ws is not None:
                await browser._ws.close()
            if browser._reader is not None:
                browser._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await browser._reader
            await session.close()
            if proc.returncode is None:
                proc.terminate()
            if drain is not None:
                drain.cancel()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            shutil.rmtree(profile, ignore_errors=True)
