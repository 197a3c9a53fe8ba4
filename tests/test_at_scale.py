"""Evidence at scale: the real FP8 and int8 cheats, batch checkpoints, the measurement loop (tiny,
CPU) and the analysis (rates with exact bounds, rules chosen on calibration prompts only)."""

import json
import math

import numpy as np
import pytest
import torch

from models.deviations import int_round, parse_deviation
from models.engine import generate
from models.presets import build_pipeline, weights_digest
from models.request import GenerationRequest
from sim import at_scale

REQ = GenerationRequest(prompt="a lantern floating on a river", seed=11, steps=6)


def rel(a, b):
    return float((a - b).norm() / a.norm())


@pytest.fixture(scope="module")
def honest():
    return generate(REQ)


@pytest.mark.parametrize("spec", ["fp8-scaled", "int8-wo"])
def test_quantised_cheats_change_the_output_and_leave_the_pipeline_pristine(honest, spec):
    pipe = build_pipeline("tiny")
    before = weights_digest(pipe.transformer), weights_digest(pipe.transformer_2)
    g = generate(REQ, deviation=spec)
    assert parse_deviation(spec).kind == "malign"
    assert rel(honest.latents["final"], g.latents["final"]) > 1e-3
    assert (weights_digest(pipe.transformer), weights_digest(pipe.transformer_2)) == before
    assert not any("forward" in m.__dict__ for m in pipe.transformer.modules())
    assert generate(REQ).sha256 == honest.sha256


def test_int_round_is_a_per_channel_grid():
    w = torch.randn(8, 32, dtype=torch.bfloat16)
    q = int_round(w, bits=4).float()
    scale = w.float().abs().amax(-1, keepdim=True) / 7
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=2e-2) and steps.abs().max() <= 7.01
    assert rel(w.float(), q) > rel(w.float(), int_round(w, bits=8).float())


def test_batched_checkpoint_holds_only_the_request_and_resumes_to_batch_one():
    b2 = generate(REQ, deviation="batch:2", capture=["step:2", "final"])
    ck = b2.checkpoints["step:2"]
    for key, v in ck.solver.items():
        for x in (v if isinstance(v, list) else [v]):
            if isinstance(x, torch.Tensor) and x.dim() == 5:
                assert x.shape[0] == 1, key
    one = generate(REQ, capture=["final"])
    resumed = generate(REQ, resume_from=ck, capture=["final"])
    assert torch.equal(resumed.latents["final"], one.latents["final"])


def test_measure_on_tiny(tmp_path):
    blocks = [at_scale.Block.from_dict({
        "preset": "tiny", "width": 64, "height": 64, "frames": 5, "steps": 4, "prompts": [0],
        "configs": ["canonical", "fp8-scaled", "steps:2"], "challenge": [1], "selfnorm": True,
        "cheat_direction": "fp8-scaled", "benign_attention": "_native_math", "min_left_s": 0})]
    recs = list(at_scale.measure(blocks, device="cpu", attention="native"))
    by = {r["config"]: r for r in recs}
    assert by["canonical"]["latent_rel_l2"]["final"] == 0 and by["canonical"]["local"][0]["local_err"] == 0
    fp8 = by["fp8-scaled"]["local"][0]
    assert fp8["local_err"] > 0 and fp8["cheat_cos"] == pytest.approx(1.0)  # the validator's own cheat run
    assert by["steps:2"]["local"][0].get("missing")  # step 2 does not exist in a 2-step run
    lines = tmp_path / "x.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in recs))
    df = at_scale.load_rows([lines])
    assert df.set_index("config").loc["steps:2", "local_ratio"] == math.inf
    assert "### tiny" in at_scale.markdown(df, at_scale.evaluate_rules(df))


def test_measure_resumes_from_earlier_lines(tmp_path):
    block = {"preset": "tiny", "width": 64, "height": 64, "frames": 5, "steps": 4, "prompts": [0, 1],
             "configs": ["canonical", "steps:3", "fp8"], "challenge": [1], "min_left_s": 0}
    first = list(at_scale.measure([at_scale.Block.from_dict(block | {"configs": ["canonical", "steps:3"]})],
                                  device="cpu", attention="native"))
    lines = tmp_path / "done.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in first[:3]))  # p0 both, p1 canonical only
    done = at_scale.done_keys([lines, tmp_path / "absent.jsonl"])
    assert len(done) == 3
    rest = list(at_scale.measure([at_scale.Block.from_dict(block)], device="cpu", attention="native", done=done))
    assert [(r["prompt_id"], r["config"]) for r in rest] == [(0, "fp8"), (1, "steps:3"), (1, "fp8")]
    # the canonical reference is rerun for comparison, so distances match a run from scratch
    assert rest[1]["latent_rel_l2"] == first[3]["latent_rel_l2"]
    assert not list(at_scale.measure([at_scale.Block.from_dict(block)], device="cpu", attention="native",
                                     done=done | {at_scale.record_key(r) for r in rest}))


def test_measure_skips_prompts_that_do_not_fit_the_deadline():
    block = at_scale.Block.from_dict({"preset": "tiny", "width": 64, "height": 64, "frames": 5, "steps": 4,
                                      "prompts": [0, 1], "configs": ["canonical"], "min_left_s": 0})
    logged = []
    recs = list(at_scale.measure([block], device="cpu", attention="native", deadline_s=1e-9, log=logged.append))
    assert recs == []
    assert [line.split(" (")[0] for line in logged] == ["deadline: skipping tiny p0", "deadline: skipping tiny p1"]


@pytest.mark.parametrize("spec,needle", [
    ({"configs": ["batch:2"]}, "must start with 'canonical'"),
    ({"challenge": [3]}, "challenged steps"),
    ({"colour": 1}, "unknown keys"),
    ({"validator_compile": "max-autotune"}, "validator_compile must be"),
    ({"adapted": ["int8-wo:low"]}, "adapted must name configs"),
])
def test_bad_plans(spec, needle):
    base = {"preset": "tiny", "width": 64, "height": 64, "frames": 5, "steps": 4, "prompts": [0],
            "configs": ["canonical"]}
    with pytest.raises(ValueError, match=needle):
        at_scale.Block.from_dict(base | spec)


def test_exact_bounds():
    assert at_scale.clopper_pearson(0, 10) == pytest.approx((0.0, 0.3085), abs=1e-4)
    lo, hi = at_scale.clopper_pearson(5, 10)
    assert lo == pytest.approx(0.1871, abs=1e-4) and hi == pytest.approx(0.8129, abs=1e-4)
    assert at_scale.rate_str(0, 10) == "0/10 = 0% [0%, 31%]"


def _row(pid, config, kind, final, local=None):
    return {"preset": "p", "width": 8, "height": 8, "frames": 1, "steps": 4, "prompt_id": pid, "config": config,
            "kind": kind, "gen_s": 1.0, "card": "c", "latent_rel_l2": {"final": final, "switch": final},
            "local": [] if local is None else [{"k": 1, "local_err": local}]}


def test_rules_use_calibration_prompts_only_and_report_zero_effect_apart(tmp_path):
    rows = []
    for pid in range(6):
        rows += [_row(pid, "canonical", "canonical", 0.0), _row(pid, "batch:4", "benign", 0.0),
                 _row(pid, "attention:x", "benign", 0.01 + 0.001 * pid), _row(pid, "tf32", "benign", 0.2),
                 _row(pid, "fp8", "malign", 0.05)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = at_scale.load_rows([path])
    assert set(df[df["config"].eq("batch:4")]["class"]) == {"zero-effect"}
    res = {r["rule"]: r for r in at_scale.evaluate_rules(df)}
    # threshold from calibration prompts (0, 2, 4): the largest benign value there, never the test prompts'
    assert res["full-final-pinned"]["threshold"] == pytest.approx(0.014)
    assert res["full-final-pinned"]["frr"] == (1, 3)  # held-out 0.011, 0.013 pass, 0.015 exceeds it
    assert res["full-final-pinned"]["far"] == (0, 3)
    assert res["full-final"]["far"] == (3, 3)  # tolerating TF32 accepts the FP8 cheat
    assert "batch:4" not in res["full-final"]["benign_configs"]
    sep = {r["rule"]: r for r in at_scale.separation(df)}
    assert sep["full-final-pinned"]["ratio_per_family"]["fp8"] == pytest.approx(0.05 / 0.015)


def test_pinned_rules_pin_eager_execution_and_the_compile_ok_rules_tolerate_it(tmp_path):
    """A compiled executor moves the result beyond the kernel spread: the pinned rules leave it out
    of the tolerated set (eager is pinned), the `-compile-ok` rules tolerate it and so accept a
    cheat that lies between the two."""
    rows = []
    for pid in range(4):
        rows += [_row(pid, "canonical", "canonical", 0.0), _row(pid, "attention:x", "benign", 0.01),
                 _row(pid, "regional-compile", "benign", 0.03), _row(pid, "int8-wo", "malign", 0.02)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = {r["rule"]: r for r in at_scale.evaluate_rules(at_scale.load_rows([path]))}
    pinned, ok = res["full-final-pinned"], res["full-final-pinned-compile-ok"]
    assert "regional-compile" not in pinned["benign_configs"] and pinned["far"] == (0, 2)
    assert "regional-compile" in ok["benign_configs"] and ok["threshold"] == pytest.approx(0.03)
    assert ok["far"] == (2, 2) and ok["frr"] == (0, 4)


def _profile_row(pid, config, kind, early, final):
    r = _row(pid, config, kind, final)
    r["latent_rel_l2"] = {"step:3": early, "step:7": 2 * early, "switch": 3 * early, "final": final}
    return r


def test_the_profile_rule_tells_apart_what_the_final_distance_cannot(tmp_path):
    """Compile and int8 weights end equally far from the validator but diverge differently on the
    way (the cheat's error enters from the first step): the final-latent rule that tolerates
    compile accepts the cheat, the profile rule fitted on calibration prompts rejects it."""
    rng = np.random.default_rng(0)
    rows = []
    for pid in range(12):
        j = lambda: float(rng.uniform(0.9, 1.1))  # noqa: E731  (per-claim spread)
        rows += [_row(pid, "canonical", "canonical", 0.0),
                 _profile_row(pid, "attention:x", "benign", 1e-4 * j(), 0.01 * j()),
                 _profile_row(pid, "regional-compile", "benign", 1.5e-4 * j(), 0.03 * j()),
                 _profile_row(pid, "int8-wo", "malign", 5e-4 * j(), 0.025 * j())]
    rows.append(_row(1, "steps:3", "malign", 0.3))  # no profile: left out of that rule, not accepted
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = {r["rule"]: r for r in at_scale.evaluate_rules(at_scale.load_rows([path]))}
    assert res["full-final-pinned-compile-ok"]["far_per_family"]["int8-wo"] == (6, 6)
    prof = res["profile-pinned-compile-ok"]
    assert prof["far"] == (0, 6) and prof["frr"] == (0, 12)
    assert "regional-compile" in prof["benign_configs"]


def test_html_report_gives_each_rule_its_rates_and_a_plot_per_statistic(tmp_path):
    from sim.at_scale_html import html

    rng = np.random.default_rng(1)
    rows = []
    for pid in range(6):
        rows += [_row(pid, "canonical", "canonical", 0.0, local=0.0),
                 _profile_row(pid, "attention:x", "benign", 1e-4 * rng.uniform(0.9, 1.1), 0.01),
                 _profile_row(pid, "int8-wo", "malign", 5e-4 * rng.uniform(0.9, 1.1), 0.02)]
        rows[-1]["local"] = [{"k": 1, "local_err": 0.004}]
        rows[-2]["local"] = [{"k": 1, "local_err": 0.001}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = at_scale.load_rows([path])
    rules = at_scale.evaluate_rules(df)
    page = html(df, rules, {"source": "r.jsonl"})
    pinned = next(r for r in rules if r["rule"] == "full-final-pinned")
    assert at_scale.rate_str(*pinned["far"]) in page and at_scale.rate_str(*pinned["frr"]) in page
    assert page.count("data:image/png;base64,") == 4  # final, one-step, profile, guarded profile
    assert "profile-pinned-compile-ok" in page and "Emulation" in page and "int8-wo" in page


def test_a_compiling_validator_is_its_own_group_and_its_own_resume_key(tmp_path):
    """Records of a validator that compiles are never pooled with an eager validator's (their own
    preset/size group) and resume apart (the same generation under the other validator is not done)."""
    eager = [_row(pid, c, k, f) for pid in range(4) for c, k, f in
             (("canonical", "canonical", 0.0), ("attention:x", "benign", 0.01), ("int8-wo", "malign", 0.02))]
    compiled = [dict(r, validator_compile="regional") for r in eager]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eager + compiled))
    df = at_scale.load_rows([path])
    assert sorted(df["size"].unique()) == ["8x8x1", "8x8x1, validator compile regional"]
    groups = {(r["size"], r["rule"]) for r in at_scale.evaluate_rules(df)}
    assert ("8x8x1, validator compile regional", "full-final-pinned") in groups and ("8x8x1", "full-final-pinned") in groups
    assert at_scale.record_key(eager[0]) != at_scale.record_key(compiled[0])
    assert at_scale.record_key(eager[0])[-1] == "eager"
    assert at_scale.Block.from_dict({"preset": "tiny", "width": 64, "height": 64, "frames": 5, "steps": 4, "prompts": [0],
                                     "configs": ["canonical"], "validator_compile": "regional"}).validator_compile == "regional"


def test_cpu_executor_of_a_gpu_validator_drops_gpu_only_attention():
    from models.request import Runtime

    rt = parse_deviation("device:cpu").apply_runtime(Runtime(attention_backend="_native_cudnn"))
    assert rt.device == "cpu" and rt.attention_backend == "native"
    assert parse_deviation("device:cpu").apply_runtime(Runtime(attention_backend="_native_math")).attention_backend == "_native_math"


def test_unmeasured_statistic_is_no_claim_and_a_missing_latent_is_rejected(tmp_path):
    rows = []
    for pid in range(4):
        rows += [_row(pid, "canonical", "canonical", 0.0, local=0.0),
                 _row(pid, "attention:x", "benign", 0.01, local=0.001)]
    rows += [_row(1, "fp8", "malign", 0.05), _row(3, "fp8", "malign", 0.05, local=0.01)]  # p1: no replay measured
    missing = _row(3, "steps:3", "malign", 0.3, local=0.0)
    missing["local"] = [{"k": 1, "missing": True}]
    rows.append(missing)
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = {r["rule"]: r for r in at_scale.evaluate_rules(at_scale.load_rows([path]))}
    local = res["local-1step-pinned"]
    assert local["far"] == (0, 2)  # the unmeasured fp8 claim is left out, not counted as accepted
    assert local["far_per_family"] == {"fp8": (0, 1), "steps": (0, 1)}
    assert res["full-final-pinned"]["far"] == (0, 3)


def test_cheats_that_know_the_rules_are_never_fitted_on_and_are_counted_apart(tmp_path):
    """A weight cheat on the low-noise expert only is bit-identical to the validator up to the
    switch: the profile rule, fitted on the cheat on both experts, must meet it unseen. Adding
    adapted rows leaves every other score, threshold and rate as it was."""
    rng = np.random.default_rng(1)
    rows, adapted = [], []
    for pid in range(12):
        j = lambda: float(rng.uniform(0.9, 1.1))  # noqa: E731
        rows += [_row(pid, "canonical", "canonical", 0.0),
                 _profile_row(pid, "attention:x", "benign", 1e-4 * j(), 0.01 * j()),
                 _profile_row(pid, "regional-compile", "benign", 1.5e-4 * j(), 0.03 * j()),
                 _profile_row(pid, "int8-wo", "malign", 5e-4 * j(), 0.025 * j())]
        late = _profile_row(pid, "int8-wo:low", "malign", 0.0, 0.02 * j())
        adapted.append(dict(late, adapted=True))
    path, both = tmp_path / "r.jsonl", tmp_path / "both.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    both.write_text("".join(json.dumps(r) + "\n" for r in rows + adapted))
    alone = {r["rule"]: r for r in at_scale.evaluate_rules(at_scale.load_rows([path]))}
    res = {r["rule"]: r for r in at_scale.evaluate_rules(at_scale.load_rows([both]))}
    for name, r in alone.items():
        assert (res[name]["threshold"], res[name]["far"], res[name]["frr"]) == (r["threshold"], r["far"], r["frr"])
        assert r["far_adapted"] == (0, 0) and res[name]["far_adapted"][1] == 6
        assert set(res[name]["far_adapted_per_config"]) == {"int8-wo:low"}
    assert "int8-wo:low" not in res["full-final-pinned"]["far_per_family"]
    # zero distance before the switch reads as "more honest than honest" to the profile rule
    assert res["profile-pinned-compile-ok"]["far_adapted"] == (6, 6)
    df = at_scale.load_rows([both])
    md = at_scale.markdown(df, at_scale.evaluate_rules(df))
    assert "cheats that know the rules" in md and "int8-wo:low 6/6" in md


def test_guarded_profile_floors_distances_and_checks_the_final_latent(tmp_path):
    """The guarded rule scores a claim that is bit-identical to the validator before the switch as
    the closest honest claim (not past it), and rejects a claim whose final latent lies beyond every
    honest calibration one even when its profile looks honest."""
    rng = np.random.default_rng(2)
    rows = []
    for pid in range(12):
        j = lambda: float(rng.uniform(0.9, 1.1))  # noqa: E731
        rows += [_row(pid, "canonical", "canonical", 0.0),
                 _profile_row(pid, "attention:x", "benign", 1e-4 * j(), 0.01 * j()),
                 _profile_row(pid, "int8-wo", "malign", 5e-4 * j(), 0.025 * j()),
                 dict(_profile_row(pid, "int8-wo:low", "malign", 0.0, 0.011), adapted=True),
                 dict(_profile_row(pid, "fp8-scaled:low", "malign", 0.0, 0.05), adapted=True)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = at_scale.load_rows([path])
    calib = df["prompt_id"].map(at_scale.is_calibration_prompt)
    benign, malign = df["class"].eq("benign") & calib, df["class"].eq("malign") & calib & ~df["adapted"]
    raw = at_scale.profile_scores(df, benign, malign)
    floored = at_scale.profile_scores(df, benign, malign, floor=True)
    low = df["config"].eq("int8-wo:low")
    assert (raw[low] < raw[df["class"].eq("benign")].min()).all()  # extrapolated past every honest claim
    assert (floored[low] >= floored[df["class"].eq("benign")].min() - 1e-9).all()
    res = {r["rule"]: r for r in at_scale.evaluate_rules(df)}
    guarded = res["guarded-profile-pinned-compile-ok"]
    assert guarded["threshold"] == pytest.approx(0.0)
    assert guarded["far_adapted_per_config"]["fp8-scaled:low"] == (0, 6)  # its final latent is beyond honest
    assert res["profile-pinned-compile-ok"]["far_adapted_per_config"]["fp8-scaled:low"] == (6, 6)
    assert guarded["frr"] == (0, 6) and guarded["far"] == (0, 6)


def test_every_committed_plan_loads_and_names_registered_deviations():
    from pathlib import Path

    plans = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "plans").glob("*.json"))
    assert plans
    for path in plans:
        for block in at_scale.load_plan(path):
            for config in block.configs[1:]:
                parse_deviation(config)
            if block.prompt_file:
                assert len(at_scale._block_prompts(block)) > max(block.prompts), path.name
