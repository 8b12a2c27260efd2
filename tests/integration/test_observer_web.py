"""The field observers' web form in Debian's headless Chromium, against a real gateway, broker
and organization nodes.

An observer opens the form the gateway serves at /app/ on a 390 px wide viewport, enrols (the
mandate file, an organization, an observer id: a key made and kept in the browser, and an
accreditation request with proof of possession, which the test accredits with the organization
root through ``read_accreditation_request`` and ``sign_accreditation``, as ``obus org accredit
--request`` does); the device goes offline (DevTools network emulation), three reports are
filled in and queued (one with a photo, one restricted to UN and OSCE: sealed in the page to
the keys the gateway lists), the page is reloaded (served by its service worker, nothing lost),
the link comes back, the outbox delivers oldest first, the page verifies every receipt, and
every node (UN and OSCE, the recipients, and EU, which is not one) stores exactly those three
reports; the restricted one is readable at UN and OSCE and stored unreadable at EU.
Screenshots of the form and of the status list are saved under var/test-artifacts/; the bytes
of the first load and the time from tap to queued are printed (measured, not asserted).

The helpers here (enrolment, accreditation, filling the form, the nodes' stores) are shared by
the other browser tests (``test_observer_web_*.py``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import json
import struct
import uuid
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bus.kafka.client import reliable_producer
from bus.model import (
    PAYLOAD_SEALED_REPORT,
    Accreditation,
    EncryptionKey,
    Envelope,
    Report,
    Role,
    SealedReport,
    sha256,
)
from bus.sealed import DecryptionKey
from bus.sign import sign_accreditation, sign_encryption_key
from bus.store.node import NodeStore
from nodes.cli.trust import read_accreditation_request
from nodes.demo.cdp import Browser, Page
from nodes.demo.scenario import demo_key
from nodes.gateway.http import GatewayServer
from nodes.gateway.webapp import DIST
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node
from tests.integration.test_observer_gateway import World, _world

pytestmark = [pytest.mark.kafka]
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
WAIT_S = 90
OBSERVER = "un-obs-web"


@pytest.fixture(scope="module")
def chromium(chromium: str) -> str:
    """Chromium (tests/conftest.py), and the web form built."""
    if not (DIST / "index.html").is_file():
        pytest.fail("the web form is not built: run `make web`")
    return chromium


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


async def _publish(w: World, *records: bytes) -> None:
    """Publish registry records (accreditations, revocations, keys) and seal them."""
    producer = reliable_producer(w.bootstrap)
    await producer.start()
    try:
        for raw in records:
            await producer.send_and_wait(w.topics.registry, raw)
    finally:
        await producer.stop()
    await w.sealer.seal()


async def _accredit(w: World, request: bytes) -> bytes:
    """The organization accredits the request (the library path of `obus org accredit`);
    returns the key id it accredited."""
    subject, org, public_key, _ = read_accreditation_request(request)
    mandate = w.m.scenario.mandate
    acc = Accreditation(subject, org, Role.OBSERVER,
                        public_key, mandate.not_before_ms, mandate.not_after_ms, 500,
                        mandate.mandate_id)  # fmt: skip
    await _publish(w, sign_accreditation(acc, w.m.scenario.org_roots[org]).encode())
    return acc.key_id


async def _encryption_keys(w: World, orgs: tuple[str, ...]) -> dict[str, DecryptionKey]:
    """Each organization publishes an encryption key (``obus org enckey``); their private
    halves, for their nodes."""
    mandate = w.m.scenario.mandate
    keys = {org: DecryptionKey(org, demo_key(f"x25519:{org}:{w.topics.prefix}").seed)
            for org in orgs}  # fmt: skip
    records = []
    for org, k in keys.items():
        ek = EncryptionKey(org, k.public_key, mandate.not_before_ms, mandate.not_after_ms, 1,
                           mandate.mandate_id)  # fmt: skip
        records.append(sign_encryption_key(ek, w.m.scenario.org_roots[org]).encode())
    await _publish(w, *records)
    return keys


async def _open_form(browser: Browser) -> Page:
    """A new tab at phone size, ready for the form."""
    page = await browser.new_page()
    await page.send("Network.enable")
    await _phone(page)
    return page


async def _enrol(page: Page, w: World, observer_id: str, *, takeover: bool = False) -> str:
    """Enrol at the open form (mandate file, organization, observer id; ``takeover``: this id
    reported from another device before); returns the accreditation request's text."""
    await _files(page, "#mandate-file", [w.tmp / "mandate.bin"])
    fingerprint = await until(lambda: page.evaluate("document.getElementById('fingerprint').textContent"),
                              "the mandate verified")  # fmt: skip
    assert fingerprint == sha256(w.m.scenario.mandate_envelope).hex()
    tick = "document.getElementById('takeover').checked = true;" if takeover else ""
    await page.evaluate(
        f"document.getElementById('org').value = 'un';"
        f" document.getElementById('observer-id').value = {json.dumps(observer_id)}; {tick}"
        " document.getElementById('enrol-button').click()"
    )
    request: str = await until(lambda: page.evaluate("document.getElementById('request').textContent"),
                               "the accreditation request")  # fmt: skip
    return request


def _where(w: World) -> dict[str, str]:
    """The position fields: the middle of the mandate's first zone."""
    zone = w.m.scenario.mandate.zones[0]
    lat, lon = (zone.min_lat + zone.max_lat) / 2, (zone.min_lon + zone.max_lon) / 2
    return {"zone": zone.id, "lat": f"{lat:.5f}", "lon": f"{lon:.5f}", "precision": "25"}


async def _submit(page: Page, count_after: int) -> None:
    """Tap "Sign and queue" and wait until the status list has ``count_after`` rows."""
    await page.evaluate("document.getElementById('report-form').requestSubmit()")
    queued = f"document.querySelectorAll('#status-list li').length === {count_after}"
    await until(functools.partial(page.evaluate, queued), f"report {count_after} queued")


async def _entries(page: Page) -> list[dict[str, Any]]:
    """The outbox as the page holds it (order of signing)."""
    got: list[dict[str, Any]] = await page.evaluate(
        "globalThis.obus.store.entries().then(es => es.map(e => ({seq: e.seq, id: e.reportId,"
        " state: e.state, reason: e.reason, ok: e.receiptOk, where: e.where,"
        " sealedFor: e.sealedFor, env: globalThis.obus.core.b64(e.envelope)})))"
    )
    return got


async def _nodes_store(
    w: World,
    orgs: tuple[str, ...],
    envelopes: list[bytes],
    *,
    keys: dict[str, DecryptionKey] | None = None,
    readable: dict[str, set[str]] | None = None,
) -> None:
    """Run each organization's node over the bus; each must store exactly ``envelopes``
    (by report id and digest), quarantine nothing, and read the restricted ones exactly where
    ``readable`` (report id -> organizations) says."""
    want = sorted((_report_id(raw), sha256(raw)) for raw in envelopes)
    for org in orgs:
        db = w.tmp / f"{org}.{uuid.uuid4().hex[:6]}.node.db"
        own = tuple(k for o, k in (keys or {}).items() if o == org)
        node = build_node(NodeConfig(org, w.bootstrap, db, w.m.scenario.mandate, topics=w.topics,
                                     poll_timeout_ms=200, decryption_keys=own))  # fmt: skip
        task = asyncio.create_task(node.run())
        reader = NodeStore(db, read_only=True)
        try:

            async def stored(reader: NodeStore = reader, task: asyncio.Task[None] = task) -> bool:
                if task.done():
                    await task
                return reader.count_reports() + len(reader.quarantine_rows()) >= len(want)

            await until(stored, f"the {org} node stores the reports")
            assert reader.quarantine_rows() == [], org
            assert reader.accepted_digests() == want, org
            for report_id, _recipients, state in reader.sealed_reports():
                can = org in (readable or {}).get(report_id, set())
                assert state == ("readable" if can else "not_recipient"), (org, report_id)
                assert (reader.sealed_content(report_id) is not None) is can
        finally:
            reader.close()
            node.stop()
            await task


def _report_id(raw: bytes) -> str:
    env = Envelope.decode(raw)
    if env.payload_type == PAYLOAD_SEALED_REPORT:
        return SealedReport.decode(env.payload).report_id
    return Report.decode(env.payload).report_id


async def test_offline_form_enrol_queue_reload_deliver_and_verify(
    kafka_bootstrap: str, tmp_path: Path, chromium: str
) -> None:
    w = await _world(kafka_bootstrap, tmp_path)
    keys = await _encryption_keys(w, ("un", "osce", "eu"))
    photo = _png(tmp_path / "crater.png")
    reports = [
        {"category": "shelling", "sub-type": "artillery", "severity": "4", "confidence": "0.9",
         "narrative": "Impacts counted near the bridge.", "place": "Riverford"},
        {"category": "civilian_casualties", "severity": "5", "confidence": "0.7", "killed": "2",
         "injured": "5", "narrative": "Crater photographed.", "place": "Школа №2"},
        {"category": "detention", "severity": "3", "confidence": "0.8",
         "narrative": "Noms des détenus : restreint à l'ONU et à l'OSCE."},
    ]  # fmt: skip
    restricted_to = ["un", "osce"]
    async with GatewayServer(w.config()) as server, Browser.launch(chromium) as browser:
        page = await _open_form(browser)
        await page.goto(f"{w.url}/app/")
        await _ready(page)
        first_load = await page.evaluate(
            "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".reduce((n, e) => n + e.transferSize, 0)"
        )
        await until(lambda: page.evaluate("navigator.serviceWorker.ready.then(() => true)"),
                    "the service worker is active")  # fmt: skip

        # Enrol: the mandate file, the organization, the observer id; a key made here.
        request = await _enrol(page, w, OBSERVER)
        await _accredit(w, request.encode())
        # The recipients' keys (GET /v1/recipients) are fetched while online.
        listed = (
            "[...document.querySelectorAll('#recipients input')].map(i => i.value).sort().join(',')"
        )
        await until(lambda: page.evaluate(f"{listed} === 'eu,osce,un'"), "the recipients listed")

        # Offline: three reports filled in and queued on the device.
        await page.send("Network.emulateNetworkConditions", offline=True, latency=0,
                        downloadThroughput=-1, uploadThroughput=-1)  # fmt: skip
        await until(lambda: page.evaluate("!navigator.onLine"), "the page sees it is offline")
        tap_ms: list[float] = []
        for i, values in enumerate(reports):
            await _fill(page, {**_where(w), **values}, civilian=i == 1)
            if i == 1:
                await _files(page, "#photos", [photo])
            if i == 2:
                await page.evaluate(
                    f"for (const org of {json.dumps(restricted_to)})"
                    " document.querySelector(`#recipients input[value=${org}]`).checked = true"
                )
            if i == 0:
                await _shot(page, "observer-web-form.png")
            await _submit(page, i + 1)
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
        entries = await _entries(page)
        await until(lambda: server.gateway.store.attachment_count() == 1, "the photo uploaded")
        await _shot(page, "observer-web-status.png")
        console = list(browser.console)

    assert [e["seq"] for e in entries] == [1, 2, 3] and all(e["ok"] for e in entries), console
    assert [e["sealedFor"] for e in entries] == [[], [], restricted_to]
    envelopes = [base64.b64decode(e["env"]) for e in entries]
    photo_ref = Report.decode(Envelope.decode(envelopes[1]).payload).attachments[0]
    assert photo_ref.sha256 == sha256(photo.read_bytes()) and photo_ref.media_type == "image/png"
    sealed = Envelope.decode(envelopes[2])
    assert sealed.payload_type == PAYLOAD_SEALED_REPORT
    assert [r.org for r in SealedReport.decode(sealed.payload).recipients] == restricted_to

    # Every node stores exactly these three, nothing else; the restricted one is readable at
    # its two recipients only (EU has a key too, but the report was not sealed to it).
    await _nodes_store(w, ("un", "osce", "eu"), envelopes, keys=keys,
                       readable={entries[2]["id"]: set(restricted_to)})  # fmt: skip
    print(
        f"\nfirst load: {first_load} bytes over the wire; tap to queued at 390 px:"
        f" {', '.join(f'{t:.0f} ms' for t in tap_ms)}"
    )
