"""A node that cannot start stops again everything it had started (no broker: a closed port).

Before, the follow-up task and the dashboard were started before the trust topics were read,
outside the block that stops things, so a node whose brokers could not be reached at start
left its dashboard listening, its follow-up running and its stores open.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from bus.errors import BusError
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node
from tests.mission import make_mission


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_a_node_that_cannot_reach_a_broker_at_start_stops_what_it_started(
    tmp_path: Path,
) -> None:
    cfg = NodeConfig(
        org="un", bootstrap=f"127.0.0.1:{_closed_port()}", db_path=tmp_path / "un.db",
        mandate=make_mission().scenario.mandate, http_port=0, attachments=None,
    )  # fmt: skip
    node = build_node(cfg)
    with pytest.raises(BusError):
        await asyncio.wait_for(node.run(), 120)
    extras = node.extras
    assert extras is not None and extras.dashboard is not None
    url = extras.dashboard.url
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(url + "healthz")  # the dashboard no longer listens
    task = extras._task
    assert task is not None and task.done()  # the follow-up does not run on
    with pytest.raises(sqlite3.ProgrammingError):
        node.store.count_reports()  # closed
