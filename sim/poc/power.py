"""Detection power of the PoC validation, exactly, from measured mismatch rates.

With `n` sampled leaves and a per-leaf mismatch probability `q`, the validator's binomial test
rejects when the mismatches reach `m*(n)`, the smallest `m` with
`binomtest(m, n, allowed_rate, alternative="greater").pvalue < p_value`. So

    P(reject) = P(Binomial(n, q) >= m*(n))

(scipy.stats.binom.sf). The per-leaf `q` of a strategy comes from a measurement: the share of its
measured distances above the threshold, mixed over the leaves it computes, makes up or copies.
Structural cheats are caught without recomputation: `inflate:X` whenever a sampled index falls
beyond the real tree (at least `1 - (1/X)^n`, sampling without replacement makes it a little
higher; proofs near the tree's end fail too), `duplicate:K` whenever a sampled leaf and its right
neighbour repeat a nonce (`1 - (1/K)^n`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binom, binomtest

from sim.poc.measure import Measurement
from sim.poc.params import PocParams
from sim.poc.strategies import (
    COPIED, FABRICATED, WRONG_EXPERT, CopyFrom, DuplicateNonces, Fabricate, InflateCount, parse_strategy,
)

DEFAULT_CHEATS = ("honest", "fp8", "int4", "one-expert:high", "fabricate:0.5", "fabricate:0.2",
                  "fabricate:0.05", "copy:other", "inflate:1.1", "inflate:1.01", "duplicate:2")
DEFAULT_SAMPLE_SIZES = (10, 20, 50, 100, 200, 400)


@functools.lru_cache(maxsize=4096)
def critical_mismatches(n: int, allowed_rate: float, p_value: float) -> int:
    """Smallest mismatch count the binomial test rejects at n samples (n + 1 if none)."""
    for m in range(n + 1):
        if binomtest(m, n, allowed_rate, alternative="greater").pvalue < p_value:
            return m
    return n + 1


def rejection_probability(q: float, n: int, params: PocParams) -> float:
    m = critical_mismatches(int(n), params.allowed_mismatch_rate, params.p_value)
    return float(binom.sf(m - 1, n, q)) if m <= n else 0.0


def leaf_mismatch_rate(spec: str, measurement: Measurement, params: PocParams) -> float | None:
    """Per-leaf mismatch probability of a strategy (None for the structural cheats)."""
    s = parse_strategy(spec)
    thr = params.distance_threshold
    honest = measurement.rate(params.honest_condition, thr)
    if isinstance(s, (InflateCount, DuplicateNonces)):
        return None
    if isinstance(s, CopyFrom):
        return measurement.rate(COPIED, thr)
    if isinstance(s, Fabricate):
        return s.fraction * measurement.rate(FABRICATED, thr) + (1 - s.fraction) * honest
    if s.weights:
        return measurement.rate(s.weights, thr)
    if s.held_expert:
        return 0.5 * measurement.rate(WRONG_EXPERT, thr) + 0.5 * honest
    return honest


def detection_probability(spec: str, n: int, measurement: Measurement, params: PocParams) -> float:
    """P(the validator rejects) for a strategy at n samples."""
    s = parse_strategy(spec)
    if isinstance(s, InflateCount):
        return float(1.0 - (1.0 / s.factor) ** n)
    if isinstance(s, DuplicateNonces):
        return float(1.0 - (1.0 / s.k) ** n)
    return rejection_probability(leaf_mismatch_rate(spec, measurement, params), n, params)


def power_table(measurement: Measurement, params: PocParams, *, cheats: Sequence[str] = DEFAULT_CHEATS,
                sample_sizes: Sequence[int] = DEFAULT_SAMPLE_SIZES,
                thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Tidy rows: strategy, threshold, samples, per-leaf mismatch rate, P(reject)."""
    rows = []
    for thr in thresholds or (params.distance_threshold,):
        p = params.model_copy(update={"distance_threshold": float(thr)})
        for spec in cheats:
            q = leaf_mismatch_rate(spec, measurement, p)
            for n in sample_sizes:
                rows.append({"strategy": spec, "threshold": float(thr), "samples": int(n),
                             "leaf_mismatch_rate": q if q is None else float(q),
                             "p_reject": detection_probability(spec, int(n), measurement, p)})
    return rows


def expected_gain(spec: str, n: int, measurement: Measurement, params: PocParams) -> float:
    """Expected weight relative to honest work on the same hardware (1.0 = no gain, < 1 = a loss)."""
    s = parse_strategy(spec)
    claimed = 1.0
    if isinstance(s, Fabricate):
        claimed = 1.0 / (1.0 - s.fraction)
    elif isinstance(s, InflateCount):
        claimed = s.factor
    elif isinstance(s, DuplicateNonces):
        claimed = float(s.k)
    honest_accept = 1.0 - detection_probability("honest", n, measurement, params)
    return float(claimed * (1.0 - detection_probability(spec, n, measurement, params)) / max(honest_accept, 1e-12))


def empirical_rejection_rate(spec: str, n: int, params: PocParams, *, capacity: int = 2000, trials: int = 200,
                             seed: int = 0) -> float:
    """The same probability by running surrogate stages (a check of the formulas above)."""
    from sim.poc.stage import PocParticipant, run_poc_stage

    p = params.model_copy(update={"samples": int(n)})
    parts = [PocParticipant(f"c{i}", f"key-{seed}-{i}", capacity, spec if not spec.startswith("copy") else "honest")
             for i in range(trials)]
    if spec.startswith("copy"):
        parts = [PocParticipant("src", f"key-{seed}-src", capacity, "honest")] + [
            PocParticipant(f"c{i}", f"key-{seed}-{i}", capacity, "copy:src") for i in range(trials)]
    r = run_poc_stage(parts, block_hash=f"power-{seed}", params=p, fidelity="surrogate", seed=seed)
    rej = [not r.verdicts[x.id].accepted for x in parts if x.id != "src"]
    return float(np.mean(rej))
