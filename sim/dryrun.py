"""A dry run for a new GPU box before it joins the STAGE 1 run: one canonical generation and one
of each deviation on the chosen preset (with every policy's scoring), a PoC batch and a
calibration point; checks that the device, the attention backend, TF32 and the determinism
settings are what was asked and that a rerun is bit-identical; writes a one-page verdict
(RUN/verdict.md, RUN/verdict.json). No Prefect here: `flows/dryrun.py` wires it into a flow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.deviations import BENIGN_DEFAULT, MALIGN_DEFAULT
from models.io import check_out_dir, write_atomic
from models.request import Runtime
from sim.experiment import RequestOverrides

DEFAULT_CALIBRATION_SHAPES = ((1, 8, 8), (2, 8, 16), (3, 16, 16))
# On a GPU those shapes are launch-bound (a pass costs the same at every one of them), so a GPU box
# is calibrated over larger latents (up to 480p x 17 frames' 5 x 60 x 104).
GPU_CALIBRATION_SHAPES = ((3, 30, 52), (5, 30, 52), (5, 60, 104))
# The fit must predict at least this much more time for the largest shape than for the smallest.
MIN_CALIBRATION_GROWTH = 1.2
# What a dry run writes into its output directory (a directory holding anything else is refused).
DRY_RUN_FILES = ("experiment", "calibration.json", "verdict.json", "verdict.md")


class DryRunParams(BaseModel):
    """What the box is asked to be, and how much to run on it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = Field("tiny", description="model preset (the STAGE 1 run: a14b-random or path:DIR)")
    runtime: Runtime = Field(default_factory=Runtime, description="the asked device, dtype, attention backend, "
                                                                  "TF32 and determinism")
    expect_gpu: str | None = Field(None, description="text the device name must contain (e.g. 'H200'); None: any")
    request: RequestOverrides = Field(default_factory=lambda: RequestOverrides(steps=8, truncate_prompt=True),
                                    description="overrides of the preset's request defaults")
    deviations: tuple[str, ...] = Field(BENIGN_DEFAULT + MALIGN_DEFAULT, description="one generation of each")
    prompt: str = Field("a red fox trotting through fresh snow at dawn", description="the prompt")
    poc_nonces: int = Field(4, ge=1, le=4096, description="nonces of the PoC batch")
    calibration_shapes: tuple[tuple[int, int, int], ...] | None = Field(
        None, description="latent (T, H, W) shapes of the calibration point's fit (3 or more); None: "
        "DEFAULT_CALIBRATION_SHAPES on a CPU, GPU_CALIBRATION_SHAPES on a GPU")
    out: str = Field("runs/dryrun", description="output directory")


def device_name(device: str) -> str:
    import platform

    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def settings_in_force(runtime: Runtime, pipe) -> dict[str, Any]:
    """What torch and diffusers actually use inside `runtime.apply()` and the engine's backend switch."""
    import torch
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from models.patching import pipeline_attention_backend

    with runtime.apply(), pipeline_attention_backend(pipe, runtime.attention_backend):
        return {
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "attention_backend": str(_AttentionBackendRegistry._active_backend.value),
        }


def _check(name: str, ok: bool, asked: Any, found: Any, note: str = "") -> dict[str, Any]:
    return {"check": name, "ok": bool(ok), "asked": asked, "found": found, "note": note}


def run_dry_run(params: DryRunParams) -> dict[str, Any]:
    """Run every step and write RUN/verdict.md and RUN/verdict.json; returns the verdict."""
    import torch

    from models.presets import build_pipeline

    rt = params.runtime
    out = check_out_dir(params.out, DRY_RUN_FILES)
    out.mkdir(parents=True, exist_ok=True)
    checks, timing = [], {}
    name = device_name(rt.device)
    checks.append(_check("device", params.expect_gpu is None or params.expect_gpu.lower() in name.lower(),
                         params.expect_gpu or rt.device, name))
    t0 = time.perf_counter()
    pipe = build_pipeline(params.preset, rt)
    timing["build"] = time.perf_counter() - t0
    checks += _settings_checks(rt, settings_in_force(rt, pipe))
    eparams, stage = _experiment_check(params, out, checks, timing)
    _rerun_check(out, rt, eparams, checks, timing)
    _poc_check(params, pipe, checks, timing)
    _calibration_check(params, out, checks, timing)
    verdict = {
        "passed": all(c["ok"] for c in checks), "device": name, "preset": params.preset,
        "runtime": json.loads(rt.model_dump_json()), "checks": checks, "seconds": timing, "stage_seconds": stage,
        "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(out / "verdict.json", json.dumps(verdict, indent=1, default=str))
    write_atomic(out / "verdict.md", verdict_markdown(verdict))
    return verdict


def _settings_checks(rt: Runtime, found: dict[str, Any]) -> list[dict[str, Any]]:
    """The attention backend, TF32 and determinism in force against those asked for."""
    return [
        _check("attention backend", found["attention_backend"] == rt.attention_backend, rt.attention_backend,
               found["attention_backend"], "diffusers' active backend (the SDPA kernel under 'native' is PyTorch's choice)"),
        _check("TF32", found["tf32_matmul"] == rt.tf32 and found["tf32_cudnn"] == rt.tf32, rt.tf32,
               {"matmul": found["tf32_matmul"], "cudnn": found["tf32_cudnn"]}),
        _check("determinism", found["deterministic_algorithms"] == rt.deterministic
               and found["cudnn_deterministic"] == rt.deterministic and found["cudnn_benchmark"] == (not rt.deterministic),
               rt.deterministic, {k: found[k] for k in ("deterministic_algorithms", "cudnn_deterministic", "cudnn_benchmark")}),
    ]


def _experiment_check(params: DryRunParams, out: Path, checks: list, timing: dict):
    """One canonical generation and one of each deviation, scored by every policy: one prompt of an
    experiment. Returns its ExperimentParams and the prompt's stage timings."""

    from sim import experiment as ex

    eparams = ex.ExperimentParams(preset=params.preset, prompts=2, request=params.request,
                                  deviations=params.deviations, hwnoise_eps=(ex.HWNOISE_CALIBRATED_EPS,),
                                  validator_runtime=params.runtime, bootstrap=0, strips=0, out=str(out / "experiment"))
    ex.open_run(eparams)
    t0 = time.perf_counter()
    rows = ex.run_prompt(eparams, 0, params.prompt, 2)
    timing["experiment_prompt"] = time.perf_counter() - t0
    stage = json.loads((out / "experiment" / "scores" / "p0000.timing.json").read_text())
    finite = bool(np.isfinite(rows["score"].to_numpy()[rows["kind"].to_numpy() == "benign"]).all())
    checks.append(_check("experiment prompt", len(rows) > 0 and finite, f"{1 + len(eparams.all_deviations())} generations",
                         f"{len(rows)} score rows", "every benign score finite"))
    return eparams, stage


def _rerun_check(out: Path, rt: Runtime, eparams, checks: list, timing: dict) -> None:
    """A rerun of the canonical generation, from nothing stored: bit-identical video and latents."""
    import torch

    from models.engine import Generation, generate

    canonical = Generation.load(out / "experiment" / "gens" / "p0000" / "canonical")
    t0 = time.perf_counter()
    again = generate(canonical.request, rt, None, capture=eparams.executor_capture())
    timing["canonical_rerun"] = time.perf_counter() - t0
    same_latents = all(torch.equal(canonical.latents[k], again.latents[k]) for k in canonical.latents)
    checks.append(_check("rerun bit-identical", again.sha256 == canonical.sha256 and same_latents,
                         "same MP4 and latents", f"MP4 {'same' if again.sha256 == canonical.sha256 else 'differs'}, "
                         f"latents {'same' if same_latents else 'differ'}"))


def _poc_check(params: DryRunParams, pipe, checks: list, timing: dict) -> None:
    """A PoC batch, twice: finite vectors, identical on the rerun."""

    from models.poc import poc_shape, poc_vectors

    rt = params.runtime
    shape = poc_shape(params.preset)
    t0 = time.perf_counter()
    v1 = poc_vectors(pipe, "dryrun-block", "dryrun-key", list(range(params.poc_nonces)), shape=shape, runtime=rt)
    timing["poc_batch"] = time.perf_counter() - t0
    v2 = poc_vectors(pipe, "dryrun-block", "dryrun-key", list(range(params.poc_nonces)), shape=shape, runtime=rt)
    checks.append(_check("PoC batch", bool(np.isfinite(v1.astype(np.float32)).all()) and np.array_equal(v1, v2),
                         f"{params.poc_nonces} nonces, finite, rerun identical",
                         f"{v1.shape[0]} vectors, rerun {'identical' if np.array_equal(v1, v2) else 'differs'}"))


def calibration_verdict(alpha: float, beta: float, gamma: float, r2: float,
                        patches: tuple[int, int] = (1, 2)) -> tuple[bool, str]:
    """Whether a calibration fit can price work on this device, and a note on its quality.

    The fit is usable when its coefficients are finite and non-negative and it predicts seconds that
    grow over the calibrated sizes: the largest shape (`patches`: smallest and largest patch count)
    at least MIN_CALIBRATION_GROWTH times the smallest. A flat fit cannot tell a large request from a
    small one; on a GPU it means the shapes were launch-bound. The R^2 is reported, not judged:
    timings of small shapes on a busy host are noisy."""
    coef = np.array([alpha, beta, gamma], dtype=float)
    if not np.all(np.isfinite(coef)) or np.any(coef < 0):
        return False, "the fit's coefficients are not finite and non-negative"
    small, large = (alpha * n * n + beta * n + gamma for n in patches)
    growth = large / small if small > 0 else (np.inf if large > 0 else 1.0)
    if growth < MIN_CALIBRATION_GROWTH:
        return False, (f"seconds do not grow with the size (x{growth:.2f} from {patches[0]} to {patches[1]} patches): "
                       "the shapes are launch-bound or the device is busy; calibrate with larger shapes")
    return True, "" if r2 >= 0.9 else f"R^2 {r2:.2f} < 0.9: the timings are noisy, rerun on an idle device"


def calibration_shapes(params: DryRunParams) -> tuple[tuple[int, int, int], ...]:
    """The asked shapes, else the device's defaults."""
    if params.calibration_shapes is not None:
        return params.calibration_shapes
    return DEFAULT_CALIBRATION_SHAPES if params.runtime.device == "cpu" else GPU_CALIBRATION_SHAPES


def _calibration_check(params: DryRunParams, out: Path, checks: list, timing: dict) -> None:
    """A calibration point of the DiT price (alpha, beta fitted over a few small shapes)."""
    from sim.pricing import PricingError, calibrate

    t0 = time.perf_counter()
    try:
        # calibrate() feeds inputs in its first parameter's dtype, so it runs float32 (its default);
        # the median of 3 timings per shape keeps one descheduled pass from flattening the fit
        cal = calibrate(params.preset, params.runtime.model_copy(update={"dtype": "float32"}),
                        grid=calibration_shapes(params), repeats=3, warmup=1)
    except PricingError as e:
        checks.append(_check("calibration point", False, "a fit of pass seconds", "no fit", str(e)))
        return
    finally:
        timing["calibration"] = time.perf_counter() - t0
    cal.save(out / "calibration.json")
    sizes = [pt.patches for pt in cal.points]
    ok, note = calibration_verdict(cal.alpha_seconds, cal.beta_seconds, cal.gamma_seconds, cal.r2,
                                   (min(sizes), max(sizes)))
    checks.append(_check("calibration point", ok, "a fit of pass seconds growing with the size",
                         f"alpha {cal.alpha_seconds:.3g}, beta {cal.beta_seconds:.3g}, R^2 {cal.r2:.3f}", note))


def verdict_markdown(v: dict[str, Any]) -> str:
    rt = v["runtime"]
    lines = [f"# Dry run: {'PASSED' if v['passed'] else 'FAILED'}", "",
             f"- device: {v['device']} ({rt['device']}, {rt['dtype']}), preset `{v['preset']}`, torch {v['torch']}, "
             f"{v['measured_at']}",
             f"- asked: attention `{rt['attention_backend']}`, TF32 {rt['tf32']}, deterministic {rt['deterministic']}, "
             f"compile {rt['compile']}, offload `{rt['offload']}`", "",
             "| check | result | asked | found | note |", "|---|---|---|---|---|"]
    for c in v["checks"]:
        lines.append(f"| {c['check']} | {'ok' if c['ok'] else '**FAILED**'} | {c['asked']} | {c['found']} | {c['note']} |")
    s, st = v["seconds"], v["stage_seconds"]
    lines += ["", "Seconds on this box: " + ", ".join(f"{k.replace('_', ' ')} {x:.2f}" for k, x in s.items())
              + "; within the experiment prompt: " + ", ".join(f"{k.replace('_', ' ')} {x:.2f}" for k, x in st.items()),
              "", "Feed `calibration.json` to `t2vsim plan --calibration` to plan a run on this box."]
    return "\n".join(lines) + "\n"
