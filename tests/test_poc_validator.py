"""The PoC validator: honest answers pass, every malformed answer is rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from sim.poc import Commitment, Opening, PocParams, Submission, validate
from sim.poc.merkle import MerkleTree, encode_leaf
from sim.poc.strategies import LeafPlan
from sim.poc.validator import binomial_verdict, requested_indices, sample_indices

DIM = 12
PARAMS = PocParams(samples=40, distance_threshold=0.05)


def unit(n, seed=0):
    z = np.random.default_rng(seed).standard_normal((n, DIM))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float16)


def honest(n=100, seed=0):
    vectors = unit(n, seed)
    plan = LeafPlan(np.arange(n, dtype=np.int64) * 2, np.zeros(n, dtype=bool), n)
    sub = Submission.build(plan, vectors)
    table = dict(zip(plan.nonces.tolist(), vectors))
    return sub, (lambda nonces: np.stack([table[n] for n in nonces]))


def run(commitment, answer, recompute, params=PARAMS, seed=1):
    return validate(commitment, answer, recompute, params, np.random.default_rng(seed))


def test_honest_is_accepted_with_zero_mismatches():
    sub, recompute = honest()
    v = run(sub.commitment, sub.answer, recompute)
    assert v.accepted and v.mismatches == 0 and v.sampled == 40 and v.p_value == 1.0
    assert v.count == 100


def test_wrong_vectors_are_rejected_by_the_binomial_test():
    sub, recompute = honest()
    v = run(sub.commitment, sub.answer, lambda nonces: unit(len(nonces), seed=99))
    assert not v.accepted and v.mismatches > 30 and v.p_value < 0.05
    assert "rejected" in v.reason and "mismatches" in v.reason


def test_small_noise_under_threshold_is_accepted():
    sub, recompute = honest()
    noisy = lambda nonces: (recompute(nonces).astype(np.float32) + 0.002).astype(np.float16)  # noqa: E731
    assert run(sub.commitment, sub.answer, noisy).accepted


@pytest.mark.parametrize("mism,n", [(20, 200), (30, 200), (31, 200), (0, 10), (5, 10)])
def test_binomial_verdict_matches_scipy(mism, n):
    d = np.r_[np.ones(mism), np.zeros(n - mism)]
    v = binomial_verdict(d, PocParams(), count=1000)
    p = binomtest(mism, n, 0.1, alternative="greater").pvalue
    assert v.mismatches == mism and v.p_value == pytest.approx(p)
    assert v.accepted == (p >= 0.05)


def test_nan_distance_counts_as_mismatch():
    v = binomial_verdict(np.array([np.nan] * 10), PocParams(), count=10)
    assert v.mismatches == 10 and not v.accepted


def test_empty_commitment_is_accepted_with_zero_samples():
    tree = MerkleTree([])
    v = run(Commitment(tree.root, 0), lambda idx: [], lambda n: np.zeros((0, DIM)))
    assert v.accepted and v.sampled == 0


def _answer_with(sub, edit):
    def answer(indices):
        return edit(sub.answer(indices))
    return answer


def _replace_leaf(ops, i, leaf):
    return [Opening(o.index, leaf, o.proof) if k == i else o for k, o in enumerate(ops)]


BAD_ANSWERS = {
    "not a list": (lambda ops: "garbage", "must be a list"),
    "missing": (lambda ops: ops[1:], "missing opening"),
    "out of range": (lambda ops: [*ops, Opening(10**6, ops[0].leaf, ops[0].proof)], "out of range"),
    "negative": (lambda ops: [Opening(-1, ops[0].leaf, ops[0].proof), *ops[1:]], "out of range"),
    "opened twice": (lambda ops: [*ops, ops[0]], "opened twice"),
    "index not int": (lambda ops: [Opening("3", ops[0].leaf, ops[0].proof), *ops[1:]], "index must be an integer"),
    "short proof": (lambda ops: [Opening(ops[0].index, ops[0].leaf, ops[0].proof[:-1]), *ops[1:]], "Merkle proof"),
    "proof not list": (lambda ops: [Opening(ops[0].index, ops[0].leaf, None), *ops[1:]], "malformed proof"),
    "wrong-size vector": (lambda ops: _replace_leaf(ops, 0, ops[0].leaf + b"\x00\x00"), "wrong size"),
    "leaf not bytes": (lambda ops: _replace_leaf(ops, 0, [1, 2, 3]), "leaf must be bytes"),
    "dict without keys": (lambda ops: [{}], "index must be an integer"),
    "objects": (lambda ops: [object()], "index must be an integer"),
    "tampered vector": (lambda ops: _replace_leaf(ops, 0, ops[0].leaf[:8] + bytes(24)), "Merkle proof"),
}


@pytest.mark.parametrize("name", list(BAD_ANSWERS))
def test_malformed_answers_are_rejected_with_a_reason(name):
    sub, recompute = honest()
    edit, needle = BAD_ANSWERS[name]
    v = run(sub.commitment, _answer_with(sub, edit), recompute)
    assert not v.accepted
    assert needle in v.reason


def test_answer_that_raises_is_rejected():
    sub, recompute = honest()

    def answer(indices):
        raise RuntimeError("disk on fire")

    v = run(sub.commitment, answer, recompute)
    assert not v.accepted and "no answer" in v.reason and "disk on fire" in v.reason


def test_nan_vector_is_rejected():
    n = 30
    vec = unit(n)
    vec[7] = np.nan
    plan = LeafPlan(np.arange(n, dtype=np.int64), np.zeros(n, dtype=bool), n)
    sub = Submission.build(plan, vec)
    v = run(sub.commitment, sub.answer, lambda nonces: unit(n)[nonces], PocParams(samples=n))
    assert not v.accepted and "NaN" in v.reason


def test_count_larger_than_tree_is_rejected():
    sub, recompute = honest(50)
    inflated = Commitment(sub.commitment.root, 80)
    v = run(inflated, sub.answer, recompute)
    assert not v.accepted
    assert "missing opening" in v.reason or "Merkle proof" in v.reason


def test_duplicated_nonces_are_rejected():
    n = 60
    nonces = np.repeat(np.arange(n // 2, dtype=np.int64), 2)
    vec = np.repeat(unit(n // 2), 2, axis=0)
    sub = Submission.build(LeafPlan(nonces, np.zeros(n, dtype=bool), n), vec)
    v = run(sub.commitment, sub.answer, lambda ns: unit(n // 2)[ns])
    assert not v.accepted and "duplicated nonce" in v.reason


def test_decreasing_nonces_are_rejected():
    n = 40
    nonces = np.arange(n, dtype=np.int64)[::-1].copy()
    sub = Submission.build(LeafPlan(nonces, np.zeros(n, dtype=bool), n), unit(n))
    v = run(sub.commitment, sub.answer, lambda ns: unit(n)[ns])
    assert not v.accepted and "not increasing" in v.reason


@pytest.mark.parametrize("commitment", [Commitment(b"short", 5), Commitment(b"\x00" * 32, -1),
                                        Commitment(b"\x00" * 32, "5"), object()])
def test_malformed_commitment_is_rejected(commitment):
    v = run(commitment, lambda idx: [], lambda n: np.zeros((len(n), DIM)))
    assert not v.accepted and "malformed commitment" in v.reason


junk = st.one_of(st.none(), st.integers(-5, 10**6), st.binary(max_size=40), st.text(max_size=5),
                 st.lists(st.binary(min_size=32, max_size=32), max_size=8), st.floats())
opening_like = st.one_of(
    st.builds(Opening, index=st.one_of(st.integers(-2, 120), junk), leaf=junk, proof=junk),
    st.dictionaries(st.sampled_from(["index", "leaf", "proof"]), junk, max_size=3),
    junk,
)


@given(st.one_of(st.lists(opening_like, max_size=6), junk))
@settings(max_examples=150, deadline=None)
def test_fuzzed_answers_never_crash_the_validator(answer):
    sub, recompute = honest(100)
    v = run(sub.commitment, lambda idx: answer, recompute)
    assert not v.accepted and v.reason


@given(st.integers(1, 10**12), st.integers(1, 300), st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_sample_indices_are_distinct_sorted_in_range(count, k, seed):
    idx = sample_indices(count, k, np.random.default_rng(seed))
    assert len(idx) == min(k, count)
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < count
    req = requested_indices(idx, count)
    assert set(idx.tolist()) <= set(req) and max(req) < count
