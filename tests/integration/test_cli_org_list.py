"""``obus org list --final-db``: who is accredited, as the node's final store judges it.

A sealed bus (:mod:`tests.sealed_bus`: real proposals and cosignatures) with a revocation sealed
in a fifth epoch is published to the real broker; UN's final store is written by the store's
own code (:meth:`bus.store.final.FinalStore.record`) from a bus reader that judged the same log,
as the node's sealer does. The command lists UN's subjects from it (the revoked key with its
cut-off), and refuses a final store judged from another root mandate.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import pytest

from bus.bus_reader import BusReader
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.model import Revocation, encode, sha256
from bus.sign import sign_revocation
from bus.store.final import FinalStore
from bus.topics import Topics, standard_topics
from nodes.cli.main import main
from nodes.demo.scenario import node_subject
from tests.sealed_bus import SealedBus, build

pytestmark = [pytest.mark.kafka]


async def _publish(bootstrap: str, bus: SealedBus) -> None:
    """Every partition's records at their partitions, in offset order, and the seals topic."""
    await ensure_topics(bootstrap, standard_topics(bus.topics, bus.orgs, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        for (topic, partition), values in sorted(bus.parts.items()):
            for value in values:
                await producer.send_and_wait(topic, value, partition=partition)
        for value in bus.seals:
            await producer.send_and_wait(bus.topics.seals, value, partition=0)
    finally:
        await producer.stop()


def _final_store(bus: SealedBus, path: Path, *, root_digest: bytes) -> None:
    """UN's final store: the epochs and final seals a bus reader judged from the whole log."""
    reader = BusReader(bus.m.scenario.mandate, bus.topics)
    updates = [reader.offer_seal(off, raw) for off, raw in enumerate(bus.seals)]
    updates += [reader.offer_records(ref, 0, values) for ref, values in sorted(bus.parts.items())]
    store = FinalStore(path)
    try:
        store.check_identity("un", bus.m.scenario.mandate.mandate_id, root_digest)
        store.record(
            [ev for u in updates for ev in u.epochs], [f for u in updates for f in u.finals]
        )
    finally:
        store.close()
    assert reader.judge.epoch == 5


def test_org_list_from_a_final_store(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    bus = build(topics=topics, now_ms=time.time_ns() // 1_000_000, junk=False)
    sc = bus.m.scenario
    revoked = next(a for a in bus.m.keyring.accreditations() if a.subject_id == "un-obs-1")
    bus.put(
        topics.registry,
        sign_revocation(
            Revocation("un", revoked.key_id, 1, bus.clock, "device lost", bus.clock,
                       sc.mandate.mandate_id),
            sc.org_roots["un"],
        ).encode(),
    )  # fmt: skip
    bus.seal()
    asyncio.run(_publish(kafka_bootstrap, bus))
    mandate_file = tmp_path / "mandate.bin"
    mandate_file.write_bytes(sc.mandate_envelope)
    final_db = tmp_path / "un.final.db"
    _final_store(bus, final_db, root_digest=sha256(encode(sc.mandate)))

    argv = ["org", "list", "--mandate", str(mandate_file), "--org", "un", "--final-db",
            str(final_db), "--bootstrap", kafka_bootstrap, "--topic-prefix", topics.prefix]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"from final store {final_db}:" in out
    expected = [
        ("un-obs-1", revoked.key_id, "observer", "revoked after seq 1"),
        (node_subject("un"), sc.node_keys["un"].key_id, "node", "active"),
    ]
    for subject, key_id, role, state in expected:
        assert re.search(rf"un\s+{subject}\s+{key_id.hex()}\s+{role}\s.*{state}", out), out
    assert len([line for line in out.splitlines() if line.startswith("  un ")]) == 2
    assert "osce-obs-1" not in out and "refused registry record" not in out

    # A final store judged from another root mandate is refused, not read.
    other = tmp_path / "other.final.db"
    _final_store(bus, other, root_digest=bytes(32))
    assert main([*argv[:7], str(other), *argv[8:]]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(other) in err
