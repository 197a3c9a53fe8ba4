"""Gonka's per-inference and per-epoch calculations, ported with Gonka's decimal arithmetic.

Gonka (gonka-ai/gonka, `inference-chain/x/inference/calculations/` and `keeper/`) computes these
with github.com/shopspring/decimal. The port keeps its semantics exactly, with Python's `decimal`:

- `decimal.NewFromFloat(x)` / `types.DecimalFromFloat(x)`: the shortest decimal that round-trips
  the float (`dec(x)` = `Decimal(repr(x))`: 0.05 is exactly 0.05, not 0.05000000000000000277);
- `a.Div(b)`: `DivRound(b, 16)`, the exact quotient rounded half away from zero to 16 decimal
  places (`div16`); `Add`, `Sub`, `Mul` are exact (`Decimal` with an unbounded context);
- `Truncate(2)`, `IntPart()`: truncation toward zero; `Round(0)`: half away from zero;
- `Ln(12)`: the natural log rounded to 12 places (`LogPrecision`; the SPRT increments), so the
  SPRT's log-likelihood ratio is an exact multiple of 1e-12 and is stored as an integer
  (`*_llr_e12` columns).

Where a decision is taken on millions of (validator, inference) pairs (`should_validate`), a
vectorised float computation decides every pair whose float margin exceeds `FLOAT_MARGIN`, and the
exact decimal computation decides the rest: the float error of the sampling probability and of the
draw is below 1e-14 (a few ulp of numbers <= 1), so the two agree on every pair (a property test
checks it on random inputs, `tests/test_chain_rules.py`).

Also used by the agents that must predict the chain (validators deciding what to check, the
economics model)."""

from __future__ import annotations

import functools
import hashlib
import math
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Iterable, Sequence

import numpy as np

from sim.chain.params import ChainParams

MAX_UINT64 = 2**64 - 1
_MAX_UINT64_F = float(MAX_UINT64)
LOG_PRECISION = 12  # Gonka calculations/status.go LogPrecision
DIVISION_PRECISION = 16  # shopspring decimal.DivisionPrecision
FLOAT_MARGIN = 1e-9  # float decisions closer than this to the boundary are re-decided exactly
ONE = Decimal(1)
ZERO = Decimal(0)
HUNDRED = Decimal(100)
_EXACT = Context(prec=200)  # wide enough that Add/Sub/Mul of the chain's numbers are exact

# Status reasons (Gonka calculations/status.go ParticipantStatusReason)
CONSECUTIVE_FAILURES = "consecutive_failures"
STATISTICAL_INVALIDATIONS = "statistical_invalidations"
DOWNTIME = "downtime"
FAILED_CONFIRMATION_POC = "failed_confirmation_poc"
ALGORITHM_ERROR = "algorithm_error"
ALREADY_SET = "already_set"
NO_REASON = ""

# Status check scopes (Gonka StatusCheckScope; 0 runs all)
ONLY_CONSECUTIVE_FAILURES, ONLY_INVALIDATION, ONLY_INACTIVE, ONLY_CONFIRMATION_POC = 1, 2, 4, 8
RUN_ALL = 0
SCOPE_INVALIDATION = ONLY_CONSECUTIVE_FAILURES | ONLY_INVALIDATION  # Gonka ScopeFromReason(Invalidation)
SCOPE_MISSED_INFERENCE = ONLY_INACTIVE  # ScopeFromReason(MissedInference)
SCOPE_CONFIRMATION_POC = ONLY_CONFIRMATION_POC  # ScopeFromReason(ConfirmationPoC)

# SPRT decisions (Gonka calculations/sprt.go)
UNDETERMINED, PASS, FAIL, ERROR = "undetermined", "pass", "fail", "error"


# ---------------------------------------------------------------------------------------------
# shopspring semantics


@functools.lru_cache(maxsize=1024)
def dec(x: float | int | str) -> Decimal:
    """decimal.NewFromFloat / types.DecimalFromFloat: the shortest decimal of a float; ints exact."""
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"not a finite number: {x}")
        return Decimal(repr(x))
    return Decimal(x)


def _int_exp(x: Decimal | int) -> tuple[int, int]:
    """x = m x 10^e with integers m, e."""
    if isinstance(x, int):
        return x, 0
    sign, digits, exp = x.as_tuple()
    m = int("".join(map(str, digits))) if digits else 0
    return (-m if sign else m), int(exp)


def div16(a: Decimal | int, b: Decimal | int) -> Decimal:
    """shopspring `a.Div(b)` = DivRound(b, 16): exact quotient, half away from zero, 16 places."""
    ma, ea = _int_exp(a)
    mb, eb = _int_exp(b)
    if mb == 0:
        raise ZeroDivisionError("decimal division by zero")
    shift = ea - eb + DIVISION_PRECISION  # a/b x 10^16 = (ma/mb) x 10^shift
    num, den = abs(ma), abs(mb)
    if shift >= 0:
        num *= 10**shift
    else:
        den *= 10**-shift
    i, r = divmod(num, den)
    if 2 * r >= den:
        i += 1
    return Decimal(-i if (ma < 0) != (mb < 0) else i).scaleb(-DIVISION_PRECISION)


def truncate(x: Decimal, places: int) -> Decimal:
    return x.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN, context=_EXACT)


def int_part(x: Decimal) -> int:
    """shopspring IntPart: the integer part, truncated toward zero."""
    return int(x.to_integral_value(rounding=ROUND_DOWN))


def round0(x: Decimal) -> int:
    """shopspring Round(0): half away from zero."""
    return int(x.to_integral_value(rounding=ROUND_HALF_UP))


def ln12(x: Decimal) -> Decimal:
    """shopspring Ln(12): natural log rounded to 12 places (ties cannot occur for x != 1)."""
    with localcontext(Context(prec=60)):
        v = x.ln()
    return v.quantize(Decimal(1).scaleb(-LOG_PRECISION), rounding=ROUND_HALF_EVEN, context=_EXACT)


def go_string(x: Decimal) -> str:
    """shopspring String(): plain notation without trailing zeros."""
    s = format(x.normalize(_EXACT), "f")
    return "0" if s in ("-0", "") else s


# ---------------------------------------------------------------------------------------------
# Validation sampling (calculations/should_validate.go, min_validation_average.go)


def _sampling_key(p: ChainParams) -> tuple:
    return (p.full_validation_traffic_cutoff, p.min_validation_traffic_cutoff, p.max_validation_average,
            p.min_validation_halfway, p.min_validation_average, p.validation_rate_multiplier)


def min_validation_average_exact(recent_request_count: int, p: ChainParams) -> Decimal:
    return _min_validation_average(int(recent_request_count), *_sampling_key(p)[:5])


@functools.lru_cache(maxsize=65536)
def _min_validation_average(recent_request_count: int, full: int, low: int, max_average: float, halfway_average: float,
                            min_average: float) -> Decimal:
    """Gonka CalculateMinimumValidationAverage: MinValidationAverage at >= the full cutoff; linear
    between MinValidationHalfway and MinValidationAverage above half the full cutoff; linear between
    MaxValidationAverage and MinValidationHalfway between the low cutoff and half the full cutoff;
    MaxValidationAverage at or below the low cutoff. Half the cutoff is an integer division."""
    if recent_request_count >= full:
        return dec(min_average)
    halfway = full // 2
    if recent_request_count >= halfway:
        remaining = div16(full - recent_request_count, halfway)
        return (dec(halfway_average) - dec(min_average)) * remaining + dec(min_average)
    if recent_request_count > low:  # only reachable when halfway > low: no division by zero
        to_min = div16(halfway - recent_request_count, halfway - low)
        # Gonka subtracts the two floats before converting (NewFromFloat(max - halfway))
        return dec(halfway_average) + dec(max_average - halfway_average) * to_min
    return dec(max_average)


def min_validation_average(requests_per_epoch: int, p: ChainParams) -> float:
    return float(min_validation_average_exact(int(requests_per_epoch), p))


def target_validators_exact(reputation: int, traffic: int, p: ChainParams) -> Decimal:
    """MaxAvg - (MaxAvg - MinAvg(traffic)) x reputation/100 (reputation 0..100 as New(rep, -2)),
    times the project's `validation_rate_multiplier` (1.0 = Gonka)."""
    return _target(int(reputation), int(traffic), *_sampling_key(p))


@functools.lru_cache(maxsize=65536)
def _target(reputation: int, traffic: int, full: int, low: int, max_average: float, halfway_average: float,
            min_average: float, multiplier: float) -> Decimal:
    max_avg = dec(max_average)
    mva = _min_validation_average(traffic, full, low, max_average, halfway_average, min_average)
    target = max_avg - (max_avg - mva) * Decimal(reputation).scaleb(-2)
    return target if multiplier == 1.0 else target * dec(multiplier)


def _target_float(reputation, traffic, key: tuple):
    """Float view of `_target` (scalars or numpy arrays), the same formula in binary floating point:
    within a few ulp of the exact value (the exact path decides near the boundary)."""
    full, low, max_average, halfway_average, min_average, multiplier = key
    halfway = full // 2
    if isinstance(traffic, int) and isinstance(reputation, int):
        if traffic >= full:
            mva = min_average
        elif traffic >= halfway:
            mva = (halfway_average - min_average) * ((full - traffic) / halfway) + min_average
        elif traffic > low:
            mva = halfway_average + (max_average - halfway_average) * ((halfway - traffic) / (halfway - low))
        else:
            mva = max_average
        return (max_average - (max_average - mva) * (reputation / 100.0)) * multiplier
    traffic = np.asarray(traffic, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = (halfway_average - min_average) * ((full - traffic) / halfway) + min_average if halfway else 0.0
        lower = halfway_average + (max_average - halfway_average) * ((halfway - traffic) / (halfway - low)) \
            if halfway != low else 0.0
    mva = np.where(traffic >= full, min_average, np.where(traffic >= halfway, upper,
                                                          np.where(traffic > low, lower, max_average)))
    target = (max_average - (max_average - mva) * (np.asarray(reputation, dtype=float) / 100.0)) * multiplier
    return float(target) if target.ndim == 0 else target


def target_validators(reputation, requests_per_epoch, p: ChainParams):
    """Expected validators per inference (float view of `target_validators_exact`; scalars or arrays)."""
    return _target_float(reputation, requests_per_epoch, _sampling_key(p))


def probability_exact(target: Decimal, validator_power: int, total_power: int, executor_power: int) -> Decimal:
    """min(1, target x validatorPower / (totalPower - executorPower)); 0 when total <= executor."""
    if total_power <= executor_power:
        return ZERO
    return min(ONE, div16(target * validator_power, total_power - executor_power))


def validation_probability(target: float | np.ndarray, validator_power: float, total_power: float,
                           executor_power: float | np.ndarray) -> np.ndarray:
    """Float view of `probability_exact`, vectorised: 0 where total <= executor (Gonka's guard)."""
    others = np.asarray(total_power, dtype=float) - np.asarray(executor_power, dtype=float)
    num = np.asarray(target, dtype=float) * validator_power
    num, others = np.broadcast_arrays(num, others)
    prob = np.divide(num, others, out=np.zeros(num.shape), where=others > 0)
    return np.minimum(1.0, prob)


def seed_hashes(seed: int, inference_ids: Sequence[str]) -> np.ndarray:
    """uint64 of SHA256("seed:inferenceId")[:8], big-endian (Gonka DeterministicFloat's input)."""
    prefix = f"{int(seed)}:".encode()
    sha = hashlib.sha256
    return np.fromiter((int.from_bytes(sha(prefix + i.encode()).digest()[:8], "big") for i in inference_ids),
                       dtype=np.uint64, count=len(inference_ids))


def seed_draws(seed: int, inference_ids: Sequence[str]) -> np.ndarray:
    """Float view of Gonka's draws: hash / (2^64 - 1) (error < 3e-16 against the decimal)."""
    return seed_hashes(seed, inference_ids).astype(np.float64) / _MAX_UINT64_F


def deterministic_float(seed: int, identifier: str) -> Decimal:
    """Gonka DeterministicFloat: SHA256("seed:identifier")[:8] as uint64, Div (2^64 - 1)."""
    h = int.from_bytes(hashlib.sha256(f"{int(seed)}:{identifier}".encode()).digest()[:8], "big")
    return div16(h, MAX_UINT64)


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix_draws(seed: int, numbers: np.ndarray) -> np.ndarray:
    """Vectorised SplitMix64 of (seed, inference number) -> uniforms in [0, 1) (multiples of 2^-53)."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + numbers.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def splitmix_draw(seed: int, number: int) -> float:
    """`splitmix_draws` of one number, in Python integers (the same float)."""
    m = 0xFFFFFFFFFFFFFFFF
    z = ((seed & m) + (number & m) * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return (z >> 11) / float(2**53)


def inference_number(inference_id: str) -> int:
    """The number of an inference id for the SplitMix64 draw: the digits after its last '-'."""
    tail = inference_id.rsplit("-", 1)[-1]
    return int(tail) % 2**64 if tail.isdigit() else int.from_bytes(hashlib.sha256(inference_id.encode()).digest()[:8],
                                                                   "big")


def draw_exact(seed: int, inference_id: str, draw: str = "sha256") -> Decimal:
    """The draw as an exact decimal: Gonka's DeterministicFloat, or the SplitMix64 uniform."""
    if draw == "sha256":
        return deterministic_float(seed, inference_id)
    u = splitmix_draws(seed, np.array([inference_number(inference_id)], dtype=np.uint64))[0]
    return Decimal(float(u))  # exact: a multiple of 2^-53


def should_validate_exact(seed: int, inference_id: str, traffic_basis: int, reputation: int, total_power: int,
                          validator_power: int, executor_power: int, p: ChainParams, draw: str | None = None) -> bool:
    """Gonka ShouldValidate, exactly: DeterministicFloat(seed, id) < probability."""
    if total_power <= executor_power:
        return False
    prob = probability_exact(target_validators_exact(reputation, traffic_basis, p), validator_power, total_power,
                             executor_power)
    return draw_exact(seed, inference_id, draw or p.sampling_draw) < prob


def decide(u: np.ndarray, prob: np.ndarray, exact) -> np.ndarray:
    """u < prob decided in floats where |u - prob| > FLOAT_MARGIN, else by `exact(index)`."""
    out = u < prob
    close = np.nonzero(np.abs(u - prob) <= FLOAT_MARGIN)[0]
    for k in close.tolist():
        out[k] = bool(exact(k))
    return out


def should_validate(seed: int, inference_id: str, traffic_basis: int, reputation: int, total_power: int,
                    validator_power: int, executor_power: int, p: ChainParams) -> bool:
    """`should_validate_exact`, decided in floats when the margin allows (same outcome, faster)."""
    if total_power <= executor_power:
        return False
    target = _target_float(int(reputation), int(traffic_basis), _sampling_key(p))
    prob = min(1.0, target * validator_power / (total_power - executor_power))
    if p.sampling_draw == "sha256":
        u = int.from_bytes(hashlib.sha256(f"{int(seed)}:{inference_id}".encode()).digest()[:8], "big") / _MAX_UINT64_F
    else:
        u = splitmix_draw(seed, inference_number(inference_id))
    if abs(u - prob) > FLOAT_MARGIN:
        return u < prob
    return should_validate_exact(seed, inference_id, traffic_basis, reputation, total_power, validator_power,
                                 executor_power, p)


@functools.lru_cache(maxsize=4096)
def seed_commitment(seed: int) -> str:
    """What a validator commits at the start of an epoch: SHA-256 of its seed in base 10."""
    return hashlib.sha256(str(int(seed)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Reputation (calculations/reputation.go)


def epoch_miss_rate(inference_count: int, missed_requests: int) -> Decimal:
    """Gonka EpochMissRate: missed / inferences of one epoch (Div), zero without inferences."""
    return ZERO if inference_count == 0 else div16(missed_requests, inference_count)


def miss_sum_above_cutoff(miss_rates: Iterable[Decimal], cutoff: Decimal) -> Decimal:
    """Gonka MissSumAboveCutoff: the sum of the epoch miss rates above the cutoff."""
    return sum((m for m in miss_rates if m > cutoff), ZERO)


def reputation_from_miss_sum(epoch_count: int, miss_sum: Decimal, p: ChainParams) -> int:
    """Gonka CalculateReputationFromMissSum: epochs - missSum x (1/EpochsToMax) x penalty x EpochsToMax,
    over EpochsToMax truncated to 2 places, in percent (0..100)."""
    epochs_to_max = Decimal(p.epochs_to_max_reputation)
    cost = miss_sum * div16(1, epochs_to_max) * dec(p.miss_requests_penalty) * epochs_to_max
    actual = Decimal(epoch_count) - cost
    if actual > epochs_to_max:
        return 100
    if actual <= 0:
        return 0
    return int_part(truncate(div16(actual, epochs_to_max), 2) * HUNDRED)


def reputation(epochs_completed: int, p: ChainParams, miss_rates: Iterable[Decimal] = ()) -> int:
    """Gonka CalculateReputation (0..100) from the epochs completed and the epochs' miss rates."""
    return reputation_from_miss_sum(epochs_completed, miss_sum_above_cutoff(miss_rates, dec(p.miss_percentage_cutoff)),
                                    p)


def preserve(epochs_completed: int, fraction: float) -> int:
    """Gonka keeper `multiply`: round(epochs x preserve) half away from zero; unchanged outside 0..1."""
    f = dec(fraction)
    if f < 0 or f > 1:
        return epochs_completed
    return round0(Decimal(epochs_completed) * f)


# ---------------------------------------------------------------------------------------------
# SPRT (calculations/sprt.go) and status (calculations/status.go)


@functools.lru_cache(maxsize=64)
def sprt_log_increments_e12(p0: float, p1: float) -> tuple[int, int] | None:
    """(ln(P1/P0), ln((1-P1)/(1-P0))) at 12 places, as integers in units of 1e-12; None when P0 or
    P1 is outside (0, 1) (Gonka NewSPRT's error, which ComputeStatus reports as algorithm_error)."""
    d0, d1 = dec(p0), dec(p1)
    if not (ZERO < d0 < ONE and ZERO < d1 < ONE):
        return None
    log_fail = ln12(div16(d1, d0))
    log_pass = ln12(div16(ONE - d1, ONE - d0))
    return int(log_fail.scaleb(LOG_PRECISION)), int(log_pass.scaleb(LOG_PRECISION))


def sprt_increments(p: ChainParams) -> tuple[float, float]:
    """Invalidation-SPRT log-likelihood-ratio change for an invalidated and a validated inference."""
    inc = sprt_log_increments_e12(p.sprt_p0, p.sprt_p1)
    if inc is None:
        return 0.0, 0.0
    return inc[0] * 1e-12, inc[1] * 1e-12


@functools.lru_cache(maxsize=64)
def _h_e12(h: float) -> int:
    """ceil(H x 1e12): LLR >= H  <=>  llr_e12 >= this (llr_e12 an integer)."""
    return int((dec(h).scaleb(LOG_PRECISION)).to_integral_value(rounding=ROUND_CEILING))


def sprt_decision(llr_e12: int, h: float) -> str:
    """Gonka SPRT.Decision: Fail at LLR >= H, Pass at LLR <= -H, else undetermined (exact, on the
    integer LLR in units of 1e-12)."""
    bound = _h_e12(h)
    if llr_e12 >= bound:
        return FAIL
    if llr_e12 <= -bound:
        return PASS
    return UNDETERMINED


def sprt_step(llr_e12: int, failures: int, passes: int, p0: float, p1: float, h: float) -> tuple[int, str]:
    """Gonka UpdateCounts(failures, passes) then Decision; ERROR for P0/P1 outside (0, 1)."""
    inc = sprt_log_increments_e12(p0, p1)
    if inc is None:
        return llr_e12, ERROR
    if failures > 0 or passes > 0:
        llr_e12 += failures * inc[0] + passes * inc[1]
    return llr_e12, sprt_decision(llr_e12, h)


def sprt_update(llr: float, invalidated: bool, p: ChainParams) -> tuple[float, bool]:
    """One invalidation-SPRT step on a float LLR (for the economics model); (new llr, reached INVALID)."""
    e12, decision = sprt_step(int(round(llr * 1e12)), int(invalidated), int(not invalidated), p.sprt_p0, p.sprt_p1,
                              p.sprt_llr_threshold)
    if decision == PASS and p.sprt_restart_on_accept:
        e12 = 0
    return e12 * 1e-12, decision == FAIL


def probability_of_consecutive_failures(rate: float, consecutive: int) -> Decimal:
    """Gonka probabilityOfConsecutiveFailures: rate^N; 0 for a rate outside [0, 1] or N < 0."""
    r = dec(rate)
    if r < 0 or r > 1 or consecutive < 0:
        return ZERO
    if consecutive == 0:
        return ONE
    with localcontext(_EXACT):
        return r ** consecutive


@functools.lru_cache(maxsize=64)
def consecutive_cutoff(false_positive_rate: float, quick_failure_threshold: float) -> int | None:
    """The smallest N with rate^N < QuickFailureThreshold (INVALID at N consecutive invalidations);
    None when no N up to 10,000 qualifies (rate 1, or a threshold <= 0)."""
    cut = dec(quick_failure_threshold)
    for n in range(10_001):
        if probability_of_consecutive_failures(false_positive_rate, n) < cut:
            return n
    return None


def consecutive_limit(p: ChainParams) -> int | None:
    """Consecutive invalidations that make a participant INVALID (`invalid_consecutive` overrides)."""
    if p.invalid_consecutive is not None:
        return p.invalid_consecutive
    return consecutive_cutoff(p.sprt_p0, p.quick_failure_threshold)


_STATUS_RULES: dict[int, tuple] = {}


def _status_rules(p: ChainParams) -> tuple:
    """compute_status's parameters derived from `p` (frozen), memoised per object: (consecutive
    limit, the two SPRTs, confirmation-PoC alpha). The entry keeps `p`, so an id is never reused."""
    hit = _STATUS_RULES.get(id(p))
    if hit is not None and hit[0] is p:
        return hit[1]
    # (scope bit, LLR field, failures, passes, P0, P1, H, status on Fail, reason, restart on Pass, has increments)
    sprts = tuple(s + (sprt_log_increments_e12(s[4], s[5]) is not None,) for s in (
        (ONLY_INVALIDATION, "invalid_llr_e12", "invalidated_epoch", "validated_epoch", p.sprt_p0, p.sprt_p1,
         p.sprt_llr_threshold, "INVALID", STATISTICAL_INVALIDATIONS, p.sprt_restart_on_accept),
        (ONLY_INACTIVE, "inactive_llr_e12", "missed_requests", "inference_count", p.downtime_good_percentage,
         p.downtime_bad_percentage, p.downtime_h_threshold, "INACTIVE", DOWNTIME, False)))
    out = (consecutive_limit(p), sprts, dec(p.confirmation_poc_alpha_threshold))
    if len(_STATUS_RULES) > 64:
        _STATUS_RULES.clear()
    _STATUS_RULES[id(p)] = (p, out)
    return out


def compute_status(part: dict, old: dict, p: ChainParams, scope: int = RUN_ALL) -> tuple[str, str]:
    """Gonka ComputeStatus on a participant row (`part`, changed) and its epoch statistics before the
    change (`old`: inference_count, missed_requests, validated_epoch, invalidated_epoch). Updates the
    two LLRs in `part` and returns (status, reason). Checks, in Gonka's order: consecutive failures,
    the invalidation SPRT, the downtime SPRT, the confirmation-PoC ratio."""
    if part["status"] in ("INVALID", "INACTIVE"):
        return part["status"], ALREADY_SET
    limit, sprts, alpha = _status_rules(p)
    run_all = scope == RUN_ALL
    if run_all or scope & ONLY_CONSECUTIVE_FAILURES:
        if limit is not None and part["consecutive_invalid"] >= limit:
            return "INVALID", CONSECUTIVE_FAILURES
    for bit, llr_key, fail_key, pass_key, p0, p1, h, bad, reason, restart, has_inc in sprts:
        if not (run_all or scope & bit):
            continue
        if part[fail_key] == old[fail_key] and part[pass_key] == old[pass_key] and has_inc:
            continue  # no new counts: the decision on the stored LLR was taken when it last changed
        llr, decision = sprt_step(part[llr_key], part[fail_key] - old[fail_key], part[pass_key] - old[pass_key],
                                  p0, p1, h)
        part[llr_key] = 0 if decision == PASS and restart else llr
        if decision == FAIL:
            return bad, reason
        if decision == ERROR:
            return "ACTIVE", ALGORITHM_ERROR
    if run_all or scope & ONLY_CONFIRMATION_POC:
        ratio = part.get("confirmation_poc_ratio")
        if alpha != 0 and ratio not in (None, "") and Decimal(ratio) < alpha:
            return "INACTIVE", FAILED_CONFIRMATION_POC
    return "ACTIVE", NO_REASON


# ---------------------------------------------------------------------------------------------
# Vote committee (project rule)


def committee(inference_id: str, candidates: Iterable[str], size: int, exclude: Iterable[str] = ()) -> list[str]:
    """The voters asked about a failed validation: the `size` candidates with the smallest
    SHA256("vote:inferenceId:candidate"), excluding the executor and the reporter (deterministic,
    so every node computes the same committee)."""
    ex = set(exclude)
    ranked = sorted((hashlib.sha256(f"vote:{inference_id}:{c}".encode()).digest(), c) for c in candidates if c not in ex)
    return [c for _, c in ranked[:size]]
