"""Where a node's CPU goes, by function group, from a py-spy profile of its whole process tree.

    py-spy record --threads --subprocesses --native -f raw -o ingest.raw -- python -m ...
    python -m bench.spy ingest.raw [--us-per-record 172]

``make bench --profile`` runs the node-ingest child that way (every thread and worker process:
the event loop, the store's commit thread, verify workers) and writes the table beside the raw
samples. Each sample is one stack of one thread that was running; it is charged to one group:

* to a group that owns the whole stack when any frame on it belongs to one (start-up and
  imports; what runs beside the ingest loop; the sealer; the store's commit: its rows and its
  SQLite transaction);
* otherwise to the group of its deepest frame that belongs to one (so the libsodium call under
  ``bus.crypto`` is the signature, a protobuf parse under ``bus.model`` is decoding, aiokafka under
  the node loop is the Kafka client).

With ``--us-per-record`` (the child's CPU per record), shares are also given as microseconds per
record. Start-up, and threads blocked on a queue or a lock (which py-spy's ``--native``
sampling counts as running), are excluded from the shares: they are not per record.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Final

STARTUP: Final = "start-up and imports (not per record)"
# Groups that own a whole stack when any of its frames matches, checked in this order.
WHOLE: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    (STARTUP, re.compile(r"^(_find_and_load|build_node|build_scenario) ")),
    (
        "beside the loop: follow-up, dashboard, attachments, group check",
        re.compile(r"\(nodes/org_node/(followup|dashboard|attachment\w*|health)\.py"),
    ),
    (
        "sealer: trees, re-verification, final judge, final store",
        re.compile(
            r"\((nodes/org_node/sealer|bus/(judge|seal|epoch|sealed_reader|store/final))\.py"
        ),
    ),
    ("store commit: rows + SQLite transaction (thread)", re.compile(r"\(bus/store/")),
)
# Groups of the deepest matching frame.
DEEPEST: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("signature: PAE + Ed25519 verify", re.compile(r"\(bus/crypto\.py|\(nacl/|obus_ed25519")),
    ("decode into dataclasses (parse, canonical check, objects)", re.compile(r"\(bus/model\.py")),
    ("report-id filter", re.compile(r"\(bus/idfilter\.py")),
    ("chain", re.compile(r"^ChainBook\.|^ChainLink")),
    (
        "rest of verification: claims, window, skew, key ring",
        re.compile(r"\(bus/(verify|trust)\.py"),
    ),
    (
        "trust catch-up (registry, mandate)",
        re.compile(r"\((nodes/runtime/trust_follower|bus/lifecycle)\.py"),
    ),
    (
        "node loop: per-record objects, outcomes, bookkeeping",
        re.compile(r"\((nodes/org_node/ingest|bus/ingest)\.py"),
    ),
    ("Kafka client (aiokafka fetch, decode of record batches)", re.compile(r"\((aiokafka|kafka)/")),
    (
        "thread and process hand-off (executors, pickle, pipes)",
        re.compile(r"\(nodes/runtime/preverify\.py|\((multiprocessing|concurrent)/|^_pickle_"),
    ),
    ("event loop, sockets", re.compile(r"\((asyncio|selectors)/|\(selectors\.py|socketmodule")),
    ("garbage collector (per-record objects)", re.compile(r"^gc_collect_main ")),
)
_BLOCKED: Final = ("_queue_SimpleQueue_get", "Condition.wait ", "lock_PyThread_acquire_lock")
IDLE: Final = "threads blocked on a queue or lock (not per record)"
OTHER: Final = "other"


def group_of(frames: list[str]) -> str:
    """The group one sampled stack (root first) is charged to."""
    if any(f.startswith(_BLOCKED) for f in frames):
        return IDLE  # a thread blocked on a queue or lock: py-spy's --native counts it as running
    for name, pattern in WHOLE:
        if any(pattern.search(f) for f in frames):
            return name
    for f in reversed(frames):
        for name, pattern in DEEPEST:
            if pattern.search(f):
                return name
    if frames and frames[-1].startswith("Thread.run "):
        return IDLE
    return OTHER


def fold(path: Path) -> Counter[str]:
    """Samples per group of a py-spy ``-f raw`` file (``frame;frame;... count`` per line)."""
    groups: Counter[str] = Counter()
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [fr for fr in stack.split(";")[1:] if not fr.startswith("thread (")]
            groups[group_of(frames)] += int(count)
    return groups


def table(groups: Counter[str], us_per_record: float | None = None) -> str:
    """A plain-text table: group, samples, share of the per-record samples, µs per record."""
    per_record = sum(n for g, n in groups.items() if g not in (STARTUP, IDLE))
    lines = [f"{'group':<66} {'samples':>8} {'share':>7} {'us/record':>10}"]
    for g, n in groups.most_common():
        share = n / per_record if g not in (STARTUP, IDLE) and per_record else None
        us = "" if share is None or us_per_record is None else f"{share * us_per_record:10.1f}"
        pct = "" if share is None else f"{share:7.1%}"
        lines.append(f"{g:<66} {n:>8} {pct:>7} {us:>10}")
    if us_per_record is not None:
        lines.append(
            f"{'total per record':<66} {per_record:>8} {'100.0%':>7} {us_per_record:10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spy", description=__doc__.split("\n")[0])
    p.add_argument("raw", type=Path, help="py-spy record -f raw output")
    p.add_argument("--us-per-record", type=float, help="the child's CPU µs per record")
    opts = p.parse_args(argv)
    print(table(fold(opts.raw), opts.us_per_record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
