"""RFC 6962 / RFC 9162 Merkle tree: incremental roots, inclusion and consistency proofs.

Pure code: no I/O, no clock, no asyncio. A node keeps one :class:`MerkleTree` per Kafka
topic-partition and appends the hash of every record in log order; seals carry
``(size, root())`` of every partition (:mod:`bus.seal`); other organizations and auditors check
them, and proofs against them, with :func:`verify_inclusion` and :func:`verify_consistency`.

Hashing (RFC 9162 section 2.1.1, SHA-256)::

    leaf_hash(d)     = SHA-256(0x00 || d)
    node_hash(l, r)  = SHA-256(0x01 || l || r)
    root of no leaves = SHA-256("")

Verification follows the semantics of transparency-dev/merkle ``proof/verify.go`` as pinned by
``tests/vectors/rfc6962-merkle.json``: leaf hashes and proof hashes must be exactly 32 bytes,
proofs must have exactly the expected length, and a consistency proof from the empty tree
(``old_size == 0``) is rejected because it proves nothing.

Memory: the tree always keeps a *frontier* (the roots of the perfect subtrees that make up the
tree, one per set bit of ``size``, at most 64 hashes), which is all :meth:`MerkleTree.root`
needs. With ``store_leaves=True`` (the default) it also keeps every complete subtree hash in
one contiguous ``bytearray`` per level (about 2 x 32 bytes per leaf), so any historical root
and any proof costs O(log^2 n) hashes instead of O(n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final, TypeGuard

from bus.errors import BusError, Reason, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
"""SHA-256 output size; every leaf hash, node hash, proof element and root has this length."""

MAX_TREE_SIZE: Final = 2**64 - 1
"""RFC 9162 encodes tree sizes and leaf indexes as uint64; larger values are malformed."""

_LEAF_PREFIX: Final = b"\x00"  # RFC 9162 section 2.1.1: domain separation of leaves ...
_NODE_PREFIX: Final = b"\x01"  # ... and interior nodes, against second-preimage attacks.

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256 of the empty string (RFC 9162 section 2.1.1)."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``SHA-256(0x00 || data)``.

    Args:
        data: the leaf input (for observer-bus: the stored record bytes).

    Returns:
        32 bytes.
    """
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``.

    Args:
        left: hash of the left subtree.
        right: hash of the right subtree.

    Returns:
        32 bytes.
    """
    # join of a tuple is measurably faster than `a + b + c` or two update() calls in CPython.
    return _sha256(b"".join((_NODE_PREFIX, left, right))).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 section 2.1.1: the largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 6962 Merkle tree over a sequence of leaves.

    Args:
        store_leaves: keep every complete subtree hash so that :meth:`root_at`,
            :meth:`inclusion_proof`, :meth:`consistency_proof` and :meth:`leaf_hash_at` work.
            With ``False`` the tree keeps only the frontier (at most 64 hashes): enough for
            :meth:`root` and for a streaming reader that checks sealed roots as it replays.
    """

    __slots__ = ("_frontier", "_levels", "_size")

    def __init__(self, *, store_leaves: bool = True) -> None:
        self._size = 0
        # Roots of the perfect subtrees making up the tree, largest (leftmost) first; the
        # i-th from the right has 2**j leaves where j is the position of the i-th set bit.
        self._frontier: list[bytes] = []
        # _levels[j] holds, concatenated, the hashes of the complete subtrees of 2**j leaves
        # in left-to-right order; level 0 is the leaf hashes. None when leaves are not kept.
        self._levels: list[bytearray] | None = [] if store_leaves else None

    @classmethod
    def from_frontier(cls, size: int, frontier: Iterable[bytes]) -> MerkleTree:
        """Resume a frontier-only tree, e.g. from a reader's saved state.

        Args:
            size: number of leaves the frontier covers.
            frontier: the perfect-subtree roots as returned by :attr:`frontier`.

        Returns:
            A tree with ``store_leaves=False`` whose :meth:`root` is that of the original.

        Raises:
            BusError: ``size`` is out of range or the frontier does not match it.
        """
        hashes = list(frontier)
        if not _is_uint64(size):
            raise BusError("tree size must be an int in [0, 2**64)", size=size)
        if len(hashes) != size.bit_count():
            raise BusError(
                "frontier length must equal the number of set bits of size",
                size=size,
                frontier_len=len(hashes),
            )
        for h in hashes:
            _require_hash(h, "frontier hash")
        tree = cls(store_leaves=False)
        tree._size = size
        tree._frontier = hashes
        return tree

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def stores_leaves(self) -> bool:
        """Whether proofs and historical roots can be produced."""
        return self._levels is not None

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees covering the tree, leftmost (largest) first."""
        return tuple(self._frontier)

    def append(self, data: bytes) -> int:
        """Append one leaf by its input data (hashed with :func:`leaf_hash`).

        Returns:
            The index of the new leaf.
        """
        return self._append(leaf_hash(data))

    def append_leaf_hash(self, leaf: bytes) -> int:
        """Append one leaf by its precomputed 32-byte leaf hash.

        Returns:
            The index of the new leaf.

        Raises:
            BusError: ``leaf`` is not 32 bytes.
        """
        _require_hash(leaf, "leaf hash")
        return self._append(leaf)

    def _append(self, h: bytes) -> int:
        index = self._size
        if index >= MAX_TREE_SIZE:
            raise BusError("tree is full (2**64 - 1 leaves)")
        levels = self._levels
        frontier = self._frontier
        if levels is not None:
            if not levels:
                levels.append(bytearray())
            levels[0] += h
        # Each trailing one-bit of the old size is a perfect subtree of the same height as
        # the one being carried: merge them, exactly like binary addition of 1.
        s = index
        level = 0
        while s & 1:
            h = node_hash(frontier.pop(), h)
            level += 1
            if levels is not None:
                if len(levels) == level:
                    levels.append(bytearray())
                levels[level] += h
            s >>= 1
        frontier.append(h)
        self._size = index + 1
        return index

    def root(self) -> bytes:
        """Return MTH of all leaves so far, in O(log n) hashes from the frontier."""
        if not self._frontier:
            return EMPTY_ROOT
        r = self._frontier[-1]
        for h in reversed(self._frontier[:-1]):
            r = node_hash(h, r)
        return r

    def root_at(self, size: int) -> bytes:
        """Return the root the tree had when it had ``size`` leaves.

        Raises:
            BusError: ``size`` exceeds :attr:`size`, or the size is not the current one and
                leaves are not stored.
        """
        self._check_size(size, "size")
        if size == self._size:
            return self.root()
        levels = self._require_store("root_at")
        if size == 0:
            return EMPTY_ROOT
        return _subtree(levels, 0, size)

    def leaf_hash_at(self, index: int) -> bytes:
        """Return the stored leaf hash at ``index``.

        Raises:
            BusError: index out of range or leaves not stored.
        """
        levels = self._require_store("leaf_hash_at")
        if not _is_uint64(index) or index >= self._size:
            raise BusError("leaf index out of range", index=index, size=self._size)
        return bytes(levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return PATH(index, D[size]) of RFC 9162 section 2.1.3.1.

        Args:
            index: 0-based leaf index, ``index < size``.
            size: tree size the proof is against; defaults to the current size.

        Returns:
            The audit path, bottom-up, as 32-byte hashes.

        Raises:
            BusError: leaves not stored, or ``index``/``size`` out of range.
        """
        n = self._size if size is None else size
        self._check_size(n, "size")
        levels = self._require_store("inclusion_proof")
        if not _is_uint64(index) or index >= n:
            raise BusError("leaf index must be in [0, size)", index=index, size=n)
        proof: list[bytes] = []
        _path(levels, index, 0, n, proof)
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1.

        ``old_size == new_size`` gives the empty proof. ``old_size == 0`` is refused: the
        verifier (like transparency-dev/merkle) rejects it, since it would prove nothing.

        Raises:
            BusError: leaves not stored, or not ``0 < old_size <= new_size <= size``.
        """
        n = self._size if new_size is None else new_size
        self._check_size(n, "new_size")
        levels = self._require_store("consistency_proof")
        if not _is_uint64(old_size) or not 0 < old_size <= n:
            raise BusError(
                "consistency proof needs 0 < old_size <= new_size", old_size=old_size, new_size=n
            )
        proof: list[bytes] = []
        if old_size < n:
            _subproof(levels, old_size, 0, n, proof, complete=True)
        return proof

    # -- internals ------------------------------------------------------------------------

    def _check_size(self, size: object, name: str) -> None:
        if not _is_uint64(size) or size > self._size:
            raise BusError(f"{name} must be an int in [0, tree size]", size=size, tree=self._size)

    def _require_store(self, operation: str) -> list[bytearray]:
        if self._levels is None:
            raise BusError(
                f"{operation} needs stored leaves; this tree was built with store_leaves=False",
                operation=operation,
            )
        return self._levels


def _subtree(levels: list[bytearray], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) from stored complete subtrees; 0 <= lo < hi <= size.

    Ranges reached from the RFC recursion start at a multiple of their largest perfect left
    part, so each call is one lookup plus a walk down the right border: O(log n) hashes.
    """
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        k = lo // n
        return bytes(levels[n.bit_length() - 1][k * HASH_SIZE : (k + 1) * HASH_SIZE])
    k = _largest_power_of_two_below(n)
    return node_hash(_subtree(levels, lo, lo + k), _subtree(levels, lo + k, hi))


def _path(levels: list[bytearray], m: int, lo: int, hi: int, out: list[bytes]) -> None:
    """Append PATH(m - lo, D[lo:hi]) to ``out`` (RFC 9162 section 2.1.3.1)."""
    n = hi - lo
    if n == 1:
        return
    k = _largest_power_of_two_below(n)
    if m - lo < k:
        _path(levels, m, lo, lo + k, out)
        out.append(_subtree(levels, lo + k, hi))
    else:
        _path(levels, m, lo + k, hi, out)
        out.append(_subtree(levels, lo, lo + k))


def _subproof(
    levels: list[bytearray], m: int, lo: int, hi: int, out: list[bytes], *, complete: bool
) -> None:
    """Append SUBPROOF(m, D[lo:hi], complete) to ``out`` (RFC 9162 section 2.1.4.1)."""
    n = hi - lo
    if m == n:
        if not complete:
            out.append(_subtree(levels, lo, hi))
        return
    k = _largest_power_of_two_below(n)
    if m <= k:
        _subproof(levels, m, lo, lo + k, out, complete=complete)
        out.append(_subtree(levels, lo + k, hi))
    else:
        _subproof(levels, m - k, lo + k, hi, out, complete=False)
        out.append(_subtree(levels, lo, lo + k))


# -- verification -------------------------------------------------------------------------


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Implements RFC 9162 section 2.1.3.2.

    Args:
        leaf_hash: the 32-byte leaf hash (not the leaf data).
        index: 0-based leaf index.
        size: tree size the proof is for.
        proof: the audit path, 32-byte hashes, bottom-up.
        root: the expected tree root.

    Raises:
        VerificationError: ``Reason.INCLUSION_PROOF_INVALID`` for malformed input (wrong hash
            lengths, index not below size, proof of the wrong length) and for a proof that
            does not lead to ``root``.
    """
    ctx = {"proof_kind": "inclusion", "index": index, "size": size}
    _require_uint64(index, "leaf index", ctx)
    _require_uint64(size, "tree size", ctx)
    if index >= size:
        raise VerificationError(_reason(ctx), "leaf index is not below tree size", **ctx)
    _require_verify_hash(leaf_hash, "leaf hash", ctx)
    _require_verify_bytes(root, "root", ctx)
    path = _require_proof(proof, _inclusion_proof_len(index, size), ctx)
    fn = index
    sn = size - 1
    r = leaf_hash
    for p in path:
        # sn == 0 cannot happen once the length matched; kept as in the RFC text.
        if sn == 0:  # pragma: no cover
            raise VerificationError(_reason(ctx), "inclusion proof too long", **ctx)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise VerificationError(
            _reason(ctx), "inclusion proof does not lead to the given root", **ctx
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends the tree ``(old_size, old_root)``.

    Implements RFC 9162 section 2.1.4.2 for ``0 < old_size < new_size``. As in
    transparency-dev/merkle: ``old_size == new_size`` needs an empty proof and equal roots;
    ``old_size == 0`` and ``old_size > new_size`` are rejected.

    Raises:
        VerificationError: ``Reason.CONSISTENCY_PROOF_INVALID`` for malformed input and for
            a proof that does not reproduce both roots.
    """
    ctx = {"proof_kind": "consistency", "old_size": old_size, "new_size": new_size}
    _require_uint64(old_size, "old size", ctx)
    _require_uint64(new_size, "new size", ctx)
    _require_verify_bytes(old_root, "old root", ctx)
    _require_verify_bytes(new_root, "new root", ctx)
    if old_size == 0:
        raise VerificationError(
            _reason(ctx), "consistency with the empty tree proves nothing", **ctx
        )
    if old_size > new_size:
        raise VerificationError(_reason(ctx), "old size exceeds new size", **ctx)
    if old_size == new_size:
        # RFC 9162 defines no proof here; like transparency-dev: empty proof, same root.
        _require_proof(proof, 0, ctx)
        if old_root != new_root:
            raise VerificationError(_reason(ctx), "equal sizes but different roots", **ctx)
        return
    path = _require_proof(proof, _consistency_proof_len(old_size, new_size), ctx)
    if old_size & (old_size - 1) == 0:
        # The old tree is a perfect subtree of the new one: its root is the seed.
        path = [old_root, *path]
    fn = old_size - 1
    sn = new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:  # pragma: no cover - excluded by the length check above
            raise VerificationError(_reason(ctx), "consistency proof too long", **ctx)
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise VerificationError(
            _reason(ctx), "consistency proof does not reproduce both roots", **ctx
        )


def _reason(ctx: dict[str, object]) -> Reason:
    """The reason code of a failed check: which kind of proof it belongs to."""
    if ctx.get("proof_kind") == "consistency":
        return Reason.CONSISTENCY_PROOF_INVALID
    return Reason.INCLUSION_PROOF_INVALID


def _inclusion_proof_len(index: int, size: int) -> int:
    """Length of PATH(index, D[size]): inner levels below the split plus the right border."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_proof_len(old_size: int, new_size: int) -> int:
    """Length of PROOF(old_size, D[new_size]) for 0 < old_size < new_size."""
    shift = (old_size & -old_size).bit_length() - 1  # trailing zero bits of old_size
    length = _inclusion_proof_len(old_size - 1, new_size) - shift
    # Unless the old tree is itself perfect, its largest common subtree root is sent too.
    return length if old_size == 1 << shift else length + 1


def _is_uint64(value: object) -> TypeGuard[int]:
    # type() rather than isinstance(): bool is an int subclass, and True is no tree size.
    return type(value) is int and 0 <= value <= MAX_TREE_SIZE


def _require_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise BusError(f"{what} must be {HASH_SIZE} bytes", got=_describe(value))


def _require_uint64(value: object, what: str, ctx: dict[str, object]) -> None:
    if not _is_uint64(value):
        raise VerificationError(
            _reason(ctx), f"{what} must be an int in [0, 2**64)", field=what, **ctx
        )


def _require_verify_bytes(value: object, what: str, ctx: dict[str, object]) -> None:
    # Roots are compared, not hashed, so any length is accepted here (a wrong length simply
    # never matches); transparency-dev's equal-size probe with 12-byte roots relies on this.
    if not isinstance(value, bytes):
        raise VerificationError(_reason(ctx), f"{what} must be bytes", field=what, **ctx)


def _require_verify_hash(value: object, what: str, ctx: dict[str, object]) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise VerificationError(
            _reason(ctx),
            f"{what} must be {HASH_SIZE} bytes",
            field=what,
            got=_describe(value),
            **ctx,
        )


def _require_proof(proof: object, want: int, ctx: dict[str, object]) -> list[bytes]:
    """Return ``proof`` as a list after checking its type, its length, then each element."""
    if isinstance(proof, (bytes, bytearray, str)) or not isinstance(proof, Sequence):
        raise VerificationError(
            _reason(ctx), "proof must be a sequence of hashes", field="proof", **ctx
        )
    # Length first: a huge proof is refused without touching its elements.
    if len(proof) != want:
        raise VerificationError(
            _reason(ctx),
            f"{ctx['proof_kind']} proof has {len(proof)} hashes, expected {want}",
            field="proof",
            **ctx,
        )
    path = list(proof)
    for i, p in enumerate(path):
        if not isinstance(p, bytes) or len(p) != HASH_SIZE:
            raise VerificationError(
                _reason(ctx),
                f"proof[{i}] must be {HASH_SIZE} bytes",
                field="proof",
                got=_describe(p),
                **ctx,
            )
    return path


def _describe(value: object) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return type(value).__name__
