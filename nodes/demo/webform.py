"""``make demo``, step 4b: an observer reports through UN's gateway from the web form.

UN's gateway (:class:`~nodes.gateway.http.GatewayServer`, judging with the UN node's final
trust state and signing receipts with the UN node key) serves the form at ``/app/``; Debian's
headless Chromium, driven over the DevTools protocol, opens it at phone width, enrols a new
observer (the mandate file, a key made in the browser, the accreditation request with proof
of possession), which UN accredits with ``obus org accredit --request``; then it fills and
taps "Sign and queue" for a few reports. The page signs them, delivers them through the
gateway and verifies each receipt; the envelopes it delivered are what the six nodes, the
seals and the auditor must then count among the genuine reports. The gateway keeps serving the
form (its address is printed) until the demo ends.

Without Chromium (or without the built form) this says so in one line and the demo publishes
every report directly, as before. Chromium is driven with :mod:`nodes.demo.cdp`, the DevTools
client the browser tests drive the same form with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rich.console import Console

from bus.topics import Topics
from nodes.demo.cdp import Browser, BrowserError, Page, find_chromium
from nodes.demo.scenario import Scenario
from nodes.demo.sealing import final_db
from nodes.gateway.http import GatewayServer
from nodes.gateway.service import GatewayConfig
from nodes.gateway.webapp import DIST
from nodes.runtime.files import write_key

OBSERVER: Final = "un-obs-web"
WAIT_S: Final = 90
# What the observer types, one report per row (the position is the zone's middle).
REPORTS: Final = (
    {"category": "shelling", "sub-type": "artillery", "severity": "4", "confidence": "0.9",
     "narrative": "Reported from the web form: impacts near the bridge.", "place": "Riverford"},
    {"category": "humanitarian_access", "severity": "3", "confidence": "0.8",
     "narrative": "Convoi humanitaire bloqué au poste de contrôle.", "place": "Checkpoint 4"},
    {"category": "troop_movement", "severity": "2", "confidence": "0.6",
     "narrative": "Колонна из 12 машин движется на восток."},
)  # fmt: skip


@dataclass
class WebForm:
    """The form's part of the demo: the reports it delivered, and the gateway left running.
    ``ok`` is False when Chromium was there but the form did not deliver every report."""

    ok: bool = True
    url: str = ""
    envelopes: list[bytes] = field(default_factory=list)
    tap_ms: list[float] = field(default_factory=list)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def stop(self) -> None:
        """Stop the gateway (idempotent)."""
        await self._stack.aclose()


async def report_through_form(
    console: Console, work: Path, *, bootstrap: str, topics: Topics, scenario: Scenario
) -> WebForm:
    """Run UN's gateway and report through its web form (module docstring); the returned
    form's gateway runs until :meth:`WebForm.stop`. Without Chromium or the built form, says
    so and returns an empty :class:`WebForm`."""
    form = WebForm()
    chromium = find_chromium()
    if chromium is None or not (DIST / "index.html").is_file():
        missing = "Chromium (apt-get install chromium)" if chromium is None else "`make web`"
        console.print(f"web form skipped: no {missing}; every report is published directly")
        return form
    mandate = scenario.mandate
    for _ in range(WAIT_S * 5):  # the UN node's sealer creates its final store
        if final_db(work, "un").is_file():
            break
        await asyncio.sleep(0.2)
    server = GatewayServer(GatewayConfig(
        org="un", bootstrap=bootstrap, db_path=work / "un.gateway.db", mandate=mandate,
        node_key=scenario.node_keys["un"], topics=topics, port=_free_port(),
        final_db=final_db(work, "un"),
    ))  # fmt: skip
    await form._stack.enter_async_context(server)
    form.url = f"{server.url}/app/"
    console.print(f"UN's gateway serves the observers' web form at {form.url}")
    try:
        async with Browser.launch(chromium) as browser:
            tab = await browser.new_page()
            await _drive(tab, form, work, bootstrap=bootstrap, topics=topics, scenario=scenario)
    except (BrowserError, TimeoutError, OSError) as exc:
        console.print(f"[red]the web form did not deliver its reports: {exc!r}[/red]")
        form.ok = False
        return form
    console.print(
        f"{len(form.envelopes)} reports filled in, signed in the browser and delivered through"
        f" the gateway by {OBSERVER}; every receipt verified in the page (tap to queued:"
        f" {', '.join(f'{t:.0f} ms' for t in form.tap_ms)})"
    )
    return form


async def _drive(
    tab: Page, form: WebForm, work: Path, *, bootstrap: str, topics: Topics, scenario: Scenario
) -> None:
    await tab.send("Emulation.setDeviceMetricsOverride", width=390, height=844,
                   deviceScaleFactor=1, mobile=True)  # fmt: skip
    await tab.send("Page.navigate", url=form.url)
    await tab.until("document.body && document.body.dataset.ready === '1'", "the form started")
    mandate_file = work / "mandate.bin"
    await tab.set_files("#mandate-file", [mandate_file])
    await tab.until("document.getElementById('fingerprint').textContent", "the mandate checked")
    await tab.evaluate(
        "document.getElementById('org').value = 'un';"
        f" document.getElementById('observer-id').value = {json.dumps(OBSERVER)};"
        " document.getElementById('enrol-button').click()"
    )
    request = await tab.until("document.getElementById('request').textContent", "the request")
    await _accredit(request, work, bootstrap=bootstrap, topics=topics, scenario=scenario)

    zone = scenario.mandate.zones[0]
    where = {"zone": zone.id, "lat": f"{(zone.min_lat + zone.max_lat) / 2:.5f}",
             "lon": f"{(zone.min_lon + zone.max_lon) / 2:.5f}", "precision": "30"}  # fmt: skip
    for i, values in enumerate(REPORTS, start=1):
        fill = json.dumps({**where, **values})
        await tab.evaluate(
            f"for (const [id, v] of Object.entries({fill})) document.getElementById(id).value = v;"
            " document.getElementById('report-form').requestSubmit()"
        )
        await tab.until(f"document.querySelectorAll('#status-list li').length === {i}", "queued")
        form.tap_ms.append(float(await tab.evaluate("globalThis.obus.lastQueueMs()")))
    # Until the seal that carries the accreditation is final at UN's node, the gateway answers
    # unknown_key and the page backs off; asking it to deliver now and then keeps this short.
    verified = f"document.querySelectorAll('#status-list li span.ok').length === {len(REPORTS)}"
    await _poll(tab, verified, "globalThis.obus.deliver()", "every receipt verified")
    got = await tab.evaluate(
        "globalThis.obus.store.entries()"
        ".then(es => es.map(e => globalThis.obus.core.b64(e.envelope)))"
    )
    form.envelopes = [base64.b64decode(e) for e in got]


async def _poll(tab: Page, check: str, nudge: str, what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await tab.evaluate(check):
            await tab.evaluate(f"{nudge}, true")
            await asyncio.sleep(1)
    if not await tab.evaluate(check):
        raise BrowserError(what)


async def _accredit(
    request: str, work: Path, *, bootstrap: str, topics: Topics, scenario: Scenario
) -> None:
    """UN's root accredits the request with ``obus org accredit --request`` (as UN would)."""
    keys = work / "keys"
    root, request_file = keys / "un-root.json", work / f"accreditation-request-{OBSERVER}.json"
    if not root.exists():
        write_key(root, scenario.org_roots["un"])
    request_file.write_text(request)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.cli", "org", "accredit", "--org", "un", "--root-key",
        str(root), "--mandate", str(work / "mandate.bin"), "--role", "observer", "--request",
        str(request_file), "--bootstrap", bootstrap, "--topic-prefix", topics.prefix,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise BrowserError(f"obus org accredit failed: {out.decode(errors='replace')}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
