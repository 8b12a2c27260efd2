"""Offline audit rate and peak memory on exported logs.

    .venv/bin/python -m bench.audit_export                  # 25k and 100k records
    .venv/bin/python -m bench.audit_export --records 200000 --records 50000

For each size it builds, in a scratch directory, an export file the way the bus would hold it:
six organizations with ten accredited observers each, signed and chained reports spread over
three partitions per organization, one node key per organization, and a checkpoint every 1000
records of every partition signed by one node and cosigned by the five others. Then it audits
the file in a fresh process (``--require-witnessed``: every signature, accreditation, chain
link and checkpoint is checked, and every record must be covered by a quorum checkpoint) and
prints: records, file size, wall time, records per second, the process's peak RSS and the
Python heap's peak (tracemalloc). The audit must find no violation. Nothing is asserted about
time; the point is the figures, and that peak memory does not grow with the number of records.
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

from bus.checkpoint import Checkpoint, Note, cosign, key_name, origin_for, signed_checkpoint
from bus.export import ExportHeader, ExportWriter, LogRecord
from bus.merkle import MerkleTree
from nodes.demo.scenario import ORGANIZATIONS, build_scenario, node_subject, signed_reports

PREFIX = "obus."
PARTITIONS = 3
OBSERVERS_PER_ORG = 10
CHECKPOINT_EVERY = 1000


def build(path: Path, records: int) -> None:
    """Write an export of about ``records`` report records (rounded up to whole rounds)."""
    now = time.time_ns() // 1_000_000
    sc = build_scenario(now, observers_per_org=OBSERVERS_PER_ORG, threshold=4)
    orgs = [o for o, _ in ORGANIZATIONS]
    per_observer = -(-records // len(sc.observers))
    stream = signed_reports(sc, per_observer, now, random.Random(5))
    parts: dict[tuple[str, int], list[bytes]] = {}
    for obs, _, raw in stream:
        p = zlib.crc32(obs.observer_id.encode()) % PARTITIONS
        parts.setdefault((f"{PREFIX}reports.{obs.org}", p), []).append(raw)
    notes: list[bytes] = []
    for (topic, p), values in sorted(parts.items()):
        tree = MerkleTree(store_leaves=False)
        for i, v in enumerate(values, 1):
            tree.append(v)
            if i % CHECKPOINT_EVERY == 0 or i == len(values):
                cp = Checkpoint(origin_for(sc.mandate.mandate_id, topic, p), i, tree.root())
                notes.append(
                    signed_checkpoint(cp, sc.node_keys["un"], key_name("un", node_subject("un")))
                )
                text = cp.text()
                for org in orgs[1:]:
                    line = cosign(
                        text, sc.node_keys[org], key_name(org, node_subject(org)), now // 1000
                    )
                    notes.append(Note(text, (line,)).encode())
    header = ExportHeader(now, sc.mandate.mandate_id, PREFIX, sc.mandate_envelope)
    with path.open("wb") as f:
        w = ExportWriter(f, header)
        for i, raw in enumerate([*sc.accreditations, *sc.node_accreditations]):
            w.write(LogRecord("registry", f"{PREFIX}registry", 0, i, now, None, raw))
        for i, note in enumerate(notes):
            w.write(LogRecord("checkpoints", f"{PREFIX}checkpoints", 0, i, now, None, note))
        for (topic, p), values in sorted(parts.items()):
            for o, v in enumerate(values):
                w.write(LogRecord("reports", topic, p, o, now, None, v))
        w.finish()
    (path.parent / "mandate.bin").write_bytes(sc.mandate_envelope)


def _child(path: Path, *, trace: bool) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.audit_export", "--audit-only", str(path)]
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


def audit_child(path: Path, *, trace: bool) -> None:
    """Audit one file and print one JSON line of figures (run in a fresh process)."""
    from nodes.auditor.run import audit_export  # noqa: PLC0415
    from nodes.runtime.files import load_mandate  # noqa: PLC0415

    mandate, _ = load_mandate(path.parent / "mandate.bin")
    rss_before = _peak_rss_mib()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    result = audit_export(path, mandate, require_witnessed=True, work_dir=path.parent)
    elapsed = time.perf_counter() - started
    heap_peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    records = sum(w["records"] for w in result.witness)
    print(
        json.dumps(
            {
                "records": records,
                "bytes": path.stat().st_size,
                "seconds": round(elapsed, 2),
                "records_per_s": round(records / elapsed),
                "peak_rss_mib": _peak_rss_mib(),
                "rss_before_audit_mib": rss_before,
                "heap_peak_mib": round(heap_peak / 2**20, 1),
                "violations": len(result.violations),
                "checkpoints": result.checkpoint_records,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, action="append", help="(repeatable)")
    parser.add_argument("--audit-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.audit_only:
        audit_child(args.audit_only, trace=args.trace)
        return 0
    sizes = args.records or [25_000, 100_000]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="obus-bench-") as tmp:
            path = Path(tmp) / "log.jsonl"
            t = time.perf_counter()
            build(path, n)
            built = time.perf_counter() - t
            row = _child(path, trace=False)
            # A second pass under tracemalloc (several times slower) for the heap's peak.
            row["heap_peak_mib"] = _child(path, trace=True)["heap_peak_mib"]
            row["build_seconds"] = round(built, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'records':>9} {'MiB':>7} {'audit s':>8} {'rec/s':>7} {'peak RSS MiB':>13} "
          f"{'heap peak MiB':>14} {'violations':>10}")  # fmt: skip
    for r in rows:
        print(
            f"{r['records']:>9} {r['bytes'] / 2**20:>7.1f} {r['seconds']:>8} "
            f"{r['records_per_s']:>7} {r['peak_rss_mib']:>13} {r['heap_peak_mib']:>14} "
            f"{r['violations']:>10}"
        )
    return 0 if all(r["violations"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
