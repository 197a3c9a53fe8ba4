"""The dry run for a new box, on the CPU with the tiny preset, as a Prefect flow; and the GPU
concurrency limit around model sections."""

import asyncio
import json
from pathlib import Path

import pytest

from models.request import Runtime
from sim.dryrun import DryRunParams, calibration_verdict

pytestmark = pytest.mark.slow


def test_dry_run_checks_and_verdict(prefect_harness, tmp_path):
    from flows.dryrun import DryRunFailed, dry_run_flow

    # asked for an H200 on a CPU: the device check fails, every other check passes (the calibration
    # check times sub-millisecond passes, so its verdict is judged by calibration_verdict's own test)
    params = DryRunParams(out=str(tmp_path / "dry"), deviations=("threads:1", "steps:6"), poc_nonces=2,
                          expect_gpu="H200", runtime=Runtime(threads=1))
    verdict = dry_run_flow(params, fail_on_check=False)
    checks = {c["check"]: c for c in verdict["checks"]}
    assert not verdict["passed"] and not checks["device"]["ok"]
    others = [c for name, c in checks.items() if name not in ("device", "calibration point")]
    assert all(c["ok"] for c in others), others
    assert {"attention backend", "TF32", "determinism", "rerun bit-identical", "PoC batch",
            "calibration point", "experiment prompt"} <= set(checks)
    md = (tmp_path / "dry" / "verdict.md").read_text()
    assert md.startswith("# Dry run: FAILED") and "**FAILED**" in md and len(md.splitlines()) < 40
    assert json.loads((tmp_path / "dry" / "verdict.json").read_text())["checks"] == verdict["checks"]
    cal = json.loads((tmp_path / "dry" / "calibration.json").read_text())
    assert len(cal["points"]) == 3 and cal["repeats"] == 3
    sizes = [pt["patches"] for pt in cal["points"]]
    assert checks["calibration point"]["ok"] == calibration_verdict(
        cal["alpha_seconds"], cal["beta_seconds"], cal["gamma_seconds"], cal["r2"], (min(sizes), max(sizes)))[0]
    with pytest.raises(DryRunFailed, match="device"):
        dry_run_flow(params.model_copy(update={"out": str(tmp_path / "dry2")}), fail_on_check=True)


@pytest.mark.parametrize("coef, ok, note", [
    ((1e-9, 2e-6, 6e-4, 0.99), True, ""),
    ((0.0, 2e-6, 6e-4, 0.5), True, "noisy"),
    ((0.0, 0.0, 8e-4, 0.0), False, "do not grow"),
    # the fit of the small preset on an H200 over the CPU shapes: positive but flat (launch-bound)
    ((2.34e-13, 2.01e-10, 5e-3, 0.0), False, "x1.00 from 16 to 192"),
    ((-1e-9, 2e-6, 6e-4, 1.0), False, "non-negative"),
    ((float("nan"), 2e-6, 6e-4, 1.0), False, "finite"),
])
def test_calibration_verdict(coef, ok, note):
    got, why = calibration_verdict(*coef, (16, 192))
    assert got is ok and note in why and (why == "") == (note == "")


def test_settings_in_force_follow_the_runtime():
    from models.presets import build_pipeline
    from sim.dryrun import settings_in_force

    pipe = build_pipeline("tiny", Runtime())
    on = settings_in_force(Runtime(tf32=True, deterministic=False, attention_backend="_native_math"), pipe)
    assert on["tf32_matmul"] and on["cudnn_benchmark"] and not on["deterministic_algorithms"]
    assert on["attention_backend"] == "_native_math"
    off = settings_in_force(Runtime(), pipe)
    assert not off["tf32_matmul"] and off["deterministic_algorithms"] and off["attention_backend"] == "native"


def test_model_sections_wait_for_the_gpu_limit(prefect_harness, tmp_path, monkeypatch):
    """With the GPU limit's only slot held elsewhere a prompt's generation never starts (it times
    out); the parameters were already written, nothing was generated. (A limit below the slots
    asked for is refused by Prefect's server at once, not waited on, so the limit is 1 and taken.)"""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    from flows.experiment import experiment_flow
    from sim.experiment import ExperimentParams

    async def create():
        async with get_client() as client:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu-busy", limit=1))

    asyncio.run(create())
    monkeypatch.setenv("T2VSIM_GPU_LIMIT", "gpu-busy")
    monkeypatch.setenv("T2VSIM_GPU_TIMEOUT", "2")
    params = ExperimentParams(prompts=2, out=str(tmp_path / "run"), deviations=("steps:6",), hwnoise_eps=(3e-3,))
    with concurrency("gpu-busy", occupy=1, strict=True), pytest.raises(TimeoutError):
        experiment_flow(params)
    assert (Path(params.out) / "params.json").exists()
    assert not (Path(params.out) / "gens").exists()


def test_a_gpu_box_is_calibrated_over_larger_shapes():
    from sim.dryrun import DEFAULT_CALIBRATION_SHAPES, GPU_CALIBRATION_SHAPES, calibration_shapes

    assert calibration_shapes(DryRunParams()) == DEFAULT_CALIBRATION_SHAPES
    assert calibration_shapes(DryRunParams(runtime=Runtime(device="cuda"))) == GPU_CALIBRATION_SHAPES
    asked = ((1, 4, 4), (1, 8, 8), (2, 8, 8))
    assert calibration_shapes(DryRunParams(runtime=Runtime(device="cuda"), calibration_shapes=asked)) == asked
    assert min(t * h * w for t, h, w in GPU_CALIBRATION_SHAPES) > 4 * max(t * h * w for t, h, w in DEFAULT_CALIBRATION_SHAPES)
