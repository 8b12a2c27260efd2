"""The gateway judges corrections and retractions as every node will (bus.verify's amendment
rule), against the reports it published, so an observer learns at submission.

No broker: the gateway holds a sealed trust state (root mandate allowing schema version 3) and
its Kafka edge is replaced by an in-memory topic that confirms each record at the next offset;
everything else (verification, chain book, store, receipts) is the gateway's own.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.errors import Reason
from bus.model import Envelope, Report
from bus.sign import sign_mandate
from nodes.gateway.kafka import Position
from nodes.gateway.service import Gateway, GatewayConfig, Outcome
from nodes.gateway.store import GatewayStore
from tests.mission import Mission, live_mission
from tests.sealed_log import TOPICS, SealedLog

REASON = "wrong village: the impacts were in Eastbrook"


class _Topic:
    """The report topic as the gateway's Kafka edge sees it: each record confirmed in turn."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    async def publish_report(
        self, envelope: bytes, *, report_id: str, observer_id: str
    ) -> Position:
        del report_id, observer_id
        self.records.append(envelope)
        return Position(0, len(self.records) - 1, time.time_ns() // 1_000_000)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Mission, Gateway, _Topic]]:
    m = live_mission(2)
    sc = m.scenario
    root = dataclasses.replace(sc.mandate, max_schema_version=3)
    log = SealedLog(root)
    log.put(TOPICS.mandate, sign_mandate(root, list(sc.org_roots.values())[:4]).encode())
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        log.put(TOPICS.registry, raw)
    log.seal(m.now - 60_000)
    gw = Gateway(
        GatewayConfig(
            org="un", bootstrap="127.0.0.1:9", db_path=tmp_path / "gw.db", mandate=root,
            node_key=sc.node_keys["un"], topics=TOPICS,
        )
    )  # fmt: skip
    topic = _Topic()
    gw.kafka.publish_report = topic.publish_report  # type: ignore[method-assign]
    try:
        for ref, values in log.partitions.items():
            if gw.trust.covers(ref[0]):
                gw.trust.offer_records(ref, 0, values)
        gw.trust.advance(log.seals)
        # what start() does once a final seal is judged, without a broker
        gw._check_node_key()
        gw._recovered = True
        assert gw.ready, gw.not_ready().body
        yield m, gw, topic
    finally:
        gw.store.close()


def _id(raw: bytes) -> str:
    return Report.decode(Envelope.decode(raw).payload).report_id


async def _published(gw: Gateway, raw: bytes) -> str:
    reply = await gw.submit(raw)
    assert reply.outcome is Outcome.PUBLISHED, reply.body
    return _id(raw)


async def _refused(gw: Gateway, m: Mission, reason: Reason, **changes: object) -> None:
    """un-obs-1's next report with ``changes`` is refused for ``reason``; nothing published,
    and the observer goes back to the chain position before it (as its outbox does)."""
    signer = m.signer("un", 1)
    head = signer.head
    published = gw.store.counts()["published"]
    reply = await gw.submit(m.next_report("un", 1, **changes))
    signer.head = head
    assert reply.outcome is Outcome.REFUSED, reply.body
    assert reply.reason is reason and json.loads(reply.body)["reason"] == reason.value
    assert gw.store.counts()["published"] == published  # nothing published, no receipt


async def test_a_correction_of_the_latest_version_is_published(
    world: tuple[Mission, Gateway, _Topic],
) -> None:
    m, gw, topic = world
    a = await _published(gw, m.next_report("un", 1))
    b = await _published(gw, m.next_report("un", 1, corrects=a))
    c = await _published(gw, m.next_report("un", 1, corrects=b))  # a correction of a correction
    await _published(gw, m.next_report("un", 1, retracts=c, retraction_reason=REASON))
    assert len(topic.records) == 4


async def test_a_target_never_published_here_is_amend_target_missing(
    world: tuple[Mission, Gateway, _Topic],
) -> None:
    m, gw, _ = world
    unsent = m.draft("un", 1).report_id
    await _refused(gw, m, Reason.AMEND_TARGET_MISSING, corrects=unsent)


async def test_another_organizations_report_is_refused_as_missing_here(
    world: tuple[Mission, Gateway, _Topic],
) -> None:
    """The gateway holds its own organization's chains only: an OSCE report it never saw is
    amend_target_missing here (the nodes, which hold every chain, say amend_other_org)."""
    m, gw, _ = world
    osce = _id(m.next_report("osce", 1))
    await _refused(gw, m, Reason.AMEND_TARGET_MISSING, corrects=osce)


async def test_another_observers_report_is_amend_other_observer(
    world: tuple[Mission, Gateway, _Topic],
) -> None:
    m, gw, _ = world
    theirs = await _published(gw, m.next_report("un", 2))
    await _refused(gw, m, Reason.AMEND_OTHER_OBSERVER, corrects=theirs)


async def test_a_superseded_version_is_amend_superseded(
    world: tuple[Mission, Gateway, _Topic],
) -> None:
    m, gw, _ = world
    a = await _published(gw, m.next_report("un", 1))
    await _published(gw, m.next_report("un", 1, corrects=a))
    await _refused(gw, m, Reason.AMEND_SUPERSEDED, corrects=a)
    await _refused(gw, m, Reason.AMEND_SUPERSEDED, retracts=a, retraction_reason=REASON)


async def test_retractions_are_final(world: tuple[Mission, Gateway, _Topic]) -> None:
    m, gw, _ = world
    a = await _published(gw, m.next_report("un", 1))
    r = await _published(gw, m.next_report("un", 1, retracts=a, retraction_reason=REASON))
    await _refused(gw, m, Reason.AMEND_TARGET_RETRACTED, corrects=a)
    await _refused(gw, m, Reason.AMEND_TARGET_RETRACTED, retracts=a, retraction_reason=REASON)
    await _refused(gw, m, Reason.CORRECTION_OF_RETRACTION, corrects=r)
    await _refused(
        gw, m, Reason.RETRACTION_OF_RETRACTION, retracts=r, retraction_reason="changed my mind"
    )


async def test_a_refused_amendment_leaves_the_chain_where_it_was(
    world: tuple[Mission, Gateway, _Topic],
) -> None:
    """Refused, the amendment does not extend the chain: the observer signs again at that seq
    (here, the same position re-signed as a plain report) and it is published."""
    m, gw, _ = world
    await _published(gw, m.next_report("un", 1))
    await _refused(gw, m, Reason.AMEND_TARGET_MISSING, corrects=m.draft().report_id)
    await _published(gw, m.next_report("un", 1))
    stored = gw.store.heads_of(m.observer("un", 1)[0])
    assert stored is not None and stored.seq == 2


async def test_links_of_a_file_from_before_are_read_from_its_envelopes(
    world: tuple[Mission, Gateway, _Topic], tmp_path: Path
) -> None:
    m, gw, _ = world
    a = await _published(gw, m.next_report("un", 1))
    b = await _published(gw, m.next_report("un", 1, corrects=a))
    gw.store.close()
    with sqlite3.connect(tmp_path / "gw.db") as db:  # a file written before links were kept
        db.execute("DELETE FROM amend_links")
    reopened = GatewayStore(tmp_path / "gw.db")
    try:
        target = reopened.amendable("un", a)
        latest = reopened.amendable("un", b)
    finally:
        reopened.close()
        gw.store = GatewayStore(tmp_path / "gw.db")  # for the fixture to close
    assert target is not None and (target.observer_id, target.corrected_by) == ("un-obs-1", b)
    assert latest is not None and (latest.corrected_by, latest.retracted_by) == ("", "")
