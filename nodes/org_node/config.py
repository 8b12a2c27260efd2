"""An organization node's configuration: built by the CLI (or a test), never read from the
environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bus.attachment import AttachmentLimits
from bus.crypto import SigningKey
from bus.errors import (
    ConfigError,
)
from bus.kafka.client import KafkaSecurity
from bus.model import Mandate
from bus.policy import Policy
from bus.sealed import DecryptionKey
from bus.store.quarantine import DEFAULT_QUARANTINE_QUOTA_BYTES
from bus.topics import Topics
from bus.verify import Limits

if TYPE_CHECKING:
    from nodes.org_node.dashboard.auth import DashboardAuth


@dataclass(frozen=True)
class SealSettings:
    """The node's sealer (nodes/org_node/sealer.py): it reads the whole bus, proposes and
    cosigns seals with ``node_key`` (None: it only judges), and keeps final verdicts in
    ``db_path``.

    Args:
        root: version 1 of the mandate, the root every reader of the bus judges from.
        db_path: the final store.
        node_key: signs proposals and cosignatures (accredited by the node's organization
            with role NODE); None for a node that only judges.
        interval_ms: the seal interval (also each takeover step).
        tolerance_ms: how far a proposal's time may be from this host's clock.
        withdraw_after_ms: how old this node's vote in a round that is not final may grow
            before the node withdraws it (None: six seal intervals; 0: never withdraw).
    """

    root: Mandate
    db_path: Path
    node_key: SigningKey | None = None
    interval_ms: int = 5_000
    tolerance_ms: int = 60_000
    withdraw_after_ms: int | None = None

    def __post_init__(self) -> None:
        if self.root.version != 1:
            raise ConfigError(
                "root mandate (--root-mandate)",
                f"is version {self.root.version}; final verdicts are judged from version 1",
                "pass the version the bus began under",
            )
        if self.interval_ms < 1 or self.tolerance_ms < 1:
            raise ConfigError(
                "seal interval (--seal-interval, --seal-tolerance)",
                f"{self.interval_ms} ms / {self.tolerance_ms} ms",
                "give positive durations, e.g. --seal-interval 5 --seal-tolerance 60",
            )
        if self.withdraw_after_ms is not None and self.withdraw_after_ms < 0:
            raise ConfigError(
                "seal withdrawal timeout (--seal-withdraw-after)",
                f"{self.withdraw_after_ms} ms",
                "give 0 (never withdraw) or a duration of several seal intervals",
            )


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs; built by the CLI, never read from the environment here."""

    org: str
    bootstrap: str
    db_path: Path
    mandate: Mandate
    policy: Policy | None = None
    topics: Topics = field(default_factory=Topics)
    limits: Limits = field(default_factory=Limits)
    # Most records judged and committed as one batch (a backlog: catching up, a burst). Each
    # batch pays a trust catch-up round trip and a store transaction; 4,000 of the bench's
    # ~1 KiB reports (within one 8 MiB fetch) gave 7 % more per CPU-second than 1,000
    # (bench/README.md, "Node ingest"). At a steady rate the fetch wait below sets batches.
    max_batch: int = 4000
    poll_timeout_ms: int = 500
    # Consumer-side batching: the broker answers a fetch once fetch_min_bytes of reports are
    # ready or fetch_max_wait_ms have passed. Every batch costs ~2.8 ms of CPU whatever its
    # size (a fetch over every report partition, a trust catch-up round trip, a store
    # commit), so a node fed 300 reports/s in batches of two used half a core (17 % with
    # these defaults). The wait bounds the latency added; bench/README.md ("Batching").
    fetch_min_bytes: int = 64 * 1024
    fetch_max_wait_ms: int = 50
    # How often new topics matching the report pattern are discovered.
    metadata_max_age_ms: int = 5000
    # How this node authenticates to the brokers (None: PLAINTEXT); see
    # bus.kafka.client.KafkaSecurity.
    security: KafkaSecurity | None = None
    # Restricted reports: this organization's X25519 keys, to read reports sealed to it.
    decryption_keys: tuple[DecryptionKey, ...] = ()
    # Follow-up and dashboard: the key that signs published decisions (accredited
    # by this organization as NODE) and the dashboard's address (None: no dashboard).
    node_key: SigningKey | None = None
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    # Who may log in to the dashboard (nodes.org_node.dashboard.auth); None: nobody.
    dashboard_auth: DashboardAuth | None = None
    # Worker processes that check a batch's Ed25519 signatures in parallel before the
    # sequential path runs (nodes/runtime/preverify.py); 0: everything in this process.
    verify_workers: int = 0
    # Attachments: limits of the reassembler run beside the node by run_node (its
    # own consumer group and store, nodes/org_node/attachments.py); None: no reassembler.
    attachments: AttachmentLimits | None = field(default_factory=AttachmentLimits)
    # An extra ingest worker of this organization's node (scaling out): it shares
    # db_path and the consumer group with the full node and with other workers, and only
    # consumes, verifies and stores (no follow-up, dashboard or attachments; the full node
    # runs those). Batches commit only against unchanged store state (StoreConflictError).
    ingest_only: bool = False
    # The consumer group (default <prefix>node.<org>, what `obus kafka acls` grants). Every
    # process sharing db_path must use the same group: two groups would both read every
    # partition, and all but one commit of each batch would be lost races.
    group_id: str | None = None
    # Bytes of rejected records the store keeps per topic; past it, their rows keep reason,
    # size, SHA-256 and position only, and the node logs quarantine_quota_exceeded (README
    # "Quarantine limits and quotas"). 0: keep no rejected bytes at all.
    quarantine_quota_bytes: int = DEFAULT_QUARANTINE_QUOTA_BYTES
    # The sealer run beside the full node (final verdicts); None: no sealer.
    seal: SealSettings | None = None

    def __post_init__(self) -> None:
        if self.fetch_min_bytes < 1:
            raise ConfigError(
                "fetch_min_bytes (--fetch-min-bytes)",
                f"{self.fetch_min_bytes} is not a byte count",
                "give 1 (answer as soon as one record is ready) or more",
            )
        if not 0 <= self.fetch_max_wait_ms <= 10_000:
            raise ConfigError(
                "fetch_max_wait_ms (--fetch-max-wait-ms)",
                f"{self.fetch_max_wait_ms} ms is outside 0..10000",
                "give the longest time a report may wait to be batched, e.g. 50",
            )
        if self.quarantine_quota_bytes < 0:
            raise ConfigError(
                "quarantine_quota_bytes (--quarantine-quota-bytes)",
                f"{self.quarantine_quota_bytes} is not a byte count",
                "give 0 (keep no rejected bytes) or more, e.g. 16777216",
            )
