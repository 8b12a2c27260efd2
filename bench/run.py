"""``make bench``: one run, one broker, every figure and ratio of the performance targets.

    python -m bench.run [--sizes 100000,300000] [--latency-seconds 15] [--profile]

Starts a single-node broker on free ports with deploy/local/kafka.sh (or uses
``OBUS_BOOTSTRAP``, with a unique topic prefix), generates ~1 KiB signed chained reports once
(cached in var/bench/), publishes them with producer batches, then measures in child
processes: the Ed25519 ceiling (parse + verify; one process, then one per core at once; with
libsodium and, when ``make native`` built it, with the compiled verifier), a bare consumer, the
lean peer (bench/lean_peer.py: the simplest honest node, with each verifier, after checking
that it gives the project's verdicts on valid and damaged records), a node on one worker (with
each verifier) and with signature workers on every core, the auditor (rate and peak RSS via
``os.wait4``) at each size, and publish -> stored latency at six nodes against a bare
produce -> consume at a fixed rate. Prints a table and writes bench/results/<time>.json.

Every child runs with ``OBUS_VERIFIER=pynacl`` (libsodium verifies, as the figures of earlier
runs) except the rows marked "compiled verifier", which run with ``OBUS_VERIFIER=native``.

Absolute numbers on a shared machine are noise; the ratios, measured in one run, are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from bench.gen import REPO, GenSpec, generate, read
from bench.kafka_io import paced, prepare, publish
from bus.kafka.client import reliable_producer
from bus.topics import Topics
from nodes.demo.mission import LocalBroker
from nodes.demo.scenario import ORGANIZATIONS

RESULTS: Final = REPO / "bench" / "results"
TARGETS: Final = {
    "ingest": 0.85, "audit": 0.90, "memory": 1.2, "latency_p99": 1.5, "vs_lean": 1.0,
    "native": 1.1,
}  # fmt: skip
console = Console()


def child(kind: str, args: dict[str, Any], *, wait: bool = True, verifier: str = "pynacl") -> Any:
    """Run ``bench.child KIND`` and return (result, peak RSS in MiB); or the Popen if not wait.

    ``verifier`` is the child's ``OBUS_VERIFIER`` (and the lean peer's and ceiling's own choice).
    """
    out = Path(tempfile.mkstemp(prefix=f"obus-bench-{kind}-", suffix=".json")[1])
    env = {**os.environ, "OBUS_VERIFIER": verifier}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.child", kind, json.dumps({**args, "verifier": verifier}),
         str(out)], cwd=REPO, env=env,
    )  # fmt: skip
    if not wait:
        return proc, out
    return finish(proc, out)


def finish(proc: subprocess.Popen[bytes], out: Path) -> tuple[dict[str, Any], float]:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {proc.args!r} failed with {proc.returncode}")
    result = json.loads(out.read_text())
    out.unlink()
    return result, usage.ru_maxrss / 1024  # Linux: KiB


def native_built() -> bool:
    """Whether the compiled verifier ``obus_ed25519`` (make native) is installed."""
    return importlib.util.find_spec("obus_ed25519") is not None


def ceiling(seconds: float, procs: int, verifier: str = "pynacl") -> dict[str, float]:
    """Verifies/s of ``procs`` processes at once (sum), and per CPU second (mean)."""
    running = [
        child("ceiling", {"seconds": seconds}, wait=False, verifier=verifier) for _ in range(procs)
    ]
    results = [finish(p, o)[0] for p, o in running]
    return {
        "rate": sum(r["rate"] for r in results),
        "per_cpu_s": statistics.fmean(r["per_cpu_s"] for r in results),
    }


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return int(
                con.execute(
                    "SELECT coalesce(sum(next_offset), 0) FROM positions WHERE topic LIKE ?",
                    ("%reports.%",),
                ).fetchone()[0]
            )
    except sqlite3.Error:
        return 0


async def _wait_stored(dbs: list[Path], total: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_stored(db) >= total for db in dbs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes did not store {total} records: {[_stored(d) for d in dbs]}")
        await asyncio.sleep(0.2)


def _positions(db: Path) -> dict[tuple[str, int], int]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute("SELECT topic, partition, next_offset FROM positions")
            return {(t, p): o for t, p, o in rows}
    except sqlite3.Error:
        return {}


def group_ingest(
    bootstrap: str, prefix: str, spec: GenSpec, org: str, workers: int, work: Path
) -> dict[str, Any]:
    """``workers`` ingest-only node processes of one organization in one consumer group,
    sharing one SQLite store (``obus node --ingest-only``); the rate counts from the first
    stored batch to the last record stored, group joins and rebalances included."""
    db = work / f"group-{org}-{workers}.db"
    procs = [
        child("node", {"bootstrap": bootstrap, "prefix": prefix, "org": org, "db": str(db),
                       "spec": spec_dict(spec), "node": {"ingest_only": True}}, wait=False)
        for _ in range(workers)
    ]  # fmt: skip
    t_first, n_first, n = 0.0, 0, 0
    deadline = time.monotonic() + 900
    try:
        while n < spec.total:
            n = sum(o for (t, _), o in _positions(db).items() if ".reports." in t)
            if n and not t_first:
                t_first, n_first = time.perf_counter(), n
            if time.monotonic() > deadline:
                raise RuntimeError(f"group of {workers} stored only {n} of {spec.total}")
            time.sleep(0.05)
        wall = time.perf_counter() - t_first
    finally:
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)
        results = [finish(p, o) for p, o in procs]
    conflicts = sum(r["conflicts"] for r, _ in results)
    return {"workers": workers, "records": n, "seconds": wall,
            "rate": (n - n_first) / wall, "stored": _stored(db),
            "lost_commit_races": conflicts}  # fmt: skip


def _lat(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": percentile(samples, 0.50),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples),
        "mean_ms": statistics.fmean(samples),
    }


def _finals(db: Path) -> tuple[int, dict[tuple[str, int, int], float]]:
    """(accepted final verdicts, time each report record became final) of a final store."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            n = con.execute("SELECT count(*) FROM verdicts WHERE status = 'accepted'").fetchone()
            rows = con.execute(
                'SELECT v.topic, v.partition, v."offset", j.at_ms FROM verdicts v'
                " JOIN judged_at j ON j.epoch = v.judged_epoch WHERE v.status = 'accepted'"
            )
            return int(n[0]), {(t, p, o): float(ms) for t, p, o, ms in rows}
    except sqlite3.Error:
        return 0, {}


async def _wait_final(dbs: list[Path], total: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_finals(db)[0] >= total for db in dbs):
        if time.monotonic() > deadline:
            got = [_finals(d)[0] for d in dbs]
            raise RuntimeError(f"nodes did not judge {total} records final: {got}")
        await asyncio.sleep(0.5)


async def latency(
    bootstrap: str,
    prefix: str,
    rate: int,
    seconds: float,
    work: Path,
    seal_interval_ms: int = 0,
) -> Any:
    """Bare produce -> consume (six plain consumers), then publish -> stored at six nodes, then
    (with ``seal_interval_ms``) publish -> stored and publish -> final at six sealing nodes.

    The bare phase starts with two unmeasured seconds at the same rate: the first records on
    fresh topics pay for the broker's warm-up (segment files, JIT), which would otherwise
    inflate the bare p99 that the node's p99 is divided by. The node phase needs none: the
    nodes first catch up on the bare phase's records.
    """
    n = int(rate * seconds)
    warm = 2 * rate
    spec = GenSpec.today(warm + 3 * n + 600, observers_per_org=10, seed="latency")
    parts = generate(spec)
    topics = Topics(prefix)
    await prepare(bootstrap, topics, spec)
    ids = spec.observers
    records = [
        (topics.reports(ids[i].split("-obs-")[0]), ids[i].encode(), raw) for i, raw in read(parts)
    ]
    warmup, first, second = records[:warm], records[warm : warm + n], records[warm + n :][:n]
    third = records[warm + 2 * n :][:n]
    orgs = [o for o, _ in ORGANIZATIONS]
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        # 1. bare: six plain consumers at the end of every report partition.
        ready = [work / f"ready-{i}" for i in range(len(orgs))]
        cons = [
            child("consumer", {"bootstrap": bootstrap, "prefix": prefix, "ready": str(r)},
                  wait=False)
            for r in ready
        ]  # fmt: skip
        while not all(r.exists() for r in ready):  # noqa: ASYNC110 - files from children
            await asyncio.sleep(0.1)
        sent = (await paced(producer, warmup + first, rate))[warm:]
        await asyncio.sleep(2)
        for p, _ in cons:
            p.send_signal(signal.SIGTERM)
        got = [finish(p, o)[0]["received"] for p, o in cons]
        recv: dict[tuple[str, int, int], float] = {}
        for g in got:
            for t, p, off, ms in g:
                k = (t, p, off)
                recv[k] = max(recv.get(k, 0.0), ms)
        bare = [recv[(t, p, o)] - s for t, p, o, s in sent if (t, p, o) in recv]
        if len(bare) != len(sent):
            raise RuntimeError(f"bare consumers missed {len(sent) - len(bare)} records")

        # 2. six nodes; they first catch up on the bare phase's records (warm-up).
        dbs = [work / f"lat-{org}.db" for org in orgs]
        nodes = [
            child("node", {"bootstrap": bootstrap, "prefix": prefix, "org": org, "db": str(db),
                           "spec": spec_dict(spec)}, wait=False)
            for org, db in zip(orgs, dbs, strict=True)
        ]  # fmt: skip
        try:
            await _wait_stored(dbs, warm + n, 180)
            sent2 = await paced(producer, second, rate)
            await _wait_stored(dbs, warm + 2 * n, 120)
        finally:
            for p, _ in nodes:
                p.send_signal(signal.SIGTERM)
            for p, o in nodes:
                finish(p, o)
    finally:
        await producer.stop()
    stored = _stored_at(dbs)
    node = [stored[(t, p, o)] - s for t, p, o, s in sent2]
    if not seal_interval_ms:
        return _lat(bare), _lat(node), None
    # 3. six sealing nodes on fresh stores: they catch up on everything first (not measured).
    sdbs = [work / f"seal-{org}.db" for org in orgs]
    producer = reliable_producer(bootstrap)
    await producer.start()
    nodes = [
        child("node", {"bootstrap": bootstrap, "prefix": prefix, "org": org, "db": str(db),
                       "spec": spec_dict(spec), "seal_interval_ms": seal_interval_ms},
              wait=False)
        for org, db in zip(orgs, sdbs, strict=True)
    ]  # fmt: skip
    try:
        fdbs = [db.with_suffix(".final.db") for db in sdbs]
        await _wait_final(fdbs, warm + 2 * n, 300)
        sent3 = await paced(producer, third, rate)
        await _wait_final(fdbs, warm + 3 * n, 180)
    finally:
        await producer.stop()
        for p, _ in nodes:
            p.send_signal(signal.SIGTERM)
        for p, o in nodes:
            finish(p, o)
    stored3 = _stored_at(sdbs)
    final: dict[tuple[str, int, int], float] = {}
    for db in fdbs:
        for k, ms in _finals(db)[1].items():
            final[k] = max(final.get(k, 0.0), ms)
    sealed = {
        "interval_ms": seal_interval_ms,
        "stored": _lat([stored3[(t, p, o)] - s for t, p, o, s in sent3]),
        "final": _lat([final[(t, p, o)] - s for t, p, o, s in sent3]),
    }
    return _lat(bare), _lat(node), sealed


def _stored_at(dbs: list[Path]) -> dict[tuple[str, int, int], float]:
    """The time the last of ``dbs`` stored each report (provisional)."""
    stored: dict[tuple[str, int, int], float] = {}
    for db in dbs:
        with sqlite3.connect(db) as con:
            for t, p, o, ms in con.execute(
                'SELECT topic, partition, "offset", stored_at_ms FROM reports'
            ):
                k = (t, p, o)
                stored[k] = max(stored.get(k, 0.0), ms)
    return stored


def spec_dict(spec: GenSpec) -> dict[str, Any]:
    return {
        "count": spec.count, "observers_per_org": spec.observers_per_org,
        "record_bytes": spec.record_bytes, "seed": spec.seed, "now_ms": spec.now_ms,
    }  # fmt: skip


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    cores = opts.workers or os.cpu_count() or 1
    sizes = sorted(int(s) for s in opts.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="obus-bench-"))
    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cores": cores, "sizes": sizes,
        "python": sys.version.split()[0], "load_at_start": os.getloadavg(), "steps_s": {},
    }  # fmt: skip
    broker = None
    try:
        step = time.perf_counter()

        def done(name: str) -> None:
            nonlocal step
            res["steps_s"][name] = round(time.perf_counter() - step, 1)
            console.log(f"{name}: {res['steps_s'][name]} s")
            step = time.perf_counter()

        external = os.environ.get("OBUS_BOOTSTRAP")
        if external:
            bootstrap, base = external, f"bench{int(time.time())}."
        else:
            broker = LocalBroker(work / "kafka")
            broker.start()
            bootstrap, base = broker.bootstrap, "bench."
        done("broker")

        sets = {}
        for size in sizes:
            spec = GenSpec.today(size)
            parts = generate(spec)
            done(f"generate {spec.total}")
            prefix = f"{base}n{spec.total}."
            await prepare(bootstrap, Topics(prefix), spec)
            res[f"publish_rate_{spec.total}"] = await publish(
                bootstrap, Topics(prefix), spec, parts
            )
            done(f"publish {spec.total}")
            sets[size] = (spec, prefix)

        res["ceiling_1"] = ceiling(opts.ceiling_seconds, 1)
        if native_built():
            res["ceiling_1_native"] = ceiling(opts.ceiling_seconds, 1, "native")
        res["ceiling_all"] = ceiling(opts.ceiling_seconds, cores)
        res["load_at_ceiling"] = os.getloadavg()
        done("ceiling")

        spec, prefix = sets[sizes[0]]
        common = {"bootstrap": bootstrap, "prefix": prefix, "total": spec.total,
                  "spec": spec_dict(spec)}  # fmt: skip
        res["bare"] = child("bare", common)[0]
        done("bare consume")
        res["agreement"] = child(
            "agreement", {"spec": spec_dict(spec), "records": min(spec.total, opts.agreement)}
        )[0]
        if res["agreement"]["agree"] != res["agreement"]["records"]:
            raise RuntimeError(f"the lean peer's verdicts differ: {res['agreement']}")
        done("lean peer agreement")
        verifiers = ["pynacl", "native"] if native_built() else ["pynacl"]
        for v in verifiers:
            sfx = "" if v == "pynacl" else "_native"
            res[f"lean{sfx}"] = child("lean", common, verifier=v)[0]
            done(f"lean peer ({v})")
            res[f"ingest_1{sfx}"] = child("ingest", {**common, "verify_workers": 0}, verifier=v)[0]
            done(f"ingest_1 ({v})")
        for label, workers in (("ingest_1", 0), ("ingest_all", cores)):
            args = {**common, "verify_workers": workers}
            if label != "ingest_1":
                res[label] = child("ingest", args)[0]
                done(label)
            if opts.profile:
                path = RESULTS / f"profile-{label}.txt"
                child("ingest", {**args, "profile": str(path)})
                done(f"{label} (profiled, not timed: {path.relative_to(REPO)})")

        if opts.seal_interval > 0:
            # The same node with its sealer; the five other organizations' sealing nodes run
            # beside it, so that seals reach k = 4 (and a split round can be reopened: every
            # organization votes) and every report gets its final verdict.
            ms = round(opts.seal_interval * 1000)
            peers = [
                child("node", {**common, "org": org, "db": str(work / f"peer-{org}.db"),
                               "seal_interval_ms": ms}, wait=False)
                for org in ("osce", "eu", "nato", "csto", "sco")
            ]  # fmt: skip
            try:
                res["ingest_sealed"] = child(
                    "ingest", {**common, "verify_workers": 0, "seal_interval_ms": ms}
                )[0]
            finally:
                for p, _ in peers:
                    p.send_signal(signal.SIGTERM)
                for p, o in peers:
                    finish(p, o)
            done("ingest_sealed")

        if opts.scaling:
            for workers, org in ((1, "osce"), (2, "eu")):
                res[f"group_{workers}"] = group_ingest(bootstrap, prefix, spec, org, workers, work)
                done(f"group of {workers} worker(s)")

        for size in sizes:
            spec, prefix = sets[size]
            args = {"bootstrap": bootstrap, "prefix": prefix, "spec": spec_dict(spec)}
            r, rss = child("audit", args)
            r["wait4_maxrss_mib"] = rss  # includes the parent's image (see child.peak_rss_mib)
            res[f"audit_{spec.total}"] = r
            done(f"audit {spec.total}")
            if opts.profile and size == sizes[0]:
                path = RESULTS / f"profile-audit-{spec.total}.txt"
                child("audit", {**args, "profile": str(path)})
                done(f"audit (profiled, not timed: {path.relative_to(REPO)})")

        if opts.latency_seconds > 0:
            bare, node, sealed = await latency(
                bootstrap,
                f"{base}lat.",
                opts.rate,
                opts.latency_seconds,
                work,
                round(opts.seal_interval * 1000),
            )
            res["latency"] = {"rate": opts.rate, "bare": bare, "node": node}
            if sealed is not None:
                res["latency"]["sealed"] = sealed
            done("latency")
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return res


def ratios(res: dict[str, Any]) -> dict[str, float]:
    """The issue's ratios (wall-clock rates in this run), then the same per CPU second.

    ``*_cpu`` divide records per CPU second (node process tree, auditor process) by verifies
    per CPU second: the share of the CPU spent on the one unavoidable cost, which other load
    on a shared machine does not move.
    """
    out = {}
    bare = res["bare"]["rate"]
    out["ingest_1"] = res["ingest_1"]["rate"] / min(res["ceiling_1"]["rate"], bare)
    out["ingest_all"] = res["ingest_all"]["rate"] / min(res["ceiling_all"]["rate"], bare)
    audits = sorted((k for k in res if k.startswith("audit_")), key=lambda k: int(k[6:]))
    for k in audits:
        out[k] = res[k]["rate"] / res["ceiling_1"]["rate"]
    per_cpu = res["ceiling_1"]["per_cpu_s"]
    out["ingest_1_cpu"] = res["ingest_1"]["per_cpu_s"] / per_cpu
    out["lean_cpu"] = res["lean"]["per_cpu_s"] / per_cpu
    if "ceiling_1_native" in res:
        out["ceiling_native_cpu"] = res["ceiling_1_native"]["per_cpu_s"] / per_cpu
        out["lean_native_cpu"] = res["lean_native"]["per_cpu_s"] / per_cpu
        out["ingest_1_native_cpu"] = res["ingest_1_native"]["per_cpu_s"] / per_cpu
    if "ingest_sealed" in res:
        sealed = res["ingest_sealed"]
        out["ingest_sealed_cpu"] = sealed["per_cpu_s"] / per_cpu
        if sealed.get("final"):
            out["ingest_sealed_final_cpu"] = sealed["final"]["per_cpu_s"] / per_cpu
    out["ingest_all_cpu"] = res["ingest_all"]["per_cpu_s"] / per_cpu
    for k in audits:
        out[f"{k}_cpu"] = res[k]["per_cpu_s"] / per_cpu
    # The same per CPU second against the lean peer (same verifier: libsodium, else compiled).
    lean = res["lean"]["per_cpu_s"]
    for k in ("ingest_1", "ingest_all", "ingest_sealed", *audits):
        if k in res:
            out[f"{k}_vs_lean"] = res[k]["per_cpu_s"] / lean
    if "lean_native" in res:
        out["ingest_1_native_vs_lean_native"] = (
            res["ingest_1_native"]["per_cpu_s"] / res["lean_native"]["per_cpu_s"]
        )
    if len(audits) > 1:
        out["memory"] = res[audits[-1]]["peak_rss_mib"] / res[audits[0]]["peak_rss_mib"]
    if "group_2" in res:
        out["scaling_1_to_2"] = res["group_2"]["rate"] / res["group_1"]["rate"]
    if "latency" in res:
        lat = res["latency"]
        out["latency_p99"] = lat["node"]["p99_ms"] / lat["bare"]["p99_ms"]
    return out


def render(res: dict[str, Any], r: dict[str, float]) -> None:
    t = Table(title=f"observer-bus bench ({res['cores']} cores, Python {res['python']})")
    t.add_column("measure")
    t.add_column("figure", justify="right")
    t.add_column("note")

    def rate(x: dict[str, Any]) -> str:
        return f"{x['rate']:,.0f}/s ({x['per_cpu_s']:,.0f}/cpu-s)"

    t.add_row("Ed25519 ceiling, 1 process", rate(res["ceiling_1"]), "parse + libsodium, ~1 KiB")
    if "ceiling_1_native" in res:
        t.add_row("Ed25519 ceiling, compiled verifier", rate(res["ceiling_1_native"]),
                  "parse + obus_ed25519, same rule")  # fmt: skip
    t.add_row(f"Ed25519 ceiling, {res['cores']} processes", rate(res["ceiling_all"]), "")
    t.add_row("bare consume", rate(res["bare"]), "plain aiokafka, no parsing")
    ag = res["agreement"]
    t.add_row("lean peer = project verdicts", f"{ag['agree']:,} of {ag['records']:,}",
              f"valid + damaged records ({ag['accepted']:,} accepted)")  # fmt: skip
    t.add_row("lean peer", rate(res["lean"]), "bench/lean_peer.py, libsodium")
    if "lean_native" in res:
        t.add_row("lean peer, compiled verifier", rate(res["lean_native"]), "obus_ed25519")
    t.add_row("node ingest, 1 worker", rate(res["ingest_1"]), "OrgNode, whole path")
    if "ingest_1_native" in res:
        t.add_row("node ingest, 1 worker, compiled verifier", rate(res["ingest_1_native"]),
                  "OBUS_VERIFIER=native")  # fmt: skip
    if "ingest_sealed" in res:
        sealed = res["ingest_sealed"]
        t.add_row("node ingest + sealer, 1 worker", rate(sealed), "provisional verdicts stored")
        if sealed.get("final"):
            t.add_row("node ingest + sealer, to final", rate(sealed["final"]), "every report final")
    t.add_row(
        f"node ingest, {res['cores']} verify workers", rate(res["ingest_all"]), "+ worker CPU"
    )
    for k in sorted((k for k in res if k.startswith("audit_")), key=lambda k: int(k[6:])):
        a = res[k]
        t.add_row(f"audit {int(k[6:]):,}", rate(a),
                  f"peak RSS {a['peak_rss_mib']:.0f} MiB, {a['seconds']:.0f} s")  # fmt: skip
    for k in ("group_1", "group_2"):
        if k in res:
            g = res[k]
            rows = (
                f"shared store: {g['stored']:,} rows for {g['records']:,} records, "
                f"{g['lost_commit_races']} lost commit races"
            )
            t.add_row(
                f"consumer group, {g['workers']} ingest worker(s)", f"{g['rate']:,.0f}/s", rows
            )
    if "latency" in res:
        lat = res["latency"]
        for who in ("bare", "node"):
            x = lat[who]
            t.add_row(
                f"latency {who} @ {lat['rate']}/s",
                f"p50 {x['p50_ms']:.1f} / p99 {x['p99_ms']:.1f} / max {x['max_ms']:.0f} ms",
                "produce -> 6 consumers" if who == "bare" else "publish -> stored at 6 nodes",
            )
        sealed = lat.get("sealed")
        if sealed is not None:
            for what in ("stored", "final"):
                x = sealed[what]
                t.add_row(
                    f"latency sealing nodes @ {lat['rate']}/s",
                    f"p50 {x['p50_ms']:.1f} / p99 {x['p99_ms']:.1f} / max {x['max_ms']:.0f} ms",
                    f"publish -> {what} at 6 nodes, seal interval {sealed['interval_ms']} ms",
                )
    t.add_section()
    checks = {
        "ingest_1": ("ingest", ">="), "ingest_all": ("ingest", ">="), "memory": ("memory", "<="),
        "latency_p99": ("latency_p99", "<="), "ingest_1_cpu": ("ingest", ">="),
        "ingest_all_cpu": ("ingest", ">="), "ingest_1_vs_lean": ("vs_lean", ">="),
        "ingest_all_vs_lean": ("vs_lean", ">="), "ingest_sealed_vs_lean": ("vs_lean", ">="),
        "ingest_1_native_vs_lean_native": ("vs_lean", ">="),
        "ingest_1_native_cpu": ("native", ">="),
    }  # fmt: skip
    for k, v in r.items():
        is_audit = k.startswith("audit_") and not k.endswith("_vs_lean")
        target, op = checks.get(k, ("audit", ">=") if is_audit else ("", ""))
        goal = TARGETS.get(target)
        ok = goal is not None and (v >= goal if op == ">=" else v <= goal)
        mark = "" if goal is None else ("[green]met[/green]" if ok else "[red]missed[/red]")
        t.add_row(f"ratio {k}", f"{v:.2f}", f"target {op} {goal} {mark}" if goal else "")
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--sizes",
        default="50000,200000",
        help="audit log sizes; the smallest is also the ingest set (default 50000,200000; "
        "100000,1000000 takes ~10 more minutes on 2 cores)",
    )
    p.add_argument("--latency-seconds", type=float, default=10)
    p.add_argument("--rate", type=int, default=1000, help="reports/s in the latency run")
    p.add_argument(
        "--seal-interval",
        type=float,
        default=1.0,
        help="seconds; the latency run also measures publish -> final at six sealing nodes "
        "with this seal interval (0: skip that phase)",
    )
    p.add_argument("--ceiling-seconds", type=float, default=4)
    p.add_argument(
        "--agreement", type=int, default=2000,
        help="valid records (each with ~10 damaged copies) on which the lean peer's verdicts "
        "are checked against the project's (default 2000)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=0, help="cores to use (default: all)")
    p.add_argument("--profile", action="store_true", help="also write pyinstrument profiles")
    p.add_argument(
        "--no-scaling", dest="scaling", action="store_false",
        help="skip 1 vs 2 node processes in one consumer group",
    )  # fmt: skip
    opts = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    res = asyncio.run(run(opts))
    res["ratios"] = r = ratios(res)
    res["targets"] = TARGETS
    path = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2, default=str))
    render(res, r)
    console.print(f"written {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
