"""Measurements that run in a child process of their own: ``python -m bench.child KIND JSON OUT``.

Each writes one JSON object to OUT. Running them as separate processes keeps the bench's own
work off their cores and lets the parent read their peak memory with ``os.wait4``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from bench.gen import GenSpec
from bus.kafka.admin import topic_partitions
from bus.topics import Topics
from nodes.org_node.process import build_node
from nodes.runtime import logs

Args = dict[str, Any]
_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int | None = None) -> float:
    """CPU seconds (user + system) of process ``root`` (default: this one) and every live
    descendant (Linux /proc).

    On a machine shared with other work, wall-clock rates say how much CPU we were given;
    rates per CPU second say how much work each CPU second did. The bench reports both.
    """
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(d.name)] = int(fields[1])
        cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / _TICK
    top = os.getpid() if root is None else root
    mine, frontier = {top}, [top]
    while frontier:
        pid = frontier.pop()
        for child_pid, parent in parents.items():
            if parent == pid and child_pid not in mine:
                mine.add(child_pid)
                frontier.append(child_pid)
    return sum(cpu.get(p, 0.0) for p in mine)


def _self_and_reaped_cpu_s() -> float:
    """CPU seconds of this process plus its children that have exited (any worker process the
    auditor starts is gone when it returns, so /proc no longer lists it)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> float:
    """This process's own peak resident set (VmHWM), in MiB.

    Not ``ru_maxrss`` from ``wait4``: Linux folds the memory image a child had before
    ``exec`` into it, and with vfork/fork that is the parent's peak (the bench holding a whole
    generated set), not the child's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ceiling(a: Args) -> dict[str, Any]:
    """Ed25519 verifies per second of the pinned rule on ~1 KiB messages: parse the envelope,
    then verify its PAE with libsodium (PyNaCl), or with the compiled ``obus_ed25519`` when
    ``a["verifier"]`` is ``"native"``."""
    import nacl.signing  # noqa: PLC0415

    from bench.lean_peer import verifier  # noqa: PLC0415
    from bus._pb.obus.v1 import envelope_pb2  # noqa: PLC0415
    from bus.crypto import pae  # noqa: PLC0415
    from bus.model import PAYLOAD_REPORT  # noqa: PLC0415

    verify = verifier(a.get("verifier", "pynacl"))

    keys = [nacl.signing.SigningKey(bytes([i]) * 32) for i in range(8)]
    msgs = []
    for i in range(256):
        k = keys[i % len(keys)]
        payload = os.urandom(a.get("payload_bytes", 900))
        sig = k.sign(pae(PAYLOAD_REPORT, payload)).signature
        env = envelope_pb2.SignedEnvelope(
            payload_type=PAYLOAD_REPORT, payload=payload,
            signatures=[envelope_pb2.Signature(key_id=bytes(32), sig=sig)],
        )  # fmt: skip
        msgs.append((bytes(k.verify_key), env.SerializeToString()))
    deadline = time.perf_counter() + a["seconds"]
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() < deadline:
        for pk, raw in msgs:
            e = envelope_pb2.SignedEnvelope()
            e.ParseFromString(raw)
            if not verify(pk, pae(e.payload_type, e.payload), e.signatures[0].sig):
                raise RuntimeError("ceiling: a valid signature did not verify")
        n += len(msgs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "verifies": n, "seconds": wall, "rate": n / wall, "cpu_s": cpu, "per_cpu_s": n / cpu,
        "message_bytes": len(msgs[0][1]), "verifier": a.get("verifier", "pynacl"),
    }  # fmt: skip


async def bare(a: Args) -> dict[str, Any]:
    """A plain consumer reading every report record once: no parsing, no verification."""
    topics = Topics(a["prefix"])
    tps = await topic_partitions(a["bootstrap"], pattern=topics.reports_pattern)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=a["bootstrap"], group_id=None, enable_auto_commit=False,
        **a.get("consumer", {}),
    )  # fmt: skip
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, nbytes, t_first = 0, 0, 0.0
        while n < a["total"]:
            batch = await consumer.getmany(timeout_ms=1000, max_records=a.get("max_records", 1000))
            for records in batch.values():
                if n == 0 and records:
                    t_first, c_first = time.perf_counter(), tree_cpu_s()
                    n_first = len(records)
                n += len(records)
                nbytes += sum(len(r.value or b"") for r in records)
        wall, cpu = time.perf_counter() - t_first, tree_cpu_s() - c_first
    finally:
        await consumer.stop()
    return {
        "records": n, "seconds": wall, "rate": (n - n_first) / wall, "cpu_s": cpu,
        "per_cpu_s": (n - n_first) / max(cpu, 1e-9), "bytes": nbytes,
    }  # fmt: skip


def _node(a: Args, db: Path) -> Any:
    from nodes.org_node.config import NodeConfig, SealSettings  # noqa: PLC0415

    spec = GenSpec(**a["spec"])
    sc = spec.scenario()
    org = a.get("org", "un")
    seal = None
    if a.get("seal_interval_ms"):  # the node's sealer: seals and final verdicts
        seal = SealSettings(
            root=sc.mandate, db_path=db.with_suffix(".final.db"), node_key=sc.node_keys[org],
            interval_ms=a["seal_interval_ms"],
        )  # fmt: skip
    cfg = NodeConfig(
        org=org, bootstrap=a["bootstrap"], db_path=db, mandate=sc.mandate,
        topics=Topics(a["prefix"]), verify_workers=a.get("verify_workers", 0), seal=seal,
        **a.get("node", {}),
    )  # fmt: skip
    return build_node(cfg)


async def ingest(a: Args) -> dict[str, Any]:
    """A whole node (OrgNode: consume, parse, verify, chain, store) on a fresh store.

    The rate counts from the first stored batch to the last, so group join and the workers'
    start are left out. (``make bench --profile`` runs this child under py-spy: bench.run.)
    """
    db = Path(tempfile.mkdtemp(prefix="obus-bench-")) / "node.db"
    node = _node(a, db)
    task = asyncio.create_task(node.run())
    t_first, n_first, n = 0.0, 0, 0
    while n < a["total"]:
        if task.done():
            await task
            raise RuntimeError("node stopped early")
        n = node.counts["accepted"] + node.counts["quarantined"]
        if n and not t_first:
            t_first, n_first, c_first = time.perf_counter(), n, tree_cpu_s()
        await asyncio.sleep(0.005)
    wall, cpu = time.perf_counter() - t_first, tree_cpu_s() - c_first
    final: dict[str, Any] = {}
    if a.get("seal_interval_ms"):  # then until every report has its final verdict
        while (done := _final_reports(db.with_suffix(".final.db"))) < a["total"]:
            if task.done():
                await task
                raise RuntimeError("node stopped early")
            await asyncio.sleep(0.05)
        f_wall, f_cpu = time.perf_counter() - t_first, tree_cpu_s() - c_first
        final = {
            "seconds": f_wall, "rate": (done - n_first) / f_wall, "cpu_s": f_cpu,
            "per_cpu_s": (done - n_first) / f_cpu,
        }  # fmt: skip
    counts = dict(node.counts)
    node.stop()
    await task
    return {
        "records": n, "seconds": wall, "rate": (n - n_first) / wall, "cpu_s": cpu,
        "per_cpu_s": (n - n_first) / cpu, "counts": counts, "final": final,
    }  # fmt: skip


def _final_reports(path: Path) -> int:
    """Report records with a final verdict (not deferred) in a final store."""
    import sqlite3  # noqa: PLC0415

    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as con:
            row = con.execute(
                "SELECT count(*) FROM verdicts WHERE topic LIKE '%reports.%'"
                " AND status IN ('accepted', 'quarantined')"
            ).fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0


async def audit(a: Args) -> dict[str, Any]:
    """``nodes.auditor.run.audit`` over the whole log (peak memory is read by the parent)."""
    from nodes.auditor.run import audit as run_audit  # noqa: PLC0415

    spec = GenSpec(**a["spec"])
    profile = None
    if a.get("profile"):
        from pyinstrument import Profiler  # noqa: PLC0415

        profile = Profiler(async_mode="disabled")
        profile.start()
    t0, c0 = time.perf_counter(), _self_and_reaped_cpu_s()
    result = await run_audit(a["bootstrap"], spec.scenario().mandate, topics=Topics(a["prefix"]))
    wall, cpu = time.perf_counter() - t0, _self_and_reaped_cpu_s() - c0
    if profile is not None:
        profile.stop()
        text = profile.output_text(unicode=False, color=False)
        await asyncio.to_thread(Path(a["profile"]).write_text, text)
    accepted = sum(result.accepted.values())
    return {
        "records": accepted + sum(result.rejected.values()),
        "accepted": accepted,
        "violations": len(result.violations),
        "seconds": wall,
        "rate": accepted / wall,
        "cpu_s": cpu,
        "per_cpu_s": accepted / cpu,
        "peak_rss_mib": peak_rss_mib(),
    }


async def node(a: Args) -> dict[str, Any]:
    """One organization node for the latency run, until SIGTERM."""
    n = _node(a, Path(a["db"]))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, n.stop)
    await n.run()
    return {"counts": n.counts, "conflicts": n.conflicts}


async def consumer(a: Args) -> dict[str, Any]:
    """A plain consumer for bare latency: receive time of every record, until SIGTERM."""
    topics = Topics(a["prefix"])
    tps = await topic_partitions(a["bootstrap"], pattern=topics.reports_pattern)
    c = AIOKafkaConsumer(bootstrap_servers=a["bootstrap"], group_id=None, **a.get("consumer", {}))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    got: list[tuple[str, int, int, float]] = []
    await c.start()
    try:
        c.assign(tps)
        await c.seek_to_end(*tps)
        for tp in tps:
            await c.position(tp)
        await asyncio.to_thread(Path(a["ready"]).touch)
        while not stop.is_set():
            batch = await c.getmany(timeout_ms=100)
            now = time.time() * 1000
            for tp, records in batch.items():
                got.extend((tp.topic, tp.partition, r.offset, now) for r in records)
    finally:
        await c.stop()
    return {"received": got}


async def lean(a: Args) -> dict[str, Any]:
    """The lean peer (bench.lean_peer) over every report record once, on a fresh store."""
    from bench.lean_peer import run as run_lean  # noqa: PLC0415

    db = Path(tempfile.mkdtemp(prefix="obus-bench-lean-")) / "lean.db"
    return await run_lean({**a, "db": str(db)}, tree_cpu_s)


def agreement(a: Args) -> dict[str, Any]:
    """The lean peer's verdicts against the project's on valid and damaged records."""
    from bench.gen import generate  # noqa: PLC0415
    from bench.lean_peer import agreement as agree  # noqa: PLC0415

    spec = GenSpec(**a["spec"])
    return agree(spec, generate(spec), a["records"])


KINDS: dict[str, Callable[[Args], Any]] = {
    "ceiling": ceiling, "bare": bare, "ingest": ingest, "audit": audit, "node": node,
    "consumer": consumer, "lean": lean, "agreement": agreement,
}  # fmt: skip


def main() -> None:
    kind, args, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    logs.configure(json=True, level=args.get("log_level", "warning"))
    fn = KINDS[kind]
    result = fn(args)
    if isinstance(result, Coroutine):
        result = asyncio.run(result)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
