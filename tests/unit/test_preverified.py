"""Signatures verified once at a node: the ingest loop's accepted reports, noted in the
sealer's :class:`~nodes.org_node.sealer.SignatureMemo`, are not verified again by the final
judge, and the final verdicts are the same as without the memo; a pair for a signature that
did not verify can never get in.

The logs are the hostile ones of :mod:`tests.sealed_log` (rotations, revocations, re-keys,
expiry, copies on other partitions, junk trust records, decisions), with reports whose
signature was damaged added to them, judged by a real :class:`~bus.ingest.Ingestor` first.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.crypto import key_id
from bus.errors import VerificationError
from bus.ingest import Ingestor, Quarantined, RecordRef
from bus.judge import EpochVerdicts, FinalJudge, Status
from bus.model import Envelope
from bus.sealed_reader import SealedReader
from bus.trust import KeyRing
from bus.verify import ChainBook
from nodes.org_node.sealer import SignatureMemo, recording
from tests.sealed_log import NOW_MS, OPS, TOPICS, SealedLog, generate


def _flip_signature(raw: bytes) -> bytes:
    """The same envelope with one bit of its signature changed (still decodes)."""
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def hostile_log(seed: int, ops: int = 120) -> tuple[SealedLog, list[bytes]]:
    """A generated hostile log plus one more epoch holding damaged copies of reports (a bit
    of the signature flipped) on their own and on other partitions; the damaged records."""
    rng = random.Random(seed)
    log = generate(seed, [rng.choice(OPS) for _ in range(ops)] + ["seal"])
    reports = [
        (ref, v)
        for ref, values in sorted(log.partitions.items())
        if TOPICS.org_of_report_topic(ref[0]) is not None
        for v in values
        if v is not None and len(v) > 64
    ]
    damaged = []
    for ref, v in rng.sample(reports, min(6, len(reports))):
        bad = _flip_signature(v)
        damaged.append(bad)
        log.put(ref[0], bad, ref[1])
        log.put(ref[0], bad, 1 - ref[1] if ref[1] in (0, 1) else 0)
    log.seal()
    return log, damaged


def ingest(log: SealedLog, memo: SignatureMemo) -> Ingestor:
    """A node's ingest loop over the whole log (its provisional verdicts, on a clock inside the
    log's time), noting what it accepts in ``memo``."""
    ring = KeyRing(log.root)
    for raw in log.partitions.get((TOPICS.registry, 0), []):
        try:
            ring.apply(Envelope.decode(raw or b""))
        except VerificationError:
            continue
    ingestor = Ingestor(ring, ChainBook({}, lambda _: None), clock=lambda: NOW_MS)
    ingestor.judge = recording(ingestor.judge, memo)  # type: ignore[method-assign]
    for (topic, partition), values in sorted(log.partitions.items()):
        org = TOPICS.org_of_report_topic(topic)
        if org is None:
            continue
        for offset, value in enumerate(values):
            ingestor.judge(at(topic, partition, offset), value, org)
    return ingestor


def at(topic: str, partition: int, offset: int) -> RecordRef:
    return RecordRef(topic, partition, offset, NOW_MS)


def read(log: SealedLog, memo: SignatureMemo | None) -> list[EpochVerdicts]:
    """Every epoch judged by a sealed reader fed the log partition by partition, then the
    seals, with ``memo`` as its source of verified signatures."""
    reader = SealedReader(log.root, TOPICS, preverified=memo)
    out: list[EpochVerdicts] = []
    for ref, values in sorted(log.partitions.items(), reverse=True):
        out += reader.offer_records(ref, 0, values)
    for seal in log.seals:
        out += reader.offer_final_seal(seal)
    return out


def _same(a: list[EpochVerdicts], b: list[EpochVerdicts]) -> None:
    assert [e.state_digest for e in a] == [e.state_digest for e in b]
    assert [e.verdicts for e in a] == [e.verdicts for e in b]
    assert [e.changes for e in a] == [e.changes for e in b]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_memo_gives_the_same_verdicts_and_spares_the_accepted_signatures(seed: int) -> None:
    log, damaged = hostile_log(seed)
    _, plain = log.judge()
    memo = SignatureMemo()
    ingest(log, memo)
    noted = memo.counts["noted"]
    assert noted > 0
    with_memo = read(log, memo)
    _same(plain, with_memo)
    _same(plain, read(log, None))
    # Every accepted report was handed to the judge of its epoch, then forgotten.
    assert memo.counts["handed"] == noted
    assert len(memo) == 0
    bad = set(damaged)
    judged = [
        v for e in with_memo for v in e.verdicts
        if log.partitions[(v.pos[0], v.pos[1])][v.pos[2]] in bad
    ]  # fmt: skip
    assert len(judged) == 2 * len(damaged) > 0
    assert all(v.status is Status.QUARANTINED for v in judged)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(40, 160), st.integers(1, 64))
def test_property_any_log_any_memo_bound_same_digests(seed: int, ops: int, bound: int) -> None:
    """Whatever the log and however small the memo (entries dropped), the digests are the
    same as without it."""
    log, _ = hostile_log(seed, ops)
    _, plain = log.judge()
    memo = SignatureMemo(max_entries=bound)
    ingest(log, memo)
    assert len(memo) <= bound
    _same(plain, read(log, memo))


def test_a_refused_record_never_enters_the_memo() -> None:
    """A report whose signature does not verify is quarantined by the ingest loop and noted
    nowhere; neither is any other refusal."""
    log, damaged = hostile_log(7)
    memo = SignatureMemo()
    ing = ingest(log, memo)
    for bad in damaged:
        out = ing.judge(at(TOPICS.reports("un"), 0, 10_000), bad, "un")
        assert isinstance(out, Quarantined)
        memo.note_accepted(out)
    held = memo.epoch_pairs(1, {(TOPICS.reports("un"), 0): (0, damaged)})
    assert len(held) == 0


def _report_spans(log: SealedLog) -> dict[tuple[str, int], tuple[int, list[bytes | None]]]:
    """Every report partition of ``log`` as one span from offset 0 (what an epoch hands)."""
    return {
        ref: (0, values)
        for ref, values in log.partitions.items()
        if TOPICS.org_of_report_topic(ref[0]) is not None
    }


def test_a_pair_vouches_for_its_bytes_under_its_key_only() -> None:
    """The memo holds genuine accepted reports: the same bytes under another key, one bit
    changed under the same key, or anything that is not a pair, are not in it."""
    log, _ = hostile_log(1)
    memo = SignatureMemo()
    ingest(log, memo)
    spans = _report_spans(log)
    pairs = memo.epoch_pairs(2, spans)
    keys = _keys(log)
    public_key, raw = next(
        (pk, v)
        for _, values in spans.values()
        for v in values
        if v is not None
        for pk in keys
        if (pk, v) in pairs
    )
    assert Envelope.decode(raw).signatures[0].key_id == key_id(public_key)
    assert not any((pk, raw) in pairs for pk in keys if pk != public_key)
    assert (public_key, _flip_signature(raw)) not in pairs
    assert raw not in pairs
    assert (public_key, raw, b"") not in pairs
    # Taken out: the next epoch asking for the same bytes gets nothing.
    assert len(memo.epoch_pairs(3, spans)) == 0


def test_a_forged_record_under_a_noted_key_is_still_verified() -> None:
    """A hostile copy of a noted report with its signature damaged, judged with pairs that
    hold the genuine one: quarantined, with the verdicts (and digests) of a judge without
    pairs."""
    log, _ = hostile_log(3)
    memo = SignatureMemo()
    ingest(log, memo)
    spans = _report_spans(log)
    pairs = memo.epoch_pairs(1, spans)
    genuine = next(v for _, values in spans.values() for v in values if v is not None
                   and any((pk, v) in pairs for pk in _keys(log)))  # fmt: skip
    forged = _flip_signature(genuine)
    assert not any((pk, forged) in pairs for pk in _keys(log))
    at_pos = log.put(TOPICS.reports("un"), forged, 0)
    log.seal()
    with_pairs, without = FinalJudge(log.root, TOPICS), FinalJudge(log.root, TOPICS)
    a = [with_pairs.judge_epoch(s, log.epoch_records(s.epoch), preverified=pairs)
         for s in log.seals]  # fmt: skip
    b = [without.judge_epoch(s, log.epoch_records(s.epoch)) for s in log.seals]
    _same(a, b)
    verdict = next(v for v in a[-1].verdicts if v.pos == at_pos)
    assert verdict.status is Status.QUARANTINED


def _keys(log: SealedLog) -> list[bytes]:
    """Every public key the log's registry ever accredited."""
    ring = KeyRing(log.root)
    for r in log.partitions[(TOPICS.registry, 0)]:
        try:
            ring.apply(Envelope.decode(r or b""))
        except VerificationError:
            continue
    return [a.public_key for a in ring.accreditations()]
