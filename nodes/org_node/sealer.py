"""An organization's sealer: it reads the whole bus, proposes and cosigns seals, and keeps the
final verdicts of every sealed epoch in the node's final store.

One :class:`~bus.bus_reader.BusReader` does the deciding (pure); this module moves bytes between
Kafka, the reader and the :class:`~bus.store.final.FinalStore`:

* **Reading.** One consumer without a group is assigned partition 0 of ``<prefix>seals`` and
  every partition of every sealed topic (:meth:`bus.topics.Topics.is_sealed`; new topics and
  partitions are found by refreshing metadata), each from where the reader stands (the judged
  size, or the seals offset after the last judged epoch). Records go to the reader in the order
  they arrive: the verdicts do not depend on it.
* **Storing.** Every judged epoch is written with its final seal in one transaction; the
  reader's snapshot is written with them every ``snapshot_every`` epochs and when the sealer
  stops. After a restart the sealer resumes from the snapshot and reads again from there; epochs
  judged again write the same rows.
* **Proposing.** Proposers take turns: the first proposer of round *r* of epoch *e* is
  organization number ``(e + r - 1) mod n`` of the mandate in force (sorted ids), so round 1
  is organization ``e mod n``'s and each new round another's. A round is *ready* at a node once
  ``interval_ms`` has passed since *t_{e-1}* by its clock, the round is open there and there is
  something to seal that could become final; the turn's owner proposes as soon as it is ready,
  and the organization *d* places after it takes over ``d * takeover_ms`` after the moment it
  found the round ready itself, when no proposal of the round it can vote for has appeared (the
  owner down or lagging). A node proposes at most once per round (remembered in memory) and
  only before it voted there. A proposal is no vote (:mod:`bus.seal`): the proposer cosigns like
  every witness, once it has read its proposal back, so two proposals published at the same
  moment (turns make that rare, never impossible: nodes find a round ready at different times)
  still get every vote on the first of them.
* **Cosigning.** The first proposal of the open round, in topic order, that this node accepts
  (:meth:`bus.bus_reader.BusReader.cosign_candidate`), its own included, is cosigned. The vote
  (digest and the record) is stored per (epoch, round) *before* it is published, so a restart
  can never sign a second text in one round, and a vote stored but never read back is
  published again while its round is open.
* **Rounds.** When the votes of a round are split so that no text of it can become final any
  more, the seal chain opens the next round (the same record at every reader); the sealer logs
  ``seal_round_opened`` (epoch, round, why) at warning level and votes again.
* **Withdrawals.** A round whose votes are split may stay open because organizations that
  have not voted stay silent (their nodes down, or a dishonest minority). When its vote in the
  open round is ``withdraw_after_ms`` old by this node's clock (counted from when this run
  cast it or, after a restart, first found it stored) and the epoch is still not final here,
  the sealer publishes a signed withdrawal (:func:`bus.seal.sign_withdrawal`; its vote then
  counts for no text, :mod:`bus.seal`, "Withdrawals") once per round, logs
  ``seal_withdrawn`` at warning level, and never votes again in that round: with at least k
  organizations doing so the round dies and the next one opens. The timeout must be well
  above the time a healthy round takes (proposal, k cosignatures, reading them back): a
  shorter one trades nothing for liveness and gives an operator who delays records an easier
  fork (:mod:`bus.seal`, "What an operator who hides records can do"). The default is six
  seal intervals (a healthy round takes about one); 0 never withdraws (an operator then needs
  an equivocating organization to fork, and two silent organizations at a split can stall an
  epoch for good).
* **Alarms.** A sealed record altered or deleted (a root that does not match a final seal) stops
  judging: ``sealed_root_mismatch`` is logged at error level with the partition and the size,
  kept in :attr:`Sealer.alarm` and shown by the health endpoint; reading the seals topic goes
  on. A fork (:mod:`bus.seal`, "Forks": k organizations' votes on a text of the open epoch
  that does not follow this node's final seal, or on a second text of its newest final epoch)
  does the same with reason ``seal_fork``: its history is in doubt, so it stops judging and
  witnessing. A final seal 1 whose carried node accreditations are not its registry's
  (``seal_carried_trust_mismatch``) is logged and shown and judging goes on: the seal stands.
  Both notes of every such alarm are kept in the final store (``seal_alarms``) and listed in
  the health JSON (``seal_alarms``). Equivocation evidence is stored and logged.
* **Proposals beyond the log.** A proposal that seals more records of a partition than this
  node has read is waited on, and every later proposal of its round behind it; so while the
  first proposal it waits on is behind, the sealer asks the broker for that partition's end
  (a partition not in its metadata holds nothing) and refuses the proposal
  (``seal_beyond_log``) when it claims more: a proposal claiming records the log will never
  hold costs one look-up, not the round.
* **Back-pressure.** While more than ``max_buffered`` records wait for a final seal (no quorum
  seals), reading the data partitions pauses; the seals topic is still read.
* **Each signature verified once** (:class:`SignatureMemo`). The node's ingest loop and its
  sealer run in one process, and both judge every report: the provisional verdict first, the
  final one when its epoch is sealed. The ingest loop notes every report it *accepted* (its
  signature verified, by this process or by the node's own verify workers, under the one rule)
  in a memo shared with the sealer (:func:`recording`, wired by :mod:`nodes.org_node.process`);
  the sealer's judge skips the signature check of exactly those bytes under exactly that key
  and verifies everything else itself. The memo is keyed by the record's SHA-256 (the
  envelope digest the ingest already computed) and holds the signing key's id
  (SHA-256 of the public key), so a pair vouches for one byte string under one key: a copy
  with one bit changed, or the same bytes under another key, is not in it. A record the
  ingest refused, or never saw (another worker's partition, a report that reached the sealer
  first), is not in it either: the sealer verifies it. Entries are handed to the judge of the
  epoch that holds them and forgotten; at most ``max_entries`` wait (the oldest are dropped
  first: dropping one costs one verification, never a verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, ParamSpec

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bus.bus_reader import BusReader, BusUpdate
from bus.crypto import SigningKey
from bus.epoch import FinalSeal, PartitionRef
from bus.errors import (
    ConfigError,
    EpochInputError,
    Reason,
    SealedRootMismatchError,
    TransportError,
    VerificationError,
)
from bus.ingest import Accepted, Outcome
from bus.judge import EpochVerdicts, Status
from bus.kafka.admin import partitions_of
from bus.kafka.client import KafkaSecurity, client_options, kafka_errors, reliable_producer
from bus.model import Mandate, Role, encode
from bus.note import key_name
from bus.seal import (
    Cosign,
    SealProposal,
    SealWithdrawal,
    cosign_seal,
    parse_seal_record,
    sign_proposal,
    sign_withdrawal,
)
from bus.sealed import DecryptionKey
from bus.sealed_reader import EpochSpans
from bus.store.final import FinalStore, Vote, provisional_verdicts
from bus.store.sqlite import open_db
from bus.topics import Topics
from bus.verify import Limits
from nodes.runtime.backoff import OutageBackoff, transient

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL_MS: Final = 5_000
DEFAULT_TOLERANCE_MS: Final = 60_000
# Seal intervals a vote waits before it is withdrawn: a healthy round (a proposal, k
# cosignatures read back) takes about one.
WITHDRAW_AFTER_INTERVALS: Final = 6
# Final verdicts kept for comparison with provisional ones not made yet (bounded memory).
_MAX_UNMATCHED: Final = 200_000
# Seals records held while they wait for their trust state (each at most MAX_SEAL_RECORD_BYTES).
_MAX_QUEUED_SEALS: Final = 2_000
# Reports the ingest loop verified that wait for their epoch's final judge (64 bytes and a dict
# slot each, ~15 MiB): several seal intervals at the node's full rate.
DEFAULT_MEMO_ENTRIES: Final = 131_072

_P = ParamSpec("_P")


class SignatureMemo:
    """Reports whose signature this process verified, waiting for their epoch's final judge
    (module docstring, "Each signature verified once"); a
    :class:`~bus.sealed_reader.PreverifiedSource`.

    Safe to share between threads. Only :meth:`note_accepted` adds an entry, and only from an
    :class:`~bus.ingest.Accepted` outcome: what the ingest's judge returns once a report's
    every check, its signature's first, passed.

    Raises:
        ValueError: ``max_entries`` < 1.
    """

    def __init__(self, max_entries: int = DEFAULT_MEMO_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._by_digest: dict[bytes, bytes] = {}  # SHA-256 of the record -> signer's key id
        self.counts = {"noted": 0, "handed": 0, "dropped": 0}

    def __len__(self) -> int:
        return len(self._by_digest)

    def note_accepted(self, outcome: Outcome) -> None:
        """Remember the record of an accepted outcome (anything else is ignored)."""
        if type(outcome) is not Accepted:
            return
        vr = outcome.verified
        with self._lock:
            memo = self._by_digest
            if len(memo) >= self.max_entries:
                del memo[next(iter(memo))]  # the oldest: its epoch is long judged, or far off
                self.counts["dropped"] += 1
            memo[vr.envelope_digest] = vr.key_id
            self.counts["noted"] += 1

    def epoch_pairs(self, epoch: int, spans: EpochSpans) -> _VerifiedPairs:
        """The pairs of the epoch's records held here, taken out of the memo (a record is
        judged finally once)."""
        found: dict[bytes, bytes] = {}
        with self._lock:
            memo = self._by_digest
            if memo:
                for _, values in spans.values():
                    for value in values:
                        if value is None:
                            continue
                        key_id = memo.pop(hashlib.sha256(value).digest(), None)
                        if key_id is not None:
                            found[value] = key_id
            self.counts["handed"] += len(found)
        return _VerifiedPairs(found)


class _VerifiedPairs:
    """One epoch's pairs: ``(public key, raw)`` is in it when ``raw`` is a record the memo held
    and the key's id is the one it verified under."""

    __slots__ = ("_key_ids",)

    def __init__(self, key_ids: dict[bytes, bytes]) -> None:
        self._key_ids = key_ids

    def __len__(self) -> int:
        return len(self._key_ids)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        public_key, raw = item
        if not isinstance(public_key, bytes) or not isinstance(raw, bytes):
            return False
        key_id = self._key_ids.get(raw)
        return key_id is not None and key_id == hashlib.sha256(public_key).digest()


def recording(judge: Callable[_P, Outcome], memo: SignatureMemo) -> Callable[_P, Outcome]:
    """``judge`` (the ingest's :meth:`bus.ingest.Ingestor.judge`) noting every record it
    accepts in ``memo``; its outcomes are returned unchanged."""

    def judged(*args: _P.args, **kwargs: _P.kwargs) -> Outcome:
        outcome = judge(*args, **kwargs)
        memo.note_accepted(outcome)
        return outcome

    return judged


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class SealerConfig:
    """Everything a sealer needs; built by the CLI.

    Args:
        org: this organization.
        bootstrap: Kafka bootstrap servers.
        db_path: the final store's SQLite file.
        root: the mandate the bus began under (the same at every node and auditor).
        node_key: this node's key (accredited by ``org`` with role NODE to sign seals).
        topics: topic naming.
        limits: verification limits (the same at every reader).
        decryption_keys: this organization's keys for restricted reports.
        interval_ms: the seal interval: how long after *t_{e-1}* epoch *e* is proposed.
        takeover_ms: how much longer each next organization waits before proposing instead of
            a silent turn owner.
        tolerance_ms: how far a proposal's *t_e* may be from this node's clock to be cosigned.
        withdraw_after_ms: how long this node's vote in a round that is not final may be old
            before it withdraws it (module docstring, "Withdrawals"); None:
            :data:`WITHDRAW_AFTER_INTERVALS` seal intervals; 0: never.
        snapshot_every: store the reader's snapshot every this many judged epochs.
        max_buffered: pause data partitions while more records than this wait for a seal.
        poll_timeout_ms: longest wait for records per loop turn.
        max_batch: most records per fetch.
        metadata_refresh_ms: how often new topics and partitions are looked for.
        witness: propose and cosign (False: only read and judge, like an auditor).
        node_db: the node's own store, whose provisional verdicts are compared with the final
            ones (a difference is logged ``verdict_changed`` and counted); None: no comparison.
        security: how to authenticate to the brokers.
        memo: the reports this process's ingest loop verified (module docstring); None: the
            sealer verifies every signature itself.
    """

    org: str
    bootstrap: str
    db_path: Path
    root: Mandate
    node_key: SigningKey | None
    topics: Topics = field(default_factory=Topics)
    limits: Limits | None = None
    decryption_keys: Mapping[bytes, DecryptionKey] = field(default_factory=dict)
    interval_ms: int = DEFAULT_INTERVAL_MS
    takeover_ms: int = DEFAULT_INTERVAL_MS
    tolerance_ms: int = DEFAULT_TOLERANCE_MS
    withdraw_after_ms: int | None = None
    snapshot_every: int = 20
    max_buffered: int = 500_000
    poll_timeout_ms: int = 200
    max_batch: int = 5000
    metadata_refresh_ms: int = 5_000
    witness: bool = True
    node_db: Path | None = None
    security: KafkaSecurity | None = None
    memo: SignatureMemo | None = None


class Sealer:
    """One organization's sealer: ``run()`` until ``stop()``.

    Raises (from run): StoreError when the final store cannot commit; ConfigError when the
    store was made for another organization, mandate or root; TransportError on broker
    failures that waiting does not cure.
    """

    def __init__(self, config: SealerConfig) -> None:
        self.config = config
        self.store = FinalStore(config.db_path)
        root_digest = hashlib.sha256(encode(config.root)).digest()
        self.store.check_identity(config.org, config.root.mandate_id, root_digest)
        self.reader = self._load_reader()
        self._stopping = asyncio.Event()
        self._positions: dict[PartitionRef, int] = dict(self.reader.positions())
        self._seal_pos = self.reader.seals_from
        self._finals: dict[int, FinalSeal] = {}
        self._since_snapshot = 0
        self._votes: dict[tuple[int, int], Vote] = self.store.votes(
            since_epoch=self.reader.chain.open_epoch
        )
        self._sent: set[tuple[int, int]] = set()  # (epoch, round) whose vote this run published
        self._proposed: set[tuple[int, int]] = set()  # (epoch, round) this run proposed in
        # (epoch, round) -> when this run cast its vote there, or first found it stored.
        self._voted_at: dict[tuple[int, int], int] = {}
        self._withdrawn: set[tuple[int, int]] = set()  # (epoch, round) this run withdrew from
        after = config.withdraw_after_ms
        self._withdraw_after_ms = (
            WITHDRAW_AFTER_INTERVALS * config.interval_ms if after is None else after
        )
        if self._withdraw_after_ms < 0:
            raise ConfigError(
                "seal withdrawal timeout",
                f"{self._withdraw_after_ms} ms",
                "give 0 (never withdraw) or several seal intervals (the default is six)",
            )
        self._refused: set[tuple[int, str]] = set()  # (offset, reason) logged once
        self._key_problem = ""  # why this node key cannot vote, as last logged ("": it can)
        # status() while the reader judges in its worker thread (_turn)
        self._reader_busy = False
        self._reader_status: dict[str, Any] | None = None
        # Open (epoch, round) -> when this node first could propose in it (something new,
        # electable).
        self._ready_ms: dict[tuple[int, int], int] = {}
        self._caught_up = False  # every data partition read to its last known end
        self._next_probe_ms = 0
        self._paused = False
        self._seals_paused = False
        self.alarm: dict[str, Any] | None = None
        self.counts: dict[str, int] = {
            "epochs_judged": 0,
            "records_judged": 0,
            "proposals_published": 0,
            "cosignatures_published": 0,
            "equivocations": 0,
            "rounds_opened": 0,
            "withdrawals_published": 0,
            "withdrawals_counted": 0,
            "refusals": 0,
            "verdict_changes": 0,
            "seal_alarms": 0,
        }
        self.seal_alarms: list[dict[str, Any]] = []  # summaries of every SealAlarm found
        # Final verdicts on reports the ingest loop has not judged yet: compared later.
        self._unmatched: dict[tuple[str, int, int], tuple[str, str]] = {}
        self._node_db: sqlite3.Connection | None = None
        self._log = log.bind(org=config.org, component="sealer")

    def _load_reader(self) -> BusReader:
        cfg = self.config
        snap = self.store.snapshot()
        if snap is not None:
            return BusReader.resume(
                snap[1],
                cfg.root,
                cfg.topics,
                cfg.limits,
                decryption_keys=cfg.decryption_keys,
                preverified=cfg.memo,
            )
        return BusReader(
            cfg.root,
            cfg.topics,
            cfg.limits,
            decryption_keys=cfg.decryption_keys,
            preverified=cfg.memo,
        )

    def stop(self) -> None:
        """Ask run() to finish its current turn and return."""
        self._stopping.set()

    def status(self) -> dict[str, Any]:
        """For health and the dashboard: where sealing stands. While the reader is judging in
        its worker thread (:meth:`_turn`), the reader's part is the snapshot taken just before
        (reading it then could meet a dictionary in the middle of a change)."""
        if self._reader_busy and self._reader_status is not None:
            return {
                **self._reader_status,
                "alarm": self.alarm,
                "seal_alarms": self.seal_alarms[-10:],
                **self.counts,
            }
        return self._status_now()

    def _status_now(self) -> dict[str, Any]:
        latest = self.reader.latest
        judge = self.reader.judge
        memo = self.config.memo
        return {
            "judged_epoch": judge.epoch,
            "final_epoch": 0 if latest is None else latest.epoch,
            "open_epoch": self.reader.chain.open_epoch,
            "open_round": self.reader.chain.open_round,
            "open_round_withdrawn": sorted(self.reader.chain.withdrawn()),
            "withdraw_after_ms": self._withdraw_after_ms,
            "buffered": self.reader.buffered(),
            "paused": self._paused,
            "state_digest": judge.digest.hex(),
            "alarm": self.alarm,
            "seal_alarms": self.seal_alarms[-10:],
            # Signatures the ingest loop verified that the final judge did not check again.
            "signatures_reused": 0 if memo is None else memo.counts["handed"],
            **self.counts,
        }

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read, judge, store, propose and cosign until stop()."""
        cfg = self.config
        consumer = AIOKafkaConsumer(
            **client_options(cfg.bootstrap, cfg.security),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        producer = reliable_producer(cfg.bootstrap, security=cfg.security) if cfg.witness else None
        admin = AIOKafkaAdminClient(**client_options(cfg.bootstrap, cfg.security))
        self._log.info(
            "sealer_started",
            judged_epoch=self.reader.judge.epoch,
            seals_from=self._seal_pos,
            interval_ms=cfg.interval_ms,
            witness=cfg.witness,
        )
        try:
            with kafka_errors("sealing"):
                if producer is not None:
                    await producer.start()
                await consumer.start()
                await admin.start()
            backoff = OutageBackoff(self._log, "sealer", self._stopping)
            next_refresh = 0.0
            while not self._stopping.is_set():
                try:
                    with kafka_errors("sealing"):
                        if time.monotonic() >= next_refresh:
                            await self._assign(consumer, admin)
                            next_refresh = time.monotonic() + cfg.metadata_refresh_ms / 1000
                        await self._turn(consumer, producer)
                except TransportError as exc:
                    if not transient(exc):
                        raise
                    await backoff.wait(exc)
                    next_refresh = 0.0
                    continue
                backoff.reset()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._save_snapshot)
            for client in (consumer, producer):
                if client is not None:
                    with contextlib.suppress(TransportError), kafka_errors("stopping"):
                        await client.stop()
            with contextlib.suppress(TransportError), kafka_errors("stopping"):
                await admin.close()
            self.store.close()
            if self._node_db is not None:
                self._node_db.close()
            self._log.info("sealer_stopped", **self.status())

    async def _assign(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> None:
        """Assign the seals partition and every partition of every sealed topic, each at this
        sealer's position (assignment changes reset positions, so every one is sought)."""
        topics = self.config.topics
        names = [t for t in await admin.list_topics() if t == topics.seals or topics.is_sealed(t)]
        wanted = await partitions_of(admin, names)
        if set(wanted) == consumer.assignment():
            return
        consumer.assign(wanted)
        for tp in wanted:
            if tp.topic == topics.seals:
                consumer.seek(tp, self._seal_pos)
            else:
                consumer.seek(tp, self._positions.get((tp.topic, tp.partition), 0))
        self._paused = self._seals_paused = False  # a new assignment pauses nothing
        self._log.info("sealer_assigned", partitions=len(wanted))

    async def _turn(self, consumer: AIOKafkaConsumer, producer: Any) -> None:
        cfg = self.config
        batch = await consumer.getmany(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_batch)
        updates: list[BusUpdate] = []
        if batch:
            # Judging runs in a worker thread: an epoch that became final may hold hours of
            # records (sealing stalled without a quorum, then resumed), and judging it on the
            # event loop would stall this process's Kafka heartbeats, ingest and ops server
            # for as long. Only this coroutine touches the reader, one call at a time.
            self._reader_status = self._status_now()
            self._reader_busy = True
            try:
                updates = await asyncio.to_thread(self._offer_batch, batch)
            finally:
                self._reader_busy = False
        await self._store(updates)
        self._pace(consumer)
        if producer is not None and self.alarm is None:
            await self._witness(producer, consumer)

    def _offer_batch(self, batch: Mapping[TopicPartition, list[Any]]) -> list[BusUpdate]:
        """Offer one fetched batch to the reader (in the worker thread)."""
        updates: list[BusUpdate] = []
        seals_topic = self.config.topics.seals
        # The seals topic first: its records never wait for the data, the data may wait for it.
        for tp in sorted(batch, key=lambda t: (t.topic != seals_topic, t.topic, t.partition)):
            records = batch[tp]
            if tp.topic == seals_topic:
                for rec in records:
                    if rec.offset < self._seal_pos:
                        continue
                    updates.append(self.reader.offer_seal(rec.offset, rec.value))
                    self._seal_pos = rec.offset + 1
            elif self.alarm is None:
                updates.extend(self._offer_data((tp.topic, tp.partition), records))
        return updates

    def _offer_data(self, ref: PartitionRef, records: list[Any]) -> list[BusUpdate]:
        """Offer one partition's fetched records in runs of consecutive offsets."""
        out: list[BusUpdate] = []
        run: list[bytes | None] = []
        start = -1
        for rec in records:
            if rec.offset < self._positions.get(ref, 0):
                continue
            if run and rec.offset != start + len(run):
                out.extend(self._offer_run(ref, start, run))
                run = []
            if not run:
                start = rec.offset
            run.append(rec.value)
        if run:
            out.extend(self._offer_run(ref, start, run))
        return out

    def _offer_run(
        self, ref: PartitionRef, start: int, values: list[bytes | None]
    ) -> list[BusUpdate]:
        self._positions[ref] = start + len(values)
        try:
            return [self.reader.offer_records(ref, start, values)]
        except SealedRootMismatchError as exc:
            self._raise_alarm(Reason.SEALED_ROOT_MISMATCH.value, exc.message, exc.context)
        except EpochInputError as exc:
            self._raise_alarm("epoch_input", exc.message, exc.context)
        return []

    def _raise_alarm(self, reason: str, detail: str, context: Mapping[str, object]) -> None:
        self.alarm = {"reason": reason, "detail": detail, **{k: str(v) for k, v in context.items()}}
        self._log.error("sealed_log_broken", **self.alarm)

    async def _store(self, updates: list[BusUpdate]) -> None:
        epochs = [ev for u in updates for ev in u.epochs]
        equivocations = [e for u in updates for e in u.equivocations]
        alarms = [a for u in updates for a in u.alarms]
        for a in alarms:
            self.counts["seal_alarms"] += 1
            summary = {"reason": a.reason.value, "epoch": a.epoch, "offset": a.offset,
                       "signers": sorted(a.signers), "detail": a.detail}  # fmt: skip
            self.seal_alarms.append(summary)
            if a.reason is Reason.SEAL_FORK:
                self._raise_alarm(a.reason.value, a.detail, {"epoch": a.epoch, "offset": a.offset})
            else:
                self._log.error(a.reason.value, **summary)
        if alarms:
            await asyncio.to_thread(self.store.save_alarms, alarms)
        for u in updates:
            for f in u.finals:
                self._finals[f.epoch] = f
                self._log.info(
                    "seal_final", epoch=f.epoch, signers=sorted(f.signers), offset=f.offset
                )
        for u in updates:
            for v in u.seal_verdicts:
                if v.withdrawn:
                    self.counts["withdrawals_counted"] += len(v.withdrawn)
                    self._log.info(
                        "seal_withdrawal_counted",
                        epoch=v.epoch,
                        round=v.round,
                        orgs=list(v.withdrawn),
                        offset=v.offset,
                    )
            for opened in u.rounds_opened:
                self.counts["rounds_opened"] += 1
                self._log.warning(
                    "seal_round_opened",
                    epoch=opened.epoch,
                    round=opened.round,
                    offset=opened.offset,
                    why=opened.why,
                )
        for eq in equivocations:
            self.counts["equivocations"] += 1
            self._log.error(
                "seal_equivocation", equivocating_org=eq.org, epoch=eq.epoch, round=eq.round
            )
        if not epochs and not equivocations:
            return
        finals = [self._finals[ev.epoch] for ev in epochs]
        self._since_snapshot += len(epochs)
        snapshot = None
        if self._since_snapshot >= self.config.snapshot_every:
            snapshot = (self.reader.judge.epoch, self.reader.snapshot())
            self._since_snapshot = 0
        await asyncio.to_thread(
            self.store.record, epochs, finals, equivocations, snapshot=snapshot, at_ms=_now_ms()
        )
        self._remember_finals(epochs)
        await asyncio.to_thread(self._compare_provisional)
        for ev in epochs:
            self._finals.pop(ev.epoch, None)
            self.counts["epochs_judged"] += 1
            self.counts["records_judged"] += len(ev.verdicts)
            self._log.info(
                "epoch_judged",
                epoch=ev.epoch,
                records=len(ev.verdicts),
                changes=len(ev.changes),
                state_digest=ev.state_digest.hex()[:16],
            )

    def _remember_finals(self, epochs: list[EpochVerdicts]) -> None:
        if self.config.node_db is None:
            return
        topics = self.config.topics
        for ev in epochs:
            for v in ev.verdicts:
                if v.status is Status.DEFERRED or topics.org_of_report_topic(v.pos[0]) is None:
                    continue
                self._unmatched[v.pos] = (v.status.value, v.reason)
            for c in ev.changes:
                self._unmatched[c.pos] = (c.status.value, "")
        while len(self._unmatched) > _MAX_UNMATCHED:  # oldest first: dicts keep insertion order
            del self._unmatched[next(iter(self._unmatched))]

    def _compare_provisional(self) -> None:
        """Log and count every final verdict that differs from the node's provisional one."""
        path = self.config.node_db
        if path is None or not self._unmatched or not path.exists():
            return
        if self._node_db is None:
            self._node_db = open_db(path, what="node store", read_only=True, threads=True)
        found = provisional_verdicts(self._node_db, list(self._unmatched))
        for pos, (p_status, p_reason) in found.items():
            f_status, f_reason = self._unmatched.pop(pos)
            if (p_status, p_reason) == (f_status, f_reason):
                continue
            self.counts["verdict_changes"] += 1
            self._log.warning(
                "verdict_changed",
                topic=pos[0], partition=pos[1], offset=pos[2],
                provisional=p_status, provisional_reason=p_reason,
                final=f_status, final_reason=f_reason,
            )  # fmt: skip

    def _save_snapshot(self) -> None:
        if self.reader.judge.epoch:
            self.store.record([], [], snapshot=(self.reader.judge.epoch, self.reader.snapshot()))

    def _pace(self, consumer: AIOKafkaConsumer) -> None:
        """Pause the data partitions while too much waits for a seal, and the seals topic
        while too many of its records wait for their trust state (a hostile organization may
        write seals records faster than a blocked epoch resolves); resume below half."""
        seals = TopicPartition(self.config.topics.seals, 0)
        queued = self.reader.chain.queued
        if seals in consumer.assignment():
            if not self._seals_paused and queued > _MAX_QUEUED_SEALS:
                consumer.pause(seals)
                self._seals_paused = True
                self._log.warning("sealer_seals_paused", queued=queued)
            elif self._seals_paused and queued <= _MAX_QUEUED_SEALS // 2:
                consumer.resume(seals)
                self._seals_paused = False
                self._log.info("sealer_seals_resumed", queued=queued)
        buffered = self.reader.buffered()
        data = [tp for tp in consumer.assignment() if tp.topic != self.config.topics.seals]
        if not self._paused and buffered > self.config.max_buffered:
            consumer.pause(*data)
            self._paused = True
            self._log.warning("sealer_paused", buffered=buffered, open=self.reader.chain.open_epoch)
        elif self._paused and buffered <= self.config.max_buffered // 2:
            consumer.resume(*data)
            self._paused = False
            self._log.info("sealer_resumed", buffered=buffered)

    # -- witnessing --------------------------------------------------------------------------

    def _key_name(self, proposal: SealProposal) -> str | None:
        """This node key's signed-note name under the proposal's trust state (None: it does not
        count there)."""
        key = self.config.node_key
        if key is None:
            return None
        ring = self.reader.trust_for(proposal)
        if ring is None:
            return None
        try:
            acc = ring.lookup(key.key_id)
        except VerificationError as exc:
            self._cannot_vote(exc.reason.value, proposal.epoch)
            return None
        if acc.org != self.config.org or acc.role is not Role.NODE:
            self._cannot_vote(f"accredited by {acc.org} with role {acc.role.name}", proposal.epoch)
            return None
        if self._key_problem:
            self._log.info("seal_key_accredited", epoch=proposal.epoch)
            self._key_problem = ""
        return key_name(acc.org, acc.subject_id)

    def _cannot_vote(self, why: str, epoch: int) -> None:
        """Say once (until it changes) that this node's key cannot propose or cosign: without
        it the node judges and stores final verdicts but never votes, and with fewer than k
        voting organizations no epoch becomes final."""
        if why == self._key_problem:
            return
        self._key_problem = why
        key = self.config.node_key
        self._log.warning(
            "seal_key_not_accredited",
            epoch=epoch,
            key_id=None if key is None else key.key_id.hex(),
            why=why,
            fix=f"accredit this node key with role node: obus org accredit --org"
            f" {self.config.org} --root-key ROOT_KEY --mandate MANDATE --role node --subject"
            f" {self.config.org}-node-1 --public-key <this key's public key> (README, first"
            " deployment)",
        )

    async def _witness(self, producer: Any, consumer: AIOKafkaConsumer) -> None:
        cfg = self.config
        key = cfg.node_key
        if key is None:
            return
        chain = self.reader.chain
        open_ = (chain.open_epoch, chain.open_round)
        now = _now_ms()
        self._caught_up = self._at_highwater(consumer)
        for stale in [k for k in self._ready_ms if k < open_]:
            del self._ready_ms[stale]
        self._proposed = {k for k in self._proposed if k >= open_}
        self._withdrawn = {k for k in self._withdrawn if k >= open_}
        for stale in [k for k in self._voted_at if k < open_]:
            del self._voted_at[stale]
        for stale in [k for k in self._votes if k[0] < open_[0]]:
            del self._votes[stale]
        mine = self._votes.get(open_)
        if mine is not None:
            # Voted already (maybe before a restart): publish it again if it never arrived.
            if chain.votes().get(cfg.org) is None and open_ not in self._sent:
                await self._publish(producer, mine)
            else:
                await self._withdraw_if_due(producer, mine, now)
            return
        voted = {k: v.digest for k, v in self._votes.items()}
        theirs = chain.votes().get(cfg.org)
        if theirs is not None:  # a vote of this organization read on the topic (another node)
            voted[open_] = theirs
        proposal, decisions = self.reader.cosign_candidate(
            org=cfg.org, now_ms=now, tolerance_ms=cfg.tolerance_ms, voted=voted
        )
        behind = (
            decisions[-1][1].ref if decisions and decisions[-1][1].verdict is Cosign.WAIT else None
        )
        if proposal is None and behind is not None and behind[0] != cfg.topics.seals:
            ends = await self._ends(consumer, behind)
            proposal, decisions = self.reader.cosign_candidate(
                org=cfg.org, now_ms=now, tolerance_ms=cfg.tolerance_ms, voted=voted, ends=ends
            )
        for offset, d in decisions:
            if (
                d.verdict is Cosign.REFUSE
                and d.reason is not None
                and (offset, d.reason.value) not in self._refused
            ):
                self._refused.add((offset, d.reason.value))
                self.counts["refusals"] += 1
                self._log.warning(
                    "seal_refused", offset=offset, reason=d.reason.value, detail=d.detail
                )
        if theirs is not None:
            return
        if proposal is not None:
            name = self._key_name(proposal)
            if name is not None:
                record = cosign_seal(proposal.text(), key, name, now_ms=now)
                await self._vote(
                    producer,
                    Vote(proposal.epoch, proposal.round, proposal.digest, record, "cosign"),
                )
            return
        if (
            open_ not in self._proposed
            and self._due(*open_, now)
            and await self._seals_read(consumer)
        ):
            proposal = self.reader.propose(org=cfg.org, now_ms=now)
            if proposal is None:
                return
            name = self._key_name(proposal)
            if name is None:
                return
            # No vote: this node cosigns the first proposal of the round once it reads it.
            await self._propose(producer, proposal, sign_proposal(proposal, key, name))

    async def _withdraw_if_due(self, producer: Any, vote: Vote, now: int) -> None:
        """Withdraw this organization's vote in the open round once it is
        ``withdraw_after_ms`` old here and the epoch is still not final (it is the open one),
        once per round (module docstring, "Withdrawals")."""
        at = (vote.epoch, vote.round)
        since = self._voted_at.setdefault(at, now)
        if (
            self._withdraw_after_ms == 0
            or at in self._withdrawn
            or self.config.org in self.reader.chain.withdrawn()
            or now - since < self._withdraw_after_ms
        ):
            return
        key = self.config.node_key
        name = None if key is None else self._key_name(parse_seal_record(vote.record).proposal)
        if key is None or name is None:
            return
        withdrawal = SealWithdrawal(self.config.root.mandate_id, vote.epoch, vote.round)
        record = sign_withdrawal(withdrawal, key, name, now_ms=now)
        await producer.send_and_wait(self.config.topics.seals, record, partition=0)
        self._withdrawn.add(at)
        self.counts["withdrawals_published"] += 1
        self._log.warning(
            "seal_withdrawn",
            epoch=vote.epoch,
            round=vote.round,
            vote_age_ms=now - since,
            votes=len(self.reader.chain.votes()),
        )

    async def _ends(self, consumer: AIOKafkaConsumer, ref: PartitionRef) -> dict[PartitionRef, int]:
        """The broker's end offset of ``ref`` (0 for a partition not in this sealer's
        metadata: it holds nothing a proposer could have read)."""
        tp = TopicPartition(*ref)
        if tp not in consumer.assignment():
            return {ref: 0}
        ends = await consumer.end_offsets([tp])
        end: int = ends[tp]
        return {ref: end}

    async def _seals_read(self, consumer: AIOKafkaConsumer) -> bool:
        """Whether this sealer has read the seals topic to its end: a proposal it has not read
        yet (its fetches busy with a backlog of data) would otherwise look absent, and it would
        publish a needless second proposal."""
        tp = TopicPartition(self.config.topics.seals, 0)
        ends = await consumer.end_offsets([tp])
        end: int = ends[tp]
        return self._seal_pos >= end

    def _due(self, epoch: int, round_: int, now: int) -> bool:
        """Whether this organization may propose in round ``round_`` of ``epoch`` now: the
        turn's owner (organization ``(epoch + round_ - 1) mod n`` of the mandate in force,
        sorted ids) as soon as the round is ready here, each next organization
        ``takeover_ms`` later in turn. Ready: ``interval_ms`` after *t_{e-1}*, the round open
        here and something to seal that could become final. The delays count from the moment
        this node found the round ready, never from *t_{e-1}* alone: after a quiet spell (or
        when a round opens) every node finds it ready at about the same time, and the turns
        still keep proposers apart (one proposal per round in the common case, whose votes
        then all go to one text)."""
        cfg = self.config
        if any(True for _ in self.reader.proposals()) and not self._all_refused():
            return False  # a proposal of the round it may still vote for is on the topic
        orgs = sorted(o.org for o in self.reader.judge.mandate.organizations)
        if cfg.org not in orgs:
            return False
        ready = self._ready(epoch, round_, now)
        if ready is None:
            return False
        place = (orgs.index(cfg.org) - (epoch + round_ - 1) % len(orgs)) % len(orgs)
        return now >= ready + place * cfg.takeover_ms

    def _ready(self, epoch: int, round_: int, now: int) -> int | None:
        """When this node first found round ``round_`` of ``epoch`` ready to propose in (see
        :meth:`_due`)."""
        at = self._ready_ms.get((epoch, round_))
        if at is not None:
            return at
        latest = self.reader.latest
        if (
            now < self._next_probe_ms
            or (latest is not None and now < latest.time_ms + self.config.interval_ms)
            or not self._caught_up
        ):
            return None
        draft = (
            self.reader.propose(org=self.config.org, now_ms=now, electable_only=False)
            if self.reader.sealable()
            else None
        )
        if (
            draft is None
            or self._key_name(draft) is None  # says once why this node key cannot vote
            or not self.reader.electable(draft, self.config.org)
        ):
            # Nothing to seal, this key cannot sign it, or not electable yet: look again a
            # little later (each look computes the proposal's roots).
            self._next_probe_ms = now + max(100, self.config.interval_ms // 4)
            return None
        self._ready_ms[(epoch, round_)] = now
        return now

    def _at_highwater(self, consumer: AIOKafkaConsumer) -> bool:
        """Whether this sealer has read every data partition up to the end the broker last
        told it: a node still catching up on a backlog does not count an epoch ready (the
        turns are placed from the moment each node is ready, so nodes catching up at different
        speeds would otherwise fall due together)."""
        for tp in consumer.assignment():
            if tp.topic == self.config.topics.seals:
                continue
            end = consumer.highwater(tp)
            if end is None or self._positions.get((tp.topic, tp.partition), 0) < end:
                return False
        return True

    def _all_refused(self) -> bool:
        offsets = {o for o, _, _ in self.reader.proposals()}
        return all(any(o == r[0] for r in self._refused) for o in offsets)

    async def _propose(self, producer: Any, proposal: SealProposal, record: bytes) -> None:
        """Publish a proposal (no vote, so nothing is stored) and remember it for its round."""
        await producer.send_and_wait(self.config.topics.seals, record, partition=0)
        self._proposed.add((proposal.epoch, proposal.round))
        self.counts["proposals_published"] += 1
        self._log.info("seal_proposal_published", epoch=proposal.epoch, round=proposal.round)

    async def _vote(self, producer: Any, vote: Vote) -> None:
        """Store this organization's cosignature, then publish it: a restart never signs a
        second text in its round."""
        now = _now_ms()
        await asyncio.to_thread(self.store.save_vote, vote, now)
        self._votes[(vote.epoch, vote.round)] = vote
        self._voted_at[(vote.epoch, vote.round)] = now
        await self._publish(producer, vote)

    async def _publish(self, producer: Any, vote: Vote) -> None:
        await producer.send_and_wait(self.config.topics.seals, vote.record, partition=0)
        self._sent.add((vote.epoch, vote.round))
        self.counts["cosignatures_published"] += 1
        self._log.info("seal_cosign_published", epoch=vote.epoch, round=vote.round)
