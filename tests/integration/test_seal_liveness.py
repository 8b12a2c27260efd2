"""A split seal round on a real Kafka broker does not wait for silent organizations.

Six organizations, k = 4. CSTO and SCO never start a sealer. CSTO's genuinely accredited node
key (driven by the test through the library, as a dishonest organization would) publishes,
first on the seals topic, an honest-looking proposal for epoch 1 whose *t_e* lies 30 s in the
past: at the edge of the witnesses' clock tolerance. UN and OSCE run with a 120 s tolerance and
cosign it; EU and NATO run with 5 s, refuse it (``seal_time_out_of_tolerance``) and cosign the
next proposal. Each text then holds 2 votes and 2 organizations are silent, which is k: before
withdrawals the round never died and epoch 1 never became final. Now each sealer withdraws its
vote after ``withdraw_after_ms``, round 2 opens at the same record everywhere, epoch 1 becomes
final in round 2 at every running sealer with byte-identical final stores, and a fresh reader
of the broker derives the same final seal, withdrawals and state digest.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from bus.bus_reader import BusReader
from bus.epoch import FinalSeal
from bus.errors import Reason
from bus.note import key_name
from bus.seal import RoundOpened, SealProposal, sign_proposal
from bus.store.final import FinalStore
from bus.topics import Topics
from nodes.demo.scenario import (
    ORGANIZATIONS,
    Scenario,
    build_scenario,
    node_subject,
)
from nodes.org_node.sealer import SealerConfig
from tests.logcapture import capture_all_logs
from tests.sealers import Fleet, read_sealed_log, set_up_bus, whole_log_proposal

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
WIDE = ("un", "osce")  # accept the clock-edge text
NARROW = ("eu", "nato")  # refuse it
RUNNING = (*WIDE, *NARROW)  # csto and sco never start
EDGE_MS = 30_000
WAIT_S = 150


def _now() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def topics() -> Topics:
    return Topics(f"w{uuid.uuid4().hex[:10]}.")


async def _edge_proposal(bootstrap: str, topics: Topics, sc: Scenario) -> SealProposal:
    """What CSTO proposes: the whole bus as it is, honestly sealed, timed EDGE_MS ago."""
    proposal = await whole_log_proposal(bootstrap, topics, sc, "csto", _now() - EDGE_MS)
    assert (proposal.epoch, proposal.round) == (1, 1)
    return proposal


class _Replay:
    """A fresh auditor-style reader of the broker (data first, then the seals topic)."""

    def __init__(self, sc: Scenario, topics: Topics) -> None:
        self.reader = BusReader(sc.mandate, topics)
        self.finals: list[FinalSeal] = []
        self.rounds: list[RoundOpened] = []
        self.withdrawn: list[tuple[int, int, str]] = []  # (offset, round, org)
        self.digests: dict[int, bytes] = {}

    async def run(self, bootstrap: str, topics: Topics) -> None:
        values = await read_sealed_log(bootstrap, topics)
        for tp, got in values.items():
            if tp.topic != topics.seals:
                u = self.reader.offer_records((tp.topic, tp.partition), 0, got)
                self.digests.update((ev.epoch, ev.state_digest) for ev in u.epochs)
        seals = next(got for tp, got in values.items() if tp.topic == topics.seals)
        for offset, value in enumerate(seals):
            u = self.reader.offer_seal(offset, value)
            self.finals.extend(u.finals)
            self.rounds.extend(u.rounds_opened)
            self.digests.update((ev.epoch, ev.state_digest) for ev in u.epochs)
            for v in u.seal_verdicts:
                self.withdrawn.extend((v.offset, v.round or 0, o) for o in v.withdrawn)


def _store(db: Path) -> tuple[bytes, list[dict[str, object]], tuple[int, bytes] | None]:
    store = FinalStore(db, read_only=True)
    try:
        return store.fingerprint(), store.seals(limit=100), store.last_epoch()
    finally:
        store.close()


async def test_a_split_round_with_two_silent_organizations_ends_after_withdrawals(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    sc = build_scenario(_now(), observers_per_org=1)
    producer = await set_up_bus(kafka_bootstrap, topics, sc, 3, 5)
    try:
        edge = await _edge_proposal(kafka_bootstrap, topics, sc)
        note = sign_proposal(edge, sc.node_keys["csto"], key_name("csto", node_subject("csto")))
        md = await producer.send_and_wait(topics.seals, note, partition=0)
    finally:
        await producer.stop()
    dbs = {org: tmp_path / f"{org}.final.db" for org in RUNNING}
    with capture_all_logs() as logs:
        for org in RUNNING:
            fleet.start(
                SealerConfig(
                    org=org, bootstrap=kafka_bootstrap, db_path=dbs[org], root=sc.mandate,
                    node_key=sc.node_keys[org], topics=topics, interval_ms=300,
                    takeover_ms=300, poll_timeout_ms=100, metadata_refresh_ms=1000,
                    tolerance_ms=120_000 if org in WIDE else 5_000, withdraw_after_ms=3_000,
                )
            )  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            while not all(db.exists() and _store(db)[2] is not None for db in dbs.values()):
                fleet.check()
                await asyncio.sleep(0.3)
        statuses = {o: s.status() for o, (s, _) in fleet.tasks.items()}
    await fleet.stop()

    # The split: UN and OSCE cosigned CSTO's text, EU and NATO refused it for its time.
    cosigned = {e["org"] for e in logs if e["event"] == "seal_cosign_published"
                and (e["epoch"], e["round"]) == (1, 1)}  # fmt: skip
    assert cosigned == set(RUNNING)
    refused = {
        e["org"]
        for e in logs
        if e["event"] == "seal_refused"
        and e["offset"] == md.offset
        and e["reason"] == Reason.SEAL_TIME_OUT_OF_TOLERANCE.value
    }
    assert refused == set(NARROW)
    # Withdrawals ended round 1; epoch 1 is final in round 2 at every running sealer.
    assert sum(int(s["withdrawals_published"]) for s in statuses.values()) >= 2
    assert all(int(s["rounds_opened"]) >= 1 and s["alarm"] is None for s in statuses.values())
    assert all(int(s["equivocations"]) == 0 for s in statuses.values())
    stores = {org: _store(db) for org, db in dbs.items()}
    assert len({fingerprint for fingerprint, _, _ in stores.values()}) == 1
    first = next(s for s in stores["un"][1] if s["epoch"] == 1)
    signers = first["signers"]
    assert isinstance(signers, list) and set(signers) <= set(RUNNING)
    assert len(signers) >= sc.mandate.threshold

    # A fresh reader of the broker derives the same rounds, withdrawals and final seal.
    replay = _Replay(sc, topics)
    await replay.run(kafka_bootstrap, topics)
    final = replay.finals[0]
    assert (final.epoch, final.offset, sorted(final.signers)) == (
        1, first["offset"], sorted(signers),
    )  # fmt: skip
    assert final.round >= 2 and final.digest != edge.digest
    opened = replay.rounds[0]
    # Dead once one voter of each text withdrew (two of one text first, maybe): 2 or 3.
    assert (opened.epoch, opened.round, opened.undecided) == (1, 2, 2)
    assert opened.withdrawn in (2, 3) and sum(opened.tallies) == 4 - opened.withdrawn
    withdrawn_r1 = {org for _, r, org in replay.withdrawn if r == 1}
    assert len(withdrawn_r1) == opened.withdrawn
    assert withdrawn_r1 & set(WIDE) and withdrawn_r1 & set(NARROW)
    assert all(offset <= opened.offset for offset, r, _ in replay.withdrawn if r == 1)
    last = stores["un"][2]
    assert last is not None and replay.digests[last[0]] == last[1]
