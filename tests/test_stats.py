"""Statistics on synthetic score tables with known separations (perfect, none, partial), thresholds
chosen on calib only, small-sample robustness, and the EPS curve."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from sim.stats import ALL_MALIGN, StatsConfig, StatsError, choose_threshold, choose_thresholds, compute_stats


def table(benign: dict[str, callable], malign: dict[str, callable], n_prompts=20, policy="full", metric="m",
          seed=0, eps_of=None) -> pd.DataFrame:
    """One row per (prompt, deviation); score drawn by each deviation's function(rng, prompt_id)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        split = "calib" if p % 2 == 0 else "test"
        for kind, devs in (("benign", benign), ("malign", malign)):
            for d, f in devs.items():
                rows.append(dict(prompt_id=p, split=split, deviation=d, kind=kind, policy=policy, metric=metric,
                                 score=float(f(rng, p)), hwnoise_eps=(eps_of or {}).get(d, 0.0),
                                 validator_compute_share=1.0 if policy == "full" else 0.25,
                                 bytes_kept=100, executor_compute_share=1.0 if kind == "benign" else 0.6))
    return pd.DataFrame(rows)


U = lambda lo, hi: (lambda rng, p: rng.uniform(lo, hi))  # noqa: E731
FAST = dict(n_boot=200, n_boot_pauc=20)


def row(stats, dev=ALL_MALIGN, policy="full", metric="m"):
    t = stats.table
    return t[(t.policy == policy) & (t.metric == metric) & (t.deviation == dev)].iloc[0]


def test_perfect_separation():
    df = table({"b1": U(0, 1), "b2": U(0, 1)}, {"cheat": U(2, 3)})
    s = compute_stats(df, **FAST)
    r = row(s)
    assert r.auc == 1.0 and r.pauc == 1.0
    assert r.frr_at_far == 0.0 and r.test_far_at_far == 0.0
    assert r.far_at_frr == 0.0 and r.test_frr_at_frr == 0.0
    assert (r.frr_at_far_lo, r.frr_at_far_hi) == (0.0, 0.0)
    assert 1.0 < r.threshold_at_far < 2.0  # between the classes
    assert 0 < r.benign_median < 1 and r.malign_median > 2
    v = s.verdicts
    assert v.loc[v.is_best, "separation"].tolist() == ["separated"]


def test_no_separation_identical_distributions():
    f = lambda rng, p: (p * 7919) % 13 / 13  # noqa: E731  same value for benign and malign of a prompt
    df = table({"b": f}, {"cheat": f})
    r = row(compute_stats(df, **FAST))
    assert r.auc == pytest.approx(0.5) and r.pauc == pytest.approx(0.5)
    assert r.frr_at_far == 1.0  # catching every malign row means rejecting every benign one
    assert r.far_at_frr == 1.0


def test_constant_scores_do_not_crash():
    df = table({"b": U(0, 0)}, {"cheat": U(0, 0)})
    s = compute_stats(df, **FAST)
    r = row(s)
    assert r.auc == 0.5 and r.frr_at_far == 1.0 and r.far_at_frr == 1.0
    assert s.verdicts.separation.tolist() == ["not separated"]
    assert "within benign noise" in s.verdicts.explanation.iloc[0]


def test_partial_separation_matches_theory():
    # benign N(0,1), malign N(1,1): AUC = Phi(1/sqrt(2)) = 0.760
    df = table({"b": lambda rng, p: rng.normal()}, {"cheat": lambda rng, p: rng.normal(1.0)}, n_prompts=400, seed=3)
    r = row(compute_stats(df, n_boot=300, n_boot_pauc=0))
    true = norm.cdf(1 / math.sqrt(2))
    assert r.auc_lo < true < r.auc_hi
    assert r.auc_lo < r.auc < r.auc_hi and r.auc_hi - r.auc_lo < 0.12
    # FRR at FAR <= 1%: threshold near the malign 1% quantile (1 - 2.33); benign above it ~ 1 - Phi(-1.33) = 0.91
    assert r.frr_at_far == pytest.approx(1 - norm.cdf(1 - 2.326), abs=0.08)
    assert r.frr_at_far_lo <= r.frr_at_far <= r.frr_at_far_hi
    assert 0.5 < r.pauc < 0.6


def test_thresholds_come_from_calib_only():
    # calib: benign U(0,1), malign U(2,3); test malign falls to U(1.2,1.4): below the calib
    # threshold (1.5 between 1 and 2), so on test it is accepted: a threshold tuned on test would not be.
    def cheat(rng, p):
        return rng.uniform(2, 3) if p % 2 == 0 else rng.uniform(1.2, 1.4)

    df = table({"b": U(0, 1)}, {"cheat": cheat})
    r = row(compute_stats(df, **FAST))
    calib = df[df.split == "calib"]
    bmax = calib[calib.kind == "benign"].score.max()
    mmin = calib[calib.kind == "malign"].score.min()
    assert r.threshold_at_far == pytest.approx((bmax + mmin) / 2)
    assert r.test_far_at_far == 1.0 and r.frr_at_far == 0.0
    assert r.calib_far_at_far == 0.0 and r.calib_frr_at_far == 0.0


def test_choose_threshold_rules():
    b = np.arange(100) / 100.0  # 0.00 .. 0.99
    m = np.arange(100) / 100.0 + 0.5  # 0.50 .. 1.49
    frr_rule = choose_threshold(b, m, rule="frr", target=0.01)
    assert frr_rule.calib_frr <= 0.01 and 0.98 <= frr_rule.threshold < 0.99  # rejects only 0.99
    assert frr_rule.calib_far == pytest.approx(0.49)
    far_rule = choose_threshold(b, m, rule="far", target=0.01)
    assert far_rule.calib_far <= 0.01 and 0.50 <= far_rule.threshold < 0.51  # accepts only 0.50
    assert np.mean(m <= far_rule.threshold) <= 0.01
    assert np.mean(b > far_rule.threshold) == pytest.approx(far_rule.calib_frr)


def test_inf_scores_rank_highest():
    df = table({"b": U(0, 1)}, {"wrong-size": lambda rng, p: math.inf})
    r = row(compute_stats(df, **FAST))
    assert r.auc == 1.0 and r.frr_at_far == 0.0 and r.test_far_at_far == 0.0
    assert math.isfinite(r.threshold_at_far)


def test_missing_class_gives_nan_with_reason():
    df = table({"b": U(0, 1)}, {})
    s = compute_stats(df, **FAST)
    r = row(s)
    assert math.isnan(r.auc) and math.isnan(r.frr_at_far)
    assert "no malign" in r.reason
    # malign only in the test split: thresholds cannot be chosen
    df = table({"b": U(0, 1)}, {"cheat": U(2, 3)})
    df = df[~((df.kind == "malign") & (df.split == "calib"))]
    r = row(compute_stats(df, **FAST))
    assert r.auc == 1.0 and math.isnan(r.frr_at_far) and "no malign rows in the calib split" in r.reason
    out = choose_thresholds(df)
    assert out["full/m"]["threshold"] is None and "no malign" in out["full/m"]["rule"]


def test_few_prompts():
    df = table({"b": U(0, 1)}, {"cheat": U(0.5, 1.5)}, n_prompts=2)
    r = row(compute_stats(df, **FAST))
    assert r.n_prompts_calib == 1 and r.n_prompts_test == 1
    assert 0 <= r.auc <= 1 and not math.isnan(r.frr_at_far)


def test_per_deviation_rows_and_verdicts_pick_on_calib():
    df = pd.concat([
        table({"b": U(0, 1)}, {"big": U(5, 6), "small": U(0.2, 1.2)}, policy="full", metric="m"),
        table({"b": U(0, 1)}, {"big": U(5, 6), "small": U(1.5, 2)}, policy="checkpoint", metric="rel_l2", seed=1),
    ])
    s = compute_stats(df, **FAST)
    assert set(s.table.deviation) == {ALL_MALIGN, "big", "small"}
    best = s.verdicts[s.verdicts.is_best].set_index("deviation")
    assert best.loc["small", "policy"] == "checkpoint" and best.loc["small", "separation"] == "separated"
    # both separate "big" perfectly: the cheaper validator wins the tie
    assert best.loc["big", "policy"] == "checkpoint" and best.loc["big", "validator_compute_share"] == 0.25
    notbest = s.verdicts[(s.verdicts.deviation == "small") & (s.verdicts.policy == "full")].iloc[0]
    assert notbest.separation == "not separated"


def test_choose_thresholds_shape():
    df = table({"b": U(0, 1)}, {"cheat": U(2, 3)})
    out = choose_thresholds(df)
    assert list(out) == ["full/m"]
    entry = out["full/m"]
    assert set(entry) == {"threshold", "rule", "split"} and entry["split"] == "calib"
    calib_b = df[(df.split == "calib") & (df.kind == "benign")].score
    assert np.mean(calib_b > entry["threshold"]) <= 0.01
    assert entry["threshold"] < 2.0  # least FAR: below every calib malign score


def test_eps_curve_uses_each_eps_as_benign():
    eps_levels = {"hwnoise:0.001": 0.001, "hwnoise:0.01": 0.01, "hwnoise:0.1": 0.1}
    benign = {d: (lambda e: (lambda rng, p: rng.uniform(0, 2 * e)))(e) for d, e in eps_levels.items()}
    df = table(benign, {"cheat": U(0.02, 0.05)}, eps_of=eps_levels)
    s = compute_stats(df, **FAST)
    e = s.eps_curve[s.eps_curve.deviation == ALL_MALIGN].sort_values("eps")
    assert e.eps.tolist() == [0.001, 0.01, 0.1]
    assert e.far_at_frr.tolist()[0] == 0.0 and e.far_at_frr.tolist()[-1] == 1.0
    assert list(e.benign_median) == sorted(e.benign_median)
    # the main table's benign class: every EPS by default, only the chosen one when asked
    assert s.benign_set == sorted(eps_levels)
    s2 = compute_stats(df, benign_eps=0.001, **FAST)
    assert s2.benign_set == ["hwnoise:0.001"] and row(s2).auc == 1.0


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_monotone_transform_invariance(seed):
    df = table({"b": lambda rng, p: rng.normal()}, {"c": lambda rng, p: rng.normal(0.7)}, n_prompts=12, seed=seed)
    df2 = df.assign(score=np.exp(df.score))
    cfg = StatsConfig(n_boot=0, n_boot_pauc=0)
    r1, r2 = row(compute_stats(df, cfg)), row(compute_stats(df2, cfg))
    # ranks decide AUC and the calib operating points; held-out rates may move, since a test score
    # can fall on either side of a midpoint threshold after a nonlinear transform
    for col in ("auc", "pauc", "calib_frr_at_far", "calib_far_at_far", "calib_frr_at_frr", "calib_far_at_frr"):
        assert r1[col] == pytest.approx(r2[col]), col


def test_bad_tables_are_named():
    df = table({"b": U(0, 1)}, {"c": U(1, 2)})
    with pytest.raises(StatsError, match="lacks column.*score"):
        compute_stats(df.drop(columns="score"))
    with pytest.raises(StatsError, match="'kind'.*allowed: benign, malign"):
        compute_stats(df.assign(kind="evil"))
    with pytest.raises(StatsError, match="'split'.*allowed: calib, test"):
        compute_stats(df.assign(split="train"))
    with pytest.raises(StatsError, match="NaN"):
        compute_stats(df.assign(score=np.nan))
    with pytest.raises(StatsError, match="far_target"):
        StatsConfig(far_target=0)


def test_summary_is_json_ready():
    import json

    df = table({"b": U(0, 1)}, {"c": U(2, 3)})
    json.dumps(compute_stats(df, **FAST).summary())


# ---------------------------------------------------------------------------------------------
# The fast paths equal what scikit-learn and scipy compute


def _ragged_scores(rng, n_prompts, ties=True):
    """Scores with per-prompt row counts that differ, repeated values, and +-BIG (from inf)."""
    b_idx = np.repeat(np.arange(n_prompts), rng.integers(0, 6, n_prompts))
    m_idx = np.repeat(np.arange(n_prompts), rng.integers(0, 4, n_prompts))
    draw = (lambda n: rng.integers(0, 6, n) / 5.0) if ties else (lambda n: rng.normal(size=n))
    b, m = draw(b_idx.size), draw(m_idx.size) + 0.3
    if b.size:
        b[0] = -1e300
    if m.size:
        m[-1] = 1e300
    return b, b_idx, m, m_idx


@pytest.mark.parametrize("seed", range(6))
def test_bootstrap_auc_is_the_mann_whitney_u_of_each_replicate(seed):
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    from sim.stats import _auc_boot

    rng = np.random.default_rng(seed)
    n = 7
    b, b_idx, m, m_idx = _ragged_scores(rng, n, ties=seed % 2 == 0)
    out = _auc_boot(b, b_idx, m, m_idx, n, 60, np.random.default_rng(seed))
    draws = np.random.default_rng(seed).integers(0, n, size=(60, n))  # the same draws
    for value, d in zip(out, draws):
        bb = np.concatenate([b[b_idx == p] for p in d])
        mm = np.concatenate([m[m_idx == p] for p in d])
        if bb.size == 0 or mm.size == 0:
            assert math.isnan(value)
            continue
        u = mannwhitneyu(mm, bb, method="asymptotic").statistic
        assert value == u / (bb.size * mm.size)  # exactly
        y = np.r_[np.zeros(bb.size), np.ones(mm.size)]
        assert value == pytest.approx(roc_auc_score(y, np.r_[bb, mm]), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_partial_auc_from_one_roc_equals_scikit_learn(seed):
    from sklearn.metrics import roc_auc_score, roc_curve

    from sim.stats import _pauc_from_roc, _roc

    rng = np.random.default_rng(seed)
    b, _, m, _ = _ragged_scores(rng, 30, ties=seed % 2 == 0)
    y, s = np.r_[np.zeros(b.size), np.ones(m.size)], np.r_[b, m]
    fpr, tpr = _roc(b, m)
    sk_fpr, sk_tpr, _ = roc_curve(y, s)
    assert np.array_equal(fpr, sk_fpr) and np.array_equal(tpr, sk_tpr)
    for max_fpr in (0.01, 0.05, 0.3):
        expected = roc_auc_score(y, s, max_fpr=max_fpr)
        assert _pauc_from_roc(fpr, tpr, max_fpr) == expected


def test_table_auc_and_pauc_equal_roc_auc_score():
    from sklearn.metrics import roc_auc_score

    df = table({"b1": lambda rng, p: rng.normal(), "b2": lambda rng, p: round(rng.normal(), 1)},
               {"c": lambda rng, p: rng.normal(0.8)}, n_prompts=16, seed=4)
    r = row(compute_stats(df, **FAST))
    y = (df.kind == "malign").to_numpy().astype(float)
    assert r.auc == roc_auc_score(y, df.score) and r.pauc == roc_auc_score(y, df.score, max_fpr=0.01)
