"""Signatures checked ahead in worker processes change no verdict and no reason code.

Every named bad input of test_verify_table is judged twice, by the ordinary sequential path and
with the signature verdicts computed ahead (in this process and in a real process pool); the
outcomes must be identical, record by record.
"""

from __future__ import annotations

import dataclasses

import pytest

from bus.ingest import Accepted, Ingestor, Outcome, Quarantined
from bus.model import Envelope, Signature
from bus.verify import ChainBook, preverify_signatures
from nodes.runtime.preverify import PreVerifier
from tests.mission import Mission, make_mission, ref
from tests.unit.test_verify_table import CASES, Records


def _summary(o: Outcome) -> tuple[str, str, bytes]:
    if isinstance(o, Quarantined):
        return ("quarantined", o.reason, o.raw)
    assert isinstance(o, Accepted)
    return ("accepted", o.verified.report.report_id, o.verified.envelope_digest)


def _keys(m: Mission) -> dict[bytes, bytes]:
    return {a.key_id: a.public_key for a in m.keyring.accreditations()}


def _judge(
    m: Mission, records: Records, preverified: set[tuple[bytes, bytes]]
) -> list[tuple[str, str, bytes]]:
    ing = Ingestor(m.keyring, ChainBook({}, lambda _rid: None), clock=m.clock)
    ing.preverified = preverified
    out = []
    for offset, (topic, raw) in enumerate(records):
        out.append(_summary(ing.judge(ref(topic, offset), raw, topic.rsplit(".", 1)[-1])))
    return out


def _built(name: str) -> tuple[Mission, Records]:
    m = make_mission()
    return m, CASES[name][0](m)


@pytest.mark.parametrize("name", list(CASES))
def test_named_bad_input_same_outcome_with_and_without_preverified_signatures(name: str) -> None:
    m, records = _built(name)
    raws = [raw for _, raw in records if raw is not None]
    pre = {(pk, raws[i]) for i, pk in preverify_signatures(raws, _keys(m))}
    assert _judge(m, records, pre) == _judge(m, records, set())
    assert _judge(m, records, set())[-1][:2] == ("quarantined", CASES[name][1].value)


def test_only_valid_signatures_are_preverified() -> None:
    m = make_mission()
    good = m.next_report()
    env = Envelope.decode(m.next_report())
    s = env.signatures[0]
    flipped = dataclasses.replace(
        env, signatures=(Signature(s.key_id, bytes([s.sig[0] ^ 1]) + s.sig[1:]),)
    ).encode()
    ok = preverify_signatures([good, flipped, b"garbage"], _keys(m))
    assert [i for i, _ in ok] == [0]
    assert preverify_signatures([good], {}) == []  # unknown key: left to the node


def test_a_pair_under_another_key_does_not_skip_verification() -> None:
    m = make_mission()
    env = Envelope.decode(m.next_report())
    s = env.signatures[0]
    flipped = dataclasses.replace(
        env, signatures=(Signature(s.key_id, bytes([s.sig[0] ^ 1]) + s.sig[1:]),)
    ).encode()
    other_pk = m.observer("un", 2)[1].public_key
    records: Records = [("obus.reports.un", flipped)]
    assert _judge(m, records, {(other_pk, flipped)})[0][:2] == ("quarantined", "bad_signature")


async def test_process_pool_gives_the_same_outcomes_on_every_named_case() -> None:
    built = {name: _built(name) for name in CASES}
    pool = PreVerifier(2, min_batch=1)
    skipped = 0
    try:
        await pool.start()
        for m, records in built.values():
            raws = [raw for _, raw in records if raw is not None]
            pre = await pool.verdicts(raws, _keys(m))
            skipped += len(pre)
            assert _judge(m, records, pre) == _judge(m, records, set())
    finally:
        pool.close()
    assert not pool.failed
    assert skipped > 10  # the workers really did accept the genuine signatures
