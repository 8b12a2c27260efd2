"""What the demos show of the sealed bus: seals, final verdicts, and the six nodes' agreement.

Every full node runs a sealer beside its ingest (:mod:`nodes.org_node.sealer`): it reads the
whole bus, proposes and cosigns seals on ``<prefix>seals`` with its node key and keeps the final
verdict of every sealed record in ``<db stem>.final.db`` (:mod:`bus.store.final`), while the
ingest keeps judging what it reads at once (provisional verdicts, ``<db stem>.db``). This module
gives the demos (:mod:`nodes.demo.mission`, :mod:`nodes.demo.trust_mission`):

* :func:`wait_until_final`: wait until every node's final store has judged an epoch whose final
  seal covers what the mission published (and, settled, until all of them stand at the same
  epoch with nothing new on the bus), reading the stores read-only while the nodes run;
* :func:`show_final`: once the nodes stopped, the final seals, each organization's proposals
  and cosignatures (from its node's JSON log), the final verdicts, how the provisional verdicts
  became final, and whether the final stores are byte-for-byte the same (their fingerprints,
  the SHA-256 of :meth:`bus.store.final.FinalStore.dump`). Different fingerprints fail a demo:
  every honest node must derive the same final state from the same sealed log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from bus.epoch import PartitionRef
from bus.errors import TransportError
from bus.judge import Status
from bus.kafka.admin import partitions_of
from bus.kafka.client import client_options, kafka_errors
from bus.seal import parse_seal
from bus.store.final import FinalStore, provisional_verdicts
from bus.topics import Topics

# The demos' seal interval. They publish a few hundred records within seconds and then wait for
# the final verdicts: one seal a second makes a record final a second or two after the nodes
# read it (proposal, five cosignatures and the judging take well under a second here), so each
# wait costs the demo about as much, and it is one proposal or cosignature a second per node
# (noise next to the reports). The nodes' default of 5 s would add 5 to 10 s to every wait.
SEAL_INTERVAL_S: Final = 1.0
WAIT_FOR_FINAL_S: Final = 120
_POLL_S: Final = 0.5
_SEAL_ROWS: Final = 12  # final seals listed (the newest); the stores hold them all


def seal_args() -> list[str]:
    """The ``obus node`` options the demos start every node with."""
    return ["--seal-interval", str(SEAL_INTERVAL_S)]


def final_db(work: Path, org: str) -> Path:
    """The final store of the node whose store is ``<work>/<org>.db`` (the node's default)."""
    return work / f"{org}.final.db"


@dataclass(frozen=True, slots=True)
class FinalProgress:
    """Where one node's final store stands.

    Args:
        epoch: the last judged epoch.
        state_digest: the final state after it.
        sizes: what its final seal covers: records per sealed partition.
        deferred: reports waiting for the next epoch's answer (their key was accredited in
            their own epoch); their verdict is not final yet.
    """

    epoch: int
    state_digest: bytes
    sizes: Mapping[PartitionRef, int]
    deferred: int

    def covers(self, ends: Mapping[PartitionRef, int]) -> bool:
        """Whether every record below ``ends`` has its final verdict here."""
        return self.deferred == 0 and all(self.sizes.get(r, 0) >= n for r, n in ends.items())


def final_progress(path: Path) -> FinalProgress | None:
    """Where the final store at ``path`` stands; None before its first judged epoch, or while
    it cannot be read (the sealer creating it)."""
    if not path.exists():
        return None
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        ) as con:
            row = con.execute(
                "SELECT epoch, state_digest, text FROM seals ORDER BY epoch DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            deferred = con.execute(
                "SELECT count(*) FROM verdicts WHERE status = ?", (Status.DEFERRED.value,)
            ).fetchone()[0]
    except sqlite3.Error:
        return None
    seal = parse_seal(bytes(row[2]))
    sizes = {ref: s.size for ref, s in seal.partitions.items()}
    return FinalProgress(int(row[0]), bytes(row[1]), sizes, int(deferred))


class BusEnds:
    """The end offsets of the topics seals cover, asked through one admin client and one
    consumer kept open from :meth:`start` to :meth:`stop`: a fresh pair per question costs a
    second or more on a loaded machine, which every wait would add to the demo.

    Raises (from start and ends): TransportError when the brokers cannot be reached.
    """

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self._admin = AIOKafkaAdminClient(**client_options(bootstrap))
        self._consumer = AIOKafkaConsumer(
            **client_options(bootstrap), group_id=None, enable_auto_commit=False
        )
        self._started = False

    async def start(self) -> None:
        """Connect both clients."""
        with kafka_errors("reading end offsets"):
            await self._admin.start()
            await self._consumer.start()
        self._started = True

    async def stop(self) -> None:
        """Close both clients (nothing when never started)."""
        if self._started:
            self._started = False
            with contextlib.suppress(TransportError), kafka_errors("stopping"):
                await self._consumer.stop()
            with contextlib.suppress(TransportError), kafka_errors("stopping"):
                await self._admin.close()

    async def ends(self, only: Callable[[str], bool] | None = None) -> dict[PartitionRef, int]:
        """End offset of every non-empty partition of every topic seals cover (``only``: of
        the topics it admits)."""
        with kafka_errors("reading end offsets"):
            tps = [
                tp
                for tp in await partitions_of(
                    self._admin, pattern="^" + re.escape(self.topics.prefix)
                )
                if self.topics.is_sealed(tp.topic) and (only is None or only(tp.topic))
            ]
            ends = await self._consumer.end_offsets(tps) if tps else {}
        return {(tp.topic, tp.partition): n for tp, n in ends.items() if n > 0}


async def wait_until_final(
    console: Console,
    work: Path,
    procs: Mapping[str, subprocess.Popen[bytes]],
    bus: BusEnds,
    *,
    only: Callable[[str], bool] | None = None,
    settle: bool = False,
    what: str = "every record",
    since: float | None = None,
) -> dict[str, FinalProgress] | None:
    """Wait until every node's final store covers every record of the sealed topics (``only``:
    of those it admits) on the bus when the wait began; ``settle``: on the bus now, and every
    node stands at the same epoch with the same state digest (nothing left to seal, so nodes
    stopped now hold the same final state). Prints how long it took since ``since`` (a
    :func:`time.monotonic` instant; default: the start of the wait).

    Returns:
        each node's progress, or None (printed why) when a node exited or time ran out.
    """
    started = time.monotonic()
    since = started if since is None else since
    ends = await bus.ends(only)
    progress: dict[str, FinalProgress | None] = {}
    while time.monotonic() - started < WAIT_FOR_FINAL_S:
        dead = [o for o, p in procs.items() if p.poll() is not None]
        if dead:
            console.print(f"[red]node(s) exited early: {dead}; see {work / 'logs'}[/red]")
            return None
        if settle:
            ends = await bus.ends(only)
        progress = {org: final_progress(final_db(work, org)) for org in procs}
        done = {o: p for o, p in progress.items() if p is not None and p.covers(ends)}
        if len(done) == len(procs):
            same = len({(p.epoch, p.state_digest) for p in done.values()}) == 1
            if not settle or (same and await bus.ends(only) == ends):
                epochs = sorted({p.epoch for p in done.values()})
                at = (
                    f"epoch {epochs[0]}"
                    if len(epochs) == 1
                    else f"epochs {epochs[0]} to {epochs[-1]}"
                )
                console.print(
                    f"{what} ({sum(ends.values())} records): final at all {len(procs)} nodes"
                    f" ({at}) {time.monotonic() - since:.1f}s later"
                )
                return done
        await asyncio.sleep(_POLL_S)
    stand = {o: None if p is None else (p.epoch, p.deferred) for o, p in progress.items()}
    console.print(
        f"[red]{what}: not final at every node within {WAIT_FOR_FINAL_S}s; (epoch, deferred)"
        f" per node: {stand}; records to cover: {sum(ends.values())}; see {work / 'logs'}[/red]"
    )
    return None


def log_events(path: Path) -> Counter[str]:
    """How many times each event was logged in a node's JSON log (other lines skipped)."""
    out: Counter[str] = Counter()
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and isinstance(doc.get("event"), str):
                out[doc["event"]] += 1
    return out


class FinalRow(NamedTuple):
    """One final verdict as the final store keeps it."""

    topic: str
    partition: int
    offset: int
    epoch: int  # the epoch the record was sealed in
    judged_epoch: int  # the epoch whose answer set it (later than ``epoch``: deferred)
    status: str
    reason: str
    observer_id: str | None
    seq: int | None

    @property
    def pos(self) -> tuple[str, int, int]:
        """(topic, partition, offset)."""
        return self.topic, self.partition, self.offset


class FinalChange(NamedTuple):
    """A report accepted at its epoch and revoked after acceptance at a later one."""

    topic: str
    partition: int
    offset: int
    at_epoch: int
    observer_id: str
    seq: int

    @property
    def pos(self) -> tuple[str, int, int]:
        """(topic, partition, offset)."""
        return self.topic, self.partition, self.offset


@dataclass
class NodeFinal:
    """One node's final state, read from its final store after it stopped."""

    org: str
    epoch: int
    state_digest: bytes
    fingerprint: bytes
    seals: list[dict[str, Any]]  # newest first, as FinalStore.seals gives them
    sealed: dict[int, int]  # epoch -> records it sealed (added to the bus since the last one)
    rows: list[FinalRow]
    changes: list[FinalChange]
    events: Counter[str] = field(default_factory=Counter)

    def judged_under(self, epoch: int) -> int:
        """The mandate version epoch ``epoch`` was judged under: the one in force after the
        epoch before (a version takes effect from the epoch after the one that seals it); the
        root, version 1, for epoch 1."""
        before = {int(s["epoch"]): int(s["mandate_version"]) for s in self.seals}
        return before.get(epoch - 1, 1)


@dataclass(frozen=True, slots=True)
class FinalSummary:
    """What :func:`show_final` found: ``ok`` when every node holds the same final state."""

    ok: bool
    nodes: dict[str, NodeFinal]

    @property
    def any(self) -> NodeFinal:
        """One node's final state (all are the same when ``ok``)."""
        return next(iter(self.nodes.values()))

    @property
    def state_digest_b64(self) -> str:
        """The final state digest in the base64 the auditor prints."""
        return base64.b64encode(self.any.state_digest).decode()


def _read_node(work: Path, org: str) -> NodeFinal | None:
    path = final_db(work, org)
    if not path.exists():
        return None
    store = FinalStore(path, read_only=True)
    try:
        last = store.last_epoch()
        fingerprint = store.fingerprint()
        seals = store.seals(limit=1_000_000)
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        rows = [
            FinalRow(*r)
            for r in con.execute(
                'SELECT topic, partition, "offset", epoch, judged_epoch, status, reason,'
                ' observer_id, seq FROM verdicts ORDER BY topic, partition, "offset"'
            )
        ]
        totals = {
            int(e): sum(p.size for p in parse_seal(bytes(text)).partitions.values())
            for e, text in con.execute("SELECT epoch, text FROM seals")
        }
        changes = [
            FinalChange(*r)
            for r in con.execute(
                'SELECT topic, partition, "offset", at_epoch, observer_id, seq FROM changes'
                ' ORDER BY at_epoch, topic, partition, "offset"'
            )
        ]
    return NodeFinal(
        org,
        0 if last is None else last[0],
        b"" if last is None else last[1],
        fingerprint,
        seals,
        {e: n - totals.get(e - 1, 0) for e, n in totals.items()},
        rows,
        changes,
        log_events(work / "logs" / f"{org}.log"),
    )


def _kind(topics: Topics, topic: str) -> str:
    if topics.org_of_report_topic(topic) is not None:
        return "reports"
    if topics.org_of_decision_topic(topic) is not None:
        return "decisions"
    return topic.removeprefix(topics.prefix).split(".")[0]


def _utc(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}"


def show_final(console: Console, work: Path, orgs: list[str], topics: Topics) -> FinalSummary:
    """Print the final seals, the organizations' seal work, the final verdicts, provisional to
    final, and the final stores' agreement (read after the nodes stopped)."""
    read = {org: _read_node(work, org) for org in orgs}
    missing = [o for o, n in read.items() if n is None]
    nodes = {o: n for o, n in read.items() if n is not None}
    if missing or not nodes:
        console.print(f"[red]no final store at node(s) {missing}[/red]")
        return FinalSummary(False, nodes)
    first = next(iter(nodes.values()))
    _show_seals(console, first)
    _show_work(console, nodes, first)
    _show_verdicts(console, first, topics)
    _show_provisional(console, work, nodes, topics)
    return FinalSummary(_show_agreement(console, nodes), nodes)


def _show_seals(console: Console, node: NodeFinal) -> None:
    seals = node.seals
    table = Table(title=f"Final seals (the newest {min(len(seals), _SEAL_ROWS)} of {len(seals)})")
    for col in ("epoch", "t_e (UTC)", "judged under", "new records", "verdicts", "cosigned by"):
        table.add_column(col)
    for s in reversed(seals[:_SEAL_ROWS]):
        table.add_row(
            str(s["epoch"]), _utc(s["time_ms"]), f"mandate v{node.judged_under(s['epoch'])}",
            str(node.sealed[s["epoch"]]), str(s["records"]), ", ".join(s["signers"]),
        )  # fmt: skip
    console.print(table)
    if seals:
        newest = seals[0]
        console.print(
            f"{len(seals)} seals final; the newest, epoch {newest['epoch']} at"
            f" t_e {_utc(newest['time_ms'])} UTC, cosigned by {', '.join(newest['signers'])}"
        )


def _show_work(console: Console, nodes: dict[str, NodeFinal], node: NodeFinal) -> None:
    in_final = Counter(str(o) for s in node.seals for o in s["signers"])
    table = Table(title="Seals per organization (its node's sealer; from its log)")
    for col in ("org", "proposals", "cosignatures", "counted in final seals", "refused",
                "equivocations"):  # fmt: skip
        table.add_column(col, justify="right")
    for org, n in nodes.items():
        table.add_row(
            org, str(n.events["seal_proposal_published"]), str(n.events["seal_cosign_published"]),
            str(in_final[org]), str(n.events["seal_refused"]), str(n.events["seal_equivocation"]),
        )  # fmt: skip
    console.print(table)


def _show_verdicts(console: Console, node: NodeFinal, topics: Topics) -> None:
    by: Counter[tuple[str, str, str]] = Counter(
        (_kind(topics, r.topic), r.status, r.reason) for r in node.rows
    )
    table = Table(title=f"Final verdicts at epoch {node.epoch} (every sealed record)")
    for col in ("records of", "status", "reason", "count"):
        table.add_column(col)
    for (kind, status, reason), n in sorted(by.items()):
        table.add_row(kind, status, reason, str(n))
    for kind, n in sorted(Counter(_kind(topics, c.topic) for c in node.changes).items()):
        table.add_row(kind, "revoked_after_acceptance", "(a later epoch)", str(n))
    console.print(table)


def _show_provisional(
    console: Console, work: Path, nodes: dict[str, NodeFinal], topics: Topics
) -> None:
    """Per node: its provisional verdicts on reports against the final ones, and the reports
    it marked revoked after acceptance against the final changes ("deferred first": final at
    the epoch after their own; "changes logged": the sealer's ``verdict_changed`` events)."""
    table = Table(title="Reports: provisional (read at once) -> final (sealed)")
    for col in ("node", "final", "deferred first", "revoked after acc.", "as provisional",
                "changed", "changes logged"):  # fmt: skip
        table.add_column(col, justify="right")
    for org, n in nodes.items():
        reports = [r for r in n.rows if topics.org_of_report_topic(r.topic) is not None]
        final = {r.pos: (r.status, r.reason) for r in reports}
        deferred = sum(1 for r in reports if r.judged_epoch > r.epoch)
        revoked = {c.pos for c in n.changes}
        with contextlib.closing(
            sqlite3.connect(f"file:{work / f'{org}.db'}?mode=ro", uri=True)
        ) as con:
            prov = provisional_verdicts(con, list(final))
            marked = {
                (t, p, o)
                for t, p, o in con.execute(
                    'SELECT r.topic, r.partition, r."offset" FROM revoked_after_acceptance x'
                    " JOIN reports r ON r.report_id = x.report_id"
                )
            }
        same = sum(1 for pos, v in final.items() if prov.get(pos) == v and
                   (pos in revoked) == (pos in marked))  # fmt: skip
        changed = len(final) - same + len(marked - final.keys())
        table.add_row(
            org, str(len(final)), str(deferred), str(len(revoked)), str(same), str(changed),
            str(n.events["verdict_changed"]),
        )  # fmt: skip
    console.print(table)


def _show_agreement(console: Console, nodes: dict[str, NodeFinal]) -> bool:
    table = Table(title="Each node's final store (obus final-state)")
    for col in ("node", "epoch", "state digest (base64)", "fingerprint (SHA-256 of the dump)"):
        table.add_column(col)
    for org, n in nodes.items():
        table.add_row(
            org, str(n.epoch), base64.b64encode(n.state_digest).decode()[:24] + "…",
            n.fingerprint.hex()[:32] + "…",
        )  # fmt: skip
    console.print(table)
    states = {(n.epoch, n.state_digest, n.fingerprint) for n in nodes.values()}
    if len(states) == 1:
        n = next(iter(nodes.values()))
        console.print(
            f"[green]all {len(nodes)} final stores are identical: epoch {n.epoch}, fingerprint"
            f" {n.fingerprint.hex()[:16]}, {len(n.rows)} final verdicts[/green]"
        )
        return True
    groups: dict[tuple[int, str], list[str]] = {}
    for org, n in nodes.items():
        groups.setdefault((n.epoch, n.fingerprint.hex()[:16]), []).append(org)
    console.print(
        "[red]the final stores differ: "
        + "; ".join(f"epoch {e} fingerprint {fp}: {', '.join(o)}" for (e, fp), o in groups.items())
        + "[/red]"
    )
    return False
