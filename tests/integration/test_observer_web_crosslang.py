"""The web form's bytes are the Python verifier's bytes: reports encoded and signed in Debian's
headless Chromium by the form's own code (nodes/observer_web/src/core.ts, served by the
gateway's /app/ route) are accepted by :func:`bus.verify.verify_report` and
:func:`bus.sealed.verify_sealed_report` with identical bytes, and every field the form can set
comes back as it was set.

No broker: the page is served by :func:`nodes.gateway.webapp.add_webapp` alone, and the key
ring is built in memory from a mission's registry records plus an accreditation of the
browser's key (signed by the organization root, as ``obus org accredit`` signs it).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from bus.crypto import verify_pae
from bus.model import (
    Accreditation,
    EncryptionKey,
    Envelope,
    Report,
    Role,
    encode,
    sha256,
)
from bus.sealed import DecryptionKey, Readability, verify_sealed_report
from bus.sign import sign_accreditation, sign_encryption_key
from bus.verify import verify_report
from nodes.demo.cdp import Browser
from nodes.gateway.webapp import DIST, add_webapp
from tests.kafka_broker import free_ports
from tests.mission import make_mission

N_REPORTS = 1000
BATCH = 100
SEALED_EVERY = 10  # every tenth report is restricted to two organizations

# Runs in the page: N drafts with every field the form sets drawn at random (seeded), signed as
# one chain by a fresh WebCrypto key; restricted ones are sealed to the given key records.
_GENERATE = r"""
(async (args) => {
  const { core } = globalThis.obus;
  const st = globalThis.__crosslang ??= {};
  if (st.key === undefined) {
    st.key = await core.generateKey();
    st.head = null;
    st.seed = 12345;
    const { mandate } = await core.verifyMandate(core.unb64(args.mandate), args.now);
    st.mandate = mandate;
    st.recipients = [];
    for (const r of args.recipients) st.recipients.push(await core.verifyEncryptionKey(core.unb64(r), mandate));
  }
  const rnd = () => { st.seed = (st.seed * 1103515245 + 12345) % 2147483648; return st.seed / 2147483648; };
  const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
  const pick = (xs) => xs[int(0, xs.length - 1)];
  const alphabet = ["a", "é", "Ж", "中", "🙂", " ", "\n", "'", "\"", "z", "0", "ß"];
  const text = (n) => Array.from({ length: n }, () => pick(alphabet)).join("");
  const out = [];
  for (let i = 0; i < args.count; i++) {
    const zone = pick(st.mandate.zones);
    const d = {
      zone: zone.id,
      observedAtMs: args.now - int(0, 86400000),
      lat: pick([zone.minLat, zone.maxLat, zone.minLat + rnd() * (zone.maxLat - zone.minLat)]),
      lon: pick([zone.minLon, zone.maxLon, zone.minLon + rnd() * (zone.maxLon - zone.minLon)]),
      precisionM: pick([0, 1, 15, 999, 1000000, int(0, 1000000)]),
      place: pick(["", "Riverford", text(int(0, 200))]),
      category: pick(core.rules.categories).value,
      subType: pick(["", "artillery", text(int(0, 64))]),
      severity: int(1, 5),
      confidence: pick([0, 1, 0.5, rnd()]),
      killed: pick([0, int(0, 1000000)]),
      injured: pick([0, int(0, 50)]),
      missing: pick([0, int(0, 50)]),
      civilian: rnd() < 0.5,
      narrative: pick(["", text(int(0, 300)), text(int(0, 3000))]),
      attachments: Array.from({ length: pick([0, 0, 1, 3]) }, () => ({
        sha256: crypto.getRandomValues(new Uint8Array(32)),
        size: pick([0, int(1, 32 * 1024 * 1024), 2 ** 40]),
        mediaType: pick(["image/jpeg", "image/png", "application/pdf"]),
        name: pick(["", "photo.jpg", text(int(0, 255))]),
      })),
      corrects: pick(["", "", core.uuid7(args.now - 5000)]),
    };
    const sealed = (args.offset + i) % args.sealedEvery === 0;
    const signedAt = args.now - int(0, 60000);
    const s = await core.signReport(st.key, args.who, d, core.uuid7(signedAt), signedAt, st.head,
                                    sealed ? st.recipients : []);
    st.head = { seq: s.seq, digest: s.digest };
    out.push({
      envelope: core.b64(s.envelope), reportId: s.reportId, seq: s.seq, signedAt, sealed,
      draft: { ...d, attachments: d.attachments.map((a) => ({ ...a, sha256: core.hex(a.sha256) })) },
    });
  }
  return { publicKey: core.hex(st.key.publicKey), reports: out };
})
"""


@asynccontextmanager
async def serving_form() -> AsyncIterator[str]:
    """The form at /app/ on 127.0.0.1, served by the gateway's own route."""
    if not (DIST / "index.html").is_file():
        pytest.fail("the web form is not built: run `make web`")
    app = web.Application()
    add_webapp(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    (port,) = free_ports(1)
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/app/"
    finally:
        await runner.cleanup()


def _check_fields(report: Report, draft: dict[str, Any], who: dict[str, str]) -> None:
    """Every field the form sets, as it set it."""
    loc, cas = report.location, report.casualties
    got = {
        "zone": report.zone, "observedAtMs": report.observed_at_ms, "lat": loc.lat,
        "lon": loc.lon, "precisionM": loc.precision_m, "place": loc.place,
        "category": int(report.category), "subType": report.sub_type,
        "severity": report.severity, "confidence": report.confidence, "killed": cas.killed,
        "injured": cas.injured, "missing": cas.missing, "civilian": cas.civilian,
        "narrative": report.narrative, "corrects": report.corrects,
        "attachments": [
            {"sha256": a.sha256.hex(), "size": a.size, "mediaType": a.media_type, "name": a.name}
            for a in report.attachments
        ],
    }  # fmt: skip
    assert got == draft
    assert (report.observer_id, report.org, report.mandate_id) == (
        who["observerId"], who["org"], who["mandateId"]
    )  # fmt: skip


async def test_reports_signed_in_the_browser_verify_in_python_byte_for_byte(
    chromium: str,
) -> None:
    now = time.time_ns() // 1_000_000
    m = make_mission(1, now_ms=now)
    mandate = m.scenario.mandate
    who = {"observerId": "un-obs-web", "org": "un", "mandateId": mandate.mandate_id}
    dec = {org: DecryptionKey.generate(org) for org in ("osce", "eu", "nato")}
    enc_records = []
    for org in ("osce", "eu"):
        ek = EncryptionKey(org, dec[org].public_key, mandate.not_before_ms,
                           mandate.not_after_ms, 1, mandate.mandate_id)  # fmt: skip
        env = sign_encryption_key(ek, m.scenario.org_roots[org])
        m.apply(env)
        enc_records.append(base64.b64encode(env.encode()).decode())
    args = {
        "mandate": base64.b64encode(m.scenario.mandate_envelope).decode(),
        "recipients": enc_records,
        "who": who,
        "now": now,
        "sealedEvery": SEALED_EVERY,
    }
    reports: list[dict[str, Any]] = []
    public_key = b""
    async with serving_form() as url, Browser.launch(chromium) as browser:
        page = await browser.new_page()
        await page.goto(url)
        assert await page.evaluate("typeof globalThis.obus.core.signReport") == "function"
        for offset in range(0, N_REPORTS, BATCH):
            batch = {**args, "count": BATCH, "offset": offset}
            out = await page.evaluate(f"({_GENERATE})({json.dumps(batch)})")
            reports += out["reports"]
            public_key = bytes.fromhex(out["publicKey"])

    acc = Accreditation("un-obs-web", "un", Role.OBSERVER, public_key, mandate.not_before_ms,
                        mandate.not_after_ms, 1000, mandate.mandate_id)  # fmt: skip
    m.apply(sign_accreditation(acc, m.scenario.org_roots["un"]))
    keys = {dec["osce"].key_id: dec["osce"]}  # the osce node's view: it can read its copies
    prev = b""
    assert len(reports) == N_REPORTS
    for i, r in enumerate(reports, start=1):
        raw = base64.b64decode(r["envelope"])
        env = Envelope.decode(raw)
        assert env.encode() == raw  # canonical: Python writes the very same bytes
        verify_pae(public_key, env.payload_type, env.payload, env.signatures[0].sig)
        assert r["seq"] == i
        if r["sealed"]:
            vs = verify_sealed_report(raw, expected_org="un", keyring=m.keyring,
                                      reference_ms=now, keys=keys)  # fmt: skip
            assert vs.sealed.recipient_orgs == ("osce", "eu")
            assert vs.readability is Readability.READABLE, vs.detail
            assert vs.report is not None
            inner = vs.report
            assert encode(inner) == vs.content
            assert (vs.sealed.seq, vs.sealed.prev_digest) == (i, prev)
        else:
            verify_report(raw, expected_org="un", keyring=m.keyring, reference_ms=now)
            inner = Report.decode(env.payload)
            assert encode(inner) == env.payload
            assert (inner.seq, inner.prev_digest) == (i, prev)
        assert inner.report_id == r["reportId"] and inner.signed_at_ms == r["signedAt"]
        _check_fields(inner, r["draft"], who)
        prev = sha256(raw)
    sealed = sum(r["sealed"] for r in reports)
    print(f"\n{N_REPORTS} browser-signed reports verified byte for byte ({sealed} restricted)")
