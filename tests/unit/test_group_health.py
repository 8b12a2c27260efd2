"""The health rule: a node is starved when a partition no worker of its own reads holds records
its store has not read (nodes/org_node/health.py), and /metrics shows it."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from bus.kafka.admin import GroupMember
from nodes.org_node.dashboard.metrics import metrics_text
from nodes.org_node.health import GroupCheck, judge_group, own_client_ids

OWN = own_client_ids("un")
T = "t.reports.un"
EXISTING = [(T, p) for p in range(4)]


def member(client_id: str, *parts: int, host: str = "/10.0.0.1") -> GroupMember:
    return GroupMember(f"{client_id}-{parts}", client_id, host, frozenset((T, p) for p in parts))


def test_own_node_and_worker_reading_everything_is_healthy() -> None:
    h = judge_group(
        EXISTING,
        [member("obus-node-un", 0, 1), member("obus-node-un-worker", 2, 3)],
        positions={(T, 0): 5},
        ends={(T, 0): 9, (T, 3): 2},
        own=OWN,
        this_process=[(T, 0), (T, 1)],
    )
    assert not h.starved and h.why == ""
    assert (h.exist, h.assigned_here, h.assigned_foreign, h.unassigned) == (4, 4, 0, 0)
    assert h.assigned_this_process == 2
    assert h.lag == {(T, 0): 4, (T, 1): 0, (T, 2): 0, (T, 3): 2}  # lag alone is not starvation
    assert h.as_dict()["state"] == "ok"


def test_foreign_member_holding_unread_records_starves_the_node() -> None:
    h = judge_group(
        EXISTING,
        [member("obus-node-un", 0, 1), member("intruder", 2, 3, host="/10.9.9.9")],
        positions={(T, 2): 1},
        ends={(T, 2): 7, (T, 3): 3},
        own=OWN,
    )
    assert h.starved
    assert h.starved_partitions == ((T, 2), (T, 3))
    assert [m.client_id for m in h.foreign_members] == ["intruder"]
    d = h.as_dict()
    assert d["state"] == "starved"
    assert d["partitions"] == {
        "exist": 4,
        "assigned_here": 2,
        "assigned_this_process": 0,
        "assigned_foreign": 2,
        "unassigned": 0,
    }
    assert d["foreign_members"][0]["client_id"] == "intruder"
    assert d["foreign_members"][0]["partitions"] == 2
    assert d["lag"] == {f"{T}/0": 0, f"{T}/1": 0, f"{T}/2": 6, f"{T}/3": 3}
    assert "2 of 4" in h.why and "9 records" in h.why and "intruder@/10.9.9.9" in h.why


def test_foreign_member_on_read_partitions_is_reported_but_not_starvation() -> None:
    h = judge_group(
        EXISTING,
        [member("obus-node-un", 0, 1), member("intruder", 2, 3)],
        positions={(T, 2): 7},
        ends={(T, 2): 7},
        own=OWN,
    )
    assert not h.starved
    assert h.assigned_foreign == 2 and len(h.foreign_members) == 1


def test_unassigned_partition_with_records_starves_and_without_does_not() -> None:
    members = [member("obus-node-un", 0, 1, 2)]
    h = judge_group(EXISTING, members, positions={}, ends={(T, 3): 1}, own=OWN)
    assert h.starved and h.unassigned == 1 and h.foreign_members == ()
    assert not judge_group(EXISTING, members, positions={}, ends={}, own=OWN).starved


def test_another_organizations_client_id_is_foreign() -> None:
    # a client id is a label, not an identity: only the node's own two count as its workers
    h = judge_group(
        EXISTING,
        [member("obus-node-un", 0, 1), member("obus-node-eu", 2, 3)],
        positions={},
        ends={(T, 2): 1},
        own=OWN,
    )
    assert h.starved and [m.client_id for m in h.foreign_members] == ["obus-node-eu"]


def test_partitions_outside_the_pattern_are_not_counted() -> None:
    other = GroupMember("m", "intruder", "/h", frozenset({("elsewhere", 0)}))
    h = judge_group(EXISTING, [member("obus-node-un", 0, 1, 2, 3), other], {}, {}, OWN)
    assert (h.exist, h.assigned_here, h.assigned_foreign) == (4, 4, 0)
    assert not h.starved


def _metrics(group: dict[str, Any]) -> str:
    snapshot = {
        "consumed": {},
        "verified": 0,
        "quarantined": {},
        "board_rejected": {},
        "decisions": [],
        "peers": {},
        "statements": {},
    }
    status = {"node": {}, "lag": {}, "group": group, "followup": {}, "running": True}
    return metrics_text(snapshot, status).decode()


def test_metrics_show_partitions_foreign_members_real_lag_and_starvation() -> None:
    h = judge_group(
        EXISTING,
        [member("obus-node-un", 0, 1), member("intruder", 2, 3)],
        positions={},
        ends={(T, 2): 7},
        own=OWN,
    )
    text = _metrics(h.as_dict())
    assert "obus_partitions_existing 4.0" in text
    assert "obus_partitions_assigned 2.0" in text
    assert "obus_group_foreign_members 1.0" in text
    assert f'obus_partition_lag_records{{partition="2",topic="{T}"}} 7.0' in text
    assert f'obus_partition_lag_records{{partition="0",topic="{T}"}} 0.0' in text
    assert "obus_node_starved 1.0" in text


def test_metrics_leave_out_group_gauges_while_unknown() -> None:
    text = _metrics({"state": "unknown", "why": "brokers unreachable"})
    assert "obus_node_starved" not in text and "obus_partition_lag_records" not in text
    assert "obus_consumer_lag_records" in text


class _DeadBrokers:
    """A consumer whose brokers cannot be reached."""

    async def topics(self) -> set[str]:
        raise KafkaConnectionError("no broker answers")

    def assignment(self) -> set[Any]:
        return set()


async def test_unreachable_brokers_make_the_check_unknown_not_a_crash() -> None:
    check = GroupCheck(
        cast(AIOKafkaConsumer, _DeadBrokers()),
        bootstrap="127.0.0.1:1",
        security=None,
        group_id="t.node.un",
        pattern="^t\\.reports\\.",
        positions=dict,
        own=OWN,
    )
    assert await check.check() is None
    status = check.status()
    assert status["state"] == "unknown" and "no broker answers" in status["why"]
    check.start()  # the loop survives failing checks and stops on request
    await asyncio.sleep(0)
    await check.stop()
    assert check.status()["state"] == "unknown"
