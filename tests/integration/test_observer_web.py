"""The field observers' web form in Debian's headless Chromium, against a real gateway, broker
and organization nodes.

An observer opens the form the gateway serves at /app/ on a 390 px wide viewport, enrols (the
mandate file, an organization, an observer id: a key made and kept in the browser, and an
accreditation request with proof of possession, which the test accredits with the organization
root through ``read_accreditation_request`` and ``sign_accreditation``, as ``obus org accredit
--request`` does); the device goes offline (DevTools network emulation), three reports are
filled in and queued (one with a photo), the page is reloaded (served by its service worker,
nothing lost), the link comes back, the outbox delivers oldest first, the page verifies every
receipt, and every node stores exactly those three reports. Screenshots of the form and of
the status list are saved under var/test-artifacts/; the bytes of the first load and the time
from tap to queued are printed (measured, not asserted).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import json
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bus.kafka.client import reliable_producer
from bus.model import Accreditation, Envelope, Report, Role, sha256
from bus.sign import sign_accreditation
from bus.store.node import NodeStore
from nodes.cli.trust import read_accreditation_request
from nodes.gateway.http import GatewayServer
from nodes.gateway.webapp import DIST
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node
from tests.cdp import Browser, Page, find_chromium
from tests.integration.test_observer_gateway import World, _world

pytestmark = [pytest.mark.kafka]
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
WAIT_S = 90
OBSERVER = "un-obs-web"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail(
            "Debian's chromium is not installed; run `make browser` (apt-get install -y chromium)"
        )
    if not (DIST / "index.html").is_file():
        pytest.fail("the web form is not built: run `make web`")
    return path


async def until(
    check: Callable[[], Awaitable[Any] | Any], what: str, timeout_s: float = WAIT_S
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            got = check()
            if inspect.isawaitable(got):
                got = await got
            if got:
                return got
            await asyncio.sleep(0.2)
    raise AssertionError(what)


def _png(path: Path, width: int = 64, height: int = 48) -> Path:
    """A small real PNG photo (a gradient), written with zlib only."""
    raw = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 4 % 256, y * 5 % 256, 128))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return path


async def _phone(page: Page) -> None:
    await page.send("Emulation.setDeviceMetricsOverride", width=390, height=844,
                    deviceScaleFactor=1, mobile=True)  # fmt: skip


async def _shot(page: Page, name: str) -> bytes:
    """A full-page PNG at 390 px wide, saved as a test artifact."""
    height = await page.evaluate("document.documentElement.scrollHeight")
    await page.send("Emulation.setDeviceMetricsOverride", width=390, height=min(int(height), 8000),
                    deviceScaleFactor=1, mobile=True)  # fmt: skip
    shot = await page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    data = base64.b64decode(shot["data"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).write_bytes(data)
    await _phone(page)
    return data


async def _files(page: Page, selector: str, paths: list[Path]) -> None:
    doc = await page.send("DOM.getDocument")
    node = await page.send("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector=selector)
    await page.send("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(p) for p in paths])


async def _ready(page: Page) -> None:
    await until(lambda: page.evaluate("document.body && document.body.dataset.ready === '1'"),
                "the form started")  # fmt: skip


async def _fill(page: Page, values: dict[str, str], civilian: bool = False) -> None:
    await page.evaluate(
        f"(() => {{ for (const [id, v] of Object.entries({json.dumps(values)}))"
        " document.getElementById(id).value = v;"
        f" document.getElementById('civilian').checked = {json.dumps(civilian)}; }})()"
    )


def _states(page: Page) -> Awaitable[list[str]]:
    return page.evaluate(
        "[...document.querySelectorAll('#status-list li')].map(l => l.dataset.state)"
    )


async def _accredit(w: World, request: bytes) -> None:
    """The organization accredits the request (the library path of `obus org accredit`)."""
    subject, org, public_key, _ = read_accreditation_request(request)
    mandate = w.m.scenario.mandate
    acc = Accreditation(subject, org, Role.OBSERVER,
                        public_key, mandate.not_before_ms, mandate.not_after_ms, 500,
                        mandate.mandate_id)  # fmt: skip
    env = sign_accreditation(acc, w.m.scenario.org_roots[org])
    producer = reliable_producer(w.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(w.topics.registry, env.encode())
    finally:
        await producer.stop()
    await w.sealer.seal()


async def test_offline_form_enrol_queue_reload_deliver_and_verify(
    kafka_bootstrap: str, tmp_path: Path, chromium: str
) -> None:
    w = await _world(kafka_bootstrap, tmp_path)
    photo = _png(tmp_path / "crater.png")
    zone = w.m.scenario.mandate.zones[0]
    lat, lon = (zone.min_lat + zone.max_lat) / 2, (zone.min_lon + zone.max_lon) / 2
    reports = [
        {"category": "shelling", "sub-type": "artillery", "severity": "4", "confidence": "0.9",
         "narrative": "Impacts counted near the bridge.", "place": "Riverford"},
        {"category": "civilian_casualties", "severity": "5", "confidence": "0.7", "killed": "2",
         "injured": "5", "narrative": "Crater photographed.", "place": "Школа №2"},
        {"category": "troop_movement", "severity": "2", "confidence": "0.5",
         "narrative": "Convoi de 12 véhicules vers l'est."},
    ]  # fmt: skip
    async with GatewayServer(w.config()) as server, Browser.launch(chromium) as browser:
        page = await browser.new_page()
        await page.send("Network.enable")
        await _phone(page)
        await page.goto(f"{w.url}/app/")
        await _ready(page)
        first_load = await page.evaluate(
            "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".reduce((n, e) => n + e.transferSize, 0)"
        )
        await until(lambda: page.evaluate("navigator.serviceWorker.ready.then(() => true)"),
                    "the service worker is active")  # fmt: skip

        # Enrol: the mandate file, the organization, the observer id; a key made here.
        await _files(page, "#mandate-file", [w.tmp / "mandate.bin"])
        fingerprint = await until(lambda: page.evaluate("document.getElementById('fingerprint').textContent"),
                                  "the mandate verified")  # fmt: skip
        assert fingerprint == sha256(w.m.scenario.mandate_envelope).hex()
        await page.evaluate(
            f"document.getElementById('org').value = 'un';"
            f" document.getElementById('observer-id').value = {json.dumps(OBSERVER)};"
            " document.getElementById('enrol-button').click()"
        )
        request = await until(lambda: page.evaluate("document.getElementById('request').textContent"),
                              "the accreditation request")  # fmt: skip
        await _accredit(w, request.encode())

        # Offline: three reports filled in and queued on the device.
        await page.send("Network.emulateNetworkConditions", offline=True, latency=0,
                        downloadThroughput=-1, uploadThroughput=-1)  # fmt: skip
        await until(lambda: page.evaluate("!navigator.onLine"), "the page sees it is offline")
        tap_ms: list[float] = []
        for i, values in enumerate(reports):
            await _fill(page, {"zone": zone.id, "lat": f"{lat:.5f}", "lon": f"{lon:.5f}",
                               "precision": "25", **values}, civilian=i == 1)  # fmt: skip
            if i == 1:
                await _files(page, "#photos", [photo])
            if i == 0:
                await _shot(page, "observer-web-form.png")
            await page.evaluate("document.getElementById('report-form').requestSubmit()")
            queued = f"document.querySelectorAll('#status-list li').length === {i + 1}"
            await until(functools.partial(page.evaluate, queued), f"report {i + 1} queued")
            tap_ms.append(await page.evaluate("globalThis.obus.lastQueueMs()"))
        assert await _states(page) == ["queued"] * 3

        # A reload while offline: the service worker serves the form, the outbox is intact.
        waiter = browser.expect("Page.loadEventFired", page.session_id)
        await page.send("Page.reload")
        await asyncio.wait_for(waiter, 30)
        await _ready(page)
        assert await _states(page) == ["queued"] * 3

        # Back online: delivered oldest first, every receipt verified in the page.
        await page.send("Network.emulateNetworkConditions", offline=False, latency=0,
                        downloadThroughput=-1, uploadThroughput=-1)  # fmt: skip
        await until(lambda: page.evaluate(
            "document.querySelectorAll('#status-list li[data-state=delivered] span.ok').length === 3"),
            "three receipts verified in the page")  # fmt: skip
        entries = await page.evaluate(
            "globalThis.obus.store.entries().then(es => es.map(e => ({seq: e.seq, id: e.reportId,"
            " ok: e.receiptOk, where: e.where, env: globalThis.obus.core.b64(e.envelope)})))"
        )
        await until(lambda: server.gateway.store.attachment_count() == 1, "the photo uploaded")
        await _shot(page, "observer-web-status.png")
        console = list(browser.console)

    assert [e["seq"] for e in entries] == [1, 2, 3] and all(e["ok"] for e in entries), console
    envelopes = [base64.b64decode(e["env"]) for e in entries]
    ids = {e["id"] for e in entries}
    photo_ref = Report.decode(Envelope.decode(envelopes[1]).payload).attachments[0]
    assert photo_ref.sha256 == sha256(photo.read_bytes()) and photo_ref.media_type == "image/png"

    # Every node (un, whose topic it is, and osce) stores exactly these three, nothing else.
    for org in ("un", "osce"):
        db = tmp_path / f"{org}.node.db"
        node = build_node(NodeConfig(org, w.bootstrap, db, w.m.scenario.mandate, topics=w.topics,
                                     poll_timeout_ms=200))  # fmt: skip
        task = asyncio.create_task(node.run())
        reader = NodeStore(db, read_only=True)
        try:

            async def stored(reader: NodeStore = reader, task: asyncio.Task[None] = task) -> bool:
                if task.done():
                    await task
                return reader.count_reports() >= 3

            await until(stored, f"the {org} node stores the three reports")
            assert set(reader.report_ids()) == ids and reader.quarantine_rows() == []
            assert sorted(reader.envelopes()) == sorted(envelopes)
        finally:
            reader.close()
            node.stop()
            await task
    print(
        f"\nfirst load: {first_load} bytes over the wire; tap to queued at 390 px:"
        f" {', '.join(f'{t:.0f} ms' for t in tap_ms)}"
    )
