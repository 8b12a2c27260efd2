"""The observer's outbox rules after a refusal, a new device continuing a chain, and the clock
check (no broker): every chain the outbox ends with is accepted link by link by the verifier's
own chain rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bus.crypto import SigningKey
from bus.errors import Reason, StoreError, VerificationError
from bus.model import Envelope, Report, Role
from bus.receipt import ObserverHead, sign_head
from bus.verify import ChainBook, ChainHead, verify_report
from nodes.observer.device import (
    Home,
    clock_check,
    continue_chain,
    init_observer,
    resign_held,
    submit_file,
)
from nodes.observer.outbox import DELIVERED, QUEUED, REJECTED, Entry, Outbox
from tests.mission import Mission, demo_key, make_mission

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_793_491_200_000 + 21 * 86_400_000  # inside the test mandate's window
NODE = demo_key("observer-outbox:un-node")


class Device:
    def __init__(self, tmp: Path, m: Mission, name: str = "home") -> None:
        self.m = m
        self.home = Home(tmp / name)
        self.key: SigningKey = init_observer(
            self.home, observer_id="un-obs-7", org="un",
            mandate_envelope=m.scenario.mandate_envelope, gateway="http://127.0.0.1:9",
            passphrase="correct horse battery", at_ms=NOW, scrypt_n=2**10,
        )  # fmt: skip
        m.accredit("un-obs-7", "un", self.key, Role.OBSERVER)
        self.box = Outbox(self.home.outbox)
        self.file = tmp / "report.yaml"
        self.file.write_text((ROOT / "examples" / "report.yaml").read_text())

    def submit(self, at: int = NOW, **kw: object) -> Entry:
        return submit_file(self.home, self.box, self.key, self.file, at_ms=at, **kw)  # type: ignore[arg-type]

    def refuse(self, e: Entry, reason: str = "clock_skew") -> None:
        r = Report.decode(Envelope.decode(e.envelope).payload)
        prev = None if r.seq == 1 else ChainHead(r.seq - 1, r.prev_digest)
        self.box.mark_rejected(e.seq, reason=reason, detail="x", http_status=422, now_ms=NOW,
                               prev=prev)  # fmt: skip

    def deliver(self, e: Entry) -> None:
        self.box.mark_delivered(e.seq, receipt=b"r", receipt_ok=True, http_status=201, now_ms=NOW)


def _accepts(m: Mission, entries: list[Entry], book: ChainBook | None = None) -> ChainBook:
    """The verifier's chain rule over the entries in seq order (raises chain_gap, ...)."""
    book = book or ChainBook({}, lambda _rid: None)
    for e in sorted(entries, key=lambda e: e.seq):
        vr = verify_report(e.envelope, expected_org="un", keyring=m.keyring, reference_ms=NOW + 10)
        book.accept(vr)
    return book


def _ids(entries: list[Entry]) -> list[tuple[int, str]]:
    return [(e.seq, e.report_id) for e in entries]


def test_a_refusal_holds_the_reports_after_it_and_resign_moves_them_down(tmp_path: Path) -> None:
    d = Device(tmp_path, make_mission(1, now_ms=NOW))
    a, b, c, e = (d.submit(NOW + i) for i in range(4))
    d.deliver(a)
    d.refuse(b)
    assert d.box.head() == ChainHead(1, a.digest)  # never past the refused report
    assert _ids(d.box.held()) == _ids([c, e])
    assert d.box.next_deliverable() is None  # held reports are not sent as they are
    done = resign_held(d.home, d.box, d.key, at_ms=NOW + 10)
    assert [(x.seq, x.report_id) for x in done] == [(2, c.report_id), (3, e.report_id)]
    assert [x[0] for x in d.box.refused_history()] == [b.report_id]
    assert d.box.held() == [] and d.box.next_deliverable() == d.box.get(2)
    _accepts(d.m, [a, *d.box.entries(QUEUED)])  # 1, 2, 3: one chain


def test_a_healed_refusal_is_resigned_at_its_own_seq_before_the_held_ones(tmp_path: Path) -> None:
    d = Device(tmp_path, make_mission(1, now_ms=NOW))
    a, b, c = (d.submit(NOW + i) for i in range(3))
    d.refuse(a)  # seq 1 refused: the chain is empty again
    assert d.box.head() is None and _ids(d.box.held()) == _ids([b, c])
    done = resign_held(d.home, d.box, d.key, at_ms=NOW + 10, refused=[a.report_id])
    assert _ids(done) == [(1, a.report_id), (2, b.report_id), (3, c.report_id)]
    assert d.box.counts() == {QUEUED: 3, DELIVERED: 0, REJECTED: 0}
    assert d.box.get(1).envelope != a.envelope  # type: ignore[union-attr]  # signed again, now
    _accepts(d.m, d.box.entries(QUEUED))
    with pytest.raises(Exception, match="no refused report"):
        resign_held(d.home, d.box, d.key, at_ms=NOW, refused=["not-there"])


def test_a_fix_takes_the_refused_seq_with_its_id_and_the_held_follow(tmp_path: Path) -> None:
    d = Device(tmp_path, make_mission(1, now_ms=NOW))
    a, b, c = (d.submit(NOW + i) for i in range(3))
    d.deliver(a)
    d.refuse(b, "outside_zone")
    fixed = d.submit(NOW + 20, fixes=b.report_id)
    assert (fixed.seq, fixed.report_id) == (2, b.report_id)
    assert _ids(d.box.entries(QUEUED)) == [(2, b.report_id), (3, c.report_id)]
    _accepts(d.m, [a, *d.box.entries(QUEUED)])


def test_a_new_report_waits_behind_the_held_ones(tmp_path: Path) -> None:
    d = Device(tmp_path, make_mission(1, now_ms=NOW))
    a, b = d.submit(NOW), d.submit(NOW + 1)
    d.refuse(a)
    new = d.submit(NOW + 2)
    assert _ids(d.box.entries(QUEUED)) == [(1, b.report_id), (2, new.report_id)]
    _accepts(d.m, d.box.entries(QUEUED))


def _head_doc(key: SigningKey, n: int, digest: bytes, **changes: object) -> dict[str, object]:
    """A head statement signed over seq ``n``, then ``changes`` applied to the JSON."""
    doc = sign_head(ObserverHead("un", "un-obs-7", n, digest, NOW, key.key_id), key)
    doc.update(changes)
    return doc


def test_a_new_device_continues_the_chain_from_the_signed_head(tmp_path: Path) -> None:
    m = make_mission(1, now_ms=NOW)
    m.accredit("un-node", "un", NODE, Role.NODE)
    node_record = m.registry[-1]
    old = Device(tmp_path, m, "old")
    first = [old.submit(NOW + i) for i in range(2)]
    book = _accepts(m, first)
    new = Device(tmp_path, m, "new")  # a new key for the same observer id
    head = book.head("un-obs-7")
    assert head == ChainHead(2, first[1].digest)
    # a statement changed after signing, or another observer's, is refused
    bad = _head_doc(NODE, head.seq + 1, head.digest, seq=head.seq)
    with pytest.raises(VerificationError) as info:
        continue_chain(new.home, new.box, bad, node_record, at_ms=NOW)
    assert info.value.reason is Reason.BAD_SIGNATURE
    other = _head_doc(NODE, head.seq, head.digest, observer_id="un-obs-8")
    with pytest.raises(VerificationError) as info:
        continue_chain(new.home, new.box, other, node_record, at_ms=NOW)
    assert info.value.reason in (Reason.SUBJECT_MISMATCH, Reason.BAD_SIGNATURE)
    assert continue_chain(new.home, new.box, _head_doc(NODE, head.seq, head.digest),
                          node_record, at_ms=NOW) == head  # fmt: skip
    third = new.submit(NOW + 5)
    assert third.seq == 3
    _accepts(m, [third], book)  # the new key continues where the old one left it
    with pytest.raises(StoreError):  # only before this outbox signed anything
        new.box.set_head(head)


def test_the_clock_check_refuses_what_the_nodes_would_refuse() -> None:
    skew = 120_000
    fast = clock_check({"now_ms": NOW, "max_skew_ms": skew}, sent_ms=NOW + 360_000,
                       received_ms=NOW + 360_200)  # fmt: skip
    assert fast.refused and "ahead" in fast.describe()
    right = clock_check(
        {"now_ms": NOW, "max_skew_ms": skew}, sent_ms=NOW - 100, received_ms=NOW + 100
    )
    assert not right.refused and right.ahead_ms == 0
    slow = clock_check({"now_ms": NOW, "max_skew_ms": skew}, sent_ms=NOW - 600_000,
                       received_ms=NOW - 599_900)  # fmt: skip
    assert not slow.refused  # behind is not clock_skew (the delivery lag bounds it)
    with pytest.raises(Exception, match="no time"):
        clock_check(json.loads('{"now": 1}'), sent_ms=0, received_ms=0)
