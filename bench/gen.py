"""Bench-sized report generation: valid, chained, ~1 KiB signed reports, fast and reusable.

The node and the auditor must accept every generated record (the bench fails otherwise), so the
records go through the real codec: each observer gets a few drafts built with the ordinary
:func:`nodes.demo.scenario.draft_report` (validated :class:`bus.model.Report` objects); for every
report only ``report_id``, ``seq`` and ``prev_digest`` of the draft's protobuf change, then it is
signed with the observer's key over DSSE PAE exactly as :class:`bus.sign.ReportSigner` does.
That skips re-validating a dataclass per report, which costs about as much as the signature,
and observers are split over processes (``nodes.demo.scenario.signed_reports``: ~4,300 reports/s on
one core here; this: ~10,000/s on the two cores, when the machine is otherwise idle).

A generated set is a file of ``<observer index: u16><length: u32><envelope>`` records, cached
under ``var/bench/`` by everything that decides its bytes (day, count, observers, size, seed),
so a second ``make bench`` the same day reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bus._pb.obus.v1 import envelope_pb2, report_pb2
from bus.crypto import SigningKey
from bus.model import PAYLOAD_REPORT, Report, sha256
from bus.uuid7 import uuid7
from nodes.demo.scenario import DAY_MS, ORGANIZATIONS, Scenario, build_scenario, draft_report

REPO: Final = Path(__file__).resolve().parent.parent
CACHE_DIR: Final = REPO / "var" / "bench"
_HEADER: Final = struct.Struct("<HI")
# Drafts per observer that reports cycle through (content variety; ids and chain are unique).
_DRAFTS: Final = 16


@dataclass(frozen=True, slots=True)
class GenSpec:
    """What decides a generated set's bytes.

    ``now_ms`` is the start of a UTC day: the mandate, accreditations and every ``signed_at``
    derive from it, so a cached set stays valid (and identical) for the whole day.
    """

    count: int
    observers_per_org: int = 10
    record_bytes: int = 1024
    seed: str = "bench"
    now_ms: int = 0

    @staticmethod
    def today(count: int, **kw: object) -> GenSpec:
        day = int(time.time() * 1000) // DAY_MS * DAY_MS
        return GenSpec(count=count, now_ms=day, **kw)  # type: ignore[arg-type]

    @property
    def observers(self) -> list[str]:
        """Observer ids in index order (the u16 in each record)."""
        return [
            f"{org}-obs-{i}"
            for org, _ in ORGANIZATIONS
            for i in range(1, self.observers_per_org + 1)
        ]

    @property
    def per_observer(self) -> int:
        return max(1, self.count // len(self.observers))

    @property
    def total(self) -> int:
        """Records actually generated (count rounded down to whole rounds of observers)."""
        return self.per_observer * len(self.observers)

    def scenario(self) -> Scenario:
        return build_scenario(self.now_ms, observers_per_org=self.observers_per_org, seed=self.seed)

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _padded_drafts(
    spec: GenSpec, sc: Scenario, observer_id: str, rng: random.Random
) -> list[Report]:
    obs = next(o for o in sc.observers if o.observer_id == observer_id)
    drafts = []
    for _ in range(_DRAFTS):
        d = draft_report(rng, obs, sc.mandate, spec.now_ms)
        d = dataclasses.replace(d, signed_at_ms=min(d.signed_at_ms, spec.now_ms))
        # Envelope overhead is ~ 64 (sig) + 32 (key id) + payload type + framing: measure it.
        probe = _envelope(d.to_pb(), obs.key, 2, b"\0" * 32)
        pad = max(0, spec.record_bytes - len(probe) - 1)
        filler = (" " + d.narrative) * (pad // (len(d.narrative) + 1) + 1)
        drafts.append(
            dataclasses.replace(d, narrative=(d.narrative + filler)[: len(d.narrative) + pad])
        )
    return drafts


def _envelope(pb: report_pb2.ObserverReport, key: SigningKey, seq: int, prev: bytes) -> bytes:
    pb.seq = seq
    pb.prev_digest = prev
    payload = pb.SerializeToString(deterministic=True)
    sig = key.sign_pae(PAYLOAD_REPORT, payload)
    env = envelope_pb2.SignedEnvelope(
        payload_type=PAYLOAD_REPORT,
        payload=payload,
        signatures=[envelope_pb2.Signature(key_id=key.key_id, sig=sig)],
    )
    return env.SerializeToString(deterministic=True)


def _gen_part(spec: GenSpec, indexes: list[int], path: Path) -> int:
    sc = spec.scenario()
    ids = spec.observers
    keys = {o.observer_id: o.key for o in sc.observers}
    rng = random.Random(f"{spec.seed}:{indexes[0]}")
    pbs = {i: [d.to_pb() for d in _padded_drafts(spec, sc, ids[i], rng)] for i in indexes}
    heads = dict.fromkeys(indexes, b"")
    n = 0
    with path.open("wb") as f:
        for seq in range(1, spec.per_observer + 1):
            for i in indexes:
                pb = pbs[i][seq % _DRAFTS]
                pb.report_id = uuid7(pb.observed_at_ms, rng.randbytes(10))
                raw = _envelope(pb, keys[ids[i]], seq, heads[i])
                heads[i] = sha256(raw)
                f.write(_HEADER.pack(i, len(raw)))
                f.write(raw)
                n += 1
    return n


def generate(spec: GenSpec, workers: int | None = None) -> list[Path]:
    """Generate (or reuse) the set; returns its part files in publishing order."""
    workers = workers or os.cpu_count() or 1
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    done = CACHE_DIR / f"reports-{spec.key()}.json"
    if done.exists():
        return [Path(p) for p in json.loads(done.read_text())["parts"]]
    n_obs = len(spec.observers)
    groups = [list(range(w, n_obs, workers)) for w in range(min(workers, n_obs))]
    parts = [CACHE_DIR / f"reports-{spec.key()}.{w}.bin" for w in range(len(groups))]
    with ProcessPoolExecutor(len(groups)) as pool:
        counts = list(pool.map(_gen_part, [spec] * len(groups), groups, parts))
    assert sum(counts) == spec.total
    done.write_text(
        json.dumps({"spec": dataclasses.asdict(spec), "parts": [str(p) for p in parts]})
    )
    return parts


def read(parts: list[Path]) -> Iterator[tuple[int, bytes]]:
    """(observer index, envelope bytes) of every record, part after part."""
    for p in parts:
        with p.open("rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            i, n = _HEADER.unpack_from(data, pos)
            pos += _HEADER.size
            yield i, data[pos : pos + n]
            pos += n
