"""Ed25519 signature checks of a batch spread over worker processes (`obus node --verify-workers`).

The verdicts come from :func:`bus.verify.preverify_signatures`, i.e. from the one rule
(:func:`bus.crypto.verify_pae`, libsodium strict); the node then runs its ordinary sequential
path, which skips only the signature checks a worker accepted for exactly those bytes under
exactly that key. Rejections are never taken from a worker: such records are verified again in
the node, so every reason code is the one the node would give without workers.

Workers are started with ``spawn`` (a fork of a process running an event loop and threads is
unsafe) and warmed up once, so the first batch does not pay for their imports.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Final

import structlog

from bus.verify import preverify_signatures

log = structlog.get_logger(__name__)

# Below this many records a batch is verified in the node itself: shipping a handful of records
# to another process costs more than it saves, and latency at low rates matters more.
MIN_PARALLEL_BATCH: Final = 64


class PreVerifier:
    """A pool of ``workers`` processes checking signatures; :meth:`close` stops them.

    Raises:
        ValueError: ``workers`` < 1.
    """

    def __init__(self, workers: int, *, min_batch: int = MIN_PARALLEL_BATCH) -> None:
        if workers < 1:
            raise ValueError("verify workers must be >= 1")
        self.workers = workers
        self.min_batch = min_batch
        self.failed = False
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    async def start(self) -> None:
        """Start every worker and import the verifier in it."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(self._pool, preverify_signatures, [], {})
                for _ in range(self.workers)
            )
        )

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def verdicts(
        self, raws: Sequence[bytes], public_keys: Mapping[bytes, bytes]
    ) -> set[tuple[bytes, bytes]]:
        """``(public key, raw)`` of every record whose signature a worker accepted.

        Small batches, and every batch after a pool failure, get an empty set: the node then
        verifies everything itself (same verdicts, only slower).
        """
        if self.failed or len(raws) < self.min_batch:
            return set()
        loop = asyncio.get_running_loop()
        keys = dict(public_keys)
        step = -(-len(raws) // self.workers)
        chunks = [list(raws[i : i + step]) for i in range(0, len(raws), step)]
        try:
            results = await asyncio.gather(
                *(loop.run_in_executor(self._pool, preverify_signatures, c, keys) for c in chunks)
            )
        except Exception:  # a broken pool must not stop the node: verify in-process instead
            log.exception("preverify_pool_failed_verifying_in_process")
            self.failed = True
            return set()
        return {(pk, chunk[i]) for chunk, ok in zip(chunks, results, strict=True) for i, pk in ok}
