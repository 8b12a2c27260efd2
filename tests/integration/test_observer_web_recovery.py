"""Recovery in the web form, in Debian's headless Chromium against a real gateway, broker and
organization nodes: a lost device, and a device clock six minutes fast.

Lost device: an observer enrols on one device (one browser profile) and delivers a report; the
device is lost (its browser is closed and its profile deleted). On a new device (a new profile)
the observer enrols again under the same observer id, saying that this id reported before: a
new key and a new accreditation request. A report written before the organization acts is
queued but not sent. The organization revokes the old key after the report it delivered
(``last_valid_seq`` 1) and accredits the new one; the form fetches the observer's head from the
gateway, checks the node key's signature on it (a forged head is refused), signs the queued
report again at seq 2 after that head, and every later report follows. Every node accepts the
three reports, two of them signed by the new key.

Clock: the page's clock runs six minutes ahead of the gateway's (an init script moves
``Date.now``). The form warns before signing and queues nothing; when the observer signs anyway
the gateway refuses the report as ``clock_skew`` and the outbox goes back before it; once the
clock is set right, "fix and sign again" signs the report at the same seq and it is accepted,
as is the next one. Every node stores exactly the two accepted reports: the observer is not
silenced.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from bus.model import Envelope, Report, Revocation, sha256
from bus.sign import sign_revocation
from nodes.demo.cdp import Browser, Page
from nodes.gateway.http import GatewayServer
from tests.integration.test_observer_gateway import _world
from tests.integration.test_observer_web import (
    _accredit,
    _enrol,
    _entries,
    _fill,
    _nodes_store,
    _open_form,
    _publish,
    _ready,
    _states,
    _submit,
    _where,
    chromium,
    until,
)

pytestmark = [pytest.mark.kafka]
__all__ = ["chromium"]  # the fixture, shared with test_observer_web

SKEW_MS = 6 * 60 * 1000
# Runs before the form's scripts on every load: the device clock, moved by __skewMs.
CLOCK_SCRIPT = """
(() => {
  const real = Date.now.bind(Date);
  globalThis.__skewMs = 0;
  Date.now = () => real() + globalThis.__skewMs;
})();
"""


def _observed(minutes_ago: int) -> str:
    """A datetime-local value in UTC (the pages here run with the UTC time zone)."""
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)
    return at.strftime("%Y-%m-%dT%H:%M:%S")


async def _delivered(page: Page, n: int) -> None:
    check = (
        f"document.querySelectorAll('#status-list li[data-state=delivered] span.ok').length === {n}"
    )
    await until(lambda: page.evaluate(check), f"{n} receipts verified in the page")


async def test_new_device_continues_the_chain_after_the_gateway_signed_head(
    kafka_bootstrap: str, tmp_path: Path, chromium: str
) -> None:
    observer = "un-obs-lost"
    w = await _world(kafka_bootstrap, tmp_path)
    first = {**_where(w), "category": "armed_clash", "severity": "3", "confidence": "0.6",
             "narrative": "Small-arms fire heard at dusk."}  # fmt: skip
    async with GatewayServer(w.config()):
        # The first device: enrolled, accredited, one report delivered.
        async with Browser.launch(chromium) as old_browser:
            page = await _open_form(old_browser)
            await page.goto(f"{w.url}/app/")
            await _ready(page)
            old_key_id = await _accredit(w, (await _enrol(page, w, observer)).encode())
            await _fill(page, first)
            await _submit(page, 1)
            await _delivered(page, 1)
            [old] = await _entries(page)
        # The device is lost: its browser and profile are gone. A new device, a new key.
        async with Browser.launch(chromium) as browser:
            page = await _open_form(browser)
            await page.goto(f"{w.url}/app/")
            await _ready(page)
            request = await _enrol(page, w, observer, takeover=True)
            assert json.loads(request)["key_id"] != old_key_id.hex()
            await _fill(page, {**first, "category": "shelling", "narrative": "From the new phone."})
            await _submit(page, 1)
            # Not accredited yet: queued, not sent (the gateway answers unknown_key, retried).
            await until(lambda: page.evaluate(
                "globalThis.obus.store.entries().then(es => es[0].lastError.includes('unknown_key'))"),
                "the gateway does not know the new key yet")  # fmt: skip
            assert await _states(page) == ["queued"]

            # The head the gateway serves is checked: a head whose fields were changed after
            # signing is refused with a reason, never continued from.
            forged = await page.evaluate(
                f"fetch('/v1/observers/{observer}/head').then(r => r.json()).then(async d => {{"
                " const {core, store} = globalThis.obus;"
                " const profile = await store.getMeta('profile');"
                " const {mandate} = await core.verifyMandate(profile.mandate, Date.now());"
                " const node = await core.verifyNodeAccreditation(await store.getMeta('node'),"
                "   mandate, 'un');"
                " const good = await core.verifyHead(d, node, profile);"
                " const bad = await core.verifyHead({...d, seq: d.seq + 1}, node, profile)"
                "   .then(() => 'accepted', e => e.reason);"
                " return {seq: good.seq, bad}; })"
            )
            assert forged == {"seq": 1, "bad": "bad_signature"}

            # The organization revokes the lost key after its one report and accredits the
            # new one; the form continues the chain from the gateway's head.
            mandate = w.m.scenario.mandate
            rev = Revocation("un", old_key_id, 1, w.m.now, "device lost", 1, mandate.mandate_id)
            await _publish(w, sign_revocation(rev, w.m.scenario.org_roots["un"]).encode())
            await _accredit(w, request.encode())
            await page.evaluate("globalThis.obus.deliver()")
            await _delivered(page, 1)
            await until(lambda: page.evaluate("!document.getElementById('chain-base').hidden"),
                        "the page shows where the chain continues")  # fmt: skip
            await _fill(page, {**first, "category": "troop_movement", "narrative": "Later."})
            await _submit(page, 2)
            await _delivered(page, 2)
            entries = await _entries(page)
            console = list(browser.console)

    assert [e["seq"] for e in entries] == [2, 3] and all(e["ok"] for e in entries), console
    envelopes = [base64.b64decode(e["env"]) for e in (old, *entries)]
    reports = [Report.decode(Envelope.decode(raw).payload) for raw in envelopes]
    assert reports[1].prev_digest == sha256(envelopes[0])
    assert reports[2].prev_digest == sha256(envelopes[1])
    signers = [Envelope.decode(raw).signatures[0].key_id for raw in envelopes]
    assert signers[0] == old_key_id and signers[1] == signers[2] != old_key_id
    await _nodes_store(w, ("un", "osce"), envelopes)


async def test_clock_six_minutes_fast_warns_then_the_same_seq_is_accepted(
    kafka_bootstrap: str, tmp_path: Path, chromium: str
) -> None:
    w = await _world(kafka_bootstrap, tmp_path)
    report = {**_where(w), "category": "ceasefire_violation", "severity": "4",
              "confidence": "0.8", "narrative": "Mortar rounds after the ceasefire hour.",
              "observed-at": _observed(30)}  # fmt: skip
    async with GatewayServer(w.config()), Browser.launch(chromium) as browser:
        page = await _open_form(browser)
        await page.send("Emulation.setTimezoneOverride", timezoneId="UTC")
        await page.send("Page.addScriptToEvaluateOnNewDocument", source=CLOCK_SCRIPT)
        await page.goto(f"{w.url}/app/")
        await _ready(page)
        await page.evaluate(f"globalThis.__skewMs = {SKEW_MS}")
        await _accredit(w, (await _enrol(page, w, "un-obs-clock")).encode())
        await until(lambda: page.evaluate("!document.getElementById('clock').hidden"),
                    "the page warns that the clock is ahead")  # fmt: skip

        # Before signing: a warning, nothing queued.
        await _fill(page, report)
        await page.evaluate("document.getElementById('report-form').requestSubmit()")
        await until(lambda: page.evaluate("!document.getElementById('clock-box').hidden"),
                    "the clock warning before signing")  # fmt: skip
        warning = await page.evaluate("document.getElementById('clock-refuse').textContent")
        assert "clock_skew" in warning
        assert await _states(page) == []
        assert await page.evaluate("globalThis.obus.store.entries().then(es => es.length)") == 0

        # Signed anyway: the gateway refuses it as clock_skew; the chain goes back before it.
        await page.evaluate("document.getElementById('clock-confirm').click()")
        await until(lambda: page.evaluate(
            "document.querySelector('#status-list li[data-state=refused]') !== null"),
            "the report refused")  # fmt: skip
        [refused] = await _entries(page)
        assert (refused["seq"], refused["reason"]) == (1, "clock_skew")
        assert await page.evaluate("globalThis.obus.store.head()") is None

        # The clock is set right: fix and sign again, at the same seq, accepted; then the next.
        await page.evaluate("globalThis.__skewMs = 0")
        await page.evaluate(
            "document.querySelector('#status-list li[data-state=refused] button').click()"
        )
        assert (
            await page.evaluate("document.getElementById('narrative').value") == report["narrative"]
        )
        await _submit(page, 2)
        await _delivered(page, 1)
        assert await page.evaluate("document.getElementById('clock-box').hidden")
        await _fill(page, {**report, "narrative": "Quiet since noon.", "observed-at": _observed(5)})
        await _submit(page, 3)
        await _delivered(page, 2)
        entries = await _entries(page)
        console = list(browser.console)

    accepted = [e for e in entries if e["state"] == "delivered"]
    assert [e["seq"] for e in accepted] == [1, 2] and all(e["ok"] for e in accepted), console
    assert [e["state"] for e in entries] == ["refused", "delivered", "delivered"]
    envelopes = [base64.b64decode(e["env"]) for e in accepted]
    assert Report.decode(Envelope.decode(envelopes[0]).payload).narrative == report["narrative"]
    await _nodes_store(w, ("un", "osce"), envelopes)
