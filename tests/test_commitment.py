"""Commit-then-challenge (sim/commitment.py) and the deployable validator (sim/deployable.py) on
synthetic checkpoints and score tables: no model runs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from models.engine import Checkpoint
from sim import deployable as dp
from sim.commitment import (COMMITMENT_CHAIN_BYTES, CommitmentError, CommitSchedule, Executor, Opening, challenge,
                            detection_probability, open_indices, validator_beacon, verify_openings)
from sim.stats import clopper_pearson, zero_effect_deviations


def trajectory(schedule: CommitSchedule, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, step in zip(schedule.names, schedule.points):
        solver = None if step == -1 else {"model_outputs": [torch.randn(1, 4, 2, 2, 2, generator=g), None],
                                          "last_sample": torch.randn(1, 4, 2, 2, 2, generator=g),
                                          "timestep_list": [torch.tensor(999), None], "lower_order_nums": 1,
                                          "this_order": 1, "_step_index": step + 1}
        out[name] = Checkpoint(step, torch.randn(1, 4, 2, 2, 2, generator=g), solver)
    return out


def test_schedule_points_and_names():
    s = CommitSchedule(8, 2)
    assert s.points == [-1, 1, 3, 5, 7] and s.segments == 4
    assert s.names == ["init", "step:1", "step:3", "step:5", "final"]
    assert CommitSchedule(40, 5).segments == 8 and CommitSchedule(7, 3).points == [-1, 2, 5, 6]
    for bad in ((0, 1), (8, 0), (8, 9)):
        with pytest.raises(CommitmentError):
            CommitSchedule(*bad)


def test_honest_openings_verify_and_every_forgery_fails():
    s = CommitSchedule(8, 2)
    cks = trajectory(s)
    ex = Executor(cks, s)
    assert len(ex.commitment.root) == 32 == COMMITMENT_CHAIN_BYTES
    needed = open_indices([2], s)
    assert needed == [0, 2, 3, 4]
    opened = ex.open(needed)
    assert verify_openings(ex.commitment, s, opened, needed) is None
    o = opened[1]
    other = trajectory(s, seed=1)[s.names[o.index]]
    forged = [
        Opening(o.index, o.step, o.latents + 1e-6, o.solver, o.proof),  # another latent
        Opening(o.index, o.step, o.latents, other.solver, o.proof),  # another solver state
        Opening(o.index, o.step + 2, o.latents, o.solver, o.proof),  # another step
        Opening(o.index, o.step, o.latents, o.solver, opened[2].proof),  # another leaf's path
        Opening(o.index, o.step, o.latents.to(torch.bfloat16).float(), o.solver, o.proof),  # rounded
    ]
    for f in forged:
        why = verify_openings(ex.commitment, s, [opened[0], f, *opened[2:]], needed)
        assert why and f"leaf {o.index}" in why
    assert "not opened" in verify_openings(ex.commitment, s, opened[:1], needed)
    # a commitment made for another schedule is refused
    assert "does not match" in verify_openings(Executor(cks, s).commitment.__class__(ex.commitment.root, 4, 3), s, opened, needed)
    # the root binds the whole trajectory: any changed checkpoint changes it
    cks2 = dict(cks)
    cks2["step:3"] = Checkpoint(3, cks["step:3"].latents.clone(), cks["step:3"].solver)
    cks2["step:3"].latents[0, 0, 0, 0, 0] += 1
    assert Executor(cks2, s).commitment.root != ex.commitment.root
    with pytest.raises(CommitmentError, match="missing"):
        Executor({k: v for k, v in cks.items() if k != "step:5"}, s)


def test_challenge_is_fixed_by_the_beacon_not_by_the_executor():
    root = bytes(range(32))
    b1, b2 = validator_beacon(1, "inf"), validator_beacon(2, "inf")
    draws = {tuple(challenge(root, validator_beacon(k, "inf"), 8, 2)) for k in range(200)}
    assert challenge(root, b1, 8, 2) == challenge(root, b1, 8, 2)  # reproducible by anyone with the beacon
    assert len(draws) > 20  # the executor, without the beacon, cannot tell which segments
    assert challenge(root, b1, 8, 2) != challenge(root, b2, 8, 2) or challenge(root, b1, 8, 3) != challenge(root, b2, 8, 3)
    assert len(set(challenge(root, b1, 8, 8))) == 8 and challenge(root, b1, 4, 9) == [0, 1, 2, 3]
    counts = np.bincount([i for k in range(2000) for i in challenge(root, validator_beacon(k, "x"), 4, 1)], minlength=4)
    assert counts.min() > 400  # uniform over segments
    with pytest.raises(CommitmentError, match="beacon"):
        challenge(root, b"short", 8, 1)


def test_detection_probability_is_the_exact_enumeration():
    for n, b, m in [(4, 1, 1), (4, 1, 2), (8, 3, 2), (5, 5, 1), (6, 2, 6)]:
        bad = set(range(b))
        subsets = list(itertools.combinations(range(n), m))
        exact = sum(bool(bad & set(s)) for s in subsets) / len(subsets)
        assert detection_probability(b, n, m) == pytest.approx(exact)
    assert detection_probability(1, 4, 1, per_segment=0.5) == pytest.approx(0.125)
    assert detection_probability(0, 4, 4) == 0.0


def test_clopper_pearson_and_a14b_bytes():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3085, abs=1e-4)
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.6915, abs=1e-4)
    assert all(math.isnan(x) for x in clopper_pearson(0, 0))
    a = dp.a14b_bytes(every=10, challenged=1)
    latent = 4 * 16 * 21 * 60 * 104
    assert a["latent_bytes"] == latent == 8_386_560
    assert a["segments"] == 4 and a["kept_bytes"] == latent + 4 * 4 * latent
    assert a["validator_share"] == pytest.approx(10 / 40 + 2.07 / 273.07)


def scores(n_prompts=20, seed=0, bump_test=0.0):
    """Segment-policy rows of a synthetic run: benign segment distances ~U(0, 1); `cheat` (all segments
    at 2-3), `reuse:3` (segment 1 only), `swap` (decode only), `noop` (a zero-effect benign one)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        split = "calib" if p % 2 == 0 else "test"
        for dev, kind in (("b1", "benign"), ("b2", "benign"), ("noop", "benign"), ("cheat", "malign"),
                          ("reuse:3", "malign"), ("swap", "malign")):
            seg = rng.uniform(0, 1, 4) if dev != "noop" else np.zeros(4)
            if dev == "cheat":
                seg = rng.uniform(2, 3, 4)
            if dev == "reuse:3":
                seg[1] = 5.0
            if split == "test":
                seg = seg + bump_test
            dec = 9.0 if dev == "swap" else 0.0
            vals = {"rel_l2.start": 0.0, "decode.mad": dec, "rel_l2.end": seg.max(), "cosine.end": seg.max()}
            for i, v in enumerate(seg):
                vals[f"rel_l2.seg{i}"] = vals[f"cosine.seg{i}"] = v
            for metric, v in vals.items():
                rows.append(dict(prompt_id=p, split=split, deviation=dev, kind=kind, policy="segment", metric=metric,
                                 score=float(v), hwnoise_eps=0.0, executor_compute_share=1.0 if kind == "benign" else 0.5,
                                 validator_compute_share=1.0, bytes_kept=1000,
                                 deviation_size=0.0 if dev == "noop" else 0.1))
    return pd.DataFrame(rows)


def test_deployable_rule_fitted_on_calib_only_and_evaluated_as_a_whole():
    df = scores()
    assert zero_effect_deviations(df) == ["noop"]
    dep = dp.evaluate(df, every=2, challenged=1, n_boot=20, split_seeds=range(2))
    assert dep.zero_effect == ["noop"] and "noop" not in dep.table["benign"]
    t = dep.table
    assert t["frr"]["n"] == 20 and t["far"]["n"] == 30  # 10 test prompts x 2 benign / 3 malign
    assert t["frr"]["k"] <= 4  # thresholds just above the calib benign maxima: ~1/(10+1) per check
    # one-seg is caught only when segment 1 is drawn (1 in 4): FAR ~ 1/3 of 1 - 1/4
    pdv = dep.per_deviation.set_index("deviation")
    assert pdv.loc["cheat", "reject_rate"] == 1.0 and pdv.loc["swap", "reject_rate"] == 1.0
    assert pdv.loc["reuse:3", "expected_reject"] == pytest.approx(0.25, abs=0.1)  # + other segments over threshold
    assert pdv.loc["reuse:3", "reject_all_segments"] == 1.0
    lo, hi = clopper_pearson(t["far"]["k"], 30)
    assert (t["far"]["cp_lo"], t["far"]["cp_hi"]) == (lo, hi)
    v = dep.vs_segments.set_index(["deviation", "m"])
    for m in range(1, 5):
        assert v.loc[("reuse:3", m), "derived"] == pytest.approx(m / 4)
        assert v.loc[("reuse:3", m), "measured"] == pytest.approx(m / 4, abs=0.12)
    assert len(dep.stability) == 2 and set(dep.stability["split_seed"]) == {0, 1}
    # the fitted thresholds do not see the test split
    moved = dp.evaluate(scores(bump_test=0.7), every=2, challenged=1, n_boot=0, split_seeds=())
    assert moved.config.segment_thresholds == dep.config.segment_thresholds
    assert moved.table["frr"]["k"] > 0  # and the test rates do


def test_cheated_segments_by_design():
    assert dp.cheated_segments("reuse:5", 2, 4) == 1
    assert dp.cheated_segments("reuse:3,5,7", 2, 4) == 3
    assert dp.cheated_segments("mp4-from:steps:4", 2, 4) == 0
    assert dp.cheated_segments("fp8", 2, 4) == 4
    # a weight cheat on one expert: the segments holding its steps (3 high-noise steps of 8)
    assert dp.cheated_segments("int8-wo:high", 2, 4, high_steps=3) == 2
    assert dp.cheated_segments("int8-wo:low", 2, 4, high_steps=3) == 3
    assert dp.cheated_segments("int8-wo:low", 2, 4) == 4  # boundary unknown: every segment
    assert dp.cheated_segments("attention:_native_math+fp8-scaled:high", 2, 4, high_steps=3) == 2
    assert dp.cheated_segments("reuse:1+seed:+1", 2, 4) == 1
