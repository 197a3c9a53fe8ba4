"""Statistics of a validation experiment: ROC, (partial) AUC, FAR/FRR at operating points, with
bootstrap confidence intervals, from the tidy scores table (`RUN/scores.parquet`).

Conventions (fixed everywhere in the project):
- the positive class is *malign* (the validator should reject it); a score is a distance and a
  verdict is "reject" iff `score > threshold`;
- FRR (false reject rate) = share of benign rows rejected = the ROC's false positive rate;
  FAR (false accept rate) = share of malign rows accepted = 1 - true positive rate;
- partial AUC is scikit-learn's standardised (McClish) `roc_auc_score(max_fpr=0.01)`: 0.5 is chance,
  1.0 perfect, over FRR <= 1%;
- thresholds are chosen on the "calib" split of prompts and evaluated on the "test" split only;
  they are never tuned on test. Two operating points per comparison:
  `far`: the threshold with calib FAR <= far_target and the smallest calib FRR ("FRR at FAR <= 1%");
  `frr`: the threshold with calib FRR <= frr_target and the smallest calib FAR ("FAR at FRR <= 1%").
  The threshold sits midway between the calib score where the ROC operating point lies and the next
  lower calib score (so calib rates are those of the operating point and a held-out score equal to
  a calib score is judged like it);
- confidence intervals are percentile bootstraps (95%) that resample *prompts* (every row of a
  drawn prompt comes along), since rows of one prompt are correlated: test-split rates resample
  test prompts at the fixed calib threshold; AUC and partial AUC are computed on all prompts (no
  tuning is involved) and resample all prompts;
- every comparison reports the benign noise level: the median benign score (and its 99th
  percentile) of the benign rows it used.

Small samples: a comparison with no benign or no malign rows in a split gets NaN in the affected
columns and a `reason`; constant scores give AUC 0.5 and rates of 0 or 1, never a crash.

`inf` scores (shape mismatches) are ranked above every finite score (they are replaced by +-1e300
before scikit-learn sees them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("prompt_id", "split", "deviation", "kind", "policy", "metric", "score")
OPTIONAL_NUMERIC: dict[str, float] = {"validator_compute_share": math.nan, "executor_compute_share": math.nan,
                                      "bytes_kept": math.nan, "hwnoise_eps": 0.0}
ALL_MALIGN = "all malign"
ALL_BENIGN = "all benign"
BIG = 1e300  # stand-in for +-inf scores (keeps the ranking; scikit-learn rejects inf)

# ---------------------------------------------------------------------------------------------
# The columns of a comparison row (Stats.table) that hold rates. An operating point is a threshold
# chosen on the calib split by one rule and rates measured on the test split at it: `frr_at_far` is
# the test FRR at the calib threshold with FAR <= far_target (`test_far_at_far` the test FAR there),
# `far_at_frr` the test FAR at the calib threshold with FRR <= frr_target. Each rate has its counts
# (`_k` of `_n` rows) and exact Clopper-Pearson bounds (`_cp_lo`, `_cp_hi`); the main rate of a rule
# also a bootstrap interval over test prompts (`_lo`, `_hi`).


@dataclass(frozen=True)
class RateColumns:
    """The column names of one rate."""

    rate: str
    k: str
    n: str
    cp_lo: str
    cp_hi: str
    lo: str | None = None  # bootstrap bounds, main rates only
    hi: str | None = None


@dataclass(frozen=True)
class OperatingPointColumns:
    """The column names of one operating point (`rule`: the rate held at its target on calib)."""

    rule: str
    threshold: str
    calib_frr: str
    calib_far: str
    main: RateColumns  # the other rate, on test
    held: RateColumns  # the held rate, on test


FRR_AT_FAR = RateColumns("frr_at_far", "frr_at_far_k", "frr_at_far_n", "frr_at_far_cp_lo", "frr_at_far_cp_hi",
                         "frr_at_far_lo", "frr_at_far_hi")
TEST_FAR_AT_FAR = RateColumns("test_far_at_far", "test_far_at_far_k", "test_far_at_far_n", "test_far_at_far_cp_lo",
                              "test_far_at_far_cp_hi")
FAR_AT_FRR = RateColumns("far_at_frr", "far_at_frr_k", "far_at_frr_n", "far_at_frr_cp_lo", "far_at_frr_cp_hi",
                         "far_at_frr_lo", "far_at_frr_hi")
TEST_FRR_AT_FRR = RateColumns("test_frr_at_frr", "test_frr_at_frr_k", "test_frr_at_frr_n", "test_frr_at_frr_cp_lo",
                              "test_frr_at_frr_cp_hi")
AT_FAR = OperatingPointColumns("far", "threshold_at_far", "calib_frr_at_far", "calib_far_at_far", FRR_AT_FAR,
                               TEST_FAR_AT_FAR)
AT_FRR = OperatingPointColumns("frr", "threshold_at_frr", "calib_frr_at_frr", "calib_far_at_frr", FAR_AT_FRR,
                               TEST_FRR_AT_FRR)
RATE_COLUMNS = {c.rate: c for c in (FRR_AT_FAR, TEST_FAR_AT_FAR, FAR_AT_FRR, TEST_FRR_AT_FRR)}
AUC_COLUMNS = ("auc", "auc_lo", "auc_hi", "pauc", "pauc_lo", "pauc_hi")


class StatsError(ValueError):
    """The scores table cannot be analysed (missing columns, unknown labels)."""


@dataclass(frozen=True)
class StatsConfig:
    """Settings of the analysis; defaults from the issue (1% operating points, as in DiFR) and
    conventional bootstrap sizes."""

    far_target: float = 0.01  # FAR bound of the "FRR at FAR <= 1%" operating point (DiFR, issue 3)
    frr_target: float = 0.01  # FRR bound of the "FAR at FRR <= 1%" operating point
    max_fpr: float = 0.01  # partial AUC region (DiFR: FPR < 1%)
    ci_level: float = 0.95
    n_boot: int = 1000  # replicates for test-split rate intervals (vectorised: cheap)
    n_boot_auc: int = 300  # replicates for AUC intervals (exact Mann-Whitney U of all replicates at once)
    n_boot_pauc: int = 100  # replicates for partial-AUC intervals (one ROC curve each)
    # which comparisons get a partial-AUC interval: "best" (each policy's best metric, chosen on calib,
    # against all malign rows), "all_malign" (every metric against all malign rows), "all", "none"
    pauc_ci: str = "best"
    seed: int = 0
    benign_eps: Any = "all"  # hwnoise EPS levels in the benign class: "all", None (no hwnoise), or a float
    # benign deviations bit-identical to the canonical run on every prompt are kept out of the benign
    # class (reported apart: `Stats.zero_effect`)
    exclude_zero_effect: bool = True

    def __post_init__(self):
        for name in ("far_target", "frr_target", "max_fpr"):
            v = getattr(self, name)
            if not (0.0 < v < 1.0):
                raise StatsError(f"{name} must be in (0, 1), got {v!r}")
        if not 0.5 < self.ci_level < 1.0:
            raise StatsError(f"ci_level must be in (0.5, 1), got {self.ci_level!r}")
        if self.n_boot < 0 or self.n_boot_pauc < 0 or self.n_boot_auc < 0:
            raise StatsError("n_boot, n_boot_auc and n_boot_pauc must be >= 0")
        if self.pauc_ci not in ("best", "all", "all_malign", "none"):
            raise StatsError(f"pauc_ci must be one of best, all, all_malign, none; got {self.pauc_ci!r}")
        if not (self.benign_eps in ("all", None) or isinstance(self.benign_eps, (int, float))):
            raise StatsError(f"benign_eps must be 'all', None or a number, got {self.benign_eps!r}")


# ---------------------------------------------------------------------------------------------
# Input


def validate_scores(df: pd.DataFrame) -> pd.DataFrame:
    """A checked copy of the scores table with optional columns filled in."""
    if not isinstance(df, pd.DataFrame):
        raise StatsError(f"scores must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise StatsError(f"scores table lacks column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}")
    df = df.reset_index(drop=True)  # a fresh, unique index (tables are often concatenated)
    bad_kind = sorted(set(df["kind"].astype(str)) - {"benign", "malign"})
    if bad_kind:
        raise StatsError(f"column 'kind': unknown value(s) {bad_kind}; allowed: benign, malign")
    bad_split = sorted(set(df["split"].astype(str)) - {"calib", "test"})
    if bad_split:
        raise StatsError(f"column 'split': unknown value(s) {bad_split}; allowed: calib, test")
    for col, default in OPTIONAL_NUMERIC.items():
        if col not in df.columns:
            df[col] = default
    df["score"] = pd.to_numeric(df["score"], errors="raise").astype(float)
    if df["score"].isna().any():
        n = int(df["score"].isna().sum())
        raise StatsError(f"column 'score': {n} NaN value(s); a scorer must return a number or inf")
    df["hwnoise_eps"] = pd.to_numeric(df["hwnoise_eps"]).fillna(0.0).astype(float)
    return df


def _finite(scores: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(scores, dtype=float), posinf=BIG, neginf=-BIG), -BIG, BIG)


def is_hwnoise(deviation: pd.Series) -> pd.Series:
    return deviation.astype(str).str.startswith("hwnoise:") | (deviation.astype(str) == "hwnoise")


def benign_mask(df: pd.DataFrame, benign_eps: Any = "all") -> pd.Series:
    """Rows of the benign class: every benign deviation, with hwnoise rows filtered by `benign_eps`."""
    benign = df["kind"] == "benign"
    hw = is_hwnoise(df["deviation"])
    if benign_eps == "all":
        return benign
    if benign_eps is None:
        return benign & ~hw
    return benign & (~hw | np.isclose(df["hwnoise_eps"], float(benign_eps), rtol=1e-9, atol=0.0))


# ---------------------------------------------------------------------------------------------
# Exact intervals


def clopper_pearson(k, n, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial rate k/n: the bounds a count of k in n trials
    allows at `level` (0 of 10 bounds the rate below 30.8%). NaN for n = 0. Accepts arrays."""
    from scipy.stats import beta

    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
    lo, hi = np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)
    return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)


def zero_effect_deviations(df: pd.DataFrame) -> list[str]:
    """Benign deviations whose final latent is bit-identical to the canonical one on every prompt
    (`deviation_size` 0: relative L2 of the final latent): on this hardware they change nothing, so
    they are reported apart and kept out of the benign class (they would only dilute its FRR)."""
    if "deviation_size" not in df.columns:
        return []
    b = df[df["kind"] == "benign"].drop_duplicates(["prompt_id", "deviation"])
    size = pd.to_numeric(b["deviation_size"], errors="coerce")
    zero = (size == 0.0).groupby(b["deviation"].astype(str)).all()
    return sorted(zero[zero].index)


# ---------------------------------------------------------------------------------------------
# Operating points


@dataclass
class OperatingPoint:
    threshold: float  # reject iff score > threshold
    calib_frr: float
    calib_far: float
    reason: str = ""


def _nan_point(reason: str) -> OperatingPoint:
    return OperatingPoint(math.nan, math.nan, math.nan, reason)


def _calib_roc(benign: np.ndarray, malign: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ROC of calib scores with `drop_intermediate=False` (every distinct score a
    candidate threshold); both rules of a comparison pick from the same curve."""
    from sklearn.metrics import roc_curve

    y = np.r_[np.zeros(benign.size), np.ones(malign.size)]
    return roc_curve(y, np.r_[benign, malign], drop_intermediate=False)


def _pick_threshold(curve, benign: np.ndarray, malign: np.ndarray, rule: str, target: float) -> OperatingPoint:
    fpr, tpr, thr = curve
    tol = 1e-12
    if rule == "far":
        idx = int(np.flatnonzero(tpr >= 1.0 - target - tol)[0])
    else:
        idx = int(np.flatnonzero(fpr <= target + tol)[-1])
    # thr[idx]: reject iff score >= thr[idx]; thr[idx + 1] is the next lower distinct calib score.
    if not np.isfinite(thr[idx]):  # reject nothing
        t = float(thr[idx + 1]) if idx + 1 < thr.size else math.inf
    elif idx + 1 < thr.size:
        t = float(thr[idx] / 2 + thr[idx + 1] / 2)
    else:  # reject everything in calib
        t = float(np.nextafter(thr[idx], -np.inf))
    frr, far = _rates(benign, malign, t)  # exact counts at the chosen threshold
    return OperatingPoint(t, frr, far)


def choose_threshold(benign: np.ndarray, malign: np.ndarray, *, rule: str, target: float) -> OperatingPoint:
    """Threshold from calib scores. rule "far": calib FAR <= target, least FRR; "frr": calib FRR <=
    target, least FAR. Uses scikit-learn's ROC (`drop_intermediate=False`, so every distinct score
    is a candidate)."""
    if rule not in ("far", "frr"):
        raise StatsError(f"rule must be 'far' or 'frr', got {rule!r}")
    benign, malign = _finite(benign), _finite(malign)
    if benign.size == 0 or malign.size == 0:
        which = "benign" if benign.size == 0 else "malign"
        return _nan_point(f"no {which} rows in the calib split")
    return _pick_threshold(_calib_roc(benign, malign), benign, malign, rule, target)


def _rates(benign: np.ndarray, malign: np.ndarray, t: float) -> tuple[float, float]:
    frr = float(np.mean(_finite(benign) > t)) if benign.size else math.nan
    far = float(np.mean(_finite(malign) <= t)) if malign.size else math.nan
    return frr, far


# ---------------------------------------------------------------------------------------------
# Bootstrap helpers


def _prompt_index(prompts: np.ndarray, universe: np.ndarray) -> np.ndarray:
    return np.searchsorted(universe, prompts)


def _boot_weights(n_prompts: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_prompts) counts of each prompt in each replicate (resampling prompts)."""
    return rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot)


def _ci(values: np.ndarray, level: float) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [a, 1.0 - a])
    return float(lo), float(hi)


def _rate_ci(flags: np.ndarray, prompt_idx: np.ndarray, weights: np.ndarray, level: float) -> tuple[float, float]:
    """CI of mean(flags) when prompts are resampled by `weights` (n_boot, n_prompts)."""
    if flags.size == 0 or weights.size == 0:
        return math.nan, math.nan
    n_prompts = weights.shape[1]
    hits = np.bincount(prompt_idx, weights=flags.astype(float), minlength=n_prompts)
    counts = np.bincount(prompt_idx, minlength=n_prompts).astype(float)
    num, den = weights @ hits, weights @ counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return _ci(num / den, level)


def _boot_counts(draws: np.ndarray, n_prompts: int) -> np.ndarray:
    """(n_boot, n_prompts) multiplicity of each prompt in each row of `draws` (prompt indices)."""
    n_boot = draws.shape[0]
    flat = (draws + np.arange(n_boot)[:, None] * n_prompts).ravel()
    return np.bincount(flat, minlength=n_boot * n_prompts).reshape(n_boot, n_prompts).astype(float)


def _pair_counts(benign: np.ndarray, b_idx: np.ndarray, malign: np.ndarray, m_idx: np.ndarray,
                 n_prompts: int) -> np.ndarray:
    """C[p, q]: over benign rows of prompt p and malign rows of prompt q, the pairs with the malign
    score above the benign one, ties counting 1/2 (the Mann-Whitney U restricted to two prompts)."""
    c = np.zeros((n_prompts, n_prompts))
    for p in np.unique(b_idx):
        bp = np.sort(benign[b_idx == p])
        lo = np.searchsorted(bp, malign, "left")
        hi = np.searchsorted(bp, malign, "right")
        c[p] = np.bincount(m_idx, weights=lo + 0.5 * (hi - lo), minlength=n_prompts)
    return c


def _auc_boot(benign: np.ndarray, b_idx: np.ndarray, malign: np.ndarray, m_idx: np.ndarray,
              n_prompts: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap AUCs, each the Mann-Whitney U / (n_b n_m) of one prompt resample (what scipy's
    `mannwhitneyu` and scikit-learn's `roc_auc_score` compute), for all replicates at once: with
    prompt multiplicities w, U = w C w^T over the per-prompt-pair counts C. Every term is a multiple
    of 1/2 far below 2**52, so U is exact whatever the summation order."""
    draws = rng.integers(0, n_prompts, size=(n_boot, n_prompts))
    w = _boot_counts(draws, n_prompts)
    c = _pair_counts(benign, b_idx, malign, m_idx, n_prompts)
    u = ((w @ c) * w).sum(axis=1)
    nb = w @ np.bincount(b_idx, minlength=n_prompts)
    nm = w @ np.bincount(m_idx, minlength=n_prompts)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (nb * nm)
    out[(nb == 0) | (nm == 0)] = np.nan
    return out


def _roc(benign: np.ndarray, malign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ROC curve (FPR, TPR) of benign (negative) against malign (positive) scores."""
    from sklearn.metrics import roc_curve

    y = np.r_[np.zeros(benign.size), np.ones(malign.size)]
    fpr, tpr, _ = roc_curve(y, np.r_[benign, malign])
    return fpr, tpr


def _pauc_from_roc(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """scikit-learn's standardised partial AUC, `roc_auc_score(max_fpr=...)`, from the ROC curve that
    `roc_auc_score` computes internally (same steps: interpolate at max_fpr, trapezoid area with
    `sklearn.metrics.auc`, McClish correction), so one `roc_curve` call gives AUC and partial AUC."""
    from sklearn.metrics import auc

    stop = np.searchsorted(fpr, max_fpr, "right")
    x_interp = [fpr[stop - 1], fpr[stop]]
    y_interp = [tpr[stop - 1], tpr[stop]]
    tpr = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr = np.append(fpr[:stop], max_fpr)
    partial_auc = auc(fpr, tpr)
    min_area = 0.5 * max_fpr**2
    max_area = max_fpr
    return float(0.5 * (1 + (partial_auc - min_area) / (max_area - min_area)))


def _pauc_boot(benign, b_idx, malign, m_idx, n_prompts, n_boot, max_fpr, rng) -> np.ndarray:
    """Bootstrap partial AUCs (resampling prompts), each equal to `roc_auc_score(max_fpr=...)` of the
    replicate (one `roc_curve` each)."""
    out = np.full(n_boot, np.nan)
    b_rows = [np.flatnonzero(b_idx == p) for p in range(n_prompts)]
    m_rows = [np.flatnonzero(m_idx == p) for p in range(n_prompts)]
    for i in range(n_boot):
        d = rng.integers(0, n_prompts, size=n_prompts)
        b = benign[np.concatenate([b_rows[p] for p in d])]
        m = malign[np.concatenate([m_rows[p] for p in d])]
        if b.size and m.size:
            out[i] = _pauc_from_roc(*_roc(b, m), max_fpr)
    return out


# ---------------------------------------------------------------------------------------------
# One comparison


@dataclass
class _Side:
    """The rows of one class of a comparison as arrays, in table order."""

    score: np.ndarray  # finite (inf replaced by +-BIG)
    raw: np.ndarray  # as stored
    calib: np.ndarray  # bool: the row's prompt is in the calib split
    prompt: np.ndarray
    compute: np.ndarray  # validator_compute_share (NaN where missing)
    bytes: np.ndarray  # bytes_kept
    executor: np.ndarray  # executor_compute_share

    def take(self, mask: np.ndarray) -> "_Side":
        return _Side(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


def _side(df: pd.DataFrame) -> _Side:
    def num(col):
        return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)

    raw = df["score"].to_numpy(dtype=float)
    return _Side(_finite(raw), raw, df["split"].to_numpy() == "calib", df["prompt_id"].to_numpy(),
                 num("validator_compute_share"), num("bytes_kept"), num("executor_compute_share"))


def _median(values: np.ndarray) -> float:
    v = values[~np.isnan(values)]
    return float(np.median(v)) if v.size else math.nan


def compare(benign: pd.DataFrame, malign: pd.DataFrame, cfg: StatsConfig, rng: np.random.Generator,
            *, auc_ci: bool = True, pauc_ci: bool = True, roc_out: dict | None = None) -> dict[str, Any]:
    """All numbers of one benign-vs-malign comparison (rows of one policy and metric)."""
    return _compare(_side(benign), _side(malign), cfg, rng, auc_ci=auc_ci, pauc_ci=pauc_ci, roc_out=roc_out)


def _compare(b: _Side, m: _Side, cfg: StatsConfig, rng: np.random.Generator,
             *, auc_ci: bool = True, pauc_ci: bool = True, roc_out: dict | None = None) -> dict[str, Any]:
    reasons: list[str] = []
    row = _distribution_columns(b, m)
    row.update(_auc_columns(b, m, cfg, rng, reasons, auc_ci=auc_ci, pauc_ci=pauc_ci, roc_out=roc_out))
    row.update(_operating_point_columns(b, m, cfg, rng, reasons))
    row["reason"] = "; ".join(dict.fromkeys(reasons))
    return row


def _distribution_columns(b: _Side, m: _Side) -> dict[str, Any]:
    """Row counts per split, the score distributions' landmarks and the median costs."""
    bc, mc = b.calib, m.calib
    raw_b, raw_m = b.raw, m.raw
    return dict(n_benign_calib=int(bc.sum()), n_malign_calib=int(mc.sum()),
                n_benign_test=int((~bc).sum()), n_malign_test=int((~mc).sum()),
                n_prompts_calib=int(np.unique(np.r_[b.prompt[bc], m.prompt[mc]]).size),
                n_prompts_test=int(np.unique(np.r_[b.prompt[~bc], m.prompt[~mc]]).size),
                benign_median=float(np.median(raw_b)) if raw_b.size else math.nan,
                benign_p99=float(np.quantile(raw_b, 0.99, method="higher")) if raw_b.size else math.nan,
                benign_max=float(np.max(raw_b)) if raw_b.size else math.nan,
                malign_median=float(np.median(raw_m)) if raw_m.size else math.nan,
                malign_min=float(np.min(raw_m)) if raw_m.size else math.nan,
                validator_compute_share=_median(b.compute), bytes_kept=_median(b.bytes),
                executor_compute_share=_median(m.executor))


def _auc_columns(b: _Side, m: _Side, cfg: StatsConfig, rng: np.random.Generator, reasons: list[str], *,
                 auc_ci: bool, pauc_ci: bool, roc_out: dict | None) -> dict[str, Any]:
    """AUC and partial AUC on all prompts (no tuning involved), CIs resampling all prompts."""
    from sklearn.metrics import auc

    b_all, m_all = b.score, m.score
    if b_all.size == 0 or m_all.size == 0:
        reasons.append("no benign rows" if b_all.size == 0 else "no malign rows")
        return dict.fromkeys(AUC_COLUMNS, math.nan)
    universe = np.union1d(b.prompt, m.prompt)
    b_idx = _prompt_index(b.prompt, universe)
    m_idx = _prompt_index(m.prompt, universe)
    # one scikit-learn ROC gives the curve, the AUC (`roc_auc_score`'s own steps) and the pAUC
    fpr, tpr = _roc(b_all, m_all)
    row: dict[str, Any] = {"auc": float(auc(fpr, tpr)), "pauc": _pauc_from_roc(fpr, tpr, cfg.max_fpr)}
    if roc_out is not None:
        roc_out["fpr"], roc_out["tpr"] = fpr, tpr
    if auc_ci and cfg.n_boot_auc and universe.size > 1:
        row["auc_lo"], row["auc_hi"] = _ci(_auc_boot(b_all, b_idx, m_all, m_idx, universe.size, cfg.n_boot_auc, rng),
                                           cfg.ci_level)
    else:
        row["auc_lo"] = row["auc_hi"] = math.nan
    if pauc_ci and cfg.n_boot_pauc and universe.size > 1:
        row["pauc_lo"], row["pauc_hi"] = _ci(
            _pauc_boot(b_all, b_idx, m_all, m_idx, universe.size, cfg.n_boot_pauc, cfg.max_fpr, rng), cfg.ci_level)
    else:
        row["pauc_lo"] = row["pauc_hi"] = math.nan
    return row


def _operating_point_columns(b: _Side, m: _Side, cfg: StatsConfig, rng: np.random.Generator,
                             reasons: list[str]) -> dict[str, Any]:
    """Operating points: thresholds on calib, rates on test, CIs resampling test prompts."""
    bc, mc = b.calib, m.calib
    test_universe = np.union1d(b.prompt[~bc], m.prompt[~mc])
    weights = _boot_weights(test_universe.size, cfg.n_boot, rng) if (cfg.n_boot and test_universe.size > 1) else np.empty((0, 0))
    test = dict(bt=b.score[~bc], mt=m.score[~mc], bt_idx=_prompt_index(b.prompt[~bc], test_universe),
                mt_idx=_prompt_index(m.prompt[~mc], test_universe), weights=weights)
    b_cal, m_cal = b.score[bc], m.score[mc]
    curve = _calib_roc(b_cal, m_cal) if (b_cal.size and m_cal.size) else None
    # the partial AUC of the calib prompts alone: the tie-break of metric and policy selection
    row: dict[str, Any] = {"calib_pauc": _pauc_from_roc(curve[0], curve[1], cfg.max_fpr) if curve is not None else math.nan}
    for cols, target in ((AT_FAR, cfg.far_target), (AT_FRR, cfg.frr_target)):
        if curve is None:
            op = _nan_point(f"no {'benign' if b_cal.size == 0 else 'malign'} rows in the calib split")
        else:
            op = _pick_threshold(curve, b_cal, m_cal, cols.rule, target)
        row[cols.threshold] = op.threshold
        row[cols.calib_frr], row[cols.calib_far] = op.calib_frr, op.calib_far
        if op.reason:
            reasons.append(f"{cols.rule} rule: {op.reason}")
            row.update(_undetermined_point(cols))
        else:
            row.update(_test_rates(cols, op.threshold, cfg, reasons, **test))
    return row


def _undetermined_point(cols: OperatingPointColumns) -> dict[str, Any]:
    row = {cols.main.rate: math.nan, cols.main.lo: math.nan, cols.main.hi: math.nan, cols.held.rate: math.nan}
    for rc in (cols.main, cols.held):
        row.update({rc.k: 0, rc.n: 0, rc.cp_lo: math.nan, rc.cp_hi: math.nan})
    return row


def _test_rates(cols: OperatingPointColumns, threshold: float, cfg: StatsConfig, reasons: list[str], *,
                bt: np.ndarray, mt: np.ndarray, bt_idx: np.ndarray, mt_idx: np.ndarray,
                weights: np.ndarray) -> dict[str, Any]:
    """The test FRR and FAR at `threshold`: the main rate with its bootstrap interval, both with counts
    and exact bounds."""
    frr = float(np.mean(bt > threshold)) if bt.size else math.nan  # _rates on finite scores
    far = float(np.mean(mt <= threshold)) if mt.size else math.nan
    if bt.size == 0 or mt.size == 0:
        reasons.append(f"{cols.rule} rule: no {'benign' if bt.size == 0 else 'malign'} rows in the test split")
    rejected, accepted = bt > threshold, mt <= threshold
    if cols.rule == "far":  # main rate FRR (benign rows rejected), held rate FAR
        main, held, main_rate, held_rate, idx = rejected, accepted, frr, far, bt_idx
    else:
        main, held, main_rate, held_rate, idx = accepted, rejected, far, frr, mt_idx
    row: dict[str, Any] = {cols.main.rate: main_rate, cols.held.rate: held_rate}
    row[cols.main.lo], row[cols.main.hi] = (
        _rate_ci(main, idx, weights, cfg.ci_level) if weights.size and main.size else (math.nan, math.nan))
    # exact bounds from the counts (rows; those of one prompt are correlated: the bootstrap above
    # resamples prompts)
    for rc, f in ((cols.main, main), (cols.held, held)):
        row[rc.k], row[rc.n] = int(f.sum()), int(f.size)
        row[rc.cp_lo], row[rc.cp_hi] = clopper_pearson(int(f.sum()), int(f.size), cfg.ci_level)
    return row


# ---------------------------------------------------------------------------------------------
# Whole tables


@dataclass
class Stats:
    """Results of `compute_stats`: tidy tables plus ROC points for plotting."""

    config: StatsConfig
    table: pd.DataFrame  # one row per (policy, metric, comparison)
    eps_curve: pd.DataFrame  # one row per (hwnoise EPS, policy, metric, comparison)
    verdicts: pd.DataFrame  # one row per (malign deviation, policy): best metric chosen on calib
    benign_noise: pd.DataFrame  # median/p99 score per (policy, metric, benign deviation)
    roc: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    benign_set: list[str] = field(default_factory=list)
    zero_effect: list[str] = field(default_factory=list)  # benign deviations with no effect (not in the class)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest: per malign deviation, the best policy's verdict."""
        best = self.verdicts[self.verdicts["is_best"]] if len(self.verdicts) else self.verdicts
        return {
            "config": {k: getattr(self.config, k) for k in self.config.__dataclass_fields__},
            "benign_set": self.benign_set,
            "zero_effect": self.zero_effect,
            "deviations": [_jsonable(r) for r in best.to_dict("records")],
        }


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, float)):
            v = float(v)
            out[k] = None if math.isnan(v) else (str(v) if math.isinf(v) else v)
        elif isinstance(v, np.integer):
            out[k] = int(v)
        elif isinstance(v, np.bool_):
            out[k] = bool(v)
        else:
            out[k] = v
    return out


def _groups(df: pd.DataFrame) -> Iterable[tuple[tuple[str, str], pd.DataFrame]]:
    return df.groupby(["policy", "metric"], sort=True, observed=True)


def compute_stats(df: pd.DataFrame, config: StatsConfig | None = None, **overrides) -> Stats:
    """Every comparison of the experiment: per policy and metric, the benign class against each
    malign deviation and against all malign rows; the EPS curve; per-deviation verdicts."""
    import sklearn

    cfg = config or StatsConfig(**overrides)
    if config is not None and overrides:
        cfg = StatsConfig(**{**{k: getattr(config, k) for k in config.__dataclass_fields__}, **overrides})
    df = validate_scores(df)
    # scores are made finite before scikit-learn sees them; arguments are ours, so skip re-validation
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        return _compute_stats(df, cfg)


def _compute_stats(df: pd.DataFrame, cfg: StatsConfig) -> Stats:
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed))
    zero = zero_effect_deviations(df) if cfg.exclude_zero_effect else []
    bmask = benign_mask(df, cfg.benign_eps) & ~df["deviation"].astype(str).isin(zero)
    benign_set = sorted(df.loc[bmask, "deviation"].astype(str).unique())
    malign_devs = sorted(df.loc[df["kind"] == "malign", "deviation"].astype(str).unique())

    rows, roc, sides = [], {}, {}
    whole = _side(df)  # df has a fresh RangeIndex (validate_scores): a group's index are its positions
    benign_all = bmask.to_numpy()
    malign_all = (df["kind"] == "malign").to_numpy()
    dev_all = df["deviation"].astype(str).to_numpy()
    for (policy, metric), g in _groups(df):
        pos = g.index.to_numpy()
        side = whole.take(pos)
        gb = side.take(benign_all[pos])
        is_malign = malign_all[pos]
        gm_all = side.take(is_malign)
        m_dev = dev_all[pos][is_malign]
        sides[(policy, metric)] = (gb, gm_all)
        for comp in [ALL_MALIGN, *malign_devs]:
            gm = gm_all if comp == ALL_MALIGN else gm_all.take(m_dev == comp)
            pauc_ci = cfg.pauc_ci == "all" or (cfg.pauc_ci == "all_malign" and comp == ALL_MALIGN)
            curve: dict = {}
            r = _compare(gb, gm, cfg, rng, pauc_ci=pauc_ci, roc_out=curve)
            if curve:
                roc[(policy, metric, comp)] = (curve["fpr"], curve["tpr"])
            rows.append({"policy": policy, "metric": metric, "deviation": comp, **r})
    table = pd.DataFrame(rows)
    if cfg.pauc_ci == "best" and cfg.n_boot_pauc and len(table):
        for policy, metric in best_metric_per_policy(table).items():
            i = table.index[(table["policy"] == policy) & (table["metric"] == metric) & (table["deviation"] == ALL_MALIGN)][0]
            gb, gm = sides[(policy, metric)]
            universe = np.union1d(gb.prompt, gm.prompt)
            if universe.size > 1 and gb.score.size and gm.score.size:
                boot = _pauc_boot(gb.score, _prompt_index(gb.prompt, universe), gm.score, _prompt_index(gm.prompt, universe),
                                  universe.size, cfg.n_boot_pauc, cfg.max_fpr, rng)
                table.loc[i, ["pauc_lo", "pauc_hi"]] = _ci(boot, cfg.ci_level)
    return Stats(config=cfg, table=table, eps_curve=eps_curve(df, cfg, rng), verdicts=verdicts(table, cfg),
                 benign_noise=benign_noise(df), roc=roc, benign_set=benign_set, zero_effect=zero)


def eps_curve(df: pd.DataFrame, cfg: StatsConfig, rng: np.random.Generator | None = None,
              per_deviation: bool = False) -> pd.DataFrame:
    """FAR/FRR against the emulated hardware noise EPS: for each EPS, benign = that EPS's hwnoise
    rows, malign = all malign rows (and each malign deviation with `per_deviation`); thresholds on
    calib, rates on test (with intervals), AUC without interval."""
    rng = rng or np.random.default_rng(np.random.SeedSequence(cfg.seed))
    hw = df[is_hwnoise(df["deviation"]) & (df["kind"] == "benign")]
    if hw.empty:
        return pd.DataFrame()
    malign = df[df["kind"] == "malign"]
    devs = sorted(malign["deviation"].astype(str).unique()) if per_deviation else []
    malign_sides = {key: (_side(g), g["deviation"].astype(str).to_numpy()) for key, g in _groups(malign)}
    empty = (_side(malign.iloc[:0]), np.array([], dtype=object))
    rows = []
    for eps in sorted(hw["hwnoise_eps"].unique()):
        he = hw[hw["hwnoise_eps"] == eps]
        for (policy, metric), gb in _groups(he):
            gm_all, m_dev = malign_sides.get((policy, metric), empty)
            b = _side(gb)
            for comp in [ALL_MALIGN, *devs]:
                gm = gm_all if comp == ALL_MALIGN else gm_all.take(m_dev == comp)
                r = _compare(b, gm, cfg, rng, auc_ci=False, pauc_ci=False)
                rows.append({"eps": float(eps), "policy": policy, "metric": metric, "deviation": comp, **r})
    return pd.DataFrame(rows)


def benign_noise(df: pd.DataFrame) -> pd.DataFrame:
    """Median and 99th-percentile score of each benign deviation, per policy and metric."""
    b = df[df["kind"] == "benign"]
    if b.empty:
        return pd.DataFrame(columns=["policy", "metric", "deviation", "median", "p99", "n"])
    g = b.groupby(["policy", "metric", "deviation"], observed=True)["score"]
    out = g.agg(median="median", p99=lambda s: float(np.quantile(s, 0.99, method="higher")), n="size").reset_index()
    return out


def best_metric_per_policy(table: pd.DataFrame) -> dict[str, str]:
    """Per policy, the metric with the least calib FRR at FAR <= target against all malign rows
    (then the highest calib partial AUC, then the name): chosen on the calib split only."""
    t = table[table["deviation"] == ALL_MALIGN].copy()
    if t.empty:
        return {}
    t["_f"] = t["calib_frr_at_far"].fillna(np.inf)
    t["_p"] = -t["calib_pauc"].fillna(-np.inf)  # calib only: the all-prompt pAUC would leak test data
    best = t.sort_values(["_f", "_p", "metric"], kind="stable").groupby("policy", sort=True).head(1)
    return dict(zip(best["policy"], best["metric"]))


def _separation(row: pd.Series, cfg: StatsConfig) -> tuple[str, str]:
    frr, far = row.get("frr_at_far"), row.get("test_far_at_far")
    if row.get("reason") and (pd.isna(frr) or pd.isna(far)):
        return "undetermined", str(row["reason"])
    if pd.isna(frr) or pd.isna(far):
        return "undetermined", "too few rows"
    if frr <= cfg.frr_target and far <= cfg.far_target:
        return "separated", (f"on held-out prompts, {frr:.1%} of benign rows rejected and {far:.1%} of malign rows "
                             f"accepted at the calib threshold {row['threshold_at_far']:.4g}")
    if row["malign_median"] <= row["benign_p99"]:
        why = (f"its median score {row['malign_median']:.3g} lies within benign noise (benign 99th percentile "
               f"{row['benign_p99']:.3g}): the deviation is about as large as benign differences under this metric")
    else:
        why = (f"its median score {row['malign_median']:.3g} exceeds benign noise (benign 99th percentile "
               f"{row['benign_p99']:.3g}) but the tails overlap (lowest malign {row['malign_min']:.3g} vs highest "
               f"benign {row['benign_max']:.3g})")
    return "not separated", f"test FRR {frr:.1%} / FAR {far:.1%} at the calib threshold; {why}"


def verdicts(table: pd.DataFrame, cfg: StatsConfig) -> pd.DataFrame:
    """Per malign deviation and policy, the metric with the best *calib* operating point (least calib
    FRR at FAR <= target, then highest calib partial AUC), and its held-out result. `is_best` marks the
    best policy per deviation, chosen on calib too (ties: less validator compute, then fewer bytes)."""
    if table.empty:
        return pd.DataFrame()
    t = table[table["deviation"] != ALL_MALIGN].copy()
    if t.empty:
        return pd.DataFrame()
    t["_calib_frr"] = t["calib_frr_at_far"].fillna(np.inf)
    t["_pauc"] = -t["calib_pauc"].fillna(-np.inf)  # calib only (the all-prompt pAUC is reported, not used)
    t["_compute"] = t["validator_compute_share"].fillna(np.inf)
    t["_bytes"] = t["bytes_kept"].fillna(np.inf)
    keys = ["_calib_frr", "_pauc", "_compute", "_bytes", "metric"]
    per_policy = (t.sort_values(keys, kind="stable").groupby(["deviation", "policy"], sort=True).head(1).copy())
    per_policy["is_best"] = False
    best_idx = per_policy.sort_values(["_calib_frr", "_compute", "_bytes", "_pauc", "policy"], kind="stable") \
        .groupby("deviation").head(1).index
    per_policy.loc[best_idx, "is_best"] = True
    sep = per_policy.apply(lambda r: _separation(r, cfg), axis=1, result_type="expand")
    per_policy["separation"], per_policy["explanation"] = sep[0], sep[1]
    cols = ["deviation", "policy", "metric", "is_best", "separation", "explanation", "frr_at_far", "frr_at_far_lo",
            "frr_at_far_hi", "frr_at_far_k", "frr_at_far_n", "frr_at_far_cp_lo", "frr_at_far_cp_hi",
            "test_far_at_far", "test_far_at_far_k", "test_far_at_far_n", "test_far_at_far_cp_lo", "test_far_at_far_cp_hi",
            "far_at_frr", "far_at_frr_lo", "far_at_frr_hi", "far_at_frr_k", "far_at_frr_n", "far_at_frr_cp_lo",
            "far_at_frr_cp_hi", "auc", "pauc", "calib_pauc",
            "threshold_at_far", "benign_median", "benign_p99", "malign_median", "validator_compute_share",
            "bytes_kept", "executor_compute_share", "n_prompts_test"]
    return per_policy[cols].sort_values(["deviation", "policy"]).reset_index(drop=True)


def choose_thresholds(df: pd.DataFrame, *, rule: str = "frr", target: float = 0.01, benign_eps: Any = "all") -> dict[str, dict]:
    """Per `policy/metric`, the verdict threshold chosen on the calib split (benign class against all
    malign rows), in the `RUN/thresholds.json` shape. Default rule "frr": the lowest threshold that
    rejects at most `target` of benign calib rows (protecting honest executors), i.e. least calib FAR
    at calib FRR <= 1%. A comparison without both classes in calib gets `threshold: None` and the
    reason in `rule`."""
    if rule not in ("far", "frr"):
        raise StatsError(f"rule must be 'far' or 'frr', got {rule!r}")
    df = validate_scores(df)
    bmask = benign_mask(df, benign_eps) & ~df["deviation"].astype(str).isin(zero_effect_deviations(df))
    out: dict[str, dict] = {}
    calib = df["split"] == "calib"
    for (policy, metric), g in _groups(df):
        b = g.loc[bmask.loc[g.index] & calib.loc[g.index], "score"].to_numpy()
        m = g.loc[(g["kind"] == "malign") & calib.loc[g.index], "score"].to_numpy()
        op = choose_threshold(b, m, rule=rule, target=target)
        what = (f"reject iff score > threshold; calib FRR <= {target:g}, least calib FAR" if rule == "frr"
                else f"reject iff score > threshold; calib FAR <= {target:g}, least calib FRR")
        if op.reason:
            out[f"{policy}/{metric}"] = {"threshold": None, "rule": f"{what}; undetermined: {op.reason}", "split": "calib"}
        else:
            out[f"{policy}/{metric}"] = {"threshold": float(op.threshold),
                                         "rule": f"{what} (calib FRR {op.calib_frr:.4f}, FAR {op.calib_far:.4f})",
                                         "split": "calib"}
    return out
