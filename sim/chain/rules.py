"""Gonka's per-inference and per-epoch formulas as pure functions (facts.md section 2).

Used both by the chain (sim/chain/apply.py) and by the agents that must predict them
(validators deciding what to check, the economics model)."""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Sequence

import numpy as np

from sim.chain.params import ChainParams

TWO_64 = float(2**64)


def min_validation_average(requests_per_epoch: int, p: ChainParams) -> float:
    """MinAvg(traffic): 1.0 below the low cutoff, MinValidationHalfway at half the full cutoff,
    MinValidationAverage at and above the full cutoff; piecewise linear in between (Gonka)."""
    lo, full = p.min_validation_traffic_cutoff, p.full_validation_traffic_cutoff
    half = full / 2
    xs = [lo, max(half, lo + 1e-9), full]
    ys = [1.0, p.min_validation_halfway, p.min_validation_average]
    return float(np.interp(requests_per_epoch, xs, ys, left=1.0, right=p.min_validation_average))


def target_validators(reputation: int, requests_per_epoch: int, p: ChainParams) -> float:
    """Expected validators per inference: MaxAvg - (MaxAvg - MinAvg(traffic)) x reputation/100,
    times the protocol's `validation_rate_multiplier` (1.0 in Gonka)."""
    max_avg = p.max_validation_average
    target = max_avg - (max_avg - min_validation_average(requests_per_epoch, p)) * (reputation / 100.0)
    return target * p.validation_rate_multiplier


def validation_probability(target: float | np.ndarray, validator_power: float, total_power: float,
                           executor_power: float | np.ndarray) -> np.ndarray:
    """P(a validator checks) = min(1, target x validatorPower / (totalPower - executorPower))."""
    others = np.maximum(np.asarray(total_power, dtype=float) - np.asarray(executor_power, dtype=float), 1e-300)
    return np.minimum(1.0, np.asarray(target, dtype=float) * validator_power / others)


def seed_draws(seed: int, inference_ids: Sequence[str]) -> np.ndarray:
    """Uniforms SHA256("seed:inferenceId")[:8] / 2^64 (big-endian), Gonka's draw with a secret seed."""
    prefix = f"{seed}:".encode()
    sha = hashlib.sha256
    out = np.fromiter((int.from_bytes(sha(prefix + i.encode()).digest()[:8], "big") for i in inference_ids),
                      dtype=np.uint64, count=len(inference_ids))
    return out.astype(np.float64) / TWO_64


def reputation(epochs_completed: int, p: ChainParams) -> int:
    """floor(100 x epochs_completed_minus_penalties / EpochsToMax), clamped to 0..100."""
    return int(min(100, max(0, math.floor(100 * epochs_completed / p.epochs_to_max_reputation))))


def sprt_increments(p: ChainParams) -> tuple[float, float]:
    """Log-likelihood-ratio change for an invalidated and for a passed checked inference."""
    return math.log(p.sprt_p1 / p.sprt_p0), math.log((1 - p.sprt_p1) / (1 - p.sprt_p0))


def sprt_update(llr: float, invalidated: bool, p: ChainParams) -> tuple[float, bool]:
    """One step of the SPRT on invalidation counts; returns (new llr, reached INVALID)."""
    up, down = sprt_increments(p)
    llr += up if invalidated else down
    if llr >= p.sprt_llr_threshold:
        return llr, True
    if p.sprt_restart_on_accept and llr <= -p.sprt_llr_threshold:
        llr = 0.0
    return llr, False


def committee(inference_id: str, candidates: Iterable[str], size: int, exclude: Iterable[str] = ()) -> list[str]:
    """The voters asked about a failed validation: the `size` candidates with the smallest
    SHA256("vote:inferenceId:candidate"), excluding the executor and the reporter (deterministic,
    so every node computes the same committee)."""
    ex = set(exclude)
    ranked = sorted((hashlib.sha256(f"vote:{inference_id}:{c}".encode()).digest(), c) for c in candidates if c not in ex)
    return [c for _, c in ranked[:size]]
