"""The observer's outbox and key at rest (no broker, no gateway): chain, atomicity, states."""

from __future__ import annotations

import json
import random
import stat
import threading
from pathlib import Path

import pytest

from bus.crypto import SigningKey
from bus.errors import KeyStoreError, Reason, StoreError, VerificationError
from bus.model import Envelope, Report, Role, sha256
from bus.report_file import ReportFileError
from bus.sign import ReportSigner
from bus.verify import ChainBook, ChainHead, verify_report
from nodes.observer.delivery import Backoff
from nodes.observer.device import (
    Home,
    init_observer,
    read_encrypted_key,
    status,
    submit_file,
    write_encrypted_key,
)
from nodes.observer.outbox import DELIVERED, QUEUED, REJECTED, Outbox, SignNext
from tests.mission import Mission, make_mission

ROOT = Path(__file__).resolve().parents[2]
FAST_SCRYPT = 2**10  # the format is what is tested here, not the cost


def _sign_next(mission: Mission) -> SignNext:
    _, key = mission.observer()
    draft = mission.draft()

    def sign_next(head: ChainHead | None) -> tuple[str, bytes]:
        return draft.report_id, ReportSigner(key, head).sign(draft)

    return sign_next


def test_appends_form_an_unbroken_chain(tmp_path: Path) -> None:
    m = make_mission(1)
    box = Outbox(tmp_path / "o.db")
    for i in range(20):
        box.append(_sign_next(m), source=f"r{i}.yaml", now_ms=m.now)
    entries = box.entries()
    assert [e.seq for e in entries] == list(range(1, 21))
    chain = ChainBook({}, lambda _rid: None)
    for e in entries:
        vr = verify_report(e.envelope, expected_org="un", keyring=m.keyring, reference_ms=m.now)
        chain.accept(vr)  # raises on any gap or fork
        assert vr.report.seq == e.seq and sha256(e.envelope) == e.digest
    assert box.head() == ChainHead(20, entries[-1].digest)
    assert box.counts() == {QUEUED: 20, DELIVERED: 0, REJECTED: 0}


def test_a_failed_signing_queues_nothing_and_keeps_the_head(tmp_path: Path) -> None:
    m = make_mission(1)
    box = Outbox(tmp_path / "o.db")
    box.append(_sign_next(m), source="a", now_ms=m.now)
    head = box.head()

    def broken(h: ChainHead | None) -> tuple[str, bytes]:
        raise VerificationError(Reason.INVALID_FIELD, "refused while signing")

    with pytest.raises(VerificationError):
        box.append(broken, source="b", now_ms=m.now)
    assert box.head() == head
    assert len(box.entries()) == 1


def test_a_reused_report_id_is_refused_atomically(tmp_path: Path) -> None:
    m = make_mission(1)
    box = Outbox(tmp_path / "o.db")
    first = box.append(_sign_next(m), source="a", now_ms=m.now)
    head = box.head()
    with pytest.raises(StoreError):
        box.append(lambda h: (first.report_id, b"other bytes"), source="b", now_ms=m.now)
    assert box.head() == head
    assert len(box.entries()) == 1


def test_two_processes_appending_at_once_never_fork_the_chain(tmp_path: Path) -> None:
    m = make_mission(1)
    lock = threading.Lock()  # the mission's rng is not thread-safe; SQLite orders the rest

    def work() -> None:
        box = Outbox(tmp_path / "o.db")
        for _ in range(25):
            with lock:
                sign_next = _sign_next(m)
            box.append(sign_next, source="t", now_ms=m.now)
        box.close()

    # Create the database (schema, WAL) first: the race under test is two appends, not two
    # processes switching a brand-new file's journal mode at the same instant.
    Outbox(tmp_path / "o.db").close()
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    box = Outbox(tmp_path / "o.db")
    chain = ChainBook({}, lambda _rid: None)
    for e in box.entries():
        chain.accept(
            verify_report(e.envelope, expected_org="un", keyring=m.keyring, reference_ms=m.now)
        )
    assert box.head() is not None and box.head().seq == 50  # type: ignore[union-attr]


def test_states_oldest_first_and_never_resent_once_delivered(tmp_path: Path) -> None:
    m = make_mission(1)
    box = Outbox(tmp_path / "o.db")
    for i in range(4):
        box.append(_sign_next(m), source=f"r{i}", now_ms=m.now)
    assert box.next_queued().seq == 1  # type: ignore[union-attr]
    box.record_failure(1, "connection refused")
    assert box.next_queued().attempts == 1  # type: ignore[union-attr]
    box.mark_delivered(1, receipt=b"r", receipt_ok=True, http_status=201, now_ms=m.now)
    box.mark_rejected(2, reason="outside_zone", detail="far away", http_status=422, now_ms=m.now)
    assert box.next_queued().seq == 3  # type: ignore[union-attr]
    assert box.counts() == {QUEUED: 2, DELIVERED: 1, REJECTED: 1}
    delivered = box.get(1)
    assert delivered is not None
    assert (delivered.state, delivered.receipt, delivered.attempts) == (DELIVERED, b"r", 2)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(1)
    b = Backoff(base_s=0.5, cap_s=8.0)
    for failures, bound in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (30, 8.0)]:
        waits = [b.delay(failures, rng, None) for _ in range(200)]
        assert all(0 <= w <= bound for w in waits)
        assert max(waits) > bound * 0.8  # the whole interval is used (full jitter)
        assert len(set(waits)) > 150
    assert b.delay(1, rng, retry_after_s=5.0) >= 5.0


def test_key_at_rest_is_encrypted_and_needs_the_passphrase(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "key.json"
    write_encrypted_key(path, key, "correct horse battery", n=FAST_SCRYPT)
    text = path.read_text()
    assert key.seed.hex() not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_encrypted_key(path, "correct horse battery") == key
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        read_encrypted_key(path, "correct horse batterY")
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        write_encrypted_key(path, key, "correct horse battery", n=FAST_SCRYPT)
    with pytest.raises(KeyStoreError, match="at least"):
        write_encrypted_key(tmp_path / "k2.json", key, "short", n=FAST_SCRYPT)
    doc = json.loads(text)
    doc["key_id"] = "00" * 32  # the key id is authenticated data
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError):
        read_encrypted_key(path, "correct horse battery")


def test_init_then_submit_queues_a_report_the_verifier_accepts(tmp_path: Path) -> None:
    m = make_mission(1, now_ms=1_793_491_200_000 + 21 * 86_400_000)
    home = Home(tmp_path / "home")
    key = init_observer(
        home,
        observer_id="un-obs-7",
        org="un",
        mandate_envelope=m.scenario.mandate_envelope,
        gateway="http://127.0.0.1:9",
        passphrase="correct horse battery",
        at_ms=m.now,
        scrypt_n=FAST_SCRYPT,
    )
    request = json.loads(home.request.read_text())
    assert (request["observer_id"], request["key_id"]) == ("un-obs-7", key.key_id.hex())
    assert "seed" not in home.key.read_text()
    m.accredit("un-obs-7", "un", key, Role.OBSERVER)

    box = Outbox(home.outbox)
    example = ROOT / "examples" / "report.yaml"
    first = submit_file(home, box, key, example, at_ms=m.now)
    second = submit_file(home, box, key, example, at_ms=m.now + 1)
    assert (first.seq, second.seq) == (1, 2)
    assert first.report_id != second.report_id
    chain = ChainBook({}, lambda _rid: None)
    for e in (first, second):
        vr = verify_report(e.envelope, expected_org="un", keyring=m.keyring, reference_ms=m.now + 5)
        chain.accept(vr)
        assert vr.report.observer_id == "un-obs-7"
    report = Report.decode(Envelope.decode(second.envelope).payload)
    assert report.prev_digest == first.digest

    bad = tmp_path / "bad.yaml"
    bad.write_text(example.read_text().replace("severity: 4", "severity: 11"))
    with pytest.raises(ReportFileError, match="severity"):
        submit_file(home, box, key, bad, at_ms=m.now)
    assert status(home, box)["counts"] == {QUEUED: 2, DELIVERED: 0, REJECTED: 0}
