"""The final store: two readers that read one sealed bus in different orders, in different
batches and with a restart, store byte-identical canonical dumps; what is this node's own
(votes, judged_at, snapshot) stays out of the dump; ``obus final-state`` prints the pair an
auditor compares; provisional verdicts are read back for the sealer's comparison."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from bus.bus_reader import BusReader, BusUpdate
from bus.epoch import FinalSeal, PartitionRef
from bus.errors import ConfigError, StoreError
from bus.judge import EpochVerdicts
from bus.store.final import FinalStore, Vote, provisional_verdicts, read_final_store
from nodes.cli.main import main
from tests.sealed_bus import SealedBus, build


def _feed(bus: SealedBus, store: FinalStore, seed: int, *, restart_after: int = -1) -> BusReader:
    """Feed the bus to a reader in a random interleaving, storing every judged epoch as the
    sealer does; after ``restart_after`` offers, continue from the stored snapshot."""
    rng = random.Random(seed)
    mandate, topics = bus.m.scenario.mandate, bus.topics
    reader = BusReader(mandate, topics)
    cursor: dict[PartitionRef, int] = dict.fromkeys(bus.parts, 0)
    seals_at = 0
    finals: dict[int, FinalSeal] = {}
    steps = 0

    def keep(update: BusUpdate, at: int) -> None:
        for f in update.finals:
            finals[f.epoch] = f
        epochs: list[EpochVerdicts] = list(update.epochs)
        if epochs:
            snap = (reader.judge.epoch, reader.snapshot())
            store.record(epochs, [finals[e.epoch] for e in epochs], snapshot=snap, at_ms=at)

    while seals_at < len(bus.seals) or any(cursor[r] < len(v) for r, v in bus.parts.items()):
        steps += 1
        if steps == restart_after:
            saved = store.snapshot()
            assert saved is not None
            reader = BusReader.resume(saved[1], mandate, topics)
            cursor = {r: reader.positions().get(r, 0) for r in bus.parts}
            seals_at = reader.seals_from
        open_refs = [r for r, v in bus.parts.items() if cursor[r] < len(v)]
        if seals_at < len(bus.seals) and (not open_refs or rng.random() < 0.3):
            keep(reader.offer_seal(seals_at, bus.seals[seals_at]), steps)
            seals_at += 1
            continue
        ref = rng.choice(open_refs)
        start = cursor[ref]
        chunk = bus.parts[ref][start : start + rng.randint(1, 4)]
        keep(reader.offer_records(ref, start, chunk), steps)
        cursor[ref] = start + len(chunk)
    return reader


@pytest.fixture(scope="module")
def bus() -> SealedBus:
    return build(split_chains=True)


def test_two_readers_store_the_same_dump_whatever_their_order(
    bus: SealedBus, tmp_path: Path
) -> None:
    a, b = FinalStore(tmp_path / "a.db"), FinalStore(tmp_path / "b.db")
    try:
        ra = _feed(bus, a, seed=1)
        rb = _feed(bus, b, seed=2, restart_after=25)
        assert ra.judge.epoch == rb.judge.epoch == 4
        assert list(a.dump()) == list(b.dump())
        assert a.fingerprint() == b.fingerprint()
        assert a.last_epoch() == (4, ra.judge.digest)
        counts = a.counts()
        assert counts["accepted"] >= 13 and counts["applied"] >= 1
        # This node's own tables differ (times of storing) and are not in the dump.
        tables = {json.loads(line)[0] for line in a.dump()}
        assert tables <= {"seals", "verdicts", "changes", "heads", "decision_heads",
                          "equivocations"}  # fmt: skip
        assert "seals" in tables and "verdicts" in tables and "heads" in tables
    finally:
        a.close()
        b.close()


def test_a_different_verdict_changes_the_fingerprint(bus: SealedBus, tmp_path: Path) -> None:
    a = FinalStore(tmp_path / "a.db")
    _feed(bus, a, seed=3)
    before = a.fingerprint()
    a.close()
    with sqlite3.connect(tmp_path / "a.db") as con:
        con.execute(
            "UPDATE verdicts SET reason = 'replayed' WHERE (topic, partition, \"offset\") IN"
            " (SELECT topic, partition, \"offset\" FROM verdicts WHERE status = 'accepted'"
            " LIMIT 1)"
        )
    changed = FinalStore(tmp_path / "a.db", read_only=True)
    try:
        assert changed.fingerprint() != before
    finally:
        changed.close()


def test_the_store_refuses_another_root_or_organization(tmp_path: Path) -> None:
    store = FinalStore(tmp_path / "f.db")
    store.check_identity("un", "jmm-2026", b"\x01" * 32)
    with pytest.raises(ConfigError, match="root"):
        store.check_identity("un", "jmm-2026", b"\x02" * 32)
    with pytest.raises(ConfigError, match="org"):
        store.check_identity("eu", "jmm-2026", b"\x01" * 32)
    store.close()


def test_final_state_cli_prints_epoch_digest_and_fingerprint(
    bus: SealedBus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "un.final.db"
    store = FinalStore(path)
    reader = _feed(bus, store, seed=4)
    want = store.fingerprint()
    store.close()
    assert main(["final-state", "--final-db", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    import base64  # noqa: PLC0415

    assert out["epoch"] == 4
    assert base64.b64decode(out["state_digest"]) == reader.judge.digest
    assert base64.b64decode(out["fingerprint"]) == want
    assert [s["epoch"] for s in out["seals"]] == [4, 3, 2, 1]
    assert main(["final-state", "--final-db", str(path), "--dump"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(json.loads(line)[0] for line in lines)
    assert main(["final-state", "--final-db", str(tmp_path / "missing.db")]) == 2


def test_provisional_verdicts_read_the_node_store(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "node.db")
    db.executescript(
        'CREATE TABLE reports (report_id TEXT, topic TEXT, partition INT, "offset" INT);'
        'CREATE TABLE quarantine (topic TEXT, partition INT, "offset" INT, reason TEXT);'
        "CREATE TABLE revoked_after_acceptance (report_id TEXT);"
        "INSERT INTO reports VALUES ('r1', 't', 0, 0), ('r2', 't', 0, 1);"
        "INSERT INTO quarantine VALUES ('t', 0, 2, 'chain_gap');"
        "INSERT INTO revoked_after_acceptance VALUES ('r2');"
    )
    got = provisional_verdicts(db, [("t", 0, 0), ("t", 0, 1), ("t", 0, 2), ("t", 0, 3)])
    assert got == {
        ("t", 0, 0): ("accepted", ""),
        ("t", 0, 1): ("revoked_after_acceptance", ""),
        ("t", 0, 2): ("quarantined", "chain_gap"),
    }
    db.close()


def test_read_final_store_yields_none_without_a_file(tmp_path: Path) -> None:
    with read_final_store(tmp_path / "absent.db") as store:
        assert store is None


def test_a_store_from_before_seal_rounds_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE equivocations (org TEXT NOT NULL, epoch INTEGER NOT NULL,"
            " evidence TEXT NOT NULL, PRIMARY KEY (org, epoch)) WITHOUT ROWID"
        )
        con.execute("INSERT INTO equivocations VALUES ('eu', 3, '{}')")
    store = FinalStore(path)
    try:
        rows = list(store.dump())
        assert rows == [b'["equivocations","eu",3,"{}",1]\n']
    finally:
        store.close()


def test_votes_are_one_per_round_and_a_stored_proposal_is_no_vote(tmp_path: Path) -> None:
    """A cosignature is stored once per (epoch, round); a file from when a proposal counted as
    its proposer's vote loses those rows on open, so the organization can cosign in that
    round."""
    path = tmp_path / "final.db"
    store = FinalStore(path)
    try:
        store.save_vote(Vote(4, 1, b"a" * 32, b"proposal record", "proposal"), 1)
        store.save_vote(Vote(4, 2, b"b" * 32, b"cosignature record", "cosign"), 2)
        with pytest.raises(StoreError):
            store.save_vote(Vote(4, 2, b"c" * 32, b"another text", "cosign"), 3)
    finally:
        store.close()
    store = FinalStore(path)
    try:
        assert store.votes(since_epoch=4) == {
            (4, 2): Vote(4, 2, b"b" * 32, b"cosignature record", "cosign")
        }
        store.save_vote(Vote(4, 1, b"a" * 32, b"cosignature record", "cosign"), 4)
        assert set(store.votes()) == {(4, 1), (4, 2)}
    finally:
        store.close()
