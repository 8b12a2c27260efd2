"""Whether a node reads every report partition: its consumer group checked against the log.

A node's ``/healthz`` used to look only at its own consumer: a foreign consumer that joined the
node's group could take half of the partitions, and the node still said ok with lag 0 (it
counted lag only on the partitions it was given). :class:`GroupCheck` looks at the whole
picture instead, at start, after every rebalance of the node and every
:data:`CHECK_INTERVAL_S`: every partition of every topic matching the report pattern (from the
consumer's metadata), the group's members with their assignments (the group coordinator's
description), and the end offset of every partition against the store's positions.

:func:`judge_group` is the rule, a pure function. The node's own workers are the members whose
client id is one of :func:`own_client_ids` (the node's consumer and its ``ingest_only``
workers set them). A client id is a label that any client may choose, not an authentication:
the brokers' ACLs are what keep other principals out of the group (README "Broker ACLs"). So
every member with another client id is reported as foreign, and the node is **starved** when
a partition assigned to a foreign member or to no member at all holds records the store has
not read (its position lags the partition's end).

:func:`node_checks` is the node's readiness beyond the broker and its stores (the ops server's
``/readyz``, :mod:`nodes.runtime.ops`), a pure function of the node's status: caught up within
a lag bound on every report partition (as the last group check measured it), not starved, the
sealer not alarmed (``sealed_log_broken``, ``seal_fork``), the follow-up running.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bus.errors import TransportError
from bus.kafka.admin import GroupMember, describe_group
from bus.kafka.client import KafkaSecurity, client_options, kafka_errors
from nodes.runtime.ops import Check

log = structlog.get_logger(__name__)

# How often the group is checked while nothing else asks for it (a rebalance of the node's
# consumer asks at once).
CHECK_INTERVAL_S: Final = 5.0
# One check that takes longer than this (brokers unreachable) makes the verdict unknown.
CHECK_TIMEOUT_S: Final = 15.0
# Records on the broker not yet in the store (every report partition) that a ready node may be
# behind by: a few seconds of a busy day (obus node --ready-max-lag).
DEFAULT_READY_MAX_LAG: Final = 10_000

Partition = tuple[str, int]


def own_client_ids(org: str) -> tuple[str, str]:
    """The client ids of an organization's node consumer and of its ``ingest_only`` workers."""
    node = f"obus-node-{org}"
    return node, f"{node}-worker"


@dataclass(frozen=True, slots=True)
class GroupHealth:
    """One check's verdict (see :func:`judge_group`).

    ``assigned_here`` counts the existing partitions assigned to the node's own workers (this
    process and its ``ingest_only`` workers), ``assigned_foreign`` those assigned only to
    foreign members, ``unassigned`` those assigned to no member; ``lag`` is every existing
    partition's end offset minus the store's position.
    """

    state: str
    exist: int
    assigned_here: int
    assigned_this_process: int
    assigned_foreign: int
    unassigned: int
    foreign_members: tuple[GroupMember, ...]
    lag: Mapping[Partition, int]
    starved_partitions: tuple[Partition, ...]

    @property
    def starved(self) -> bool:
        """True when a partition no own worker reads holds records the store has not read."""
        return bool(self.starved_partitions)

    @property
    def why(self) -> str:
        """One sentence for operators; empty when not starved."""
        if not self.starved:
            return ""
        unread = sum(self.lag[p] for p in self.starved_partitions)
        foreign = ", ".join(f"{m.client_id}@{m.client_host}" for m in self.foreign_members)
        return (
            f"{len(self.starved_partitions)} of {self.exist} report partitions hold {unread} "
            f"records this node has not stored and no worker of this node reads them: "
            f"{self.assigned_foreign} assigned to foreign members of its consumer group "
            f"({foreign or 'none'}), {self.unassigned} assigned to no member"
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form in the node's status: read by :func:`node_checks` (``/readyz``) and
        by the node's metric families (``/metrics``), both on the ops port."""
        return {
            "state": "starved" if self.starved else "ok",
            "group_state": self.state,
            "why": self.why,
            "partitions": {
                "exist": self.exist,
                "assigned_here": self.assigned_here,
                "assigned_this_process": self.assigned_this_process,
                "assigned_foreign": self.assigned_foreign,
                "unassigned": self.unassigned,
            },
            "foreign_members": [
                {
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "member_id": m.member_id,
                    "partitions": len(m.partitions),
                }
                for m in self.foreign_members
            ],
            "lag": {f"{t}/{p}": n for (t, p), n in sorted(self.lag.items())},
            "starved_partitions": [f"{t}/{p}" for t, p in self.starved_partitions],
        }


def judge_group(
    existing: Iterable[Partition],
    members: Iterable[GroupMember],
    positions: Mapping[Partition, int],
    ends: Mapping[Partition, int],
    own: Iterable[str],
    *,
    state: str = "Stable",
    this_process: Iterable[Partition] = (),
) -> GroupHealth:
    """The health rule: who reads each existing partition, and is anything left unread.

    Args:
        existing: every partition of every topic matching the report pattern.
        members: the consumer group's members and their assignments.
        positions: the store's next offset per partition (absent: 0).
        ends: each partition's end offset (absent: nothing to read).
        own: client ids of the node's own workers; every other member is foreign.
        state: the group's state as the coordinator reported it (shown, not judged).
        this_process: the partitions assigned to the calling consumer (shown, not judged).
    """
    own_ids = set(own)
    members = list(members)
    foreign = tuple(m for m in members if m.client_id not in own_ids)
    here: set[Partition] = set()
    elsewhere: set[Partition] = set()
    for m in members:
        (here if m.client_id in own_ids else elsewhere).update(m.partitions)
    parts = sorted(set(existing))
    lag = {p: max(0, ends.get(p, 0) - positions.get(p, 0)) for p in parts}
    n_here = n_foreign = n_none = 0
    starved: list[Partition] = []
    for p in parts:
        if p in here:
            n_here += 1
            continue
        if p in elsewhere:
            n_foreign += 1
        else:
            n_none += 1
        if lag[p] > 0:
            starved.append(p)
    return GroupHealth(
        state=state,
        exist=len(parts),
        assigned_here=n_here,
        assigned_this_process=len(set(this_process) & set(parts)),
        assigned_foreign=n_foreign,
        unassigned=n_none,
        foreign_members=foreign,
        lag=lag,
        starved_partitions=tuple(starved),
    )


class GroupCheck:
    """Checks the node's consumer group at start, after each rebalance and every
    :data:`CHECK_INTERVAL_S`, until :meth:`stop`.

    It uses the node's own consumer (its metadata and end offsets) and one admin client kept
    open for its life. A failure (brokers unreachable, a refusal) makes the verdict unknown
    (:attr:`error` says why) and is tried again at the next check; it never stops the node.

    Args:
        consumer: the node's started consumer.
        group_id: the node's consumer group.
        pattern: the report-topic pattern the node subscribes to.
        positions: reads the store's next offset per partition.
        own: client ids of the node's own workers.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        bootstrap: str,
        security: KafkaSecurity | None,
        group_id: str,
        pattern: str,
        positions: Callable[[], Mapping[Partition, int]],
        own: Iterable[str],
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._consumer = consumer
        self._bootstrap = bootstrap
        self._security = security
        self._group_id = group_id
        self._pattern = re.compile(pattern)
        self._positions = positions
        self._own = tuple(own)
        self._interval_s = interval_s
        self._admin: AIOKafkaAdminClient | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.health: GroupHealth | None = None  # None: unknown (see error)
        self.error = "not checked yet"
        self._log = log.bind(group=group_id)

    def status(self) -> dict[str, Any]:
        """The last verdict as JSON; ``{"state": "unknown", "why": ...}`` without one."""
        if self.health is None:
            return {"state": "unknown", "why": self.error}
        return self.health.as_dict()

    def start(self) -> None:
        """Start checking (the first check runs at once)."""
        self._task = asyncio.create_task(self._run(), name=f"group-check-{self._group_id}")

    def poke(self) -> None:
        """Check again now (the node's assignment changed)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop checking and close the admin client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_admin()

    async def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(TransportError), kafka_errors("closing the admin client"):
                await admin.close()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.check()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()

    async def check(self) -> GroupHealth | None:
        """Check once; the verdict, or None (unknown, :attr:`error` says why)."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                with kafka_errors("checking the consumer group"):
                    health = await self._check()
        except (TransportError, TimeoutError) as exc:
            await self._unknown(str(exc) or f"no answer within {CHECK_TIMEOUT_S:g} s")
            return None
        except Exception as exc:  # noqa: BLE001 - a failed check must not stop the ingest loop
            self._log.exception("group_check_failed")
            await self._unknown(f"the check failed: {exc!r}")
            return None
        if health.starved and (self.health is None or not self.health.starved):
            self._log.error("node_starved", why=health.why)
        elif not health.starved and self.health is not None and self.health.starved:
            self._log.info("node_no_longer_starved")
        self.health = health
        return health

    async def _unknown(self, why: str) -> None:
        if self.health is not None or self.error != why:
            self._log.warning("group_check_unknown", error=why)
        self.health = None
        self.error = why
        await self._close_admin()  # a fresh connection next time

    async def _check(self) -> GroupHealth:
        consumer = self._consumer
        topics = {t for t in await consumer.topics() if self._pattern.match(t)}
        existing = [
            TopicPartition(t, p)
            for t in sorted(topics)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = await consumer.end_offsets(existing) if existing else {}
        if self._admin is None:  # one client for the node's life, not one per check
            admin = AIOKafkaAdminClient(**client_options(self._bootstrap, self._security))
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        group = await describe_group(self._admin, self._group_id)
        return judge_group(
            ((tp.topic, tp.partition) for tp in existing),
            group.members,
            self._positions(),
            {(tp.topic, tp.partition): n for tp, n in ends.items()},
            self._own,
            state=group.state,
            this_process=((tp.topic, tp.partition) for tp in consumer.assignment()),
        )


def node_checks(status: Mapping[str, Any], *, max_lag: int) -> list[Check]:
    """The node's own readiness checks from its status (module docstring).

    ``lag``: the records not yet stored over every report partition, from the last group
    check (``lag_unknown`` while there is none: not checked yet, or the brokers did not
    answer; ``no_report_partitions`` while no report topic exists); ``lagging`` above
    ``max_lag``.
    """
    group = status.get("group") or {}
    checks: list[Check] = []
    exist = int((group.get("partitions") or {}).get("exist", 0))
    if group.get("state") in ("ok", "starved") and exist == 0:
        why = "no topic matches the report pattern (wrong --topic-prefix, or obus topics not run)"
        checks.append(Check("lag", False, "no_report_partitions", why))
        checks.append(Check("consumer_group", False, "no_report_partitions", why))
    elif group.get("state") in ("ok", "starved"):
        behind = sum(int(n) for n in group.get("lag", {}).values())
        checks.append(
            Check("lag", True, detail=f"{behind} records behind")
            if behind <= max_lag
            else Check(
                "lag", False, "lagging", f"{behind} records not yet stored (bound {max_lag})"
            )
        )
        checks.append(
            Check("consumer_group", False, "starved", str(group.get("why", "")))
            if group["state"] == "starved"
            else Check("consumer_group", True)
        )
    else:
        why = str(group.get("why", "not checked yet"))
        checks.append(Check("lag", False, "lag_unknown", why))
        checks.append(Check("consumer_group", False, "lag_unknown", why))
    seal = status.get("seal")
    alarm = None if seal is None else seal.get("alarm")
    if alarm:
        reason = "seal_fork" if alarm.get("reason") == "seal_fork" else "sealed_log_broken"
        detail = f"{alarm.get('reason')}: {alarm.get('detail', '')}"
        checks.append(Check("sealer", False, reason, detail))
    else:
        checks.append(Check("sealer", True, detail="no sealer" if seal is None else ""))
    running = bool(status.get("running", True))
    checks.append(
        Check("followup", True)
        if running
        else Check("followup", False, "followup_stopped", "the follow-up stopped")
    )
    return checks
