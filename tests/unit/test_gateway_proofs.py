"""The gateway's proof book (nodes/gateway/proofs.py), pure: fed a real seals topic (proposals
and cosignatures by the organizations' node keys) in any interleaving with the trust topics and
UN's reports topic, it proves every sealed UN report against the first final seal that covers
it, with the proof a third party derives from the whole log; the light check passes from the
mandate file alone; an unsealed record, a gap and an altered record are named."""

from __future__ import annotations

import functools
import random

import pytest

from bus.errors import Reason, VerificationError
from bus.model import EncryptionKey
from bus.seal_proof import SealProof, verify_light
from bus.sealed import DecryptionKey
from nodes.demo.scenario import demo_key
from nodes.gateway.kafka import ProofReader
from nodes.gateway.proofs import LogBrokenError, ProofBook
from tests.sealed_bus import SealedBus, build
from tests.unit.test_seal_proof import prove, trusted

Record = tuple[str, int, int, bytes | None]


@pytest.fixture(scope="module")
def bus() -> SealedBus:
    return build(unsealed=2)


def _records(bus: SealedBus, seed: int) -> list[Record]:
    """Every record of the seals, trust and UN reports topics, partitions interleaved at random
    (each partition in offset order)."""
    t = bus.topics
    queues: list[list[Record]] = [[(t.seals, 0, o, v) for o, v in enumerate(bus.seals)]]
    for (topic, p), values in sorted(bus.parts.items()):
        if topic in (t.registry, t.mandate, t.reports("un"), t.reports("osce")):
            queues.append([(topic, p, o, v) for o, v in enumerate(values)])
    rng = random.Random(seed)
    out: list[Record] = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return out


def _book(bus: SealedBus, records: list[Record]) -> ProofBook:
    book = ProofBook(bus.m.scenario.mandate, bus.topics, bus.topics.reports("un"))
    for r in records:
        book.offer(*r)
    return book


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_sealed_report_is_proven_as_the_whole_log_proves_it(
    bus: SealedBus, seed: int
) -> None:
    book = _book(bus, _records(bus, seed))
    ref = (bus.topics.reports("un"), 0)
    values = bus.parts[ref]
    last = trusted(bus).finals[-1]
    sealed = last.size(ref)
    assert 0 < sealed < len(values)  # some sealed, some not
    whole = trusted(bus)
    for offset in range(sealed):
        assert book.covered(0, offset)
        value = values[offset]
        assert value is not None
        proof = book.prove(0, offset, value)
        assert proof == prove(bus, ref, offset, whole)
        assert len(verify_light(proof, bus.m.scenario.mandate)) >= bus.m.scenario.mandate.threshold
        assert SealProof.from_json(proof.to_json()) == proof
    for offset in range(sealed, len(values)):
        assert not book.covered(0, offset)
        value = values[offset]
        assert value is not None
        with pytest.raises(VerificationError) as info:
            book.prove(0, offset, value)
        assert info.value.reason is Reason.RECORD_NOT_SEALED


def test_only_seals_covering_new_reports_of_the_topic_keep_their_note(bus: SealedBus) -> None:
    book = _book(bus, _records(bus, 0))
    ref = (bus.topics.reports("un"), 0)
    kept = [s.epoch for s in book.trust.finals if book.trust.note(s.epoch) is not None]
    grew = [
        s.epoch
        for prev, s in zip([None, *book.trust.finals], book.trust.finals, strict=False)
        if s.size(ref) > (0 if prev is None else prev.size(ref))
    ]
    assert kept == grew and len(kept) < len(book.trust.finals)


def test_a_value_that_is_not_the_record_is_refused(bus: SealedBus) -> None:
    book = _book(bus, _records(bus, 1))
    with pytest.raises(VerificationError) as info:
        book.prove(0, 0, b"not the record at offset 0")
    assert info.value.reason is Reason.INVALID_FIELD


def test_a_gap_stops_the_book(bus: SealedBus) -> None:
    topic = bus.topics.reports("un")
    records = [r for r in _records(bus, 2) if not (r[0] == topic and r[2] == 1)]
    with pytest.raises(LogBrokenError, match="offset 1 is absent"):
        _book(bus, records)


def test_an_altered_sealed_record_stops_the_book(bus: SealedBus) -> None:
    topic = bus.topics.reports("un")
    records = [
        (t, p, o, b"altered" if (t, o) == (topic, 0) else v) for t, p, o, v in _records(bus, 0)
    ]
    book = _book(bus, records)
    value = bus.parts[(topic, 0)][1]
    assert value is not None
    with pytest.raises(LogBrokenError, match="another root"):
        book.prove(0, 1, value)
    with pytest.raises(LogBrokenError):
        book.prove(0, 2, value)
    assert book.broken is not None


class _GrowingLog(ProofReader):
    """The gateway's proof reader over a log the test grows: what Kafka would return is the
    list ``log`` (each partition in offset order); what is under test is when it reads."""

    def __init__(self, book: ProofBook, log: list[Record], min_interval_s: float) -> None:
        super().__init__(bootstrap="127.0.0.1:9", security=None, book=book,
                         min_interval_s=min_interval_s)  # fmt: skip
        self.log = log
        self.reads = 0

    async def _catch_up(self) -> None:
        self.reads += 1
        for topic, partition, offset, value in self.log:
            if offset >= self.book.read_from((topic, partition)):
                self.book.offer(topic, partition, offset, value)


async def test_a_record_sealed_a_moment_after_the_last_read_is_read_not_called_unsealed(
    bus: SealedBus,
) -> None:
    t = bus.topics
    records = _records(bus, 0)
    book = ProofBook(bus.m.scenario.mandate, t, t.reports("un"))
    reader = _GrowingLog(book, [r for r in records if r[0] != t.seals], min_interval_s=0.2)
    covered = functools.partial(book.covered, 0, 0)
    await reader.ensure(covered)  # the log holds the report, no seal yet
    assert (covered(), reader.reads) == (False, 1)
    reader.log.extend(r for r in records if r[0] == t.seals)  # sealed a moment later
    await reader.ensure(covered)  # sooner than the interval: waits for it, then reads
    assert (covered(), reader.reads) == (True, 2)
    await reader.ensure(covered)  # covered now: nothing more is read
    assert reader.reads == 2
    value = bus.parts[(t.reports("un"), 0)][0]
    assert value is not None
    assert book.prove(0, 0, value).seal().epoch >= 1


def test_a_restricted_report_s_proof_names_its_report_id() -> None:
    """A sealed report carries its report id in clear (bus.sealed), so its proof names it as a
    plain report's does; a proof written when that field was null still reads, another id not."""
    sealed_bus = build(unsealed=0)
    m = sealed_bus.m
    mandate = m.scenario.mandate
    recipient = EncryptionKey(
        "osce", DecryptionKey("osce", demo_key("x25519:osce-proof").seed).public_key,
        mandate.not_before_ms, mandate.not_after_ms, 1, mandate.mandate_id,
    )  # fmt: skip
    draft = m.draft("un", 1)
    raw = m.signer("un", 1).sign_sealed(draft, [recipient])
    ref = (sealed_bus.topics.reports("un"), 0)
    offset = sealed_bus.put(ref[0], raw)
    sealed_bus.seal()
    proof = prove(sealed_bus, ref, offset, trusted(sealed_bus))
    doc = proof.to_json()
    assert doc["report_id"] == draft.report_id
    assert SealProof.from_json(doc) == proof
    assert SealProof.from_json({**doc, "report_id": None}) == proof  # the older form
    with pytest.raises(VerificationError) as caught:
        SealProof.from_json({**doc, "report_id": m.draft("un", 1).report_id})
    assert caught.value.reason is Reason.INVALID_FIELD
    plain = prove(sealed_bus, ref, 0, trusted(sealed_bus))  # a plain report's: null refused
    with pytest.raises(VerificationError):
        SealProof.from_json({**plain.to_json(), "report_id": None})
