"""Offline audit rate and peak memory on exported logs.

    .venv/bin/python -m bench.audit_export                  # 25k and 100k records
    .venv/bin/python -m bench.audit_export --records 200000 --records 50000
    .venv/bin/python -m bench.audit_export --records 100000 --verify-workers 1 --verify-workers 2

For each size it builds, in a scratch directory, an export file the way the bus would hold it:
six organizations with ten accredited observers each, signed and chained reports spread over
three partitions per organization, one node key per organization, and a seal every
:data:`bench.sealing.SEAL_EVERY` report records (proposed in turn by one organization's node
over what an honest witness read, and cosigned by all six node keys), the trust records
sealed first. Then
it audits the file in a fresh process (every record of every sealed epoch judged by its final
verdict: signature, accreditation, chain; every seal's roots recomputed from the records) and
prints: records, file size, final epochs, wall time, records per second (wall clock and per
CPU-second of the auditing process and its signature workers, ``--verify-workers``, each
count given: default 0, none), the process's peak RSS and the Python heap's peak
(tracemalloc). The audit must find no violation and leave no record
unsealed. Nothing is asserted about time; the point is the figures, and how peak memory grows
with the number of records (the final judge keeps a little state per accepted report:
:mod:`nodes.auditor.judge`, "Memory").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

from bench.sealing import SEAL_EVERY, HonestSealer
from bus.export import ExportHeader, ExportWriter, LogRecord
from bus.topics import Topics
from nodes.demo.scenario import (
    build_scenario,
    signed_reports,
)

PREFIX = "obus."
PARTITIONS = 3
OBSERVERS_PER_ORG = 10


def build(path: Path, records: int) -> None:
    """Write an export of about ``records`` report records (rounded up to whole rounds), every
    one sealed."""
    now = time.time_ns() // 1_000_000
    sc = build_scenario(now, observers_per_org=OBSERVERS_PER_ORG, threshold=4)
    topics = Topics(PREFIX)
    sealer = HonestSealer(sc, topics, now)
    trust = [*sc.accreditations, *sc.node_accreditations]
    sealer.read((topics.mandate, 0), 0, [sc.mandate_envelope])
    sealer.read((topics.registry, 0), 0, list(trust))
    sealer.seal()
    per_observer = -(-records // len(sc.observers))
    parts: dict[tuple[str, int], list[bytes | None]] = {}
    unsealed: dict[tuple[str, int], int] = {}  # first record the witness has not read
    for n, (obs, _, raw) in enumerate(
        signed_reports(sc, per_observer, now, random.Random(5)), start=1
    ):
        ref = (topics.reports(obs.org), zlib.crc32(obs.observer_id.encode()) % PARTITIONS)
        parts.setdefault(ref, []).append(raw)
        if n % SEAL_EVERY == 0:
            _read_and_seal(sealer, parts, unsealed)
    _read_and_seal(sealer, parts, unsealed)
    header = ExportHeader(now, sc.mandate.mandate_id, PREFIX, sc.mandate_envelope)
    with path.open("wb") as f:
        w = ExportWriter(f, header)
        for i, seal in enumerate(sealer.seals):
            w.write(LogRecord("seals", topics.seals, 0, i, now, None, seal))
        w.write(LogRecord("mandate", topics.mandate, 0, 0, now, None, sc.mandate_envelope))
        for i, raw in enumerate(trust):
            w.write(LogRecord("registry", topics.registry, 0, i, now, None, raw))
        for (topic, p), values in sorted(parts.items()):
            for o, v in enumerate(values):
                w.write(LogRecord("reports", topic, p, o, now, None, v))
        w.finish()
    (path.parent / "mandate.bin").write_bytes(sc.mandate_envelope)


def _read_and_seal(
    sealer: HonestSealer,
    parts: dict[tuple[str, int], list[bytes | None]],
    unsealed: dict[tuple[str, int], int],
) -> None:
    for ref, values in sorted(parts.items()):
        start = unsealed.get(ref, 0)
        if start < len(values):
            sealer.read(ref, start, values[start:])
            unsealed[ref] = len(values)
    sealer.seal()


def _child(path: Path, *, trace: bool, workers: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.audit_export", "--audit-only", str(path),
           "--verify-workers", str(workers)]  # fmt: skip
    out = subprocess.run(
        [*cmd, *(["--trace"] if trace else [])], check=True, capture_output=True, text=True,
        env={**os.environ, "OBUS_LOG_JSON": "1"},
    )  # fmt: skip
    row: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def _peak_rss_mib() -> float:
    """This process image's peak resident set (Linux VmHWM; ru_maxrss elsewhere).

    ru_maxrss alone would report the parent's peak: on Linux it survives fork + exec.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its children that have exited (the
    signature workers: the audit waits for them before it returns)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def audit_child(path: Path, *, trace: bool, workers: int) -> None:
    """Audit one file and print one JSON line of figures (run in a fresh process)."""
    from nodes.auditor.run import audit_export  # noqa: PLC0415
    from nodes.runtime.files import load_mandate  # noqa: PLC0415

    mandate, _ = load_mandate(path.parent / "mandate.bin")
    rss_before = _peak_rss_mib()
    if trace:
        tracemalloc.start()
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    result = audit_export(path, mandate, work_dir=path.parent, verify_workers=workers)
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    heap_peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    final = result.final
    records = sum(result.accepted.values()) + sum(result.rejected.values())
    unsealed = 0 if final is None else sum(u.records for u in final.not_sealed)
    print(
        json.dumps(
            {
                "records": records,
                "verify_workers": workers,
                "bytes": path.stat().st_size,
                "seconds": round(elapsed, 2),
                "records_per_s": round(records / elapsed),
                "cpu_seconds": round(cpu, 2),
                "records_per_cpu_s": round(records / cpu),
                "peak_rss_mib": _peak_rss_mib(),
                "rss_before_audit_mib": rss_before,
                "heap_peak_mib": round(heap_peak / 2**20, 1),
                "violations": len(result.violations),
                "epochs": 0 if final is None else final.last_epoch,
                "not_sealed": unsealed,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, action="append", help="(repeatable)")
    parser.add_argument("--audit-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--verify-workers", type=int, action="append",
        help="signature worker processes of the audit (repeatable: one audit each; default 0)",
    )  # fmt: skip
    args = parser.parse_args()
    worker_counts = args.verify_workers or [0]
    if args.audit_only:
        audit_child(args.audit_only, trace=args.trace, workers=worker_counts[0])
        return 0
    sizes = args.records or [25_000, 100_000]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="obus-bench-") as tmp:
            path = Path(tmp) / "log.jsonl"
            t = time.perf_counter()
            build(path, n)
            built = time.perf_counter() - t
            for workers in worker_counts:
                row = _child(path, trace=False, workers=workers)
                # A second pass under tracemalloc (several times slower) for the heap's peak.
                traced = _child(path, trace=True, workers=workers)
                row["heap_peak_mib"] = traced["heap_peak_mib"]
                row["build_seconds"] = round(built, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        f"{'records':>9} {'workers':>7} {'MiB':>7} {'epochs':>6} {'audit s':>8} {'rec/s':>7}"
        f" {'rec/CPU-s':>9} {'peak RSS MiB':>13} {'heap peak MiB':>14} {'violations':>10}"
    )
    for r in rows:
        print(
            f"{r['records']:>9} {r['verify_workers']:>7} {r['bytes'] / 2**20:>7.1f}"
            f" {r['epochs']:>6} {r['seconds']:>8} "
            f"{r['records_per_s']:>7} {r['records_per_cpu_s']:>9} {r['peak_rss_mib']:>13} "
            f"{r['heap_peak_mib']:>14} {r['violations']:>10}"
        )
    return 0 if all(r["violations"] == 0 and r["not_sealed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
