"""Where a node's wall time goes: one OrgNode on a fresh store, with timers around its phases.

``python -m bench.phases --records 30000`` starts a broker on free ports (or uses
``OBUS_BOOTSTRAP``), publishes a generated set, runs one node until it has stored every record
and prints the rate and the seconds spent in each phase: ``judge`` (decode, verify, chain: the
event loop's thread), ``commit_batch`` (SQLite, in a thread; overlapped with judging the next
batch), ``catch_up`` (registry and mandate topics) and ``_process`` (everything per batch in the
loop, waiting for the previous commit included). Wall time beyond ``_process`` is fetching and
idling. Cheaper than a profiler and with no profiler overhead; ``make bench`` has the full
table and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from bench.gen import GenSpec, generate
from bench.kafka_io import prepare, publish
from bus.store.node import NodeStore
from bus.topics import Topics
from nodes.demo.mission import LocalBroker
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node

P = ParamSpec("P")
R = TypeVar("R")


def _timed(spent: dict[str, float], name: str, f: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        t0 = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

    return wrapper


def _timed_async(
    spent: dict[str, float], name: str, f: Callable[P, Coroutine[Any, Any, R]]
) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(f)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        t0 = time.perf_counter()
        try:
            return await f(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

    return wrapper


async def measure(bootstrap: str, records: int, work: Path) -> dict[str, Any]:
    """Publish ``records`` generated reports and time one node storing all of them."""
    spec = GenSpec.today(records)
    topics = Topics(f"phases{int(time.time())}.")
    await prepare(bootstrap, topics, spec)
    await publish(bootstrap, topics, spec, generate(spec))
    node = build_node(
        NodeConfig(
            org="un", bootstrap=bootstrap, db_path=work / "node.db",
            mandate=spec.scenario().mandate, topics=topics,
        )
    )  # fmt: skip
    spent: dict[str, float] = {}
    original_commit = NodeStore.commit_batch
    NodeStore.commit_batch = _timed(spent, "commit_batch", original_commit)  # type: ignore[method-assign]
    try:
        node.ingestor.judge = _timed(spent, "judge", node.ingestor.judge)  # type: ignore[method-assign]
        node.registry.catch_up = _timed_async(spent, "catch_up", node.registry.catch_up)  # type: ignore[method-assign]
        node._process = _timed_async(spent, "_process", node._process)  # type: ignore[method-assign]
        task = asyncio.create_task(node.run())
        t_first = c_first = 0.0
        n_first = n = 0
        while n < spec.total:
            if task.done():
                await task
                raise RuntimeError("node stopped early")
            n = node.counts["accepted"] + node.counts["quarantined"]
            if n and not t_first:
                t_first, n_first, c_first = time.perf_counter(), n, time.process_time()
                spent.clear()
            await asyncio.sleep(0.005)
        wall, cpu = time.perf_counter() - t_first, time.process_time() - c_first
        node.stop()
        await task
    finally:
        NodeStore.commit_batch = original_commit  # type: ignore[method-assign]
    return {"records": n - n_first, "wall_s": wall, "cpu_s": cpu,
            "rate": (n - n_first) / wall, "spent_s": spent}  # fmt: skip


async def _main(records: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="obus-phases-"))
    external = os.environ.get("OBUS_BOOTSTRAP")
    broker = None if external else LocalBroker(work / "kafka")
    if broker is not None:
        broker.start()
    try:
        res = await measure(external or broker.bootstrap, records, work)  # type: ignore[union-attr]
    finally:
        if broker is not None:
            broker.stop()
    print(
        f"{res['records']:,} records in {res['wall_s']:.2f} s: {res['rate']:,.0f}/s "
        f"(process CPU {res['cpu_s']:.2f} s, commit threads included)"
    )
    for name, seconds in sorted(res["spent_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<13} {seconds:7.2f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--records", type=int, default=30000, help="reports to publish (30000)")
    opts = p.parse_args(argv)
    asyncio.run(_main(opts.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
