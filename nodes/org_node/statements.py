"""Joint statements as an organization takes part in them: read the statement board, draft a
statement citing stored reports, co-sign one after checking its references against this node's
own store. Used by ``obus statement`` and the demo; the board's rules are in
:mod:`bus.statement`.

Drafting and co-signing sign and publish, so both refuse once the mandate has ended; reading the
board does not, and works on an ended mandate (archive mode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.crypto import SigningKey
from bus.errors import BusError, ConfigError, VerificationError
from bus.kafka.admin import ensure_topics
from bus.kafka.client import KafkaSecurity, reliable_producer
from bus.kafka.replay import replay
from bus.model import Envelope, Mandate, Role
from bus.policy import Evidence
from bus.statement import JointStatement, StatementBook, StatementStatus, cosign, sign_statement
from bus.store.node import NodeStore
from bus.topics import Topics
from bus.trust import KeyRing, decode_registry_record
from bus.uuid7 import uuid7
from nodes.runtime.files import refuse_if_ended


@dataclass
class Board:
    """The statements topic replayed from the start, verified."""

    book: StatementBook
    drafts: dict[str, bytes] = field(default_factory=dict)  # statement id -> first record
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # offset, reason, detail


async def read_keyring(
    bootstrap: str, topics: Topics, mandate: Mandate, security: KafkaSecurity | None
) -> KeyRing:
    keyring = KeyRing(mandate)
    async for rec in replay(bootstrap, [topics.registry], security=security):
        try:
            keyring.apply(decode_registry_record(rec.value or b""))
        except VerificationError:
            continue  # the nodes and the auditor name these; a reader skips them
    return keyring


async def read_board(
    bootstrap: str, topics: Topics, mandate: Mandate, *, security: KafkaSecurity | None = None
) -> Board:
    """Replay the registry and the statements topic (no consumer group, nothing committed)."""
    board = Board(StatementBook(await read_keyring(bootstrap, topics, mandate, security)))
    async for rec in replay(bootstrap, [topics.statements], security=security):
        raw = rec.value or b""
        try:
            status, _ = board.book.apply(raw)
        except VerificationError as exc:
            board.rejected.append((rec.offset, exc.reason.value, exc.message))
            continue
        board.drafts.setdefault(status.statement.statement_id, raw)
    return board


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
) -> StatementStatus:
    """Co-sign a drafted statement on the bus (after checking its references against ``db``).

    With ``org``, the key must be that organization's (root key, or accredited role NODE).

    Raises:
        ConfigError: the mandate has ended, or ``key`` is not ``org``'s node key.
        BusError: the statement is unknown, or its references do not match this store.
    """
    refuse_if_ended(mandate)
    board = await read_board(bootstrap, topics, mandate, security=security)
    if org is not None:
        check_signing_key(board.book.keyring, key, org)
    status = board.book.get(statement_id)
    if status is None:
        raise BusError(f"no verified statement {statement_id} on {topics.statements}")
    if db is not None:
        problems = check_references(db, status)
        if problems:
            raise BusError("refusing to sign: " + "; ".join(problems))
    raw = cosign(board.drafts[statement_id], key)
    await publish_statement_record(bootstrap, topics, raw, security=security)
    status, _ = board.book.apply(raw)
    return status
