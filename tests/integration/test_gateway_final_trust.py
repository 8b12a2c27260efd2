"""The gateway judges with its node's final trust state, on a real broker with real sealers.

Six organizations' sealers seal the bus; UN's gateway reads UN's final store and the trust
topics. UN rotates its root key (mandate version 2): an observer accredited only by the old
root is refused ``unknown_key`` from the epoch v2 takes effect, by a gateway that was running
throughout (refreshed as seals land) and by gateways started afterwards from the version 1 or
the version 2 mandate file alike; an observer UN re-accredited under its new root is accepted.
Before the first seal the gateway publishes nothing (503 ``not_sealed_yet``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.crypto import SigningKey
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.model import Accreditation, Role
from bus.sign import sign_accreditation, sign_mandate
from bus.topics import Topics, TopicSpec, standard_topics
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from nodes.gateway.service import Gateway, GatewayConfig, Outcome, Reply
from nodes.gateway.trust import NOT_SEALED_YET
from tests.mission import Mission, make_mission
from tests.sealers import Fleet, sealer_config

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
WAIT_S = 120


def _now() -> int:
    return time.time_ns() // 1_000_000


def _mandate_covered(db: Path, topic: str, size: int) -> bool:
    """Whether the final store judged an epoch sealing ``size`` records of ``topic``."""
    if not db.exists():
        return False
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        (n,) = con.execute("SELECT count(*) FROM verdicts WHERE topic = ?", (topic,)).fetchone()
    return int(n) >= size


async def _until(fleet: Fleet, cond: Callable[[], bool], what: str) -> None:
    """Wait for ``cond`` (bounded by WAIT_S; ``what`` names it in the failure)."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not cond():
                fleet.check()
                await asyncio.sleep(0.3)
    except TimeoutError:
        pytest.fail(f"waited {WAIT_S} s for {what}")


def _acc(m: Mission, subject: str, key: SigningKey, role: Role, root: SigningKey) -> bytes:
    mandate = m.scenario.mandate
    acc = Accreditation(subject, "un", role, key.public_key, mandate.not_before_ms,
                        mandate.not_after_ms, 900, mandate.mandate_id)  # fmt: skip
    return sign_accreditation(acc, root).encode()


def _status(reply: Reply) -> str:
    if reply.outcome is Outcome.REFUSED:
        assert reply.reason is not None
        return str(reply.reason.value)
    return str(reply.outcome.value)


async def _submit(gw: Gateway, raw: bytes) -> str:
    return _status(await gw.submit(raw))


async def test_a_rotated_out_root_accredits_no_observer_at_any_gateway(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    m = make_mission(observers_per_org=2, now_ms=_now())
    sc = m.scenario
    topics = Topics(f"gt{uuid.uuid4().hex[:10]}.")
    specs = standard_topics(topics, ORGS, partitions=1)
    if not any(s.name == topics.seals for s in specs):
        specs.append(TopicSpec(topics.seals, 1))
    await ensure_topics(kafka_bootstrap, specs)
    node_key = demo_key(f"final-trust:{topics.prefix}")
    old_root = sc.org_roots["un"]
    new_root = demo_key(f"final-trust:new-root:{topics.prefix}")
    orgs = tuple(
        dataclasses.replace(o, root_public_key=new_root.public_key) if o.org == "un" else o
        for o in sc.mandate.organizations
    )
    v2 = dataclasses.replace(sc.mandate, version=2, organizations=orgs)
    v2_raw = sign_mandate(v2, [sc.org_roots[o] for o in ("un", "osce", "eu", "nato")] + [new_root])
    _, stays_old = m.observer("un", 1)  # accredited by the old root only
    _, moves = m.observer("un", 2)  # re-accredited by the new root after the rotation
    final_db = tmp_path / "un.final.db"
    base = GatewayConfig(
        org="un", bootstrap=kafka_bootstrap, db_path=tmp_path / "gw-live.db",
        mandate=sc.mandate, node_key=node_key, topics=topics, final_db=final_db,
        registry_refresh_s=0.3,
    )  # fmt: skip
    fleet = Fleet()
    producer = reliable_producer(kafka_bootstrap)
    await producer.start()
    live: Gateway | None = None
    try:
        await producer.send_and_wait(topics.mandate, sc.mandate_envelope)
        registry = [*sc.accreditations, *sc.node_accreditations,
                    _acc(m, "un-gateway-node", node_key, Role.NODE, old_root)]  # fmt: skip
        for raw in registry:
            await producer.send_and_wait(topics.registry, raw)
        # the node's final store exists, but nothing is sealed yet: the gateway waits
        fleet.start(
            sealer_config(
                kafka_bootstrap, topics, sc, "un", tmp_path / "un.final.db", snapshot_every=2
            )
        )
        await _until(fleet, final_db.exists, "the final store")
        live = Gateway(base)
        await live.start()
        first = m.next_report("un", 1)
        reply = await live.submit(first)
        if live.trust.sealed:  # the first seal came before the gateway read the store
            assert _status(reply) == "published"
        else:
            assert reply.outcome is Outcome.UNAVAILABLE and NOT_SEALED_YET.encode() in reply.body
        for org in ORGS[1:]:
            fleet.start(
                sealer_config(
                    kafka_bootstrap, topics, sc, org, tmp_path / f"{org}.final.db", snapshot_every=2
                )
            )
        await _until(
            fleet, lambda: _mandate_covered(final_db, topics.registry, len(registry)), "registry"
        )
        await live.refresh_trust()
        assert await _submit(live, first) in ("published", "known")
        assert await _submit(live, m.next_report("un", 2)) == "published"

        await producer.send_and_wait(topics.mandate, v2_raw.encode())
        await _until(fleet, lambda: _mandate_covered(final_db, topics.mandate, 2), "v2 sealed")
        # logged after v2's epoch: verified under v2 (the new root), in force one epoch later
        again = [_acc(m, "un-gateway-node", node_key, Role.NODE, new_root),
                 _acc(m, "un-obs-2", moves, Role.OBSERVER, new_root)]  # fmt: skip
        for raw in again:
            await producer.send_and_wait(topics.registry, raw)
        size = len(registry) + len(again)
        await _until(fleet, lambda: _mandate_covered(final_db, topics.registry, size), "re-acc")
        await asyncio.sleep(1.0)  # the live gateway refreshes on its own (registry_refresh_s)
        await live.refresh_trust()
        assert live.mandate.version == 2
        assert await _submit(live, m.next_report("un", 1)) == "unknown_key"
        assert await _submit(live, m.next_report("un", 2)) == "published"
        await live.stop()
        live = None

        # gateways started now, from either mandate file, judge alike
        for name, mandate in (("v1", sc.mandate), ("v2", v2)):
            cfg = dataclasses.replace(
                base, db_path=tmp_path / f"gw-{name}.db", mandate=mandate, root=sc.mandate
            )
            gw = Gateway(cfg)
            await gw.start()
            try:
                assert gw.trust.mandate.version == 2, name
                assert gw.node is not None and gw.node_accreditation == again[0], name
                assert await _submit(gw, m.next_report("un", 1)) == "unknown_key", name
            finally:
                await gw.stop()
        assert stays_old.key_id != moves.key_id
    finally:
        if live is not None:
            await live.stop()
        await producer.stop()
        await fleet.stop()
