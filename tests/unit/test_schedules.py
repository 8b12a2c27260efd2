"""The property of the one order: for any log and any read schedule, every reader's final
verdicts, reason codes, verdict changes, chain heads and state digests are those of judging the
sealed log epoch by epoch (pure, no broker).

Logs come from :class:`tests.sealed_log.LogGenerator`: three organizations with two observers
each, mandate rotations of root keys, revocations and re-keys (the observer continuing from its
last valid report), expiry, re-accreditation, junk and other organizations' records on the trust
topics, copies on other partitions, report ids reused across organizations, late and future
reports, chained decisions of each organization's node (forks, copies, late and future ones,
node keys rotated and revoked at an epoch, a thief publishing with a revoked key), records of
topics the judge does not judge, all cut into epochs at random seal boundaries. A schedule feeds a :class:`~bus.sealed_reader.SealedReader` in its own way: partition
interleavings, fetch sizes, seals before or after their records, trust topics leading or
lagging the report topics, and restarts at random points (from a snapshot just taken, from an
older stored one, or from nothing) followed by fetching again from a little before where the
reader stands.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.judge import EpochVerdicts, Status
from bus.sealed_reader import SealedReader
from tests.sealed_log import OPS, TOPICS, Projection, SealedLog, generate, project


@dataclass(frozen=True)
class Schedule:
    """How one reader reads a log."""

    seed: int
    trust: str  # "lead": trust topics first; "lag": last; "mixed": interleaved
    seals: str  # "early": as soon as possible; "late": after every record; "random"
    max_batch: int
    restarts: int  # at most this many, each at a random step
    resume_each_epoch: bool  # also restart from a fresh snapshot after every epoch emitted


schedules = st.builds(
    Schedule,
    st.integers(0, 2**32 - 1),
    st.sampled_from(["lead", "lag", "mixed"]),
    st.sampled_from(["early", "late", "random"]),
    st.integers(1, 8),
    st.integers(0, 6),
    st.booleans(),
)


def read(log: SealedLog, s: Schedule) -> tuple[dict[int, Projection], SealedReader]:
    """Feed a reader under schedule ``s``; every epoch emitted (again after a restart) must
    say the same each time. Returns what was emitted by epoch, and the last reader."""
    rng = random.Random(s.seed)
    trust_refs = {r for r in log.partitions if r[0] in {TOPICS.registry, TOPICS.mandate}}
    emitted: dict[int, Projection] = {}

    def keep(out: list[EpochVerdicts]) -> None:
        for v in out:
            p = project(v)
            assert emitted.setdefault(v.epoch, p) == p, f"epoch {v.epoch} said otherwise"

    reader = SealedReader(log.root, TOPICS)
    stored = reader.snapshot()  # what the node persisted last
    cursor = dict.fromkeys(log.partitions, 0)
    next_seal = 0
    steps = sum(len(v) for v in log.partitions.values()) + len(log.seals)
    restart_at = {rng.randrange(steps) for _ in range(s.restarts)}
    step = 0
    while True:
        open_refs = sorted(r for r, c in cursor.items() if c < len(log.partitions[r]))
        trust_open = [r for r in open_refs if r in trust_refs]
        data_open = [r for r in open_refs if r not in trust_refs]
        if s.trust == "lead" and trust_open:
            open_refs = trust_open
        elif s.trust == "lag" and data_open:
            open_refs = data_open
        seal_ready = next_seal < len(log.seals) and (s.seals != "late" or not open_refs)
        if not open_refs and not seal_ready:
            break
        step += 1
        if step in restart_at:
            how = rng.choice(("now", "stored", "fresh"))
            if how == "now":
                stored = reader.snapshot()
            reader = (
                SealedReader(log.root, TOPICS)
                if how == "fresh"
                else SealedReader.resume(stored, log.root, TOPICS)
            )
            positions = reader.positions()
            for ref in cursor:  # fetch again from a little before where the reader stands
                cursor[ref] = max(0, positions.get(ref, 0) - rng.randrange(3))
            next_seal = max(0, reader.next_epoch - 1 - rng.randrange(2))
            continue
        take_seal = seal_ready and (
            not open_refs or s.seals == "early" or (s.seals == "random" and rng.random() < 0.3)
        )
        if take_seal:
            out = reader.offer_final_seal(log.seals[next_seal])
            next_seal += 1
        else:
            ref = rng.choice(open_refs)
            start = cursor[ref]
            batch = log.partitions[ref][start : start + rng.randint(1, s.max_batch)]
            out = reader.offer_records(ref, start, batch)
            cursor[ref] = start + len(batch)
        keep(out)
        if out and (s.resume_each_epoch or rng.random() < 0.7):
            stored = reader.snapshot()
            if s.resume_each_epoch:
                reader = SealedReader.resume(stored, log.root, TOPICS)
                for ref in cursor:  # the records not judged are fetched again
                    cursor[ref] = min(cursor[ref], reader.positions().get(ref, 0))
                next_seal = reader.next_epoch - 1
    return emitted, reader


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=60),
    seed=st.integers(0, 2**16),
    readers=st.lists(schedules, min_size=2, max_size=4),
)
def test_every_schedule_reaches_the_verdicts_of_the_sealed_log(
    ops: list[str], seed: int, readers: list[Schedule]
) -> None:
    log = generate(seed, ops)
    judge, reference = log.judge()
    want = {v.epoch: project(v) for v in reference}
    for s in readers:
        emitted, reader = read(log, s)
        assert emitted == want, s
        assert reader.judge.digest == judge.digest
        assert reader.judge.heads() == judge.heads()
        assert reader.judge.decision_heads() == judge.decision_heads()
        assert reader.buffered() == 0  # every generated record is sealed


def test_generated_logs_cover_the_attacks() -> None:
    """The generator meets every verdict the property is about (so a pass says something)."""
    said: set[str] = set()
    decided: set[str] = set()  # what decision records were told
    for seed in range(30):
        rng = random.Random(seed)
        _, out = generate(seed, [rng.choice(OPS) for _ in range(60)]).judge()
        for ev in out:
            said.update(v.reason or v.status.value for v in ev.verdicts)
            said.update(c.status.value for c in ev.changes)
            decided.update(
                v.reason or v.status.value
                for v in ev.verdicts
                if TOPICS.org_of_decision_topic(v.pos[0])
            )
    assert {
        Status.ACCEPTED.value,
        Status.DEFERRED.value,
        "replayed",
        "chain_gap",
        "chain_fork",
        "key_revoked",
        "delivery_lag",
        "clock_skew",
        "malformed",
    } <= decided
    assert {
        Status.ACCEPTED.value,
        Status.APPLIED.value,
        Status.DEFERRED.value,
        Status.NOT_JUDGED.value,
        Status.REVOKED_AFTER_ACCEPTANCE.value,
        "replayed",
        "duplicate_conflict",
        "chain_gap",
        "chain_fork",
        "unknown_key",
        "key_revoked",
        "key_expired",
        "delivery_lag",
        "clock_skew",
        "mandate_rollback",
        "wrong_org",
        "malformed",
    } <= said
