"""PoC stages: honest nodes earn their count, each cheat is rejected, bad input is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

from models.request import Runtime
from sim.poc import (
    PocParams, PocParticipant, PocStageError, participants_from_mix, parse_strategy, run_poc_stage,
)
from sim.poc.measure import Measurement, MeasurementError, parse_condition
from sim.poc.power import (
    critical_mismatches, detection_probability, empirical_rejection_rate, expected_gain, leaf_mismatch_rate,
    power_table,
)
from sim.poc.strategies import StrategyError, strategy_table

CHEATS = ["fp8", "int4", "one-expert:high", "one-expert:low", "fabricate:0.5", "copy", "inflate:2", "duplicate:2"]


def test_surrogate_stage_accepts_honest_and_rejects_every_cheat():
    mix = "honest=40," + ",".join(f"{c}=1" for c in CHEATS)
    parts = participants_from_mix(mix, 3000, seed=1)
    r = run_poc_stage(parts, block_hash="blk", fidelity="surrogate", seed=1)
    for p in parts:
        v = r.verdicts[p.id]
        if p.strategy.name == "honest":
            assert v.accepted, v.reason
            assert r.weights[p.id] == 3000.0
        else:
            assert not v.accepted, (p.strategy.spec, v.reason)
            assert r.weights[p.id] == 0.0 and v.reason
    assert "duplicated nonce" in r.verdicts[parts[-1].id].reason
    summary = r.summary()
    assert summary["honest"]["accepted"] == 40 and summary["fp8"]["rejected"] == 1
    rows = r.rows()
    assert len(rows) == len(parts) and {"participant", "weight", "p_value", "reason"} <= set(rows[0])


def test_surrogate_stage_is_deterministic_per_seed():
    parts = participants_from_mix("honest=3,fabricate:0.1=5", 1000, seed=0)
    a = run_poc_stage(parts, block_hash="b", seed=7)
    b = run_poc_stage(parts, block_hash="b", seed=7)
    c = run_poc_stage(parts, block_hash="b", seed=8)
    assert a.rows() == b.rows()
    assert [v.mismatches for v in a.verdicts.values()] != [v.mismatches for v in c.verdicts.values()]


def test_weight_per_nonce_and_zero_capacity():
    parts = [PocParticipant("a", "ka", 10, "honest"), PocParticipant("b", "kb", 0, "honest")]
    r = run_poc_stage(parts, block_hash="b", params=PocParams(weight_per_nonce=2.5))
    assert r.weights == {"a": 25.0, "b": 0.0}
    assert r.verdicts["b"].accepted and r.verdicts["b"].sampled == 0


@pytest.mark.slow
def test_real_stage_on_the_tiny_preset():
    parts = participants_from_mix("honest=2,fp8=1,one-expert:high=1,fabricate:0.5=1,copy=1,inflate:2=1,duplicate:2=1",
                                  16, seed=0)
    parts.append(PocParticipant("gpu-like", "key-bf16", 16, "honest", Runtime(dtype="bfloat16", batch_size=4)))
    r = run_poc_stage(parts, block_hash="blk-real", fidelity="real", params=PocParams(samples=16),
                      runtime=Runtime(dtype="float32", batch_size=8), seed=2)
    for p in parts:
        v = r.verdicts[p.id]
        assert v.accepted == (p.strategy.name == "honest"), (p.strategy.spec, v.reason)
    assert r.nonces_computed["p005"] == 0  # the copier computed nothing
    assert r.commitments["p005"].root == r.commitments["p000"].root
    assert r.verdicts["gpu-like"].mismatches == 0


@pytest.mark.parametrize("kwargs,needle", [
    (dict(fidelity="fast"), "fidelity"), (dict(block_hash=""), "block_hash"), (dict(seed=-1), "seed"),
])
def test_bad_stage_arguments(kwargs, needle):
    args = dict(block_hash="b", fidelity="surrogate")
    args.update(kwargs)
    with pytest.raises(PocStageError, match=needle):
        run_poc_stage([PocParticipant("a", "k", 5)], **args)


def test_bad_participants():
    with pytest.raises(PocStageError, match="id must be unique"):
        run_poc_stage([PocParticipant("a", "k1", 5), PocParticipant("a", "k2", 5)], block_hash="b")
    with pytest.raises(PocStageError, match="public_key must be unique"):
        run_poc_stage([PocParticipant("a", "k", 5), PocParticipant("b", "k", 5)], block_hash="b")
    with pytest.raises(PocStageError, match="copy:zz: no participant"):
        run_poc_stage([PocParticipant("a", "k", 5, "copy:zz")], block_hash="b")
    with pytest.raises(PocStageError, match="itself copies"):
        run_poc_stage([PocParticipant("a", "ka", 5), PocParticipant("b", "kb", 5, "copy:a"),
                       PocParticipant("c", "kc", 5, "copy:b")], block_hash="b")
    with pytest.raises(PocStageError, match="capacity"):
        PocParticipant("a", "k", -1)
    with pytest.raises(PocStageError, match="unknown strategy 'lazy'"):
        PocParticipant("a", "k", 1, "lazy")
    with pytest.raises(PocStageError, match="participants must be PocParticipant"):
        run_poc_stage([{"id": "a"}], block_hash="b")
    with pytest.raises(PocStageError, match="STRATEGY=N"):
        participants_from_mix("honest", 5)
    with pytest.raises(PocStageError, match="has none"):
        participants_from_mix("copy=1", 5)


@pytest.mark.parametrize("spec,needle", [("fabricate:1.5", "fabricate"), ("inflate:0.5", "inflate"),
                                         ("duplicate:1", "duplicate"), ("one-expert:mid", "one-expert"),
                                         ("fp8:3", "no argument"), ("copy", "copy"), ("", "non-empty")])
def test_bad_strategy_specs(spec, needle):
    with pytest.raises(StrategyError, match=needle):
        parse_strategy(spec)


def test_strategy_table_lists_every_cheat():
    names = {row["spec"].split(":")[0] for row in strategy_table()}
    assert {"honest", "one-expert", "fp8", "int4", "fabricate", "copy", "inflate", "duplicate"} <= names


def test_params_refuse_bad_values():
    from pydantic import ValidationError

    for bad in (dict(samples=0), dict(distance_threshold=-1), dict(allowed_mismatch_rate=1.5),
                dict(p_value=0), dict(frames=0), dict(unknown=1)):
        with pytest.raises(ValidationError):
            PocParams(**bad)


def test_bundled_measurement_and_condition_parsing():
    m = Measurement.load()
    assert m.data["preset"] == "tiny"
    assert m.rate("fabricated", 0.02) > 0.99 and m.rate("rerun", 0.02) == 0.0
    with pytest.raises(MeasurementError, match="no distances for condition 'gpu'"):
        m.distances("gpu")
    rt, malign = parse_condition("batch:4+dtype:bfloat16", Runtime(dtype="float32"))
    assert rt.batch_size == 4 and rt.dtype == "bfloat16" and malign is None
    assert parse_condition("fp8", Runtime())[1] == "fp8"
    for bad in ("batch:x", "warp:9", "dtype:int8", "batch:0"):
        with pytest.raises(MeasurementError, match="condition"):
            parse_condition(bad, Runtime())


def test_measurement_file_errors(tmp_path):
    with pytest.raises(MeasurementError, match="no file"):
        Measurement.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MeasurementError, match="not JSON"):
        Measurement.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"schema": "x"}')
    with pytest.raises(MeasurementError, match="schema"):
        Measurement.load(tmp_path / "old.json")


def test_critical_mismatches_at_gonka_settings():
    # 200 samples, rate 0.1, p < 0.05: reject from 28 mismatches (27 gives p > 0.05)
    m = critical_mismatches(200, 0.1, 0.05)
    from scipy.stats import binomtest

    assert binomtest(m, 200, 0.1, alternative="greater").pvalue < 0.05
    assert binomtest(m - 1, 200, 0.1, alternative="greater").pvalue >= 0.05


@pytest.mark.parametrize("spec", ["fp8", "one-expert:high", "fabricate:0.1", "duplicate:2", "inflate:1.02"])
def test_analytic_power_agrees_with_surrogate_stages(spec):
    m = Measurement.load()
    params = PocParams()
    n = 50
    analytic = detection_probability(spec, n, m, params)
    empirical = empirical_rejection_rate(spec, n, params, capacity=400, trials=300, seed=3)
    se = max(np.sqrt(analytic * (1 - analytic) / 300), 0.01)
    if spec.startswith("inflate"):  # the formula is a lower bound (sampling without replacement, proofs)
        assert empirical >= analytic - 4 * se
    else:
        assert abs(empirical - analytic) < 4 * se, (analytic, empirical)


def test_power_grows_with_samples_and_gains_are_losses():
    m = Measurement.load()
    params = PocParams()
    rows = power_table(m, params, cheats=["fp8", "fabricate:0.2"], sample_sizes=[10, 50, 200])
    for spec, floor in (("fp8", 0.99), ("fabricate:0.2", 0.95)):
        ps = [r["p_reject"] for r in rows if r["strategy"] == spec]
        assert ps == sorted(ps) and ps[-1] > floor
    assert [r["p_reject"] for r in rows if r["strategy"] == "fabricate:0.2"][0] < 0.5  # 10 samples: weak
    assert leaf_mismatch_rate("inflate:2", m, params) is None
    assert expected_gain("fabricate:0.5", 200, m, params) < 0.01
    assert expected_gain("honest", 200, m, params) == pytest.approx(1.0)


def test_threshold_benchmark_reports_rates_and_intervals(tmp_path):
    """benchmarks/gpu_poc_threshold.py on the tiny preset: rates match the distances it stored."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_poc_threshold.py"
    spec = importlib.util.spec_from_file_location("gpu_poc_threshold", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--tag", "t",
                     "--point", "5:6=dtype:bfloat16,fp8", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "poc_threshold_tiny_t.json").read_text())
    raw = json.loads((tmp_path / "poc_measure_tiny_f5_t.json").read_text())
    rows = {r["condition"]: r for r in result["points"][0]["rows"]}
    for cond in ("dtype:bfloat16", "fp8"):
        d = np.asarray(raw["conditions"][cond]["distances"])
        at = rows[cond]["at"]["0.03"]
        assert at["mismatches"] == int((d > 0.03).sum())
        assert at["ci95"][0] <= at["rate"] <= at["ci95"][1]
    assert rows["fp8"]["median"] > rows["dtype:bfloat16"]["median"]
    with pytest.raises(SystemExit, match="FRAMES:NONCES"):
        mod.main(["--point", "5x6=fp8"])
