"""What a node's dashboard reads and where it listens (shared by the read model and the server)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bus.model import Mandate
from bus.policy import Policy
from nodes.org_node.dashboard.auth import DashboardAuth


@dataclass(frozen=True)
class DashboardConfig:
    """Where the dashboard listens and what it reads.

    Args:
        org: this organization.
        db_path: the node's SQLite store.
        mandate: the verified mandate (zones for the map, k of n for statements).
        policy: this organization's policy (early-warning charts); None: none shown.
        host: listen address; 127.0.0.1 unless the operator decides otherwise.
        port: listen port (0: any free port; see :attr:`Dashboard.port`).
        final_db: the sealer's final store (:mod:`bus.store.final`); None: no sealer.
        auth: who may read it (:mod:`~nodes.org_node.dashboard.auth`); the default lets
            nobody in.
    """

    org: str
    db_path: Path
    mandate: Mandate
    policy: Policy | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    final_db: Path | None = None
    auth: DashboardAuth = field(default_factory=DashboardAuth)
