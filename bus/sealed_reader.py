"""The sealed reader: records read in any order in, final verdicts out, epoch by epoch (pure).

What a node, a witness or an auditor runs over the bus. It is fed two streams, each in its own
order and interleaved in any way: the records of every partition (:meth:`SealedReader.offer_record`
and :meth:`SealedReader.offer_records`: each partition in offset order, partitions interleaved
in any way, in batches of any size) and the final seals (:meth:`SealedReader.offer_final_seal`:
in epoch order, before or after the records they seal). As soon as an epoch's final seal and
all the records it seals are present, the reader checks every partition's RFC 6962 root at the
sealed size against the seal (:mod:`bus.merkle`; leaf *i* is the value at offset *i*, a null
value counting as empty bytes), then hands the epoch to its :class:`~bus.judge.FinalJudge` and
returns the :class:`~bus.judge.EpochVerdicts`. Whatever the interleaving, fetch sizes, or the
moment seals arrive, the verdicts are those of judging the sealed log epoch by epoch.

**Altered or deleted records.** A partition whose records hash to another root than the seal
states, or that lacks an offset the seal covers (offsets skipped in a fetch are taken as
deleted), raises :class:`~bus.errors.SealedRootMismatchError` naming the topic, partition and
size: a sealed record was altered or deleted. The reader stays where it was (nothing of that
epoch is judged), so every call after it that needs the epoch raises again.

**Bounded buffering.** The reader holds the records from each partition's last judged size
onward and the seals not yet judged: what no judged epoch covers, nothing else.

**Restarts.** The state that matters is the judge's after the last judged epoch plus the
Merkle frontier of each partition: :meth:`SealedReader.snapshot` returns it as bytes, to store
with the verdicts of that epoch; :meth:`SealedReader.resume` starts from it. The records and
seals not yet judged are not in it: after a restart the caller fetches again from
:meth:`SealedReader.positions` (each partition's judged size) and offers the final seals from
:attr:`SealedReader.next_epoch`. Offers of records already judged, and of seals already judged,
are ignored, so fetching again from earlier is harmless; starting a new reader and feeding the
log from the beginning gives the same verdicts too.

**Signatures verified elsewhere** (``preverified``, a :class:`PreverifiedSource`). Just before
an epoch is judged, the reader asks the source for the ``(public key, raw)`` pairs it vouches
for among that epoch's records and hands them to :meth:`~bus.judge.FinalJudge.judge_epoch`,
which then skips exactly those signature checks (:func:`bus.crypto.open_single`: the pair says
libsodium's rule already accepted exactly these bytes under exactly this key). The container
is used for that one epoch and dropped: the reader keeps no pair, and a source hands out the
pairs of the epochs asked for and forgets them (its memory is its own to bound). The verdicts
are the same with or without a source, whatever it holds: a record whose pair is absent is
verified here, and a pair can only name a signature that verified, so a source that holds
nothing, or only part of an epoch, costs time, never a verdict. It must never hold a pair for
a signature that was not verified: that is the one way it could change a verdict.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from bus.epoch import FinalSeal, PartitionRef
from bus.errors import ConfigError, EpochInputError, SealedRootMismatchError
from bus.judge import EpochVerdicts, FinalJudge
from bus.merkle import EMPTY_ROOT, MerkleTree
from bus.model import Mandate
from bus.sealed import DecryptionKey
from bus.topics import Topics
from bus.verify import Limits

SNAPSHOT_FORMAT: Final = "obus-sealed-reader-v1"

# An epoch's records handed to a PreverifiedSource: per partition, the offset of its first
# record in the epoch and the values from there.
EpochSpans = Mapping[PartitionRef, tuple[int, Sequence[bytes | None]]]


class PreverifiedSource(Protocol):
    """Signatures verified ahead of the judge (module docstring, "Signatures verified
    elsewhere")."""

    def epoch_pairs(self, epoch: int, spans: EpochSpans) -> Container[tuple[bytes, bytes]]:
        """The ``(public key, raw)`` pairs whose signature verified, among ``spans`` (the
        records epoch ``epoch`` adds), for the judge of that epoch only.

        Only pairs produced by a successful verification of exactly those bytes under exactly
        that key under :func:`bus.crypto.verify_pae` may be in it; anything else is simply
        absent (verified by the judge).
        """
        ...


class SealedReader:
    """Buffers records and final seals, checks sealed roots, and judges each complete epoch.

    Args:
        root, topics, limits, decryption_keys: as for :class:`~bus.judge.FinalJudge`.
        preverified: signatures verified ahead of the judge, asked for epoch by epoch
            (module docstring); None: the judge verifies every signature.
    """

    def __init__(
        self,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        decryption_keys: Mapping[bytes, DecryptionKey] | None = None,
        preverified: PreverifiedSource | None = None,
    ) -> None:
        self._judge = FinalJudge(root, topics, limits, decryption_keys=decryption_keys)
        self._preverified = preverified
        self._trees: dict[PartitionRef, MerkleTree] = {}  # frontier at each judged size
        self._buffers: dict[PartitionRef, list[bytes | None]] = {}  # from the judged size on
        self._holes: dict[PartitionRef, set[int]] = {}  # offsets skipped in the buffers
        self._seals: list[FinalSeal] = []  # final seals not yet judged, in epoch order

    # -- reads -------------------------------------------------------------------------------

    @property
    def judge(self) -> FinalJudge:
        """The judge, standing after the last epoch judged (its key ring, heads, digest)."""
        return self._judge

    @property
    def next_epoch(self) -> int:
        """The epoch of the next final seal this reader expects."""
        return self._judge.epoch + len(self._seals) + 1

    def positions(self) -> dict[PartitionRef, int]:
        """Each partition's judged size: where to fetch from after a restart."""
        return self._judge.sizes

    def buffered(self) -> int:
        """Records held that no judged epoch covers yet."""
        return sum(len(b) for b in self._buffers.values())

    def read_size(self, ref: PartitionRef) -> int:
        """Records of ``ref`` held without a gap from offset 0: judged plus buffered up to the
        first offset skipped (what a witness may seal or cosign)."""
        base = self._judge.sizes.get(ref, 0)
        buf = self._buffers.get(ref, ())
        holes = self._holes.get(ref)
        return base + (min(holes) - base if holes else len(buf))

    def root_at(self, ref: PartitionRef, size: int) -> bytes:
        """The RFC 6962 root of ``ref``'s first ``size`` records, for ``size`` between the
        judged size and :meth:`read_size` (the frontier at the judged size, then the buffered
        values: no leaf is kept).

        Raises:
            ValueError: ``size`` outside that range.
        """
        base = self._judge.sizes.get(ref, 0)
        if not base <= size <= self.read_size(ref):
            raise ValueError(f"{ref[0]}[{ref[1]}]: no root at {size} (holds {base}..)")
        if size == 0:
            return EMPTY_ROOT
        tree = self._trees.get(ref)
        tree = (
            MerkleTree(store_leaves=False)
            if tree is None
            else MerkleTree.from_frontier(tree.size, tree.frontier)
        )
        for v in self._buffers.get(ref, ())[: size - base]:
            tree.append(v or b"")
        return tree.root()

    def buffered_values(self, ref: PartitionRef, end: int) -> list[bytes | None]:
        """The values held from the judged size up to ``end`` (at most :meth:`read_size`).

        Raises:
            ValueError: ``end`` outside the judged size .. :meth:`read_size`.
        """
        base = self._judge.sizes.get(ref, 0)
        if not base <= end <= self.read_size(ref):
            raise ValueError(f"{ref[0]}[{ref[1]}]: no values up to {end} (holds {base}..)")
        return list(self._buffers.get(ref, ())[: end - base])

    def refs(self) -> list[PartitionRef]:
        """Every partition judged or buffered."""
        return sorted(set(self._judge.sizes) | {r for r, b in self._buffers.items() if b})

    # -- feeding -----------------------------------------------------------------------------

    def offer_record(
        self, ref: PartitionRef, offset: int, value: bytes | None
    ) -> list[EpochVerdicts]:
        """One record of a partition, in that partition's offset order (see
        :meth:`offer_records`).

        Returns:
            The verdicts of every epoch this record completed (often none).
        """
        return self.offer_records(ref, offset, (value,))

    def offer_records(
        self, ref: PartitionRef, offset: int, values: Sequence[bytes | None]
    ) -> list[EpochVerdicts]:
        """Consecutive records of one partition, the first at ``offset`` (a fetched batch).

        Records below the partition's judged size are ignored (already judged), and so are
        records already held when their bytes are the same. Offsets skipped are taken as
        deleted from the log: a final seal that covers one raises
        :class:`~bus.errors.SealedRootMismatchError`; offered later, it takes its place.

        Raises:
            EpochInputError: an offset offered again with other bytes.
            SealedRootMismatchError: an epoch they completed lacks a record or does not hash
                to its sealed roots.
        """
        base = self._judge.sizes.get(ref, 0)
        buf = self._buffers.setdefault(ref, [])
        holes = self._holes.setdefault(ref, set())
        for i, value in enumerate(values):
            at = offset + i
            held = base + len(buf)
            if at < base:
                continue
            if at in holes:
                holes.discard(at)
                buf[at - base] = value
            elif at < held:
                if buf[at - base] != value:
                    raise EpochInputError(
                        f"{ref[0]}[{ref[1]}]: offset {at} offered again with other bytes",
                        topic=ref[0],
                        partition=ref[1],
                        offset=at,
                    )
            else:
                holes.update(range(held, at))
                buf.extend([None] * (at - held))
                buf.append(value)
        return self._drain()

    def offer_final_seal(self, seal: FinalSeal) -> list[EpochVerdicts]:
        """The final seal of the next epoch (seals of epochs already judged are ignored).

        Returns:
            The verdicts of every epoch now complete (this one, once its records are here).

        Raises:
            EpochInputError: a seal that skips an epoch, differs from the one already held for
                its epoch, does not name the previous seal, is for another mandate, is not
                later than the previous one, or shrinks a partition.
            SealedRootMismatchError: an epoch it completed does not hash to its sealed roots.
        """
        judge = self._judge
        if seal.epoch <= judge.epoch:
            return []
        if seal.epoch < self.next_epoch:
            held = self._seals[seal.epoch - judge.epoch - 1]
            if held.digest != seal.digest:
                raise EpochInputError(
                    f"a second final seal for epoch {seal.epoch}", epoch=seal.epoch
                )
            return []
        if seal.epoch > self.next_epoch:
            raise EpochInputError(
                f"final seal of epoch {seal.epoch} offered, {self.next_epoch} expected",
                epoch=seal.epoch,
            )
        self._check_follows(seal)
        self._seals.append(seal)
        return self._drain()

    def _check_follows(self, seal: FinalSeal) -> None:
        judge = self._judge
        if self._seals:
            prev = self._seals[-1]
            digest, time_ms, sizes = prev.digest, prev.time_ms, prev.partitions
            prev_sizes = {ref: p.size for ref, p in sizes.items()}
        else:
            digest, time_ms, prev_sizes = judge.seal_digest, judge.time_ms, judge.sizes
        mandate_id = judge.versions[0][1].mandate_id
        problem = ""
        if seal.prev_digest != digest:
            problem = "does not name the previous final seal"
        elif seal.mandate_id != mandate_id:
            problem = f"is for mandate {seal.mandate_id!r}, not {mandate_id!r}"
        elif seal.time_ms <= time_ms:
            problem = f"has time {seal.time_ms}, not after {time_ms}"
        else:
            shrunk = sorted(ref for ref, n in prev_sizes.items() if seal.size(ref) < n)
            if shrunk:
                problem = f"shrinks {shrunk[0][0]}[{shrunk[0][1]}]"
        if problem:
            raise EpochInputError(f"final seal of epoch {seal.epoch} {problem}", epoch=seal.epoch)

    def _drain(self) -> list[EpochVerdicts]:
        out: list[EpochVerdicts] = []
        while self._seals:
            seal = self._seals[0]
            sizes = self._judge.sizes
            if any(
                sizes.get(ref, 0) + len(self._buffers.get(ref, ())) < p.size
                for ref, p in seal.partitions.items()
            ):
                break
            try:
                records, trees = self._sealed_records(seal, sizes)
            except SealedRootMismatchError:
                if out:  # hand over the epochs judged; the next call raises again
                    break
                raise
            out.append(self._judge_epoch(seal, records, sizes))
            self._trees.update(trees)
            for ref, taken in records.items():
                if taken:
                    del self._buffers[ref][: len(taken)]
            self._seals.pop(0)
        return out

    def _judge_epoch(
        self,
        seal: FinalSeal,
        records: Mapping[PartitionRef, Sequence[bytes | None]],
        sizes: Mapping[PartitionRef, int],
    ) -> EpochVerdicts:
        """Judge one root-checked epoch, with the pairs the source vouches for (if any): the
        container lives for this call only."""
        if self._preverified is None:
            return self._judge.judge_epoch(seal, records)
        spans = {ref: (sizes.get(ref, 0), values) for ref, values in records.items() if values}
        pairs = self._preverified.epoch_pairs(seal.epoch, spans)
        return self._judge.judge_epoch(seal, records, preverified=pairs)

    def _sealed_records(
        self, seal: FinalSeal, sizes: Mapping[PartitionRef, int]
    ) -> tuple[dict[PartitionRef, Sequence[bytes | None]], dict[PartitionRef, MerkleTree]]:
        """The records ``seal`` adds and each partition's tree at its sealed size.

        Raises:
            SealedRootMismatchError: a partition's records hash to another root.
        """
        records: dict[PartitionRef, Sequence[bytes | None]] = {}
        trees: dict[PartitionRef, MerkleTree] = {}
        for ref, p in sorted(seal.partitions.items()):
            base = sizes.get(ref, 0)
            values = self._buffers.get(ref, [])[: p.size - base]
            missing = sorted(o for o in self._holes.get(ref, ()) if o < p.size)
            if missing:
                raise SealedRootMismatchError(
                    f"{ref[0]}[{ref[1]}]: offset {missing[0]} is sealed by epoch {seal.epoch}"
                    " but absent from the log: a sealed record was deleted",
                    topic=ref[0],
                    partition=ref[1],
                    size=p.size,
                )
            tree = self._trees.get(ref)
            tree = (
                MerkleTree(store_leaves=False)
                if tree is None
                else MerkleTree.from_frontier(tree.size, tree.frontier)
            )
            for v in values:
                tree.append(v or b"")
            if tree.root() != p.root:
                raise SealedRootMismatchError(
                    f"{ref[0]}[{ref[1]}]: offsets 0..{p.size - 1} hash to another root than"
                    f" the final seal of epoch {seal.epoch} states: a record among offsets"
                    f" {base}..{p.size - 1} was altered or deleted",
                    topic=ref[0],
                    partition=ref[1],
                    size=p.size,
                )
            records[ref] = values
            trees[ref] = tree
        return records, trees

    # -- restarts ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The reader's state after the last epoch judged (judge state and Merkle frontiers),
        as canonical JSON bytes; buffered records and seals are not in it (module docstring)."""
        state: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "judge": self._judge.snapshot().decode(),
            "trees": sorted(
                [t, p, tree.size, [h.hex() for h in tree.frontier]]
                for (t, p), tree in self._trees.items()
            ),
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def resume(
        cls,
        snapshot: bytes,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        decryption_keys: Mapping[bytes, DecryptionKey] | None = None,
        preverified: PreverifiedSource | None = None,
    ) -> SealedReader:
        """A reader standing where :meth:`snapshot` was taken; feed it again from
        :meth:`positions` and :attr:`next_epoch`.

        Raises:
            ConfigError: not a reader snapshot, or made with another root, topics or limits.
        """
        reader = cls(root, topics, limits, decryption_keys=decryption_keys, preverified=preverified)
        try:
            s = json.loads(snapshot)
            ok = s["format"] == SNAPSHOT_FORMAT
            judge_state: str = s["judge"]
            trees: Iterable[tuple[str, int, int, list[str]]] = s["trees"]
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ConfigError(
                "reader snapshot",
                "not a snapshot of a sealed reader",
                "resume from what SealedReader.snapshot() returned, or read the log again from"
                " the first epoch",
            )
        reader._judge = FinalJudge.restore(
            judge_state.encode(), root, topics, limits, decryption_keys=decryption_keys
        )
        for topic, partition, size, frontier in trees:
            tree = MerkleTree.from_frontier(size, (bytes.fromhex(h) for h in frontier))
            reader._trees[(topic, partition)] = tree
        return reader
