"""The one place that wires an organization's node together: the ingest loop
(:mod:`nodes.org_node.ingest`, provisional verdicts), its sealer (:mod:`nodes.org_node.sealer`,
seals and final verdicts), its follow-up (:mod:`nodes.org_node.followup`) and dashboard
(:mod:`nodes.org_node.dashboard`), its attachment reassembler
(:mod:`nodes.org_node.attachments`), its broker watch and its ops server
(:mod:`nodes.runtime.broker_watch`, :mod:`nodes.runtime.ops`: ``/healthz``, ``/readyz``,
``/metrics`` on their own address; the full node only, which answers for its ``ingest_only``
workers).

The parts never import each other; they meet here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from bus.errors import (
    BusError,
)
from nodes.org_node.attachments import AttachmentNode, config_for_node
from nodes.org_node.config import NodeConfig
from nodes.org_node.dashboard.metrics import node_families, store_snapshot
from nodes.org_node.followup import FinalSource, FollowUp, FollowUpConfig
from nodes.org_node.health import DEFAULT_READY_MAX_LAG, node_checks
from nodes.org_node.ingest import OrgNode
from nodes.org_node.sealer import Sealer, SealerConfig, SignatureMemo, recording
from nodes.runtime.broker_watch import BrokerWatch
from nodes.runtime.ops import Check, Listen, OpsServer, store_writable

log = structlog.get_logger(__name__)


class Part(Protocol):
    """What runs in the node's process: the node itself, its attachment reassembler."""

    async def run(self) -> None:
        """Work until stop()."""

    def stop(self) -> None:
        """Ask run() to return soon."""


@dataclass(frozen=True, slots=True)
class NodeOps:
    """The ops server of a node: where it listens, and the lag a ready node may have."""

    listen: Listen
    max_lag: int = DEFAULT_READY_MAX_LAG


async def run_node(config: NodeConfig, ops: NodeOps | None = None) -> int:
    """Run a node (and its attachment reassembler) until SIGINT/SIGTERM; returns a process exit
    code. The broker watch runs for the whole process; the ops server (``ops``) with the full
    node.

    When one part stops or fails, every other part is asked to stop; the code is 1 when any
    part failed.
    """
    async with BrokerWatch(config.bootstrap, config.security) as watch:
        return await _run_parts(config, ops, watch)


async def _run_parts(config: NodeConfig, ops: NodeOps | None, watch: BrokerWatch) -> int:
    import signal  # noqa: PLC0415 - only the process entry point handles signals

    parts: list[Part] = [build_node(config, ops=ops, broker=watch)]
    if config.attachments is not None and not config.ingest_only:  # reads the node's store
        parts.append(AttachmentNode(config_for_node(config, config.attachments)))

    def stop_all() -> None:
        for part in parts:
            part.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all)
    code = 0
    for done in asyncio.as_completed([asyncio.ensure_future(p.run()) for p in parts]):
        try:
            await done
        except BusError as exc:
            log.error(  # noqa: TRY400 - diagnostics() carries the cause; no traceback for input
                "node_failed", org=config.org, error=exc.diagnostics()
            )
            code = 1
        except Exception as exc:  # a bug: the other parts must still stop, with a traceback
            log.exception("node_failed", org=config.org, error=repr(exc))
            code = 1
        stop_all()
    return code


class NodeExtras:
    """What runs beside an :class:`~nodes.org_node.ingest.OrgNode`: its follow-up, its sealer,
    its ops server (with ``ops``) and, when a port is configured, its dashboard. Started before
    the ingest loop, stopped after it.

    A failing follow-up stops the node (and its error is raised by :meth:`stop`): decisions
    must not silently stop being made.
    """

    def __init__(
        self, node: OrgNode, *, ops: NodeOps | None = None, broker: BrokerWatch | None = None
    ) -> None:
        cfg = node.config
        self.node = node
        self._ops_settings = ops
        self._broker = broker
        self.ops: OpsServer | None = None
        self.sealer: Sealer | None = None
        if cfg.seal is not None:
            seal = cfg.seal
            # What the ingest loop accepted (its signature verified here), for the sealer's
            # final judge not to verify again: the one place the two parts meet.
            memo = SignatureMemo()
            node.ingestor.judge = recording(node.ingestor.judge, memo)  # type: ignore[method-assign]
            self.sealer = Sealer(
                SealerConfig(
                    org=cfg.org,
                    bootstrap=cfg.bootstrap,
                    db_path=seal.db_path,
                    root=seal.root,
                    node_key=seal.node_key,
                    topics=cfg.topics,
                    limits=cfg.limits,
                    decryption_keys={k.key_id: k for k in cfg.decryption_keys},
                    interval_ms=seal.interval_ms,
                    takeover_ms=seal.interval_ms,
                    tolerance_ms=seal.tolerance_ms,
                    withdraw_after_ms=seal.withdraw_after_ms,
                    witness=seal.node_key is not None,
                    node_db=cfg.db_path,
                    security=cfg.security,
                    memo=memo,
                )
            )
        # The follow-up judges the board and its final rules on the sealer's final store: one
        # trust state (the final judge's) for every part of the node.
        self.followup = FollowUp(
            FollowUpConfig(
                org=cfg.org,
                bootstrap=cfg.bootstrap,
                db_path=cfg.db_path,
                mandate=cfg.mandate,
                policy=cfg.policy,
                node_key=cfg.node_key,
                topics=cfg.topics,
                security=cfg.security,
                final=None
                if cfg.seal is None
                else FinalSource(cfg.seal.db_path, cfg.seal.root, cfg.limits),
            )
        )
        self.dashboard: Any = None
        self._task: asyncio.Task[None] | None = None
        self._seal_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the ops server, the dashboard, the follow-up and the sealer.

        Raises:
            ConfigError: the dashboard's port or a named ops address is taken.
        """
        cfg = self.node.config
        if self._ops_settings is not None:
            ops = OpsServer(
                self._ops_settings.listen, what=f"node {cfg.org}", alive=self._alive,
                ready=self._ready, families=self._families, broker=self._broker,
            )  # fmt: skip
            if await ops.start():
                self.ops = ops
        if cfg.http_port is not None:
            from nodes.org_node.dashboard.auth import DashboardAuth  # noqa: PLC0415
            from nodes.org_node.dashboard.config import DashboardConfig  # noqa: PLC0415
            from nodes.org_node.dashboard.server import Dashboard  # noqa: PLC0415 - aiohttp

            self.dashboard = Dashboard(
                DashboardConfig(
                    org=cfg.org,
                    db_path=cfg.db_path,
                    mandate=cfg.mandate,
                    policy=cfg.policy,
                    host=cfg.http_host,
                    port=cfg.http_port,
                    final_db=None if cfg.seal is None else cfg.seal.db_path,
                    auth=cfg.dashboard_auth or DashboardAuth(),
                ),
                status=self.status,
            )
            await self.dashboard.start()
        self._task = asyncio.create_task(self.followup.run(), name=f"followup-{cfg.org}")
        self._task.add_done_callback(self._done)
        if self.sealer is not None:
            self._seal_task = asyncio.create_task(self.sealer.run(), name=f"sealer-{cfg.org}")
            self._seal_task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                f"{task.get_name().split('-')[0]}_failed",
                org=self.node.config.org,
                error=repr(task.exception()),
            )
            self.node.stop()

    def _alive(self) -> Check:
        for task in (self._task, self._seal_task):
            if task is not None and task.done() and not task.cancelled() and task.exception():
                return Check("alive", False, "part_failed", f"{task.get_name()}: stopped")
        return Check("alive", True)

    async def _ready(self) -> list[Check]:
        assert self._ops_settings is not None
        cfg = self.node.config
        checks = node_checks(self.status(), max_lag=self._ops_settings.max_lag)
        stores = [("store", cfg.db_path)]
        if cfg.seal is not None:
            stores.append(("final_store", cfg.seal.db_path))
        for name, path in stores:
            checks.append(await asyncio.to_thread(store_writable, name, path))
        return checks

    async def _families(self) -> list[Any]:
        cfg = self.node.config
        final = None if cfg.seal is None else cfg.seal.db_path
        snapshot = await asyncio.to_thread(store_snapshot, cfg.db_path, final, cfg.org)
        return node_families(snapshot, self.status())

    def status(self) -> dict[str, Any]:
        """Live counters of the node, its consumer group and its follow-up (ops and dashboard)."""
        f = self.followup
        check = self.node.group_check
        return {
            "node": dict(self.node.counts),
            # Who reads every report partition, and real lag on all of them (health module).
            "group": (
                {"state": "unknown", "why": "the consumer has not started"}
                if check is None
                else check.status()
            ),
            "lag": {f"{t}/{p}": n for (t, p), n in sorted(self.node.lag().items())},
            "followup": {**f.counts, "pending": f.pending, "late": f.late},
            "seal": None if self.sealer is None else self.sealer.status(),
            "running": self._task is not None and not self._task.done(),
        }

    async def stop(self) -> None:
        """Stop the dashboard and the ops server, let the follow-up and the sealer drain, and
        re-raise the first failure if any."""
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self.ops is not None:
            await self.ops.stop()
        if self.sealer is not None:
            self.sealer.stop()
        failure: BaseException | None = None
        for task, part in ((self._task, self.followup), (self._seal_task, self.sealer)):
            if task is None or part is None:
                continue
            part.stop()
            try:
                await task
            except Exception as exc:  # noqa: BLE001 - the other part still stops; first failure raised
                failure = failure or exc
        if failure is not None:
            raise failure


def build_node(
    config: NodeConfig, *, ops: NodeOps | None = None, broker: BrokerWatch | None = None
) -> OrgNode:
    """An organization's node with its follow-up, sealer, dashboard and ops server (unless
    ``ingest_only``)."""
    return OrgNode(config, extras=lambda node: NodeExtras(node, ops=ops, broker=broker))
