"""Joint statements as an organization takes part in them: read the statement board, draft a
statement citing stored reports, co-sign one after checking its references against this node's
own store. Used by ``obus statement`` and the demo; the board's rules are in
:mod:`bus.statement`.

Trust comes from the organization's own node: its final store's seals and the sealed trust
records give the final judge's key ring (:func:`read_board`), the one its follow-up and sealer
use, never a key ring built from a mandate file.

Drafting and co-signing sign and publish, so both refuse once the mandate has ended; reading the
board does not, and works on an ended mandate (archive mode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.crypto import SigningKey
from bus.errors import BusError, ConfigError, SealedRootMismatchError, VerificationError
from bus.kafka.admin import ensure_topics
from bus.kafka.client import KafkaSecurity, reliable_producer
from bus.kafka.replay import replay
from bus.model import Envelope, Mandate, Role, encode, sha256
from bus.policy import Evidence
from bus.statement import (
    BoardStatement,
    JointStatement,
    SealedBoard,
    StatementBook,
    StatementStatus,
    cosign,
    sign_statement,
)
from bus.store.final_reads import FinalReads
from bus.store.node import NodeStore
from bus.topics import Topics
from bus.trust import KeyRing
from bus.uuid7 import uuid7
from bus.verify import Limits
from nodes.runtime.files import refuse_if_ended


@dataclass
class Board:
    """The statements on the bus as this organization's final trust state counts them.

    Args:
        book: every statement, with the records not sealed yet applied provisionally (what
            to draft, co-sign and show now).
        final: the statements as the sealed epochs leave them (the same at every node).
        keyring: the final trust state in force for the next epoch.
        epoch: the last sealed epoch judged.
        drafts: statement id -> its first record.
        rejected: (offset, reason, detail) of refused records, final or provisional.
        unsealed: offsets of the statement records not sealed yet.
    """

    book: StatementBook
    final: StatementBook
    keyring: KeyRing
    epoch: int = 0
    drafts: dict[str, bytes] = field(default_factory=dict)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    unsealed: list[int] = field(default_factory=list)


def final_store_of(db: Path | None, final_db: Path | None) -> Path:
    """The final store to take trust from: ``final_db``, else the one beside the node store
    ``db`` (``<db stem>.final.db``, where ``obus node`` keeps it).

    Raises:
        ConfigError: neither is given.
    """
    if final_db is not None:
        return final_db
    if db is not None:
        return db.with_suffix(".final.db")
    raise ConfigError(
        "--final-db",
        "is missing",
        "pass your node's final store (--final-db FILE) or its store (--db FILE)",
    )


async def read_board(
    bootstrap: str,
    topics: Topics,
    root: Mandate,
    *,
    final_db: Path,
    security: KafkaSecurity | None = None,
    limits: Limits | None = None,
    now_ms: int | None = None,
) -> Board:
    """The statements topic judged with the final trust state of a node (no consumer group,
    nothing committed).

    The node's final store gives its final seals; the trust topics and the statements topic
    are replayed from the bus and judged epoch by epoch by a :class:`bus.statement.SealedBoard`
    (the board every node runs): the trust state is the final judge's, derived from ``root``
    (version 1 of the mandate, what the node's sealer judges from) and the sealed trust records,
    never from a mandate file. Records after the last sealed epoch are then applied to a copy,
    under the trust in force next, at ``now_ms``.

    Raises:
        StoreError: the final store is missing or unreadable.
        ConfigError: it was judged from another root.
        SealedRootMismatchError: a sealed record of these topics was altered or deleted.
    """
    reads = FinalReads(final_db)
    try:
        reads.check_root(sha256(encode(root)))
        seals = reads.seals(0, 2**62)
    finally:
        reads.close()
    board = SealedBoard(root, topics, limits, decisions=False)
    names = [topics.registry, topics.mandate, topics.statements]
    async for rec in replay(bootstrap, names, security=security):
        board.offer_records((rec.topic, rec.partition), rec.offset, [rec.value])
    out = Board(board.book, board.book, board.keyring)
    for seal in seals:
        ep = board.judge(seal)
        if ep is None:  # the seals were read before the replay began: it must hold them all
            (topic, partition), sealed = next(
                (r, p) for r, p in board.restricted(seal).partitions.items()
                if board.read_size(r) < p.size
            )  # fmt: skip
            raise SealedRootMismatchError(
                f"{topic}[{partition}] lacks records the final seal of epoch {seal.epoch}"
                f" seals (offsets below {sealed.size}): a sealed record was deleted",
                topic=topic, partition=partition, size=sealed.size,
            )  # fmt: skip
        for st in ep.statements:
            _note(out, st)
    book, tail = board.provisional(now_ms or time.time_ns() // 1_000_000)
    for st in tail:
        _note(out, st)
        out.unsealed.append(st.pos[2])
    out.book, out.final, out.keyring, out.epoch = book, board.book, board.keyring, board.epoch
    return out


def _note(board: Board, st: BoardStatement) -> None:
    if st.status is None:
        board.rejected.append((st.pos[2], st.reason, st.detail))
    else:
        board.drafts.setdefault(st.status.statement.statement_id, st.raw)


def check_signing_key(keyring: KeyRing, key: SigningKey, org: str) -> None:
    """Refuse a key whose signature would not count for ``org`` on a statement.

    A statement signature counts for an organization when it is made by the organization's
    root key or by a key the organization accredited with role NODE (bus/statement.py).

    Raises:
        ConfigError: ``--node-key`` is unknown, another organization's, or not role NODE.
    """
    fix = f"pass a key {org} accredited with role NODE (obus org accredit --role node)"
    for o in keyring.mandate.organizations:
        if o.root_key_id == key.key_id:
            if o.org != org:
                raise ConfigError("--node-key", f"key is the root key of {o.org}, not {org}", fix)
            return
    try:
        acc = keyring.lookup(key.key_id)
    except VerificationError as exc:
        raise ConfigError(
            "--node-key", f"key {key.key_id.hex()[:16]} is not accredited on the registry", fix
        ) from exc
    if acc.org != org:
        raise ConfigError("--node-key", f"key is accredited to {acc.org}, not {org}", fix)
    if acc.role != Role.NODE:
        raise ConfigError(
            "--node-key", f"key is accredited to {org} as {acc.role.name.lower()}, not node", fix
        )


def references_from_store(db: Path, report_ids: list[str]) -> tuple[Evidence, ...]:
    """Report ids -> (id, envelope digest) as this organization's store verified them.

    Raises:
        ConfigError: a report is not in the store (name it, and say how to fix it).
    """
    store = NodeStore(db, read_only=True)
    try:
        out = []
        for rid in sorted(set(report_ids)):
            digest = store.report_digest(rid)
            if digest is None:
                raise ConfigError(
                    "--report", f"{rid} is not a verified report in {db}", "name stored reports"
                )
            out.append(Evidence(rid, digest))
        return tuple(out)
    finally:
        store.close()


def check_references(db: Path, status: StatementStatus) -> list[str]:
    """Problems with a statement's references as seen from this organization's store."""
    store = NodeStore(db, read_only=True)
    try:
        problems = []
        for e in status.statement.references:
            mine = store.report_digest(e.report_id)
            if mine is None:
                problems.append(f"{e.report_id}: not among the reports this node verified")
            elif mine != e.digest:
                problems.append(f"{e.report_id}: envelope digest differs from ours")
        return problems
    finally:
        store.close()


async def publish_statement_record(
    bootstrap: str, topics: Topics, raw: bytes, *, security: KafkaSecurity | None = None
) -> int:
    """Produce one statement record (acks=all, idempotent); returns its offset."""
    await ensure_topics(bootstrap, [_statements_spec(topics)], security=security)
    producer = reliable_producer(bootstrap, security=security)
    await producer.start()
    try:
        stmt = JointStatement.decode(Envelope.decode(raw).payload)
        md = await producer.send_and_wait(topics.statements, raw, key=stmt.statement_id.encode())
        return int(md.offset)
    finally:
        await producer.stop()


def _statements_spec(topics: Topics) -> Any:
    """The statements topic exactly as ``obus topics`` makes it (log-append time, kept forever)."""
    from bus.topics import standard_topics  # noqa: PLC0415

    return next(s for s in standard_topics(topics, []) if s.name == topics.statements)


async def draft(
    bootstrap: str,
    topics: Topics,
    mandate: Mandate,
    *,
    org: str,
    key: SigningKey,
    title: str,
    text: str,
    references: tuple[Evidence, ...],
    now_ms: int | None = None,
    security: KafkaSecurity | None = None,
) -> JointStatement:
    """Draft, sign and publish a statement; returns it.

    Raises:
        ConfigError: the mandate has ended by ``now_ms`` (default: now).
    """
    created_at_ms = now_ms or time.time_ns() // 1_000_000
    refuse_if_ended(mandate, now_ms=created_at_ms)
    stmt = JointStatement(
        statement_id=uuid7(now_ms),
        mandate_id=mandate.mandate_id,
        drafted_by=org,
        title=title,
        text=text,
        references=references,
        created_at_ms=created_at_ms,
    )
    await publish_statement_record(bootstrap, topics, sign_statement(stmt, key), security=security)
    return stmt


async def sign(
    bootstrap: str,
    topics: Topics,
    mandate: Mandate,
    *,
    statement_id: str,
    key: SigningKey,
    db: Path | None = None,
    security: KafkaSecurity | None = None,
    org: str | None = None,
    final_db: Path | None = None,
    root: Mandate | None = None,
) -> StatementStatus:
    """Co-sign a drafted statement on the bus (after checking its references against ``db``).

    The statement is read with the final trust state of the node whose final store is
    ``final_db`` (default: beside ``db``), judged from ``root`` (default: ``mandate``, which
    must then be version 1): :func:`read_board`. With ``org``, the key must be that
    organization's (root key, or accredited role NODE) in that trust state.

    Raises:
        ConfigError: the mandate has ended, no final store is named, or ``key`` is not
            ``org``'s node key.
        BusError: the statement is unknown, or its references do not match this store.
    """
    refuse_if_ended(mandate)
    board = await read_board(
        bootstrap, topics, root or mandate, final_db=final_store_of(db, final_db),
        security=security,
    )  # fmt: skip
    if org is not None:
        check_signing_key(board.keyring, key, org)
    status = board.book.get(statement_id)
    if status is None:
        raise BusError(f"no verified statement {statement_id} on {topics.statements}")
    if db is not None:
        problems = check_references(db, status)
        if problems:
            raise BusError("refusing to sign: " + "; ".join(problems))
    raw = cosign(board.drafts[statement_id], key)
    await publish_statement_record(bootstrap, topics, raw, security=security)
    status, _ = board.book.apply(raw, at_ms=time.time_ns() // 1_000_000)
    return status
