"""Merkle commitments of PoC leaves: RFC 6962 structure, proofs, and refusal of bad proofs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.poc.merkle import (
    EMPTY_ROOT, MAX_NONCE, MerkleError, MerkleTree, decode_leaf, encode_leaf, verify_proof,
)


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """Independent recursive Merkle Tree Hash of RFC 6962 section 2.1 (the reference)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962_root(leaves[:k]) + rfc6962_root(leaves[k:])).digest()


def leaves_of(n: int) -> list[bytes]:
    rng = np.random.default_rng(n)
    return [encode_leaf(i * 3 + 1, rng.standard_normal(12)) for i in range(n)]


@given(st.integers(0, 70))
@settings(max_examples=40, deadline=None)
def test_root_matches_rfc6962(n):
    leaves = leaves_of(n)
    assert MerkleTree(leaves).root == rfc6962_root(leaves)


@given(st.integers(1, 70), st.data())
@settings(max_examples=60, deadline=None)
def test_every_proof_verifies_and_tampering_fails(n, data):
    leaves = leaves_of(n)
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = tree.proof(i)
    assert verify_proof(leaves[i], i, n, proof, tree.root)
    # another leaf, a flipped path element, a shortened or lengthened path: all refused
    other = encode_leaf(10**9, np.ones(12))
    assert not verify_proof(other, i, n, proof, tree.root)
    if proof:
        bad = list(proof)
        bad[0] = bytes([bad[0][0] ^ 1]) + bad[0][1:]
        assert not verify_proof(leaves[i], i, n, bad, tree.root)
        assert not verify_proof(leaves[i], i, n, proof[:-1], tree.root)
    assert not verify_proof(leaves[i], i, n, [*proof, b"\x00" * 32], tree.root)
    # out of range index, wrong index
    assert not verify_proof(leaves[i], n, n, proof, tree.root)
    assert not verify_proof(leaves[i], -1, n, proof, tree.root)
    if n > 1:
        j = (i + 1) % n
        assert not verify_proof(leaves[i], j, n, proof, tree.root)


def test_proof_of_smaller_tree_fails_for_larger_count_at_the_end():
    leaves = leaves_of(8)
    tree = MerkleTree(leaves)
    # a tree of 8 claimed as 12: the last leaves' paths change shape
    assert not any(verify_proof(leaves[i], i, 12, tree.proof(i), tree.root) for i in range(8))


@pytest.mark.parametrize("proof", [None, "abc", b"x" * 32, [b"short"], [123], [b"\x00" * 32] * 65])
def test_malformed_proofs_return_false(proof):
    leaves = leaves_of(5)
    tree = MerkleTree(leaves)
    assert verify_proof(leaves[0], 0, 5, proof, tree.root) is False


@pytest.mark.parametrize("index,size", [("0", 5), (0, "5"), (0.0, 5), (5, 5), (0, 0), (None, 5)])
def test_malformed_index_or_size_returns_false(index, size):
    leaves = leaves_of(5)
    tree = MerkleTree(leaves)
    assert verify_proof(leaves[0], index, size, tree.proof(0), tree.root) is False


def test_bad_root_or_leaf_type_returns_false():
    leaves = leaves_of(3)
    tree = MerkleTree(leaves)
    assert verify_proof(leaves[0], 0, 3, tree.proof(0), tree.root[:31]) is False
    assert verify_proof("leaf", 0, 3, tree.proof(0), tree.root) is False


def test_leaf_roundtrip_and_validation():
    v = np.linspace(-1, 1, 12)
    nonce, back = decode_leaf(encode_leaf(MAX_NONCE, v), 12)
    assert nonce == MAX_NONCE
    assert np.array_equal(back, v.astype(np.float16))
    with pytest.raises(MerkleError, match="nonce"):
        encode_leaf(-1, v)
    with pytest.raises(MerkleError, match="nonce"):
        encode_leaf(MAX_NONCE + 1, v)
    with pytest.raises(MerkleError, match="one-dimensional"):
        encode_leaf(0, np.zeros((2, 6)))
    with pytest.raises(MerkleError, match="bytes"):
        decode_leaf(b"\x00" * 10, 12)
    with pytest.raises(MerkleError, match="leaf index"):
        MerkleTree(leaves_of(3)).proof(3)


def test_empty_tree_root():
    assert MerkleTree([]).root == EMPTY_ROOT
