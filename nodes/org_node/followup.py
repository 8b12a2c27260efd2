"""An organization's follow-up: its own decisions, their publication, and what others publish.

Runs beside the ingest loop of :mod:`nodes.org_node.ingest` and shares only the node's SQLite file
with it (through its own connection):

* **Decisions.** Each rule of the policy acts on final or provisional verdicts
  (:mod:`bus.policy`). Final rules see, epoch after epoch as the node's sealer stores them in
  its final store (:class:`FinalSource`), the reports whose final verdict is ``accepted``, in
  the judge's order, with *t_e* as their time: an epoch is evaluated once the node's own store
  holds the bytes of each of them (the envelope it accepted, or the record it quarantined when
  its row keeps all of it, checked to be the report the judge named); a report whose bytes the
  node did not keep is left out, counted in :attr:`FollowUp.late` and logged. Provisional rules
  see every report the ingest loop accepted, at once, in the order it stored them. Decisions
  are stored with stable ids, so a restart that replays the store and the final store
  re-derives the same ones and stores nothing twice.
* **Publication.** Decisions whose rule says ``publish = true`` (each naming the epoch and
  final seal it rests on, or none for a provisional rule's) are signed with the node key
  (accredited by this organization with role NODE) and produced (idempotent, acks=all) to
  ``<prefix>decisions.<org>``, keyed by decision id. The organization's decisions form one hash
  chain (:mod:`bus.decision`): each names the seq after the chain head and the SHA-256 of the
  head's envelope. The head is the stored signed envelope with the highest seq, read from the
  store at start, so a restart continues the chain where it stands. The signed envelope and
  its seq are stored before sending, so a crash in between resends the same bytes, in seq
  order before anything newer is signed. Once the mandate has ended nothing more is signed or
  sent: decisions are still made and stored, and those waiting to be published stay so, logged
  once as ``decisions_unpublished_mandate_ended`` (archive mode; the dashboard still shows
  them).
* **The board.** A consumer without group reads the trust topics (``<prefix>registry``,
  ``<prefix>mandate``), every ``<prefix>decisions.*`` topic and ``<prefix>statements`` into a
  :class:`bus.statement.SealedBoard`, which judges them one final epoch at a time, with the
  final seals the node's sealer stored (its final store, :class:`FinalSource`): decisions as
  the final judge judges them (verified and chained under their epoch's trust at *t_e*), and
  statement signatures under the key ring in force at their epoch. That key ring is the final
  judge's, built from the root mandate and the sealed trust records, never from the node's
  mandate file: a root rotated out accredits nothing and signs nothing, and every node holds
  the same board whatever mandate file it was started with. Verified decisions, statement
  signatures and rejected records are stored with the board's state after their epoch in one
  transaction, and a restart continues from that state with the statement book rebuilt from
  the stored statements (so a co-signature read after a restart counts for a statement drafted
  before it). Other organizations' decisions are shown, never acted upon: nothing here feeds
  them to the policy. The node key that signs published decisions is checked against the same
  key ring. Without a final store (a node run without its sealer) the board does not run and
  nothing is published, which is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bus.crypto import SigningKey
from bus.decision import PublishedDecision, sign_decision
from bus.errors import (
    BusError,
    EpochInputError,
    Reason,
    SealedRootMismatchError,
    StoreError,
    TransportError,
    VerificationError,
)
from bus.ingest import Quarantined, RecordRef
from bus.kafka.admin import partitions_of
from bus.kafka.client import KafkaSecurity, client_options, kafka_errors, reliable_producer
from bus.model import Mandate, Role, encode, sha256
from bus.policy import (
    Decision,
    Observation,
    Policy,
    PolicyEngine,
    observation_from_stored,
)
from bus.statement import BoardEpoch, JointStatement, SealedBoard, StatementBook, StatementStatus
from bus.store.final_reads import AcceptedReport, FinalReads
from bus.store.node import PUB_SIGNED, NodeStore, evidence_from_json
from bus.topics import Topics
from bus.trust import KeyRing
from bus.verify import ChainHead, Limits
from nodes.runtime.backoff import OutageBackoff, transient
from nodes.runtime.files import ended_on, mandate_ended

log = structlog.get_logger(__name__)

# Final epochs evaluated per turn (a restart replays every epoch from the first).
_EPOCHS_PER_TURN: Final = 500


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def stored_decision_head(store: NodeStore) -> ChainHead | None:
    """The organization's decision chain head as this node stored it: the signed envelope with
    the highest seq (None: it has signed none). Read from the node's own store (trusted)."""
    signed = [
        (sd.pub_seq, sd.pub_envelope)
        for sd in store.own_decisions()
        if sd.pub_seq is not None and sd.pub_envelope is not None
    ]
    if not signed:
        return None
    seq, envelope = max(signed)
    return ChainHead(seq, sha256(envelope))


@dataclass(frozen=True)
class FinalSource:
    """Where the node's final verdicts are: its sealer's final store, the root mandate the bus
    began under (version 1, the same at every reader) and the verification limits the sealer
    judges with."""

    db_path: Path
    root: Mandate
    limits: Limits = field(default_factory=Limits)


def statement_status(row: dict[str, Any], mandate_id: str) -> StatementStatus:
    """A statement's status as :meth:`bus.store.node.NodeStore.statement_rows` stored it (the
    store holds only statements the board verified for ``mandate_id``)."""
    stmt = JointStatement(
        statement_id=str(row["statement_id"]),
        mandate_id=mandate_id,
        drafted_by=str(row["drafted_by"]),
        title=str(row["title"]),
        text=str(row["text"]),
        references=evidence_from_json(str(row["references_json"])),
        created_at_ms=int(row["created_at_ms"]),
    )
    return StatementStatus(
        stmt,
        bytes.fromhex(str(row["digest"])),
        int(row["threshold"]),
        int(row["organizations"]),
        dict(row["signers"]),
    )


def load_board(store: NodeStore, final: FinalSource, topics: Topics) -> SealedBoard:
    """The board as the store holds it: its state after the last epoch it committed, with the
    statement book rebuilt from the stored statements. A store with no board state (never
    judged on the sealed log) forgets the board rows it has, which the board derives again
    from the first epoch."""
    state = store.board_state()
    if state is None:
        store.reset_board()
        return SealedBoard(final.root, topics, final.limits)
    book = StatementBook(KeyRing(final.root))
    for row in store.statement_rows():
        book.restore(statement_status(row, final.root.mandate_id))
    return SealedBoard.resume(state[1], final.root, topics, final.limits, book=book)


@dataclass(frozen=True)
class FollowUpConfig:
    """What the follow-up needs (built from the node's configuration).

    Args:
        org: this organization.
        bootstrap: Kafka bootstrap servers.
        db_path: the node's SQLite store.
        mandate: the verified mandate.
        policy: this organization's policy; None: decide nothing (the board still runs).
        node_key: signs published decisions; None: publishable decisions wait, with a warning.
        topics: topic naming.
        refresh_s: how often new decisions topics and partitions are looked for.
        poll_timeout_ms: longest wait for board records per loop turn.
        drain_s: on stop, how long to keep evaluating final epochs already stored.
        security: how to authenticate to the brokers (the node's; None: PLAINTEXT).
        final: the node's final store (its sealer's); None: no board, no final decision and
            nothing published.
    """

    org: str
    bootstrap: str
    db_path: Path
    mandate: Mandate
    policy: Policy | None = None
    node_key: SigningKey | None = None
    topics: Topics = field(default_factory=Topics)
    refresh_s: float = 1.0
    poll_timeout_ms: int = 200
    drain_s: float = 5.0
    security: KafkaSecurity | None = None
    final: FinalSource | None = None


class FollowUp:
    """Decisions, their publication and the board of others' decisions and statements."""

    def __init__(self, config: FollowUpConfig) -> None:
        self.config = config
        self.engine = PolicyEngine(config.policy) if config.policy is not None else None
        self.publishes = config.policy is not None and any(r.publish for r in config.policy.rules)
        self.board: SealedBoard | None = None  # loaded from the store by run()
        self.board_alarm: dict[str, Any] | None = None
        self._final: FinalReads | None = None
        self.counts: dict[str, int] = {
            "decisions": 0,
            "published": 0,
            "peer_decisions": 0,
            "statement_signatures": 0,
            "board_rejected": 0,
            "board_epoch": 0,
        }
        self._stopping = asyncio.Event()
        self._marks = (0, 0)
        self._known: set[str] = set()
        self._pending = 0  # final epochs stored by the sealer, not evaluated yet
        self._unreadable = 0
        self._board_tps: set[TopicPartition] = set()
        self._warned: set[str] = set()
        self._log = log.bind(org=config.org)
        self.started = asyncio.Event()
        self._admin: AIOKafkaAdminClient | None = None
        self._decision_head: ChainHead | None = None  # read from the store by run()

    def stop(self) -> None:
        """Ask run() to drain and return."""
        self._stopping.set()

    @property
    def keyring(self) -> KeyRing | None:
        """The final trust state in force for the next epoch (the board's, which is the final
        judge's), or None while the board has not started."""
        return None if self.board is None else self.board.keyring

    @property
    def pending(self) -> int:
        """Final epochs the sealer stored that the final rules have not evaluated yet (their
        reports not all in the node's store yet, or not reached)."""
        return self._pending

    @property
    def late(self) -> int:
        """Finally accepted reports the final rules could not read: this node quarantined the
        record and kept only part of it (or another record at that position)."""
        return self._unreadable

    async def run(self) -> None:
        """Run until stop(); then evaluate the final epochs stored, for at most ``drain_s``."""
        cfg = self.config
        store = NodeStore(cfg.db_path)
        consumer = AIOKafkaConsumer(
            **client_options(cfg.bootstrap, cfg.security), group_id=None, enable_auto_commit=False
        )
        producer: AIOKafkaProducer | None = None
        try:
            with kafka_errors("follow-up"):
                self._known = store.decision_ids()
                self._decision_head = stored_decision_head(store)
                if cfg.final is not None:
                    self.board = await asyncio.to_thread(load_board, store, cfg.final, cfg.topics)
                    self.counts["board_epoch"] = self.board.epoch
                else:
                    self._log.warning(
                        "board_not_running", reason="no_final_store",
                        detail="others' decisions and statements are judged, final rules"
                        " decide and decisions are published only beside the node's sealer",
                    )  # fmt: skip
                await consumer.start()
                archive = mandate_ended(cfg.mandate)
                if self.publishes and not archive:
                    producer = reliable_producer(cfg.bootstrap, security=cfg.security)
                    await producer.start()
                self._log.info(
                    "followup_started",
                    decisions=len(self._known),
                    board_epoch=self.counts["board_epoch"],
                    publishing=producer is not None,
                    archive=archive,
                )
                self.started.set()
                last_refresh = 0.0
                backoff = OutageBackoff(self._log, "follow-up", self._stopping)
                while not self._stopping.is_set():
                    try:
                        with kafka_errors("follow-up"):
                            if time.monotonic() - last_refresh >= cfg.refresh_s:
                                await self._refresh(consumer)
                                last_refresh = time.monotonic()
                            await self._turn(store, consumer, producer)
                    except TransportError as exc:
                        # The brokers are away (restart, partition): wait, never exit for it.
                        # What the board holds stays; reading goes on where it stands.
                        if not transient(exc):
                            raise
                        self._seek_board(consumer)
                        await backoff.wait(exc)
                        continue
                    backoff.reset()
                deadline = time.monotonic() + cfg.drain_s
                while time.monotonic() < deadline:
                    await self._decide(store)
                    if not self.pending:
                        break
                    await asyncio.sleep(0.1)
                await self._publish(store, producer)
        finally:
            self.started.set()
            if self._admin is not None:
                with contextlib.suppress(TransportError), kafka_errors("closing the admin client"):
                    await self._admin.close()
                self._admin = None
            if producer is not None:
                await producer.stop()
            await consumer.stop()
            if self._final is not None:
                self._final.close()
                self._final = None
            store.close()
            self._log.info("followup_stopped", pending=self.pending, **self.counts)

    # -- decisions ---------------------------------------------------------------------------

    def _read_store(self, store: NodeStore) -> list[Decision]:
        """What the provisional rules decide on the reports stored since the last call."""
        engine = self.engine
        if engine is None or not engine.provisional.rules:
            return []
        rows, r_mark, q_mark = store.log_records_since(*self._marks)
        self._marks = (r_mark, q_mark)
        out: list[Decision] = []
        for _, _, _, stored_at, digest, raw in rows:
            if raw is not None and digest is not None:
                obs = observation_from_stored(raw, digest)
                if obs is not None:
                    out.extend(engine.on_stored(obs, stored_at))
        return out

    def _read_final(self, store: NodeStore) -> list[Decision]:
        """What the final rules decide on the epochs the sealer stored since the last call (at
        most :data:`_EPOCHS_PER_TURN`), up to the first whose reports the node has not all
        stored yet."""
        engine = self.engine
        final = self._final_reads()
        if engine is None or not engine.final.rules or final is None:
            return []
        last = final.last_epoch()
        first = engine.final_epoch + 1
        upto = min(last, first + _EPOCHS_PER_TURN - 1)
        out: list[Decision] = []
        if upto >= first:
            rows = final.accepted_reports(first, upto)
            contents = store.report_contents((r.topic, r.partition, r.offset) for r in rows)
            by_epoch: dict[int, list[AcceptedReport]] = {}
            for r in rows:
                by_epoch.setdefault(r.judged_epoch, []).append(r)
            for seal in final.seal_refs(first, upto):
                accepted = by_epoch.get(seal.epoch, [])
                if any((r.topic, r.partition, r.offset) not in contents for r in accepted):
                    break  # the ingest loop has not stored them yet
                seen = [self._observation(r, contents[(r.topic, r.partition, r.offset)])
                        for r in accepted]  # fmt: skip
                out.extend(engine.on_final(seal, [o for o in seen if o is not None]))
        self._pending = last - engine.final_epoch
        return out

    def _observation(self, r: AcceptedReport, content: bytes | None) -> Observation | None:
        """What a final rule sees of a finally accepted report: this node's bytes at its
        position, when they are that report (None: restricted, or unreadable here)."""
        obs = None
        if content is not None:
            try:
                obs = observation_from_stored(content, sha256(content))
            except BusError:
                obs = None
            else:
                if obs is None:
                    return None  # a restricted report: policies never read its content
                rep = obs.report
                if (rep.org, rep.observer_id, rep.seq, rep.report_id) != (
                    r.org, r.observer_id, r.seq, r.report_id,
                ):  # fmt: skip
                    obs = None
        if obs is None:
            self._unreadable += 1
            self._log.warning(
                "final_report_unreadable", topic=r.topic, partition=r.partition, offset=r.offset,
                report_id=r.report_id,
                detail="the node did not keep this record, or kept another one at its position",
            )  # fmt: skip
        return obs

    async def _refresh(self, consumer: AIOKafkaConsumer) -> None:
        """Learn the board's topics and partitions."""
        topics = self.config.topics
        exact = [f"^{re.escape(t)}$" for t in (topics.statements, topics.registry, topics.mandate)]
        pattern = "|".join((topics.decisions_pattern, *exact))
        if self._admin is None:  # one client for the follow-up's life, not one per refresh
            admin = AIOKafkaAdminClient(
                **client_options(self.config.bootstrap, self.config.security)
            )
            try:
                with kafka_errors("follow-up"):
                    await admin.start()
            except TransportError:
                await admin.close()
                raise  # the run loop waits for the brokers, then this starts again
            self._admin = admin
        tps = await partitions_of(self._admin, pattern=pattern)
        await self._assign_board(consumer, tps)

    async def _decide(self, store: NodeStore) -> list[Decision]:
        decided = await asyncio.to_thread(self._read_store, store)
        decided += await asyncio.to_thread(self._read_final, store)
        fresh = [d for d in decided if d.decision_id not in self._known]
        if not fresh:
            return []
        new = await asyncio.to_thread(store.add_decisions, fresh)
        for d in new:
            self._known.add(d.decision_id)
            self.counts["decisions"] += 1
            self._log.info(
                "decision",
                decision_id=d.decision_id,
                rule=d.rule,
                kind=d.kind,
                action=d.action,
                priority=d.priority,
                zone=d.zone,
                evidence=len(d.evidence),
                publish=d.publish,
                seal_epoch=d.seal_epoch,
            )
        return new

    async def _publish(self, store: NodeStore, producer: AIOKafkaProducer | None) -> None:
        if not self.publishes:
            return
        waiting = store.own_decisions(unpublished=True)
        if not waiting:
            return
        mandate = self.config.mandate
        if producer is None or mandate_ended(mandate):  # no producer: ended before the start
            self._warn_once(
                "mandate_ended", "decisions_unpublished_mandate_ended", waiting=len(waiting),
                mandate_id=mandate.mandate_id, version=mandate.version, ended=ended_on(mandate),
            )  # fmt: skip
            return
        key = self.config.node_key
        if key is None:
            self._warn_once("no_node_key", "decisions_waiting_no_node_key", waiting=len(waiting))
            return
        problem = self._node_key_problem(key)
        if problem is not None:
            self._warn_once("key", "decisions_waiting_node_key_not_accredited", reason=problem)
            return
        topic = self.config.topics.decisions(self.config.org)
        policy_digest = self.config.policy.digest if self.config.policy else b""
        for sd in waiting:
            raw = sd.pub_envelope
            if sd.pub_state != PUB_SIGNED or raw is None:
                wire = PublishedDecision.of(
                    sd.decision,
                    mandate_id=self.config.mandate.mandate_id,
                    after=self._decision_head,
                    signed_at_ms=_now_ms(),
                    policy_digest=policy_digest,
                )
                raw = sign_decision(wire, key)
                # Stored before the head moves: a failed write leaves the chain where it was.
                store.mark_signed(sd.decision.decision_id, wire.seq, raw)
                self._decision_head = ChainHead(wire.seq, sha256(raw))
            md = await producer.send_and_wait(topic, raw, key=sd.decision.decision_id.encode())
            store.mark_published(sd.decision.decision_id, md.offset)
            self.counts["published"] += 1
            self._log.info(
                "decision_published",
                decision_id=sd.decision.decision_id,
                topic=topic,
                offset=md.offset,
                seal_epoch=sd.decision.seal_epoch,  # 0: on provisional verdicts
                seal_digest=sd.decision.seal_digest.hex(),
            )

    def _node_key_problem(self, key: SigningKey) -> str | None:
        """Why the final trust state would not count ``key`` on a decision (None: it would)."""
        ring = self.keyring
        if ring is None:
            return "no_final_trust_state"
        try:
            acc = ring.lookup(key.key_id)
            ring.check_usable(acc, role=Role.NODE, at_ms=_now_ms(), seq=ring_epoch(self))
        except VerificationError as exc:
            return exc.reason.value
        if acc.org != self.config.org:
            return Reason.WRONG_ORG.value
        return None

    def _warn_once(self, key: str, event: str, **kw: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(event, **kw)

    # -- the board ---------------------------------------------------------------------------

    async def _turn(
        self,
        store: NodeStore,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer | None,
    ) -> None:
        await self._decide(store)
        await self._publish(store, producer)
        if not self._board_tps:
            await asyncio.sleep(self.config.poll_timeout_ms / 1000)
            return
        batch = await consumer.getmany(timeout_ms=self.config.poll_timeout_ms, max_records=2000)
        board = self.board
        if board is None:
            return
        for tp, records in batch.items():
            if self.board_alarm is None:
                self._offer_board((tp.topic, tp.partition), records)
        if self.board_alarm is None:
            await self._judge_board(store, board)

    def _offer_board(self, ref: tuple[str, int], records: list[Any]) -> None:
        """Offer one partition's fetched records in runs of consecutive offsets."""
        assert self.board is not None
        run: list[bytes | None] = []
        start = -1
        try:
            for rec in records:
                if run and rec.offset != start + len(run):
                    self.board.offer_records(ref, start, run)
                    run = []
                if not run:
                    start = rec.offset
                run.append(rec.value)
            if run:
                self.board.offer_records(ref, start, run)
        except EpochInputError as exc:
            self._raise_alarm("epoch_input", exc.message, exc.context)

    def _raise_alarm(self, reason: str, detail: str, context: Mapping[str, object]) -> None:
        """A sealed record altered or deleted, or read twice with other bytes: the board stops
        judging (it stays where it stands) and says so once, in the log and its status."""
        extra = {k: str(v) for k, v in context.items()}
        self.board_alarm = {"reason": reason, "detail": detail, **extra}
        self._log.error("board_log_broken", **self.board_alarm)

    def _final_reads(self) -> FinalReads | None:
        """The node's final store, opened once it exists (the sealer creates it)."""
        final = self.config.final
        if self._final is None and final is not None and final.db_path.exists():
            self._final = FinalReads(final.db_path)
            self._final.check_root(sha256(encode(final.root)))
        return self._final

    async def _judge_board(self, store: NodeStore, board: SealedBoard) -> None:
        """Judge every final seal the sealer stored whose records the board holds; store the
        answers with the board's state in one transaction."""
        final = self._final_reads()
        if final is None:
            return
        epochs: list[BoardEpoch] = []
        for seal in await asyncio.to_thread(final.seals, board.epoch, 200):
            try:
                ep = board.judge(seal, final.seal_digest)
            except SealedRootMismatchError as exc:
                self._raise_alarm(Reason.SEALED_ROOT_MISMATCH.value, exc.message, exc.context)
                break
            except EpochInputError as exc:
                self._raise_alarm("epoch_input", exc.message, exc.context)
                break
            if ep is None:
                break  # its records are not all read yet
            epochs.append(ep)
        if not epochs:
            return
        decisions: list[tuple[RecordRef, Any, bytes]] = []
        signed: list[tuple[RecordRef, StatementStatus, list[str]]] = []
        rejected: list[Quarantined] = []
        for ep in epochs:
            for d in ep.decisions:
                ref = RecordRef(d.pos[0], d.pos[1], d.pos[2], ep.time_ms)
                if d.accepted is not None:
                    decisions.append((ref, d.accepted, d.raw))
                else:
                    rejected.append(Quarantined(ref, d.reason, d.detail, d.raw))
            for st in ep.statements:
                ref = RecordRef(st.pos[0], st.pos[1], st.pos[2], ep.time_ms)
                if st.status is not None:
                    signed.append((ref, st.status, list(st.added)))
                else:
                    rejected.append(Quarantined(ref, st.reason, st.detail, st.raw))
        state = (board.epoch, board.snapshot())
        try:
            await asyncio.to_thread(
                store.commit_board, decisions, signed, rejected, {}, board_state=state
            )
        except StoreError:
            self._log.exception("board_store_failed")
            raise
        self.counts["board_epoch"] = board.epoch
        self.counts["peer_decisions"] += len(decisions)
        self.counts["statement_signatures"] += sum(len(a) for _, _, a in signed)
        self.counts["board_rejected"] += len(rejected)
        for ep in epochs:
            for st in ep.statements:
                if st.status is not None and st.added:
                    self._log.info(
                        "statement_signed",
                        statement_id=st.status.statement.statement_id,
                        by=list(st.added),
                        signed=st.signed,
                        threshold=st.status.threshold,
                        valid=st.signed >= st.status.threshold,
                        offset=st.pos[2],
                        epoch=ep.epoch,
                    )
        for q in rejected:
            self._log.warning(
                "board_record_rejected",
                topic=q.ref.topic,
                partition=q.ref.partition,
                offset=q.ref.offset,
                reason=q.reason,
                detail=q.detail,
            )

    def _seek_board(self, consumer: AIOKafkaConsumer) -> None:
        """Position every board partition after the records the board holds."""
        board = self.board
        for tp in self._board_tps:
            held = 0 if board is None else board.read_size((tp.topic, tp.partition))
            consumer.seek(tp, held)

    async def _assign_board(self, consumer: AIOKafkaConsumer, found: list[TopicPartition]) -> None:
        board = self.board
        if board is None:
            return
        tps = {tp for tp in found if board.covers(tp.topic)}
        if tps == self._board_tps:
            return
        consumer.assign(sorted(tps, key=lambda tp: (tp.topic, tp.partition)))
        self._board_tps = tps
        self._seek_board(consumer)
        self._log.info("board_assigned", partitions=len(tps))


def ring_epoch(followup: FollowUp) -> int:
    """The epoch the final trust state is in force for (the board's next)."""
    return 0 if followup.board is None else followup.board.epoch + 1


async def wait_started(followup: FollowUp, timeout_s: float = 30) -> None:
    """Wait until the follow-up has replayed the store and connected (tests, the dashboard)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(followup.started.wait(), timeout_s)
