"""The auditor's signature checks in worker processes, one epoch ahead of the judge
(``obus audit --verify-workers N``).

The final judge runs in the auditor's own process, epoch after epoch; the Ed25519 checks of
the report records, the one cost no reader can avoid, go to ``N`` worker processes
(:func:`bus.verify.preverify_signatures`: the one rule, libsodium strict). The feeder
(:mod:`nodes.auditor.sealed`) says how far each report partition will be judged next
(:meth:`EpochPreverifier.ahead`): the records of the final seal it is about to feed, plus as
many again after them, so the workers check the next epoch while this process judges the
current one. When an epoch is judged, the bus reader asks for its pairs
(:meth:`EpochPreverifier.epoch_pairs`, a :class:`~bus.sealed_reader.PreverifiedSource`): the
results of the chunks that cover it are awaited and handed over, and forgotten.

**Same verdicts.** A worker's answer is only ever "this signature verified under this key";
everything else (a bad signature, an unknown key, bytes that do not decode) is left out and the
judge verifies that record itself, so every reason code is the judge's own. A pair names the
exact bytes the worker checked and the public key it checked them under, and the judge uses it
only for a record with exactly those bytes whose accredited key is exactly that one. With or
without workers, with any number of them, the verdicts, the state digests and the audit JSON
are the same (``tests/unit/test_preverified_audit.py``).

**Memory.** At most the records of the epoch being judged and of the window ahead of it wait
here (their bytes and a 32-byte key each); each epoch's are dropped when it is judged.
Restricted reports (judged on their clear envelope by another path), oversized values (judged
on their length alone) and null values are never sent.

**A broken pool** (a worker killed) is logged once; from then on the judge verifies everything
itself: same verdicts, slower.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import structlog

from bus.epoch import PartitionRef
from bus.sealed import is_sealed
from bus.sealed_reader import EpochSpans
from bus.verify import preverify_signatures
from nodes.auditor.index import AuditIndex

log = structlog.get_logger(__name__)

# Records per task sent to a worker: large enough that pickling and the round trip stay small
# against ~70 µs of verification per record, small enough to keep every worker busy.
CHUNK: Final = 512
# Records of a partition checked ahead of the epoch being fed, at most.
MAX_AHEAD: Final = 20_000


@dataclass
class _Chunk:
    start: int  # offset of the first record sent
    end: int  # offset after the last record covered
    values: list[tuple[int, bytes]]  # (offset, value) of the records sent
    future: Future[list[tuple[int, bytes]]] | None  # None: nothing to send in this range
    results: list[tuple[int, bytes, bytes]] | None = None  # once the future is done


class VerifiedPairs:
    """One epoch's pairs: ``(public key, raw)`` is in it when a worker found ``raw``'s one
    signature valid under exactly ``public key``."""

    __slots__ = ("_keys",)

    def __init__(self, keys: dict[bytes, bytes]) -> None:
        self._keys = keys  # raw -> the public key it verified under

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        public_key, raw = item
        if not isinstance(raw, bytes):
            return False
        found = self._keys.get(raw)
        return found is not None and found == public_key


class EpochPreverifier:
    """Worker processes checking the index's report records ahead of the judge (module
    docstring); use as a context manager (:meth:`close` stops the workers).

    Args:
        workers: worker processes (>= 1).
        index: the audit's index, where the records are read from.
        max_record_bytes: values longer than this are never sent (judged on their length).

    Raises:
        ValueError: ``workers`` < 1.
    """

    def __init__(self, workers: int, index: AuditIndex, *, max_record_bytes: int) -> None:
        if workers < 1:
            raise ValueError("verify workers must be >= 1")
        self.workers = workers
        self._index = index
        self._limit = max_record_bytes
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self._keys: dict[bytes, bytes] = {}
        self._sent: dict[PartitionRef, int] = {}  # next offset not sent yet
        self._chunks: dict[PartitionRef, deque[_Chunk]] = {}
        self.failed = False
        self.counts = {"sent": 0, "verified": 0, "handed": 0}

    def __enter__(self) -> EpochPreverifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (waiting for them: their CPU time is then the parent's to count)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._chunks.clear()

    def set_keys(self, public_keys: Mapping[bytes, bytes]) -> None:
        """The keys the next chunks are checked against (key id -> public key): those the
        judge knows. A record signed by any other key is simply verified by the judge."""
        self._keys = dict(public_keys)

    def ahead(self, ref: PartitionRef, start: int, end: int) -> None:
        """Send the records of ``ref`` from ``start`` (the judged size) below ``end`` not sent
        yet, in chunks of :data:`CHUNK`."""
        if self.failed or not self._keys:
            return  # no key known yet (before epoch 1 is judged): nothing a worker could pass
        sent = max(self._sent.get(ref, 0), start)
        chunks = self._chunks.setdefault(ref, deque())
        while sent < end:
            rows = self._index.sealed_rows(ref, sent, end, CHUNK)
            stop = end if len(rows) < CHUNK else rows[-1][0] + 1
            values = [
                (o, v)
                for o, v in rows
                if v is not None and len(v) <= self._limit and not is_sealed(v)
            ]
            future = None
            if values:
                future = self._pool.submit(preverify_signatures, [v for _, v in values], self._keys)
                self.counts["sent"] += len(values)
            chunks.append(_Chunk(sent, stop, values, future))
            sent = stop
        self._sent[ref] = sent

    def epoch_pairs(self, epoch: int, spans: EpochSpans) -> VerifiedPairs:
        """The pairs of the records ``spans`` holds, from every chunk that covers them
        (awaited), taken out: a chunk is forgotten once its last record is judged."""
        found: dict[bytes, bytes] = {}
        for ref, (start, values) in spans.items():
            chunks = self._chunks.get(ref)
            end = start + len(values)
            while chunks and chunks[0].start < end:
                chunk = chunks[0]
                found.update(
                    (raw, public_key)
                    for offset, raw, public_key in self._results(chunk)
                    if start <= offset < end
                )
                if chunk.end <= end:
                    chunks.popleft()
                else:
                    break  # it reaches into the next epoch: kept for it
        self.counts["handed"] += len(found)
        return VerifiedPairs(found)

    def _results(self, chunk: _Chunk) -> list[tuple[int, bytes, bytes]]:
        """(offset, raw, public key) of every record of ``chunk`` a worker found valid."""
        if chunk.results is not None:
            return chunk.results
        if chunk.future is None:
            return []
        try:
            ok = chunk.future.result()
        except Exception:  # a broken pool must not stop the audit: the judge verifies
            if not self.failed:
                log.exception("audit_verify_pool_failed_verifying_in_process")
            self.failed = True
            chunk.future = None
            return []
        self.counts["verified"] += len(ok)
        chunk.results = [(chunk.values[i][0], chunk.values[i][1], pk) for i, pk in ok]
        return chunk.results


__all__ = ["CHUNK", "MAX_AHEAD", "EpochPreverifier", "VerifiedPairs"]
