"""Recovery through the observer's CLI library (not the web form), on a real broker with a real
gateway and organization nodes running their sealers: a device clock six minutes fast, and a
lost device.

Silenced observer: the clock check against ``GET /v1/time`` says the nodes would refuse a
report signed now; signed anyway, the gateway refuses it ``clock_skew`` and the outbox goes
back before it (the report queued after it is held, not sent). Once the clock is right the
refused report is re-signed at the same seq (same id) and the held one after it; both are
accepted, and so is a later one. Lost device: a new key for the same observer id, the old one
revoked after the report it delivered and the new one accredited (both sealed), the new device
continues the chain from the gateway's signed head; its reports are accepted. In both, four
organizations' nodes run their sealers (the mandate's k = 4), UN's gateway judges with UN's
node's final store, and every node's final store ends with a final verdict ``accepted`` on
exactly the observer's delivered reports, at the positions their receipts name, and on nothing
else of the topic.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bus.model import Accreditation, Envelope, Report, Revocation, Role, sha256
from bus.receipt import verify_receipt
from bus.sign import sign_accreditation, sign_revocation
from nodes.gateway.http import GatewayServer
from nodes.observer.client import GatewayClient
from nodes.observer.delivery import Backoff, sync
from nodes.observer.device import (
    Home,
    clock_check,
    continue_chain,
    init_observer,
    now_ms,
    receipt_keyring,
    resign_held,
    submit_file,
)
from nodes.observer.outbox import DELIVERED, QUEUED, REJECTED, Entry, Outbox
from tests.integration.test_observer_gateway import PASSPHRASE, _report_file
from tests.integration.test_observer_inclusion import (
    SealedWorld,
    final_verdicts,
    publish_trust,
    sealed_world,
    until_judged,
)

pytestmark = [pytest.mark.kafka]
SKEW_MS = 6 * 60 * 1000


async def _sync(w: SealedWorld, home: Home) -> tuple[int, int, int]:
    box = Outbox(home.outbox)
    try:
        async with GatewayClient(w.url, timeout_s=15) as client:
            r = await sync(home, box, client, backoff=Backoff(0.05, 0.5), max_seconds=60)
        return r.delivered, r.rejected, r.held
    finally:
        box.close()


def _reports(raws: list[bytes]) -> list[Report]:
    return [Report.decode(Envelope.decode(raw).payload) for raw in raws]


async def _every_node_accepts(w: SealedWorld, home: Home, entries: list[Entry]) -> None:
    """Once sealed, every sealing node's final store holds a final verdict ``accepted`` on
    exactly these delivered reports, at the positions their receipts name (verified with the
    node accreditation ``home``'s outbox keeps), and on nothing else of the topic."""
    box = Outbox(home.outbox, read_only=True)
    try:
        ring = receipt_keyring(home, box, at_ms=now_ms())
    finally:
        box.close()
    receipts = [verify_receipt(e.receipt or b"", ring, envelope=e.envelope) for e in entries]
    topic = w.topics.reports("un")
    await until_judged(w, topic, len(entries))
    want = sorted((r.partition, r.offset, "accepted", "", r.report_id) for r in receipts)
    for org in w.sealing:
        assert final_verdicts(w, org, topic) == want, org


async def test_a_clock_six_minutes_fast_then_fixed_leaves_the_observer_heard(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with sealed_world(kafka_bootstrap, tmp_path) as w:
        await _silenced_then_heard(w, _report_file(tmp_path))


async def _silenced_then_heard(w: SealedWorld, path: Path) -> None:
    async with GatewayServer(w.config()):
        async with GatewayClient(w.url) as client:
            sent = now_ms() + SKEW_MS
            doc = client.json(await client.time())
            check = clock_check(doc, sent_ms=sent, received_ms=now_ms() + SKEW_MS)
        assert check.refused, check.describe()  # warned before signing
        box = Outbox(w.home.outbox)
        try:  # signed anyway (--force): the first report, and one queued after it
            first = submit_file(w.home, box, w.observer_key, path, at_ms=now_ms() + SKEW_MS)
            second = submit_file(w.home, box, w.observer_key, path, at_ms=now_ms() + SKEW_MS)
        finally:
            box.close()
        assert await _sync(w, w.home) == (0, 1, 1)  # refused, and the next one held
        box = Outbox(w.home.outbox)
        try:
            refused = box.get(first.seq)
            assert refused is not None and (refused.state, refused.reason) == (
                REJECTED, "clock_skew",
            )  # fmt: skip
            assert box.head() is None and [e.seq for e in box.held()] == [second.seq]
            # the clock is set right: the same report at the same seq, then the held one
            done = resign_held(w.home, box, w.observer_key, at_ms=now_ms(),
                               refused=[first.report_id])  # fmt: skip
            assert [(e.seq, e.report_id) for e in done] == [
                (1, first.report_id), (2, second.report_id),
            ]  # fmt: skip
        finally:
            box.close()
        assert await _sync(w, w.home) == (2, 0, 0)
        box = Outbox(w.home.outbox)
        try:
            submit_file(w.home, box, w.observer_key, path, at_ms=now_ms())
        finally:
            box.close()
        assert await _sync(w, w.home) == (1, 0, 0)
        box = Outbox(w.home.outbox, read_only=True)
        try:
            entries = box.entries()
        finally:
            box.close()
    assert [(e.seq, e.state) for e in entries] == [(1, DELIVERED), (2, DELIVERED), (3, DELIVERED)]
    assert [e.report_id for e in entries[:2]] == [first.report_id, second.report_id]
    await _every_node_accepts(w, w.home, entries)


async def test_a_lost_device_continues_the_chain_from_the_served_head(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with sealed_world(kafka_bootstrap, tmp_path) as w:
        await _lost_device_continues(w, _report_file(tmp_path), tmp_path)


async def _lost_device_continues(w: SealedWorld, path: Path, tmp_path: Path) -> None:
    async with GatewayServer(w.config()):
        box = Outbox(w.home.outbox)
        try:
            submit_file(w.home, box, w.observer_key, path, at_ms=now_ms())
        finally:
            box.close()
        assert (await _sync(w, w.home))[0] == 1
        old = Outbox(w.home.outbox, read_only=True)
        try:
            [delivered] = old.entries()
        finally:
            old.close()

        # The device is lost. A new one: a new key for the same observer id.
        home = Home(tmp_path / "new-device")
        key = init_observer(
            home, observer_id="un-obs-field", org="un",
            mandate_envelope=w.m.scenario.mandate_envelope, gateway=w.url,
            passphrase=PASSPHRASE, at_ms=now_ms(), scrypt_n=2**12,
        )  # fmt: skip
        mandate = w.m.scenario.mandate
        roots = w.m.scenario.org_roots
        rev = Revocation("un", w.observer_key.key_id, 1, now_ms(), "device lost", 1,
                         mandate.mandate_id)  # fmt: skip
        acc = Accreditation("un-obs-field", "un", Role.OBSERVER, key.public_key,
                            mandate.not_before_ms, mandate.not_after_ms, 2, mandate.mandate_id)  # fmt: skip
        await publish_trust(w, sign_revocation(rev, roots["un"]).encode(),
                            sign_accreditation(acc, roots["un"]).encode())  # fmt: skip
        async with GatewayClient(w.url) as client:
            node = (await client.node_accreditation()).body
            head_doc = client.json(await client.head("un-obs-field"))
        box = Outbox(home.outbox)
        try:
            head = continue_chain(home, box, head_doc, node, at_ms=now_ms())
            assert head is not None and (head.seq, head.digest) == (1, delivered.digest)
            for _ in range(2):
                submit_file(home, box, key, path, at_ms=now_ms())
        finally:
            box.close()
        deadline = time.monotonic() + 30
        while True:  # the gateway refreshes its trust state each second
            delivered_now, rejected, _ = await _sync(w, home)
            if delivered_now == 2 or time.monotonic() > deadline:
                break
        assert (delivered_now, rejected) == (2, 0)
        box = Outbox(home.outbox, read_only=True)
        try:
            later = box.entries()
            assert box.counts()[QUEUED] == 0
        finally:
            box.close()
    raws = [delivered.envelope, *(e.envelope for e in later)]
    reports = _reports(raws)
    assert [r.seq for r in reports] == [1, 2, 3]
    assert reports[1].prev_digest == sha256(raws[0]) and reports[2].prev_digest == sha256(raws[1])
    signers = [Envelope.decode(raw).signatures[0].key_id for raw in raws]
    assert signers == [w.observer_key.key_id, key.key_id, key.key_id]
    await _every_node_accepts(w, home, [delivered, *later])
