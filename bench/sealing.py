"""Seals for a log the bench built without running sealing nodes.

The auditor judges final verdicts only, so a log nobody sealed audits to zero records. The
audit rows of ``make bench`` (for the sizes no sealing node ingested) and
``bench.audit_export`` therefore seal their logs first, the way six honest organizations
would: one honest witness (a :class:`bus.bus_reader.BusReader`) reads every sealed partition,
the organization whose turn it is proposes what the witness read, and all six node keys
cosign it. The seals are real proposals and cosignatures; the auditor derives their finality
itself.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer

from bus.bus_reader import BusReader
from bus.kafka.admin import topic_partitions
from bus.kafka.client import client_options, reliable_producer
from bus.note import key_name
from bus.seal import cosign_seal, sign_proposal
from bus.topics import Topics
from nodes.demo.scenario import ORGANIZATIONS, Scenario, node_subject

# Report records per epoch when the bench seals a log itself.
SEAL_EVERY = 5000


class HonestSealer:
    """An honest witness over a log: reads records, and seals what it read when told (the
    next organization in turn proposes, all six cosign at ``t_e``, one second per epoch after
    ``start_ms``)."""

    def __init__(self, sc: Scenario, topics: Topics, start_ms: int) -> None:
        self._sc = sc
        self._orgs = [o for o, _ in ORGANIZATIONS]
        self._witness = BusReader(sc.mandate, topics)
        self._start_ms = start_ms
        self.seals: list[bytes] = []
        # Records read so far per partition (for a caller that feeds what is new since).
        self.held: dict[tuple[str, int], int] = {}

    def read(self, ref: tuple[str, int], offset: int, values: list[bytes | None]) -> None:
        self._witness.offer_records(ref, offset, values)
        self.held[ref] = offset + len(values)

    def seal(self) -> list[bytes]:
        """Propose and cosign the open epoch over everything read; returns its seals records."""
        keys = self._sc.node_keys
        epoch = self._witness.chain.open_epoch
        proposer = self._orgs[epoch % len(self._orgs)]
        t_e = self._start_ms + epoch * 1000
        proposal = self._witness.propose(org=proposer, now_ms=t_e)
        if proposal is None:
            raise RuntimeError(f"{proposer} could not propose a seal for epoch {epoch}")
        name = key_name(proposer, node_subject(proposer))
        new = [sign_proposal(proposal, keys[proposer], name)]
        new += [
            cosign_seal(proposal.text(), keys[o], key_name(o, node_subject(o)), now_ms=t_e)
            for o in self._orgs
        ]
        for raw in new:
            self._witness.offer_seal(len(self.seals), raw)
            self.seals.append(raw)
        return new


async def seal_published_log(
    bootstrap: str, topics: Topics, sc: Scenario, every: int = SEAL_EVERY
) -> int:
    """Seal a log on the broker that has no seals yet (``every`` report records an epoch,
    read round-robin over the partitions); returns the epochs sealed, 0 when the seals topic
    already holds records (sealing nodes ran over it)."""
    seals_tps = await topic_partitions(bootstrap, [topics.seals])
    tps = await topic_partitions(bootstrap, [topics.mandate, topics.registry, topics.statements])
    tps += await topic_partitions(bootstrap, pattern=topics.reports_pattern)
    tps += await topic_partitions(bootstrap, pattern=topics.decisions_pattern)
    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=None)
    producer = reliable_producer(bootstrap)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([*tps, *seals_tps])
        ends = await consumer.end_offsets([*tps, *seals_tps])
        if any(ends[tp] for tp in seals_tps):
            return 0
        sealer = HonestSealer(sc, topics, time.time_ns() // 1_000_000)
        pos = dict.fromkeys(tps, 0)
        for tp in tps:
            consumer.seek(tp, 0)
        share = max(1, every // max(1, len(tps)))
        epochs = 0
        while any(pos[tp] < ends[tp] for tp in tps):
            for tp in tps:
                want = min(ends[tp] - pos[tp], share)
                got: list[bytes | None] = []
                while len(got) < want:
                    batch = await consumer.getmany(tp, timeout_ms=1000, max_records=want - len(got))
                    got.extend(r.value for r in batch.get(tp, []))
                if got:
                    sealer.read((tp.topic, tp.partition), pos[tp], got)
                    pos[tp] += len(got)
            futures = [await producer.send(topics.seals, raw, partition=0) for raw in sealer.seal()]
            await asyncio.gather(*futures)
            epochs += 1
        return epochs
    finally:
        await consumer.stop()
        await producer.stop()
