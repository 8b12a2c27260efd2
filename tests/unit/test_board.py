"""The board on the sealed log: others' decisions and joint statements judged epoch by epoch
under the final judge's trust state, the same whatever the read order or restarts, and one
trust state for the follow-up, its statement book and the statement commands (pure, plus the
node store and a final store file; no broker)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from bus.crypto import SigningKey
from bus.epoch import FinalSeal
from bus.errors import SealedRootMismatchError, VerificationError
from bus.ingest import RecordRef
from bus.judge import EpochVerdicts, Status
from bus.model import Accreditation, Envelope, Revocation, Role, encode, sha256
from bus.policy import Evidence
from bus.sign import sign_accreditation, sign_mandate, sign_revocation
from bus.statement import (
    BoardEpoch,
    JointStatement,
    SealedBoard,
    StatementBook,
    StatementStatus,
    cosign,
    sign_statement,
)
from bus.store.final import FinalStore
from bus.store.node import NodeStore
from bus.trust import KeyRing
from bus.uuid7 import uuid7
from bus.verify import ChainHead
from nodes.org_node.followup import FinalSource, FollowUp, FollowUpConfig, load_board
from tests.mission import Mission, demo_key, make_mission
from tests.sealed_log import NOW_MS, TOPICS, SealedLog, make_decision

STATEMENTS = TOPICS.statements
FOUR = ["un", "osce", "eu", "nato"]


def _bus() -> tuple[Mission, SealedLog]:
    """Epoch 1 publishes the root and accredits the observers and every organization's node
    key (in force from epoch 2)."""
    m = make_mission()
    log = SealedLog(m.scenario.mandate)
    log.put(TOPICS.mandate, m.scenario.mandate_envelope)
    for raw in (*m.scenario.accreditations, *m.scenario.node_accreditations):
        log.put(TOPICS.registry, raw)
    log.seal(NOW_MS)
    return m, log


def _statement(m: Mission, n: int = 0, drafted_by: str = "osce") -> JointStatement:
    return JointStatement(
        statement_id=uuid7(NOW_MS + n, bytes(10)),
        mandate_id=m.mandate_id,
        drafted_by=drafted_by,
        title=f"Statement {n}",
        text="Ceasefire violations doubled week over week.",
        references=(Evidence(uuid7(NOW_MS, bytes(10)), bytes(32)),),
        created_at_ms=NOW_MS,
    )


def _rotate_un_root(m: Mission) -> tuple[bytes, SigningKey]:
    """Mandate version 2: UN's root key replaced (signed by four roots and the new one)."""
    new_root = demo_key("board:new-root:un")
    orgs = tuple(
        dataclasses.replace(o, root_public_key=new_root.public_key) if o.org == "un" else o
        for o in m.scenario.mandate.organizations
    )
    v2 = dataclasses.replace(m.scenario.mandate, version=2, organizations=orgs)
    signers = [m.scenario.org_roots[o] for o in FOUR] + [new_root]
    return sign_mandate(v2, signers).encode(), new_root


def _revoke_node(m: Mission, org: str, last_valid_epoch: int) -> bytes:
    rev = Revocation(
        org, m.scenario.node_keys[org].key_id, last_valid_epoch, NOW_MS, "lost", 3, m.mandate_id
    )
    return sign_revocation(rev, m.scenario.org_roots[org]).encode()


def _feed(board: SealedBoard, log: SealedLog, order: list[tuple[str, int]] | None = None) -> None:
    for ref in order or sorted(log.partitions):
        board.offer_records(ref, 0, log.partitions[ref])


def _judge_all(board: SealedBoard, seals: list[FinalSeal]) -> list[BoardEpoch]:
    out = []
    for seal in seals[board.epoch :]:
        ep = board.judge(seal)
        assert ep is not None, f"epoch {seal.epoch} not ready"
        out.append(ep)
    return out


def _board(log: SealedLog) -> tuple[SealedBoard, list[BoardEpoch]]:
    board = SealedBoard(log.root, TOPICS)
    _feed(board, log)
    return board, _judge_all(board, log.seals)


Projection = tuple[object, ...]


def _project(eps: list[BoardEpoch]) -> list[Projection]:
    """What every reader must agree on (human details aside)."""
    return [
        (
            ep.epoch,
            tuple((d.pos, d.accepted is not None, d.reason) for d in ep.decisions),
            tuple((s.pos, s.added, s.signed, s.reason) for s in ep.statements),
        )
        for ep in eps
    ]


def _copy_book(book: StatementBook) -> StatementBook:
    """A book rebuilt from the statuses alone (what the store keeps)."""
    out = StatementBook(book.keyring)
    for st in book.statuses():
        out.restore(
            StatementStatus(
                st.statement, st.digest, st.threshold, st.organizations, dict(st.signed_by)
            )
        )
    return out


# -- attack 9: one trust state -------------------------------------------------------------------


def test_attack_9_a_rotated_out_root_accredits_nothing_and_signs_nothing() -> None:
    m, log = _bus()
    keys = m.scenario.node_keys
    old_root = m.scenario.org_roots["un"]
    v2, _ = _rotate_un_root(m)
    s1 = sign_statement(_statement(m, 1), keys["osce"])
    log.put(STATEMENTS, s1)
    p_root_early = log.put(STATEMENTS, cosign(s1, old_root))  # v1 still in force here
    log.put(TOPICS.mandate, v2)
    log.seal()  # epoch 2: v2 logged, in force from epoch 3
    s2 = sign_statement(_statement(m, 2), keys["osce"])
    log.put(STATEMENTS, s2)
    p_root_late = log.put(STATEMENTS, cosign(s2, old_root))
    p_node_late = log.put(STATEMENTS, cosign(s2, keys["un"]))  # accredited by the old root
    p_decision = log.put(
        TOPICS.decisions("un"), make_decision(m.mandate_id, "un", keys["un"], None)
    )
    log.seal()  # epoch 3
    board, eps = _board(log)
    said = {s.pos: s for ep in eps for s in ep.statements}
    assert said[p_root_early].added == ("un",)  # the root in force at its epoch
    assert said[p_root_late].reason == "unknown_key"  # rotated out: signs nothing
    assert said[p_node_late].reason == "unknown_key"  # its accreditation fell with its root
    [d] = [d for ep in eps for d in ep.decisions if d.pos == p_decision]
    assert d.accepted is None and d.reason == "unknown_key"
    assert sorted(board.book.get(_statement(m, 2).statement_id).signed_by) == ["osce"]  # type: ignore[union-attr]
    assert board.keyring.mandate.version == 2
    with pytest.raises(VerificationError) as exc:
        board.keyring.lookup(keys["un"].key_id)
    assert exc.value.reason.value == "unknown_key"
    # What the board replaces: a key ring fixed from the mandate file (v1) still counts both.
    fixed = KeyRing(m.scenario.mandate)
    for raw in m.scenario.node_accreditations:
        fixed.apply(Envelope.decode(raw))
    old = StatementBook(fixed)
    old.apply(s2)
    _, added = old.apply(cosign(s2, old_root))
    assert added == ["un"]


def test_attack_9_nodes_started_from_different_mandate_files_hold_one_board() -> None:
    """The board depends on the root and the sealed log only: a node whose mandate file is
    version 2 (its follow-up's own mandate) judges exactly as one started from version 1."""
    m, log = _bus()
    v2, new_root = _rotate_un_root(m)
    log.put(TOPICS.mandate, v2)
    log.seal()
    s = sign_statement(_statement(m), m.scenario.node_keys["osce"])
    log.put(STATEMENTS, s)
    log.put(STATEMENTS, cosign(s, new_root))  # the new root counts from epoch 3
    log.put(STATEMENTS, cosign(s, m.scenario.org_roots["un"]))
    log.seal()
    runs = []
    for _file_version in (1, 2):  # the mandate file plays no part: only the root does
        _, eps = _board(log)
        runs.append(_project(eps))
    assert runs[0] == runs[1]
    final = [s for ep in _board(log)[1] for s in ep.statements]
    assert [s.added for s in final] == [("osce",), ("un",), ()]


def test_a_node_key_counts_on_statements_up_to_the_epoch_it_is_revoked_at() -> None:
    m, log = _bus()
    keys = m.scenario.node_keys
    s = sign_statement(_statement(m, drafted_by="un"), keys["un"])
    log.put(STATEMENTS, s)
    log.put(TOPICS.registry, _revoke_node(m, "osce", 2))  # counts on epochs 1..2
    p_in = log.put(STATEMENTS, cosign(s, keys["osce"]))
    log.seal()  # epoch 2
    s2 = sign_statement(_statement(m, 2, "un"), keys["un"])
    log.put(STATEMENTS, s2)
    log.seal()  # epoch 3: the revocation in force
    p_out = log.put(STATEMENTS, cosign(s2, keys["osce"]))
    log.seal()  # epoch 4
    _, eps = _board(log)
    said = {st.pos: st for ep in eps for st in ep.statements}
    assert said[p_in].added == ("osce",)
    assert said[p_out].reason == "unknown_key"


# -- the same board at every reader ---------------------------------------------------------


def _busy_log() -> tuple[Mission, SealedLog]:
    """Decisions (chained, a fork, a node key re-accredited) and statements over five epochs."""
    m, log = _bus()
    keys = m.scenario.node_keys
    d1 = make_decision(m.mandate_id, "osce", keys["osce"], None, n=1)
    log.put(TOPICS.decisions("osce"), d1)
    s = sign_statement(_statement(m, drafted_by="un"), keys["un"])
    log.put(STATEMENTS, s)
    log.seal()
    head = ChainHead(1, sha256(d1))
    log.put(TOPICS.decisions("osce"), make_decision(m.mandate_id, "osce", keys["osce"], head, n=2))
    log.put(TOPICS.decisions("osce"), make_decision(m.mandate_id, "osce", keys["osce"], head, n=3))
    log.put(STATEMENTS, cosign(s, keys["osce"]))
    log.put(STATEMENTS, cosign(s, demo_key("board:forger")))
    log.put(STATEMENTS, b"not a statement")
    log.seal()
    new = demo_key("board:eu-node-2")
    mandate = m.scenario.mandate
    acc = Accreditation("eu-node-2", "eu", Role.NODE, new.public_key, mandate.not_before_ms,
                        mandate.not_after_ms, 901, mandate.mandate_id)  # fmt: skip
    log.put(TOPICS.registry, sign_accreditation(acc, m.scenario.org_roots["eu"]).encode())
    log.put(TOPICS.decisions("eu"), make_decision(m.mandate_id, "eu", new, None, n=4))  # deferred
    log.put(STATEMENTS, cosign(s, new))  # its accreditation is not in force yet
    log.seal()
    log.put(STATEMENTS, cosign(s, new))
    log.put(STATEMENTS, cosign(s, m.scenario.org_roots["nato"]))
    log.seal()
    return m, log


def test_the_board_is_the_same_whatever_the_read_order_and_restarts() -> None:
    _, log = _busy_log()
    _, reference = _board(log)
    refs = sorted(log.partitions)
    rng = random.Random(5)
    for _ in range(6):
        order = refs[:]
        rng.shuffle(order)
        board = SealedBoard(log.root, TOPICS)
        got: list[BoardEpoch] = []
        stop = rng.randrange(1, len(log.seals))
        for ref in order:  # records one by one, partitions in a random order
            for offset, value in enumerate(log.partitions[ref]):
                board.offer_records(ref, offset, [value])
        got += _judge_all(board, log.seals[:stop])
        # A restart: the snapshot and a book rebuilt from the statuses, read again from the
        # positions it stands at.
        board = SealedBoard.resume(board.snapshot(), log.root, TOPICS, book=_copy_book(board.book))
        for ref in order:
            start = board.positions().get(ref, 0)
            board.offer_records(ref, start, log.partitions[ref][start:])
        got += _judge_all(board, log.seals)
        assert _project(got) == _project(reference)
    statuses = {st.statement.statement_id: st for st in _board(log)[0].book.statuses()}
    [st] = statuses.values()
    assert sorted(st.signed_by) == ["eu", "nato", "osce", "un"] and st.valid


def test_the_board_judges_decisions_as_the_final_judge_does() -> None:
    _, log = _busy_log()
    _, full = log.judge()
    judged = {
        v.pos: (v.status, v.reason)
        for ev in full
        for v in ev.verdicts
        if TOPICS.org_of_decision_topic(v.pos[0]) is not None and v.status is not Status.DEFERRED
    }
    _, eps = _board(log)
    board = {
        d.pos: (Status.ACCEPTED if d.accepted else Status.QUARANTINED, d.reason)
        for ep in eps
        for d in ep.decisions
    }
    assert board == judged
    assert sorted(r for _, r in board.values()) == ["", "", "", "chain_fork"]


def test_a_sealed_statement_altered_is_named_and_nothing_of_its_epoch_judged() -> None:
    m, log = _bus()
    s = sign_statement(_statement(m, drafted_by="un"), m.scenario.node_keys["un"])
    log.put(STATEMENTS, s)
    log.seal()
    board = SealedBoard(log.root, TOPICS)
    altered = dict(log.partitions)
    altered[(STATEMENTS, 0)] = [s[:-1] + bytes([s[-1] ^ 1])]
    for ref, values in altered.items():
        board.offer_records(ref, 0, values)
    assert board.judge(log.seals[0]) is not None
    with pytest.raises(SealedRootMismatchError):
        board.judge(log.seals[1])
    assert board.epoch == 1 and board.book.statuses() == []


def test_records_not_sealed_yet_are_applied_to_a_copy_only() -> None:
    m, log = _bus()
    s = sign_statement(_statement(m, drafted_by="un"), m.scenario.node_keys["un"])
    log.put(STATEMENTS, s)
    log.seal()
    log.put(STATEMENTS, cosign(s, m.scenario.node_keys["osce"]))  # not sealed
    board, _ = _board(log)
    book, tail = board.provisional(NOW_MS)
    assert [t.added for t in tail] == [("osce",)]
    sid = _statement(m, drafted_by="un").statement_id
    assert sorted(book.get(sid).signed_by) == ["osce", "un"]  # type: ignore[union-attr]
    assert sorted(board.book.get(sid).signed_by) == ["un"]  # type: ignore[union-attr]


# -- the follow-up's board: stored, restarted -------------------------------------------------


def _final_store(path: Path, log: SealedLog, epochs: list[EpochVerdicts]) -> None:
    store = FinalStore(path)
    store.check_identity("un", log.root.mandate_id, sha256(encode(log.root)))
    store.record(epochs, log.seals[: len(epochs)])
    store.close()


def _records(log: SealedLog, ref: tuple[str, int], start: int = 0) -> list[SimpleNamespace]:
    """What a consumer fetch hands over: offset and value."""
    return [
        SimpleNamespace(offset=start + i, value=v)
        for i, v in enumerate(log.partitions[ref][start:])
    ]


async def _follow(tmp: Path, log: SealedLog, m: Mission) -> tuple[FollowUp, NodeStore]:
    store = NodeStore(tmp / "un.db")
    f = FollowUp(
        FollowUpConfig(
            "un", "127.0.0.1:9", tmp / "un.db", m.scenario.mandate,
            final=FinalSource(tmp / "un.final.db", log.root),
        )
    )  # fmt: skip
    assert f.config.final is not None
    f.board = load_board(store, f.config.final, TOPICS)
    for ref in sorted(log.partitions):
        held = f.board.read_size(ref)
        f._offer_board(ref, _records(log, ref, held))
    return f, store


async def test_a_co_signature_read_after_a_restart_counts_for_a_statement_drafted_before(
    tmp_path: Path,
) -> None:
    m, log = _bus()
    keys = m.scenario.node_keys
    s = sign_statement(_statement(m, drafted_by="un"), keys["un"])
    log.put(STATEMENTS, s)
    log.seal()  # epoch 2: the draft
    _, judged = log.judge()
    _final_store(tmp_path / "un.final.db", log, judged)
    f, store = await _follow(tmp_path, log, m)
    assert f.board is not None
    await f._judge_board(store, f.board)
    assert [r["signed_by"] for r in store.statements()] == [["un"]]
    store.close()
    # The node restarts; then three organizations co-sign in the next epoch.
    for org in ("osce", "eu", "nato"):
        log.put(STATEMENTS, cosign(s, keys[org]))
    log.seal()
    _, judged = log.judge()
    (tmp_path / "un.final.db").unlink()
    _final_store(tmp_path / "un.final.db", log, judged)
    f, store = await _follow(tmp_path, log, m)
    assert f.board is not None and f.board.epoch == 2
    await f._judge_board(store, f.board)
    [row] = store.statements()
    assert sorted(row["signed_by"]) == ["eu", "nato", "osce", "un"]
    assert store.board_rejected() == []
    assert f.board.epoch == 3 and f.counts["statement_signatures"] == 3
    # The node's key ring is the final judge's: the same as the sealer's after epoch 3.
    assert f.keyring is not None
    assert f.keyring.lookup(keys["un"].key_id).org == "un"
    store.close()


async def test_board_rows_from_another_trust_state_are_judged_again(tmp_path: Path) -> None:
    """A store whose board rows were not made on the sealed log (no board state) forgets them:
    the board derives them again from the first epoch."""
    m, log = _bus()
    s = sign_statement(_statement(m, drafted_by="un"), m.scenario.node_keys["un"])
    log.put(STATEMENTS, s)
    log.seal()
    store = NodeStore(tmp_path / "un.db")
    fixed = KeyRing(m.scenario.mandate)
    for raw in m.scenario.node_accreditations:
        fixed.apply(Envelope.decode(raw))
    status, added = StatementBook(fixed).apply(s)
    status.signed_by["sco"] = "root key"  # a signature the old key ring counted
    ref = RecordRef(STATEMENTS, 0, 0, NOW_MS)
    store.commit_board([], [(ref, status, [*added, "sco"])], [], {})
    store.close()
    _, judged = log.judge()
    _final_store(tmp_path / "un.final.db", log, judged)
    f, store = await _follow(tmp_path, log, m)
    assert f.board is not None
    await f._judge_board(store, f.board)
    assert [r["signed_by"] for r in store.statements()] == [["un"]]
    store.close()


def test_a_decision_must_name_a_final_seal_before_its_own_epoch() -> None:
    """The final judge refuses a decision naming a seal at or after its own epoch; the board,
    holding the final seals, also refuses one naming a digest that is not that epoch's seal."""
    m, log = _bus()
    key = m.scenario.node_keys["osce"]
    log.seal()  # epoch 2
    good = make_decision(m.mandate_id, "osce", key, None, n=1, seal_epoch=2,
                         seal_digest=log.seals[1].digest)  # fmt: skip
    p_good = log.put(TOPICS.decisions("osce"), good)
    head = ChainHead(1, sha256(good))
    p_wrong = log.put(
        TOPICS.decisions("osce"),
        make_decision(m.mandate_id, "osce", key, head, n=2, seal_epoch=1, seal_digest=bytes(32)),
    )
    p_ahead = log.put(
        TOPICS.decisions("osce"),
        make_decision(m.mandate_id, "osce", key, head, n=3, seal_epoch=3,
                      seal_digest=bytes(32)),
    )  # fmt: skip
    log.seal()  # epoch 3
    _, full = log.judge()
    judged = {v.pos: v.reason or v.status.value for ev in full for v in ev.verdicts}
    assert judged[p_ahead] == "invalid_field"  # at every reader: not final when sealed
    assert judged[p_wrong] == "accepted"  # the judge holds no earlier seal digests
    board = SealedBoard(log.root, TOPICS)
    _feed(board, log)
    digests = {s.epoch: s.digest for s in log.seals}
    said = {}
    for seal in log.seals:
        ep = board.judge(seal, digests.get)
        assert ep is not None
        said.update({d.pos: d for d in ep.decisions})
    good_vd = said[p_good].accepted
    assert good_vd is not None and good_vd.decision.seal_epoch == 2
    assert (said[p_wrong].accepted, said[p_wrong].reason) == (None, "invalid_field")
    assert (said[p_ahead].accepted, said[p_ahead].reason) == (None, "invalid_field")
