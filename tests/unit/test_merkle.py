"""bus.merkle against the RFC 6962 vectors of transparency-dev/merkle and a brute-force reference.

The reference below is RFC 6962 section 2.1 written out directly (MTH, PATH, PROOF/SUBPROOF on
lists of leaves), independent of bus.merkle's frontier and level storage.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bus.merkle
from bus.errors import BusError, Reason, VerificationError
from bus.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "rfc6962-merkle.json"
V: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
LEAVES = [bytes.fromhex(x) for x in V["leaves"]]

# Small budget: the suite must stay fast on two cores. Trees go up to ~300 leaves.
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_LEAVES = 300


P = ParamSpec("P")


def returned(f: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> object:
    """What ``f`` returned: the verifiers are typed ``-> None``, the tests check it at run time."""
    return f(*args, **kwargs)


def h(x: str | None) -> bytes:
    return bytes.fromhex(x) if x else b""


def hl(xs: list[str] | None) -> list[bytes]:
    return [bytes.fromhex(x) for x in xs or []]


def build(leaves: list[bytes], *, store_leaves: bool = True) -> MerkleTree:
    tree = MerkleTree(store_leaves=store_leaves)
    for leaf in leaves:
        tree.append(leaf)
    return tree


# -- brute-force reference: RFC 6962 section 2.1, verbatim ------------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


def test_reference_matches_vectors() -> None:
    for n in range(9):
        assert ref_mth(LEAVES[:n]).hex() == V["roots"][str(n)]


# -- vectors: hasher, roots, frontier ---------------------------------------------------------


@pytest.mark.parametrize("case", V["hasher"], ids=lambda c: c["desc"])
def test_hasher(case: dict[str, Any]) -> None:
    if case["kind"] == "empty_root":
        got = EMPTY_ROOT
    elif case["kind"] == "leaf":
        got = leaf_hash(h(case["input_hex"]))
    else:
        got = node_hash(h(case["left_hex"]), h(case["right_hex"]))
    assert got.hex() == case["want"]


def test_empty_root_vector() -> None:
    assert EMPTY_ROOT.hex() == V["empty_root"] == V["roots"]["0"]
    assert MerkleTree().root() == EMPTY_ROOT
    assert MerkleTree(store_leaves=False).root() == EMPTY_ROOT


def test_leaf_hash_vectors() -> None:
    assert [leaf_hash(x).hex() for x in LEAVES] == V["leaf_hashes"]
    assert V["node_hashes_by_level"]["levels"]["0"] == V["leaf_hashes"]


@pytest.mark.parametrize("size", range(9))
def test_roots_every_size(size: int) -> None:
    want = V["roots"][str(size)]
    assert build(LEAVES[:size]).root().hex() == want
    assert build(LEAVES[:size], store_leaves=False).root().hex() == want
    assert build(LEAVES).root_at(size).hex() == want
    by_hash = MerkleTree()
    for lh in V["leaf_hashes"][:size]:
        by_hash.append_leaf_hash(bytes.fromhex(lh))
    assert by_hash.root().hex() == want


@pytest.mark.parametrize("size", range(9))
def test_frontier_is_the_perfect_subtrees(size: int) -> None:
    levels = V["node_hashes_by_level"]["levels"]
    want = []
    start = 0
    for level in reversed(range(4)):
        if size >> level & 1:
            want.append(levels[str(level)][start >> level])
            start += 1 << level
    assert [x.hex() for x in build(LEAVES[:size]).frontier] == want


# -- vectors: reference proofs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "case", V["inclusion"], ids=lambda c: f"leaf{c['leaf_index']}-size{c['tree_size']}"
)
def test_reference_inclusion_proof(case: dict[str, Any]) -> None:
    index, size = case["leaf_index"], case["tree_size"]
    lh = leaf_hash(h(case["leaf_input"]))
    assert lh.hex() == case["leaf_hash"]
    tree = build(LEAVES)
    proof = tree.inclusion_proof(index, size)
    assert proof == hl(case["proof"])
    assert tree.root_at(size).hex() == case["root"]
    assert returned(verify_inclusion, lh, index, size, proof, h(case["root"])) is None
    assert build(LEAVES[:size]).inclusion_proof(index) == proof


@pytest.mark.parametrize("case", V["consistency"], ids=lambda c: f"{c['size1']}-{c['size2']}")
def test_reference_consistency_proof(case: dict[str, Any]) -> None:
    m, n = case["size1"], case["size2"]
    tree = build(LEAVES)
    proof = tree.consistency_proof(m, n)
    assert proof == hl(case["proof"])
    assert tree.root_at(m).hex() == case["root1"]
    assert tree.root_at(n).hex() == case["root2"]
    assert returned(verify_consistency, m, n, h(case["root1"]), h(case["root2"]), proof) is None
    assert build(LEAVES[:n]).consistency_proof(m) == proof


# -- vectors: transparency-dev verification probes --------------------------------------------

INCLUSION_PROBES = V["probes"]["inclusion"]
CONSISTENCY_PROBES = V["probes"]["consistency"]


def test_probe_counts() -> None:
    probes = INCLUSION_PROBES + CONSISTENCY_PROBES
    assert len(probes) == 196
    assert sum(not p["want_error"] for p in probes) == 12
    assert sum(p["want_error"] for p in probes) == 184


def _probe_id(p: dict[str, Any]) -> str:
    file: str = p["file"]
    return file.removeprefix("testdata/").removesuffix(".json")


@pytest.mark.parametrize("probe", INCLUSION_PROBES, ids=_probe_id)
def test_inclusion_probe(probe: dict[str, Any]) -> None:
    args = (
        h(probe["leaf_hash"]),
        probe["leaf_index"],
        probe["tree_size"],
        hl(probe["proof"]),
        h(probe["root"]),
    )
    if probe["want_error"]:
        with pytest.raises(VerificationError) as exc:
            verify_inclusion(*args)
        assert exc.value.reason is Reason.INCLUSION_PROOF_INVALID
    else:
        assert returned(verify_inclusion, *args) is None


@pytest.mark.parametrize("probe", CONSISTENCY_PROBES, ids=_probe_id)
def test_consistency_probe(probe: dict[str, Any]) -> None:
    args = (
        probe["size1"],
        probe["size2"],
        h(probe["root1"]),
        h(probe["root2"]),
        hl(probe["proof"]),
    )
    if probe["want_error"]:
        with pytest.raises(VerificationError) as exc:
            verify_consistency(*args)
        assert exc.value.reason is Reason.CONSISTENCY_PROOF_INVALID
    else:
        assert returned(verify_consistency, *args) is None


# -- misuse, storage modes, purity ------------------------------------------------------------


def test_frontier_only_tree_refuses_proofs_with_bus_error() -> None:
    tree = build(LEAVES, store_leaves=False)
    assert not tree.stores_leaves
    assert tree.root_at(8) == tree.root()
    for call in (
        lambda: tree.inclusion_proof(0, 8),
        lambda: tree.consistency_proof(1, 8),
        lambda: tree.root_at(4),
        lambda: tree.leaf_hash_at(0),
    ):
        with pytest.raises(BusError, match="store_leaves=False") as exc:
            call()
        assert not isinstance(exc.value, VerificationError)


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("index == size", lambda t: t.inclusion_proof(8, 8)),
        ("negative index", lambda t: t.inclusion_proof(-1, 8)),
        ("size beyond tree", lambda t: t.inclusion_proof(0, 9)),
        ("size zero", lambda t: t.inclusion_proof(0, 0)),
        ("old size zero", lambda t: t.consistency_proof(0, 8)),
        ("old above new", lambda t: t.consistency_proof(5, 4)),
        ("new beyond tree", lambda t: t.consistency_proof(1, 9)),
        ("root_at beyond tree", lambda t: t.root_at(9)),
        ("root_at bool", lambda t: t.root_at(True)),
        ("leaf_hash_at out of range", lambda t: t.leaf_hash_at(8)),
        ("short leaf hash", lambda t: t.append_leaf_hash(b"\x00" * 31)),
        ("str leaf hash", lambda t: t.append_leaf_hash("0" * 32)),
    ],
)
def test_misuse_raises_bus_error(name: str, call: Any) -> None:
    tree = build(LEAVES)
    with pytest.raises(BusError) as exc:
        call(tree)
    assert not isinstance(exc.value, VerificationError), name
    assert tree.size == 8
    assert tree.root().hex() == V["roots"]["8"]


def test_equal_sizes_give_empty_consistency_proof() -> None:
    tree = build(LEAVES)
    assert tree.consistency_proof(8) == []
    assert tree.consistency_proof(3, 3) == []


def test_append_returns_index_and_leaf_hash_at() -> None:
    tree = MerkleTree()
    assert [tree.append(x) for x in LEAVES] == list(range(8))
    assert [tree.leaf_hash_at(i).hex() for i in range(8)] == V["leaf_hashes"]


def test_from_frontier_resumes() -> None:
    for split in range(9):
        head = build(LEAVES[:split], store_leaves=False)
        resumed = MerkleTree.from_frontier(head.size, head.frontier)
        for leaf in LEAVES[split:]:
            resumed.append(leaf)
        assert resumed.root().hex() == V["roots"]["8"]


@pytest.mark.parametrize(
    ("size", "frontier"),
    [(3, [b"\x00" * 32]), (1, [b"\x00" * 31]), (-1, []), (2**64, [b"\x00" * 32])],
)
def test_from_frontier_rejects_mismatch(size: int, frontier: list[bytes]) -> None:
    with pytest.raises(BusError):
        MerkleTree.from_frontier(size, frontier)


def test_size_is_bound_by_the_signed_root_not_by_the_proof() -> None:
    # RFC 9162 behaviour, kept on purpose: the path of leaf 0 has the same shape in trees of
    # 3 and 4 leaves, so the size-3 proof and root also "verify" when the size is claimed as 4.
    # The size is only trustworthy as part of a signed (size, root) checkpoint.
    tree = build(LEAVES)
    proof = tree.inclusion_proof(0, 3)
    verify_inclusion(tree.leaf_hash_at(0), 0, 4, proof, tree.root_at(3))
    with pytest.raises(VerificationError):
        verify_inclusion(tree.leaf_hash_at(0), 0, 4, proof, tree.root_at(4))


def test_module_is_pure() -> None:
    source = Path(bus.merkle.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= {"__future__", "hashlib", "collections.abc", "typing", "bus.errors"}


# -- Hypothesis: against the brute-force reference --------------------------------------------


def leaves_for(n: int, salt: bytes) -> list[bytes]:
    # Distinct leaves, so no two subtrees share a hash and every tampering must be caught.
    return [salt + i.to_bytes(2, "big") for i in range(n)]


sizes = st.integers(min_value=0, max_value=MAX_LEAVES)
salts = st.binary(max_size=4)


@FAST
@given(n=sizes, salt=salts)
def test_roots_match_reference(n: int, salt: bytes) -> None:
    d = leaves_for(n, salt)
    tree = MerkleTree()
    streaming = MerkleTree(store_leaves=False)
    for i, leaf in enumerate(d):
        tree.append(leaf)
        streaming.append_leaf_hash(leaf_hash(leaf))
        if i % 37 == 0:
            assert streaming.root() == ref_mth(d[: i + 1])
    assert tree.size == streaming.size == n
    assert tree.root() == streaming.root() == ref_mth(d)
    step = max(1, n // 25)
    for size in [*range(0, n + 1, step), n]:
        assert tree.root_at(size) == ref_mth(d[:size])


@settings(FAST, max_examples=15)  # every index of the tree: O(n^2) reference hashing
@given(data=st.data(), n=st.integers(min_value=1, max_value=MAX_LEAVES), salt=salts)
def test_every_inclusion_proof_matches_reference(data: st.DataObject, n: int, salt: bytes) -> None:
    d = leaves_for(n, salt)
    tree = build(d)
    size = data.draw(st.integers(min_value=1, max_value=n), label="size")
    root = ref_mth(d[:size])
    for index in range(size):
        proof = tree.inclusion_proof(index, size)
        assert proof == ref_path(index, d[:size])
        assert returned(verify_inclusion, leaf_hash(d[index]), index, size, proof, root) is None


@FAST
@given(data=st.data(), n=st.integers(min_value=1, max_value=MAX_LEAVES), salt=salts)
def test_consistency_proofs_match_reference(data: st.DataObject, n: int, salt: bytes) -> None:
    d = leaves_for(n, salt)
    tree = build(d)
    for _ in range(8):
        new = data.draw(st.integers(min_value=1, max_value=n), label="new_size")
        old = data.draw(st.integers(min_value=1, max_value=new), label="old_size")
        proof = tree.consistency_proof(old, new)
        assert proof == ref_proof(old, d[:new])
        assert (
            returned(verify_consistency, old, new, ref_mth(d[:old]), ref_mth(d[:new]), proof)
            is None
        )


def _flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8 % len(out)] ^= 1 << bit % 8
    return bytes(out)


def _raises(call: Any) -> bool:
    try:
        call()
    except VerificationError:
        return True
    return False


# Trees for tampering carry spare leaves past the proven size, so a tampered size still has
# an honest root to be checked against.
SPARE = 40


@FAST
@given(data=st.data(), n=st.integers(min_value=1, max_value=MAX_LEAVES), salt=salts)
def test_tampered_inclusion_proof_is_rejected(data: st.DataObject, n: int, salt: bytes) -> None:
    d = leaves_for(n + SPARE, salt)
    tree = build(d)
    index = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    lh = leaf_hash(d[index])
    proof = tree.inclusion_proof(index, n)
    root = tree.root_at(n)
    verify_inclusion(lh, index, n, proof, root)

    if proof:
        pos = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = [*proof[:pos], _flip(proof[pos], bit), *proof[pos + 1 :]]
        assert _raises(lambda: verify_inclusion(lh, index, n, bad, root))
        assert _raises(lambda: verify_inclusion(lh, index, n, proof[:pos] + proof[pos + 1 :], root))
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    pos = data.draw(st.integers(0, len(proof)), label="insert_at")
    assert _raises(
        lambda: verify_inclusion(lh, index, n, [*proof[:pos], extra, *proof[pos:]], root)
    )
    assert _raises(lambda: verify_inclusion(_flip(lh, index), index, n, proof, root))
    assert _raises(lambda: verify_inclusion(lh, index, n, proof, _flip(root, index)))

    other = data.draw(st.integers(-5, n + SPARE).filter(lambda i: i != index), label="other_index")
    assert _raises(lambda: verify_inclusion(lh, other, n, proof, root))

    # A tampered size checked against the honest root of that size is accepted only when the
    # honest proof for it is this very proof (impossible for distinct leaves unless the
    # subtrees involved are the same; the reference decides).
    size2 = data.draw(st.integers(0, n + SPARE).filter(lambda s: s != n), label="other_size")
    root2 = tree.root_at(size2)
    honest = index < size2 and ref_path(index, d[:size2]) == proof
    assert _raises(lambda: verify_inclusion(lh, index, size2, proof, root2)) is not honest
    for bad_size in (-1, 2**64, n + 2**64):
        assert _raises(lambda: verify_inclusion(lh, index, bad_size, proof, root))  # noqa: B023


@FAST
@given(data=st.data(), n=st.integers(min_value=2, max_value=MAX_LEAVES), salt=salts)
def test_tampered_consistency_proof_is_rejected(data: st.DataObject, n: int, salt: bytes) -> None:
    d = leaves_for(n + SPARE, salt)
    tree = build(d)
    new = data.draw(st.integers(min_value=2, max_value=n), label="new_size")
    old = data.draw(st.integers(min_value=1, max_value=new - 1), label="old_size")
    r1, r2 = tree.root_at(old), tree.root_at(new)
    proof = tree.consistency_proof(old, new)
    verify_consistency(old, new, r1, r2, proof)

    pos = data.draw(st.integers(0, len(proof) - 1), label="element")
    bit = data.draw(st.integers(0, 255), label="bit")
    bad = [*proof[:pos], _flip(proof[pos], bit), *proof[pos + 1 :]]
    assert _raises(lambda: verify_consistency(old, new, r1, r2, bad))
    assert _raises(lambda: verify_consistency(old, new, r1, r2, proof[:pos] + proof[pos + 1 :]))
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    ins = data.draw(st.integers(0, len(proof)), label="insert_at")
    assert _raises(
        lambda: verify_consistency(old, new, r1, r2, [*proof[:ins], extra, *proof[ins:]])
    )
    assert _raises(lambda: verify_consistency(old, new, _flip(r1, bit), r2, proof))
    assert _raises(lambda: verify_consistency(old, new, r1, _flip(r2, bit), proof))
    assert _raises(lambda: verify_consistency(old, new, r2, r1, proof))

    # Tampered sizes, each checked against the honest roots for those sizes: accepted only
    # where the honest proof for them is this very proof.
    old2 = data.draw(st.integers(0, n + SPARE), label="old2")
    new2 = data.draw(st.integers(0, n + SPARE), label="new2")
    if (old2, new2) != (old, new):
        honest = 0 < old2 <= new2 and ref_proof(old2, d[:new2]) == proof
        got = _raises(
            lambda: verify_consistency(old2, new2, tree.root_at(old2), tree.root_at(new2), proof)
        )
        assert got is not honest
    for bad_old, bad_new in ((-1, new), (old, 2**64), (0, new), (new + 1, new)):
        assert _raises(lambda: verify_consistency(bad_old, bad_new, r1, r2, proof))  # noqa: B023


# -- Hypothesis: the one fuzz invariant -------------------------------------------------------

hashes = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
ints = st.one_of(
    st.integers(min_value=0, max_value=70),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([2**64 - 1, 2**64, -1]),
)
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(), st.binary(max_size=4))
proofs = st.one_of(
    st.lists(hashes, max_size=10), junk, st.lists(st.one_of(hashes, junk), max_size=3)
)


@settings(max_examples=150, deadline=None)
@given(
    lh=st.one_of(hashes, junk),
    index=st.one_of(ints, junk),
    size=st.one_of(ints, junk),
    proof=proofs,
    root=st.one_of(hashes, junk),
)
def test_verify_inclusion_returns_none_or_raises_verification_error(
    lh: Any, index: Any, size: Any, proof: Any, root: Any
) -> None:
    try:
        assert returned(verify_inclusion, lh, index, size, proof, root) is None
    except VerificationError as exc:
        assert exc.reason is Reason.INCLUSION_PROOF_INVALID


@settings(max_examples=150, deadline=None)
@given(
    old=st.one_of(ints, junk),
    new=st.one_of(ints, junk),
    r1=st.one_of(hashes, junk),
    r2=st.one_of(hashes, junk),
    proof=proofs,
)
def test_verify_consistency_returns_none_or_raises_verification_error(
    old: Any, new: Any, r1: Any, r2: Any, proof: Any
) -> None:
    try:
        assert returned(verify_consistency, old, new, r1, r2, proof) is None
    except VerificationError as exc:
        assert exc.reason is Reason.CONSISTENCY_PROOF_INVALID
