"""The PoC validator: sample leaves, check their openings, recompute, binomial test.

The validator trusts nothing a participant sends. `check_openings` turns every malformed answer
(not a list, a missing or duplicated index, an index out of range, a leaf of the wrong size, a
proof that does not verify against the committed root and count, a NaN vector, nonces that are
not strictly increasing along the tree, i.e. a duplicated nonce) into a rejection with a reason;
it never raises. Only the validator's own recomputation may raise (that is the validator's
fault, not the participant's).

Why nonces must increase: a participant may pick its nonces, but it must commit them in strictly
increasing order. The validator opens each sampled leaf *and its right neighbour*, so a tree that
repeats nonces (to claim a count it did not compute) shows a tie or a descent at a rate equal to
the share of repeated leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest

from sim.poc.merkle import HASH_BYTES, MAX_NONCE, MerkleError, decode_leaf, verify_proof
from sim.poc.params import PocParams


@dataclass(frozen=True)
class Commitment:
    """What a participant puts on chain for a PoC stage: a Merkle root and a nonce count."""

    root: bytes
    count: int


@dataclass(frozen=True)
class Opening:
    """One opened leaf: its index in the tree, its bytes (nonce + vector) and its audit path."""

    index: int
    leaf: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class Verdict:
    """A validator's decision on one participant's PoC stage."""

    accepted: bool
    mismatches: int
    sampled: int
    p_value: float
    reason: str
    count: int = 0
    distances: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "mismatches": self.mismatches, "sampled": self.sampled,
                "p_value": self.p_value, "reason": self.reason, "count": self.count}


def check_commitment(commitment: Any) -> str | None:
    """A reason if the on-chain commitment itself is malformed, else None."""
    root = getattr(commitment, "root", None)
    count = getattr(commitment, "count", None)
    if not isinstance(root, (bytes, bytearray)) or len(root) != HASH_BYTES:
        return f"malformed commitment: root must be {HASH_BYTES} bytes"
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
        return f"malformed commitment: count must be a non-negative integer, got {count!r}"
    return None


def sample_indices(count: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """`min(samples, count)` distinct leaf indices, uniformly, sorted."""
    k = min(int(samples), int(count))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if count <= 4 * k:
        picked = rng.choice(count, size=k, replace=False)
    else:  # draw with rejection: never materialises range(count) for huge claimed counts
        seen: set[int] = set()
        while len(seen) < k:
            seen.update(int(x) for x in rng.integers(0, count, size=k - len(seen)))
        picked = np.fromiter(seen, dtype=np.int64)
    return np.sort(picked.astype(np.int64))


def requested_indices(sampled: Sequence[int], count: int) -> list[int]:
    """The leaves to open: each sampled leaf and its right neighbour (for the nonce-order check)."""
    want = set(int(i) for i in sampled)
    want.update(int(i) + 1 for i in sampled if int(i) + 1 < count)
    return sorted(want)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def check_openings(commitment: Commitment, requested: Sequence[int], openings: Any,
                   dim: int) -> tuple[dict[int, tuple[int, np.ndarray]], str | None]:
    """Parse and verify untrusted openings. Returns ({index: (nonce, vector)}, reason or None)."""
    leaves: dict[int, tuple[int, np.ndarray]] = {}
    count = int(commitment.count)
    if not isinstance(openings, (list, tuple)):
        return leaves, f"malformed answer: openings must be a list, got {type(openings).__name__}"
    try:
        for op in openings:
            index, leaf, proof = _field(op, "index"), _field(op, "leaf"), _field(op, "proof")
            if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
                return leaves, f"malformed opening: index must be an integer, got {index!r}"
            index = int(index)
            if not 0 <= index < count:
                return leaves, f"leaf {index} out of range 0..{count - 1} (committed count {count})"
            if index in leaves:
                return leaves, f"leaf {index} opened twice"
            if not isinstance(leaf, (bytes, bytearray)):
                return leaves, f"leaf {index}: leaf must be bytes, got {type(leaf).__name__}"
            try:
                nonce, vector = decode_leaf(leaf, dim)
            except MerkleError as err:
                return leaves, f"leaf {index}: wrong size ({err})"
            if not isinstance(proof, (list, tuple)):
                return leaves, f"leaf {index}: malformed proof (must be a list of {HASH_BYTES}-byte hashes)"
            if not verify_proof(leaf, index, count, proof, commitment.root):
                return leaves, f"leaf {index}: Merkle proof does not verify against the committed root and count"
            if nonce > MAX_NONCE:
                return leaves, f"leaf {index}: nonce {nonce} out of range 0..{MAX_NONCE}"
            if not np.all(np.isfinite(vector)):
                return leaves, f"leaf {index}: vector has NaN or infinite values"
            leaves[index] = (nonce, vector)
    except Exception as err:  # noqa: BLE001 - an untrusted object may raise anything; never crash
        return leaves, f"malformed answer: {type(err).__name__}: {err}"
    missing = [i for i in requested if i not in leaves]
    if missing:
        return leaves, f"missing opening for leaf {missing[0]} ({len(missing)} of {len(requested)} missing)"
    ordered = sorted(leaves)
    for a, b in zip(ordered, ordered[1:]):
        if leaves[a][0] == leaves[b][0]:
            return leaves, f"duplicated nonce {leaves[a][0]} at leaves {a} and {b}"
        if leaves[a][0] > leaves[b][0]:
            return leaves, f"nonces not increasing along the tree: leaf {a} has {leaves[a][0]}, leaf {b} has {leaves[b][0]}"
    return leaves, None


def vector_distances(committed: np.ndarray, recomputed: np.ndarray) -> np.ndarray:
    """L2 distance per row, in float32 (vectors are stored as float16)."""
    a = np.asarray(committed, dtype=np.float32)
    b = np.asarray(recomputed, dtype=np.float32)
    return np.linalg.norm(a - b, axis=1)


def binomial_verdict(distances: np.ndarray, params: PocParams, count: int) -> Verdict:
    """Mismatches over the threshold, then reject if the rate is significantly above the allowed one."""
    d = np.asarray(distances, dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return Verdict(True, 0, 0, 1.0, "empty commitment (count 0)", count)
    mism = int(np.sum(~(d <= params.distance_threshold)))  # NaN counts as a mismatch
    p = float(binomtest(mism, n, params.allowed_mismatch_rate, alternative="greater").pvalue)
    accepted = p >= params.p_value
    what = "accepted" if accepted else "rejected"
    reason = (f"{what}: {mism}/{n} mismatches over distance {params.distance_threshold:g} "
              f"(binomial p={p:.3g} against rate {params.allowed_mismatch_rate:g}, reject below {params.p_value:g})")
    return Verdict(accepted, mism, n, p, reason, count, tuple(float(x) for x in d))


def rejected(reason: str, sampled: int, count: int) -> Verdict:
    return Verdict(False, 0, int(sampled), 0.0, reason, int(count))


def validate(commitment: Any, answer: Callable[[list[int]], Any],
             recompute: Callable[[list[int]], np.ndarray], params: PocParams,
             rng: np.random.Generator) -> Verdict:
    """One validator's full check of one participant.

    `answer(indices)` is the participant's reply (its openings); `recompute(nonces)` is the
    validator's own PoC forward for those nonces (float16, (n, dim)).
    """
    reason = check_commitment(commitment)
    if reason:
        return rejected(reason, 0, getattr(commitment, "count", 0) if isinstance(getattr(commitment, "count", 0), int) else 0)
    count = int(commitment.count)
    sampled = sample_indices(count, params.samples, rng)
    if sampled.size == 0:
        return binomial_verdict(np.zeros(0), params, count)
    requested = requested_indices(sampled, count)
    try:
        openings = answer(requested)
    except Exception as err:  # noqa: BLE001 - a participant that cannot answer is rejected, not fatal
        return rejected(f"no answer to the sample: {type(err).__name__}: {err}", sampled.size, count)
    leaves, reason = check_openings(commitment, requested, openings, params.vector_dim)
    if reason:
        return rejected(reason, sampled.size, count)
    nonces = [leaves[int(i)][0] for i in sampled]
    committed = np.stack([leaves[int(i)][1] for i in sampled])
    mine = np.asarray(recompute(nonces))
    if mine.shape != committed.shape:
        raise ValueError(f"recompute returned shape {mine.shape}, expected {committed.shape}")
    return binomial_verdict(vector_distances(committed, mine), params, count)
