"""Merkle commitments over PoC leaves (nonce, vector), with audit paths.

The tree is the Merkle Tree Hash of RFC 6962 / RFC 9162 (section 2.1): leaf hash
`SHA-256(0x00 || leaf)`, node hash `SHA-256(0x01 || left || right)`, and for `n > 1` leaves the
left subtree holds the largest power of two below `n`. Built bottom-up, that is the same as
pairing the nodes of each level and promoting an unpaired last node unchanged (no duplication, so
the tree of `n` leaves never equals the tree of `n + 1` leaves with the last one repeated).
An audit path is verified with the algorithm of RFC 9162 section 2.1.3.2, which uses the leaf
index *and* the tree size: a proof made for a smaller tree does not verify against a larger
claimed count.

A leaf is 8 bytes of nonce (unsigned, big-endian) followed by the vector as little-endian float16.
Only `hashlib` is used; nothing here trusts its inputs (see `verify_proof`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

HASH_BYTES = 32
NONCE_BYTES = 8
MAX_NONCE = 2**63 - 1  # nonces are non-negative signed 64-bit integers


class MerkleError(ValueError):
    """A malformed leaf, index or tree size given to the tree builder."""


def encode_leaf(nonce: int, vector: np.ndarray) -> bytes:
    """The leaf bytes of (nonce, vector): nonce as 8 bytes big-endian, then float16 little-endian."""
    if not isinstance(nonce, (int, np.integer)) or isinstance(nonce, bool) or not 0 <= int(nonce) <= MAX_NONCE:
        raise MerkleError(f"nonce must be an integer in 0..{MAX_NONCE}, got {nonce!r}")
    vec = np.asarray(vector)
    if vec.ndim != 1:
        raise MerkleError(f"vector must be one-dimensional, got shape {vec.shape}")
    return int(nonce).to_bytes(NONCE_BYTES, "big") + vec.astype("<f2").tobytes()


def decode_leaf(data: bytes, dim: int) -> tuple[int, np.ndarray]:
    """Inverse of `encode_leaf`; raises MerkleError on a wrong length."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != NONCE_BYTES + 2 * dim:
        size = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
        raise MerkleError(f"leaf must be {NONCE_BYTES + 2 * dim} bytes for a {dim}-dim vector, got {size}")
    nonce = int.from_bytes(data[:NONCE_BYTES], "big")
    return nonce, np.frombuffer(bytes(data[NONCE_BYTES:]), dtype="<f2").copy()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962: the hash of an empty tree


class MerkleTree:
    """All levels of the tree over `leaves` (bytes each), kept for proofs."""

    def __init__(self, leaves: Sequence[bytes]):
        level = [leaf_hash(bytes(x)) for x in leaves]
        self.size = len(level)
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])  # promoted unchanged (RFC 6962 structure)
            self.levels.append(nxt)
            level = nxt

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def proof(self, index: int) -> list[bytes]:
        """Audit path of leaf `index`, from the leaf's sibling up to the root's child."""
        if not 0 <= index < self.size:
            raise MerkleError(f"leaf index must be in 0..{self.size - 1}, got {index}")
        path = []
        i = index
        for level in self.levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            i //= 2
        return path


def verify_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does `proof` show `leaf` at `index` of a tree of `size` leaves with `root`?

    Returns False (never raises) for any malformed input: a non-integer index, an index out of
    range, path elements that are not 32-byte strings, a path too short or too long.
    """
    try:
        if not isinstance(index, (int, np.integer)) or not isinstance(size, (int, np.integer)):
            return False
        index, size = int(index), int(size)
        if not (0 <= index < size) or not isinstance(leaf, (bytes, bytearray)):
            return False
        if not isinstance(root, (bytes, bytearray)) or len(root) != HASH_BYTES:
            return False
        if isinstance(proof, (bytes, bytearray, str)) or len(proof) > 64:
            return False
        fn, sn = index, size - 1
        r = leaf_hash(bytes(leaf))
        for p in proof:
            if not isinstance(p, (bytes, bytearray)) or len(p) != HASH_BYTES:
                return False
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                r = node_hash(bytes(p), r)
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
            else:
                r = node_hash(r, bytes(p))
            fn >>= 1
            sn >>= 1
        return sn == 0 and r == bytes(root)
    except (TypeError, ValueError, OverflowError):
        return False
