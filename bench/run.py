"""``make bench``: one run, one broker, every figure and ratio of the performance targets.

    python -m bench.run [--sizes 100000,300000] [--latency-seconds 15] [--profile]
    python -m bench.run --only ingest [--repeat 3] [--profile]   # ceiling, lean peer, ingest_1

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

from bench.child import tree_cpu_s
from bench.gen import CACHE_DIR, REPO, GenSpec, generate, read
from bench.kafka_io import paced, prepare, publish
from bench.sealing import seal_published_log
from bench.spy import fold
from bench.spy import table as spy_table
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


def child(
    kind: str,
    args: dict[str, Any],
    *,
    wait: bool = True,
    verifier: str = "pynacl",
    spy: Path | None = None,
) -> Any:
    """Run ``bench.child KIND`` and return (result, peak RSS in MiB); or the Popen if not wait.

    ``verifier`` is the child's ``OBUS_VERIFIER`` (and the lean peer's and ceiling's own choice).
    ``spy``: run the child under py-spy (every thread and subprocess, native frames included)
    and write its raw samples there (``bench.spy`` folds them).
    """
    out = Path(tempfile.mkstemp(prefix=f"obus-bench-{kind}-", suffix=".json")[1])
    env = {**os.environ, "OBUS_VERIFIER": verifier}
    cmd = [sys.executable, "-m", "bench.child", kind, json.dumps({**args, "verifier": verifier}),
           str(out)]  # fmt: skip
    if spy is not None:
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        cmd = [py_spy, "record", "--threads", "--subprocesses", "--native", "--rate", "200",
               "--format", "raw", "--output", str(spy), "--", *cmd]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
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


async def _until_ready(paths: list[Path]) -> None:
    while not all(r.exists() for r in paths):  # noqa: ASYNC110 - files from children
        await asyncio.sleep(0.1)


async def latency(
    bootstrap: str,
    prefix: str,
    rate: int,
    seconds: float,
    work: Path,
    seal_interval_ms: int = 0,
    fetch: tuple[tuple[int, int], ...] = (),
) -> dict[str, Any]:
    """At ``rate`` reports/s: bare produce -> consume (six plain consumers; "one" is the first
    consumer, "six" the last of them to receive); then one node alone, publish -> provisional
    verdict (its store's ``stored_at_ms``) and the node's CPU per report, once with the node's
    default fetch settings and once per ``(fetch_min_bytes, fetch_max_wait_ms)`` of ``fetch``;
    then (with ``seal_interval_ms``) six sealing nodes: publish -> provisional and publish ->
    final verdict (its epoch's ``judged_at`` in the final store) at one node (the UN's) and at
    all six.

    The bare phase starts with two unmeasured seconds at the same rate: the first records on
    fresh topics pay for the broker's warm-up (segment files, JIT), which would otherwise
    inflate the bare p99 that the nodes' p99 is divided by. The node phases need none: each
    node first catches up on every record published before (not measured).
    """
    n = int(rate * seconds)
    warm = 2 * rate
    phases = 1 + 1 + len(fetch) + (1 if seal_interval_ms else 0)
    spec = GenSpec.today(warm + phases * n + 600, observers_per_org=10, seed="latency")
    parts = generate(spec)
    topics = Topics(prefix)
    await prepare(bootstrap, topics, spec)
    ids = spec.observers
    records = [
        (topics.reports(ids[i].split("-obs-")[0]), ids[i].encode(), raw) for i, raw in read(parts)
    ]
    chunks = [records[warm + i * n : warm + (i + 1) * n] for i in range(phases)]
    orgs = [o for o, _ in ORGANIZATIONS]
    out: dict[str, Any] = {"rate": rate, "records_per_phase": n}
    published = warm
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        # 1. bare: six plain consumers at the end of every report partition.
        ready = [work / f"ready-{rate}-{i}" for i in range(len(orgs))]
        cons = [
            child("consumer", {"bootstrap": bootstrap, "prefix": prefix, "ready": str(r)},
                  wait=False)
            for r in ready
        ]  # fmt: skip
        await _until_ready(ready)
        sent = (await paced(producer, records[:warm] + chunks[0], rate))[warm:]
        published += n
        await asyncio.sleep(2)
        for p, _ in cons:
            p.send_signal(signal.SIGTERM)
        got = [finish(p, o)[0]["received"] for p, o in cons]
        per_consumer = [{(t, p, off): ms for t, p, off, ms in g} for g in got]
        if any(len(c) < len(sent) for c in per_consumer):
            raise RuntimeError("a bare consumer missed records")
        out["bare"] = {
            "one": _lat([per_consumer[0][(t, p, o)] - s for t, p, o, s in sent]),
            "six": _lat([max(c[(t, p, o)] for c in per_consumer) - s for t, p, o, s in sent]),
        }

        # 2. one node alone (no sealer): publish -> provisional, and its CPU per report.
        settings: list[tuple[str, dict[str, int]]] = [("default", {})]
        settings += [(f"{b}:{w}", {"fetch_min_bytes": b, "fetch_max_wait_ms": w}) for b, w in fetch]
        out["one_node"] = {}
        for i, (label, node_cfg) in enumerate(settings, start=1):
            db = work / f"lat-{rate}-one-{i}.db"
            proc, o = child("node", {"bootstrap": bootstrap, "prefix": prefix, "org": "un",
                                     "db": str(db), "spec": spec_dict(spec), "node": node_cfg},
                            wait=False)  # fmt: skip
            try:
                await _wait_stored([db], published, 180)
                c0, t0 = tree_cpu_s(proc.pid), time.perf_counter()
                sent2 = await paced(producer, chunks[i], rate)
                published += n
                await _wait_stored([db], published, 120)
                cpu, wall = tree_cpu_s(proc.pid) - c0, time.perf_counter() - t0
            finally:
                proc.send_signal(signal.SIGTERM)
                finish(proc, o)
            stored = _stored_at([db])
            out["one_node"][label] = {
                "provisional": _lat([stored[(t, p, o)] - s for t, p, o, s in sent2]),
                "cpu_share": cpu / wall,
                "cpu_us_per_report": cpu / n * 1e6,
            }
    finally:
        await producer.stop()
    if not seal_interval_ms:
        return out
    # 3. six sealing nodes on fresh stores: they catch up on everything first (not measured).
    sdbs = [work / f"seal-{rate}-{org}.db" for org in orgs]
    fdbs = [db.with_suffix(".final.db") for db in sdbs]
    producer = reliable_producer(bootstrap)
    await producer.start()
    nodes = [
        child("node", {"bootstrap": bootstrap, "prefix": prefix, "org": org, "db": str(db),
                       "spec": spec_dict(spec), "seal_interval_ms": seal_interval_ms},
              wait=False)
        for org, db in zip(orgs, sdbs, strict=True)
    ]  # fmt: skip
    try:
        await _wait_final(fdbs, published, 300)
        await _wait_stored(sdbs, published, 300)
        sent3 = await paced(producer, chunks[-1], rate)
        # The sealer reads on its own: a node's final verdict can come before its provisional.
        await _wait_final(fdbs, published + n, 180)
        await _wait_stored(sdbs, published + n, 180)
    finally:
        await producer.stop()
        for p, _ in nodes:
            p.send_signal(signal.SIGTERM)
        for p, o in nodes:
            finish(p, o)
    finals = [_finals(db)[1] for db in fdbs]
    stored_one, stored_six = _stored_at(sdbs[:1]), _stored_at(sdbs)
    out["sealed"] = {
        "interval_ms": seal_interval_ms,
        "provisional_one": _lat([stored_one[(t, p, o)] - s for t, p, o, s in sent3]),
        "provisional_six": _lat([stored_six[(t, p, o)] - s for t, p, o, s in sent3]),
        "final_one": _lat([finals[0][(t, p, o)] - s for t, p, o, s in sent3]),
        "final_six": _lat([max(f[(t, p, o)] for f in finals) - s for t, p, o, s in sent3]),
    }
    return out


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
        for size in sizes[:1] if opts.only == "ingest" else sizes:
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
        if opts.only == "ingest":
            done("ceiling")
            spec, prefix = sets[sizes[0]]
            ingest_only(res, opts, bootstrap, prefix, spec, done)
            return res
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
                # The raw samples (megabytes) stay beside the cached sets, out of git.
                raw = CACHE_DIR / f"profile-{label}.raw"
                r = child("ingest", args, spy=raw)[0]
                path = RESULTS / f"profile-{label}.txt"
                path.write_text(spy_table(fold(raw), 1e6 / r["per_cpu_s"]) + "\n")
                done(f"{label} (profiled by py-spy, not timed: {path.relative_to(REPO)})")

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
            # The auditor judges final verdicts only: a log no sealing node read is sealed
            # here first, as six honest organizations would (bench/sealing.py).
            epochs = await seal_published_log(bootstrap, Topics(prefix), spec.scenario())
            if epochs:
                done(f"seal {spec.total} ({epochs} epochs)")
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
            sweep = tuple(
                (int(b), int(w))
                for b, w in (x.split(":") for x in opts.fetch_sweep.split(",") if x)
            )
            res["latency"] = {}
            for rate in sorted(int(r) for r in opts.rates.split(",")):
                res["latency"][str(rate)] = await latency(
                    bootstrap, f"{base}lat{rate}.", rate, opts.latency_seconds, work,
                    round(opts.seal_interval * 1000), sweep,
                )  # fmt: skip
                done(f"latency {rate}/s")
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return res


def ingest_only(
    res: dict[str, Any],
    opts: argparse.Namespace,
    bootstrap: str,
    prefix: str,
    spec: GenSpec,
    done: Any,
) -> None:
    """``--only ingest``: the lean peer and node ingest on one worker, ``--repeat`` times
    interleaved (each verifier), then the profiled ingest with ``--profile``; ~40 s per
    repetition on the 50k set instead of a whole ``make bench``."""
    common = {"bootstrap": bootstrap, "prefix": prefix, "total": spec.total,
              "spec": spec_dict(spec)}  # fmt: skip
    verifiers = ["pynacl", "native"] if native_built() else ["pynacl"]
    for i in range(opts.repeat):
        for v in verifiers:
            sfx = "" if v == "pynacl" else "_native"
            res.setdefault(f"lean{sfx}_runs", []).append(child("lean", common, verifier=v)[0])
            args = {**common, "verify_workers": 0}
            res.setdefault(f"ingest_1{sfx}_runs", []).append(child("ingest", args, verifier=v)[0])
            done(f"lean peer and ingest_1 ({v}), run {i + 1}")
    if opts.profile:
        raw = CACHE_DIR / "profile-ingest_1.raw"
        r = child("ingest", {**common, "verify_workers": 0}, spy=raw)[0]
        path = RESULTS / "profile-ingest_1.txt"
        path.write_text(spy_table(fold(raw), 1e6 / r["per_cpu_s"]) + "\n")
        done(f"ingest_1 (profiled by py-spy, not timed: {path.relative_to(REPO)})")


def render_ingest_only(res: dict[str, Any]) -> None:
    """The table of ``--only ingest``: every run per CPU-second, and node / lean peer per run."""
    t = Table(title=f"node ingest against the lean peer ({res['cores']} cores)")
    t.add_column("path")
    t.add_column("per CPU-second, each run", justify="right")
    t.add_column("node / lean peer, each run", justify="right")
    for sfx, what in (("", "libsodium"), ("_native", "compiled verifier")):
        if f"lean{sfx}_runs" not in res:
            continue
        lean = [r["per_cpu_s"] for r in res[f"lean{sfx}_runs"]]
        node = [r["per_cpu_s"] for r in res[f"ingest_1{sfx}_runs"]]
        t.add_row(f"lean peer, {what}", ", ".join(f"{x:,.0f}" for x in lean), "")
        t.add_row(f"node ingest, 1 worker, {what}", ", ".join(f"{x:,.0f}" for x in node),
                  ", ".join(f"{n / m:.2f}" for n, m in zip(node, lean, strict=True)))  # fmt: skip
    console.print(t)


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
    for rate, lat in res.get("latency", {}).items():
        bare_p99 = lat["bare"]["one"]["p99_ms"]
        out[f"latency_p99_{rate}"] = lat["one_node"]["default"]["provisional"]["p99_ms"] / bare_p99
        if "sealed" in lat:
            out[f"latency_final_p99_{rate}"] = lat["sealed"]["final_one"]["p99_ms"] / bare_p99
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

    def lat(x: dict[str, Any]) -> str:
        return f"p50 {x['p50_ms']:,.0f} / p99 {x['p99_ms']:,.0f} / max {x['max_ms']:,.0f} ms"

    for per_s, lt in res.get("latency", {}).items():
        at = f"@ {int(per_s):,}/s"
        t.add_row(f"latency bare, one consumer {at}", lat(lt["bare"]["one"]), "produce -> consume")
        t.add_row(f"latency bare, six consumers {at}", lat(lt["bare"]["six"]), "the last of six")
        for label, x in lt["one_node"].items():
            fetch = "default fetch" if label == "default" else f"fetch min bytes:wait ms {label}"
            t.add_row(f"latency one node {at}", lat(x["provisional"]),
                      f"publish -> provisional; {fetch}; {x['cpu_share']:.0%} of a core, "
                      f"{x['cpu_us_per_report']:,.0f} µs CPU per report")  # fmt: skip
        sealed = lt.get("sealed")
        if sealed is not None:
            every = f"seal interval {sealed['interval_ms']:,} ms"
            for key, what in (("provisional_one", "publish -> provisional at one of six"),
                              ("provisional_six", "publish -> provisional at all six"),
                              ("final_one", "publish -> final at one of six"),
                              ("final_six", "publish -> final at all six")):  # fmt: skip
                t.add_row(f"latency sealing nodes {at}", lat(sealed[key]), f"{what}; {every}")
    t.add_section()
    checks = {
        "ingest_1": ("ingest", ">="), "ingest_all": ("ingest", ">="), "memory": ("memory", "<="),
        "ingest_1_cpu": ("ingest", ">="),
        "ingest_all_cpu": ("ingest", ">="), "ingest_1_vs_lean": ("vs_lean", ">="),
        "ingest_all_vs_lean": ("vs_lean", ">="), "ingest_sealed_vs_lean": ("vs_lean", ">="),
        "ingest_1_native_vs_lean_native": ("vs_lean", ">="),
        "ingest_1_native_cpu": ("native", ">="),
    }  # fmt: skip
    for k, v in r.items():
        is_audit = k.startswith("audit_") and not k.endswith("_vs_lean")
        target, op = checks.get(k, ("audit", ">=") if is_audit else ("", ""))
        if k.startswith("latency_p99_"):
            target, op = "latency_p99", "<="
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
    p.add_argument(
        "--rates", default="100,1000",
        help="reports/s of the latency runs, comma-separated (default 100,1000)",
    )  # fmt: skip
    p.add_argument(
        "--fetch-sweep", default="",
        help="MIN_BYTES:WAIT_MS,... : the one-node latency phase again with each node fetch "
        "setting, e.g. 1:500,65536:10,65536:50,65536:100 (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--seal-interval",
        type=float,
        default=1.0,
        help="seconds; the latency runs also measure publish -> final at six sealing nodes "
        "with this seal interval (0: skip that phase)",
    )
    p.add_argument("--ceiling-seconds", type=float, default=4)
    p.add_argument(
        "--agreement", type=int, default=2000,
        help="valid records (each with ~10 damaged copies) on which the lean peer's verdicts "
        "are checked against the project's (default 2000)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=0, help="cores to use (default: all)")
    p.add_argument(
        "--profile", action="store_true",
        help="also profile node ingest (py-spy, whole process tree) and audit (pyinstrument)",
    )  # fmt: skip
    p.add_argument(
        "--no-scaling", dest="scaling", action="store_false",
        help="skip 1 vs 2 node processes in one consumer group",
    )  # fmt: skip
    p.add_argument(
        "--only", choices=["ingest"], default=None,
        help="ingest: only the ceiling, the lean peer and node ingest on one worker (each "
        "verifier), --repeat times interleaved (~40 s each)",
    )  # fmt: skip
    p.add_argument("--repeat", type=int, default=3, help="runs of each with --only (default 3)")
    opts = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    res = asyncio.run(run(opts))
    if opts.only == "ingest":
        path = RESULTS / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(json.dumps(res, indent=2, default=str))
        render_ingest_only(res)
        console.print(f"written {path.relative_to(REPO)}")
        return 0
    res["ratios"] = r = ratios(res)
    res["targets"] = TARGETS
    path = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2, default=str))
    render(res, r)
    console.print(f"written {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
