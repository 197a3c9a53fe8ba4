"""`t2vsim plan`: the arithmetic of the cost model and of storage, checked against a real tiny
generation's files, and the STAGE 1 plan beside the proposal's figures."""

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from sim import experiment as ex
from sim.plan import MEASURED_H200_PASS_SECONDS, PROFILES, STAGE1_PARAMS, compare_with_proposal, plan


def test_stage1_arithmetic():
    p = plan(STAGE1_PARAMS, gpus=8)
    assert p["generations"] == 10_000 and p["configurations"] == 10
    canonical = p["rows"][0]
    assert canonical["forward_passes"] == 80 and canonical["tokens"] == 32_760
    # 80 passes at the measured 3.46 s, encoder and VAE as measured: the 288 s per video of the H200 run
    assert canonical["seconds_per_video"] == pytest.approx(80 * MEASURED_H200_PASS_SECONDS + 0.61 + 10.2)
    assert canonical["seconds_per_video"] == pytest.approx(288, abs=1)
    by = {r["configuration"]: r for r in p["rows"]}
    assert by["no-cfg"]["forward_passes"] == 40 and by["batch:2"]["forward_passes"] == 160
    assert by["steps:20"]["forward_passes"] == 40
    # three latents of 16 x 21 x 60 x 104 per generation: the proposal's ~125 / ~250 GB
    assert p["latent_elements"] == 16 * 21 * 60 * 104
    assert p["storage_bytes"]["latents_bf16"] == 10_000 * 3 * 16 * 21 * 60 * 104 * 2
    assert p["storage_bytes"]["latents_fp32"] / 1e9 == pytest.approx(250, rel=0.02)
    assert p["storage_bytes"]["videos"] == pytest.approx(10_000 * 31e6)
    assert p["total_gpu_hours"] == pytest.approx(p["generation_gpu_hours"] + p["validator_gpu_hours"])
    # wall time: 125 prompts per GPU, one build each
    per_prompt = sum(r["seconds_per_video"] + r["validator_seconds_per_claim"] for r in p["rows"])
    assert p["wall_hours"] == pytest.approx((125 * per_prompt + PROFILES["h200"].build_seconds) / 3600)
    assert plan(STAGE1_PARAMS, gpus=16)["wall_hours"] < p["wall_hours"]
    rows = {r["quantity"]: r for r in compare_with_proposal(p)}
    assert rows["video GB"]["proposal"] == 35 and rows["video GB"]["this_plan"] > 35 * 5
    assert "constant QP" in rows["video GB"]["note"]


def test_planned_bytes_match_a_real_generation(tmp_path):
    """The planner's latent, solver-state and fingerprint bytes per generation equal what the
    engine writes and the fingerprint policy keeps (tiny preset)."""
    from safetensors import safe_open

    from models.engine import generate

    params = ex.ExperimentParams(prompts=2, deviations=("fp8",), hwnoise_eps=(3e-3,), out=str(tmp_path))
    p = plan(params, gpus=1)
    per_gen = {k: v / p["generations"] for k, v in p["storage_bytes"].items()}
    gen = generate(params.base_request("a fox", 0), params.validator_runtime, None, capture=params.capture)
    gen.save(tmp_path / "g")
    latents = solver = 0
    with safe_open(str(tmp_path / "g" / "latents.safetensors"), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if key.startswith("solver/"):
                solver += t.numel() * t.element_size()
            else:
                latents += t.numel() * t.element_size()
    assert latents == per_gen["latents_fp32"]
    assert solver == per_gen["solver_states_fp32"]
    assert per_gen["fingerprints"] == 3 * 32 * 2  # the 192 bytes of the fingerprint policy
    assert p["rows"][0]["forward_passes"] == gen.cost.total_passes


def test_cli_plan_prints_the_comparison_and_refuses_bad_input(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--gpus", "8", "--out", str(tmp_path / "plan.json")])
    assert res.exit_code == 0, res.output
    assert "Beside the proposal's figures" in res.output and "1,200" in res.output
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["generations"] == 10_000 and data["proposal"]
    cfg = tmp_path / "params.json"
    cfg.write_text(ex.ExperimentParams(prompts=10, deviations=("steps:6",), hwnoise_eps=(3e-3,)).model_dump_json())
    res = runner.invoke(app, ["plan", "--config", str(cfg), "--gpus", "2"])
    assert res.exit_code == 0, res.output
    assert "10 prompts x 3 configurations" in res.output and "Beside the proposal" not in res.output
    for extra, needle in ((["--gpu", "a100"], "gpu: unknown profile 'a100'"), (["--gpus", "0"], "gpus: must be >= 1"),
                          (["--config", str(tmp_path / "none.json")], "cannot read")):
        res = runner.invoke(app, ["plan", *extra])  # a domain error: status 1 (flows/cli_common.py)
        assert res.exit_code == 1 and needle in " ".join(res.output.split()), res.output
