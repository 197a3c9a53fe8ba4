"""`t2vsim plan`: what an experiment costs before it runs: GPU-hours per configuration, wall time
on N GPUs, and the bytes of videos, latents (bf16 / fp32), solver states, fingerprints and
commitments, for any `ExperimentParams`; for the proposal's STAGE 1 plan, its arithmetic beside
the proposal's own figures.

The cost model:
- a transformer pass over N latent tokens takes `PricingParams.true_pass_seconds(N)` (the DiT
  pricing fit: docs/facts.md's H100 calibration, or a `t2vsim network calibrate` file), scaled on the
  `h200` profile so that it gives the 3.46 s per pass this project measured at 480p/81 frames
  (277.1 s for 80 passes);
- per generation the passes come from the effective request (a deviation's steps, size, CFG),
  times the batch size (`batch:N` computes N videos to deliver one), plus the text encoder and the
  VAE decode (scaled by pixels x frames from the measured 832x480x81 point);
- the validator's replays per claim, as `sim.policies` spends them: `checkpoint` one generation
  without the VAE, `segment` the mean length of its segments, `full` and `fingerprint` nothing more
  (they reuse the canonical generation, the validator's own view);
- the MP4 size scales with pixels x frames from the measured 31 MB at 832x480x81 (constant QP 12,
  random-weight frames, which are noise-like: real video at the same settings is smaller, but
  constant QP does not adapt to content the way a CRF encode does).
Planning figures, not measurements: deviations that skip work inside a pass (`cache:T`) or run a
cheaper kernel (`fp8`) are counted at the honest pass cost, i.e. as an upper bound.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sim.experiment import ExperimentParams

GB = 1e9
A14B_TOKENS_480P = 32_760  # 21 x 30 x 52 patches: 832x480, 81 frames
MEASURED_H200_PASS_SECONDS = (180.6 + 96.5) / 80  # high-noise 52 passes + low-noise 28 passes


class GpuProfile(BaseModel):
    """Seconds and bytes of one GPU type, apart from the transformer passes' fit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    pass_scale: float = Field(1.0, gt=0, description="factor on the pricing fit's pass seconds")
    text_encoder_seconds: float = Field(0.61, ge=0, description="per generation")
    vae_seconds_480p: float = Field(10.2, ge=0, description="VAE decode of an 832x480x81 video")
    build_seconds: float = Field(90.0, ge=0, description="building the pipeline, once per worker")
    mp4_bytes_480p: float = Field(31e6, gt=0, description="MP4 of an 832x480x81 video at the project's codec settings")
    source: str = ""


def _h100_fit():
    from sim.pricing import PricingParams

    return PricingParams()


PROFILES = {
    "h200": GpuProfile(
        name="h200", pass_scale=MEASURED_H200_PASS_SECONDS / _h100_fit().true_pass_seconds(A14B_TOKENS_480P),
        source="measured by this project on one NVIDIA H200 (a14b-random, 832x480, 81 frames, 40 steps): "
               "text encoder 0.61 s, 3.46 s per pass, VAE 10.2 s (float32), build 90 s, MP4 31 MB"),
    "h100": GpuProfile(
        name="h100", text_encoder_seconds=0.035, vae_seconds_480p=2.07, build_seconds=93.5,
        source="docs/facts.md: A14B on one H100 (pass fit; encoder 0.035 s; VAE 2.07 s in bf16, where this "
               "project decodes in float32); MP4 size as measured on the H200"),
}

# The proposal's STAGE 1: 1 canonical + 3 benign + 6 malign configurations, ~1,000 prompts, the
# minimum A14B format (832x480, 81 frames, 40 steps). The benign three are the GPU differences
# measured on the H200 (docs/facts.md); the malign six the proposal's kinds of cheat.
STAGE1_PARAMS = ExperimentParams(
    preset="a14b-random", prompts=1000, request={},
    deviations=("attention:_native_flash", "batch:2", "tf32",
                "fp8", "steps:20", "one-expert:low", "no-cfg", "cache:0.5", "prompt-swap"),
    hwnoise_eps=(), hwnoise_headline=None, out="runs/stage1")
# What the proposal's comment states for that plan (its own arithmetic).
PROPOSAL = {"generations": 10_000, "gpu_hours": 1_200, "gpu_hours_budget": 1_500, "video_gb": 35,
            "latents_bf16_gb": 125, "latents_fp32_gb": 250, "total_gb": "200-300", "video_hours": 14}


class PlanError(ValueError):
    pass


def _prompt_count(params: ExperimentParams) -> int:
    src = params.prompts
    if isinstance(src, int) or str(src).isdigit():
        return int(src)
    from sim.experiment import load_prompts

    return len(load_prompts(params))


def _pricing(calibration: str | None):
    from sim.pricing import PricingParams

    return PricingParams.from_calibration(calibration) if calibration else PricingParams()


def _segment_share(request, spec, capture) -> float:
    """Mean share of the passes a segment replay re-runs (one of the stored stretches, uniformly)."""
    from models.engine import forward_passes, resolve_captures, schedule
    from models.presets import SCHEDULER_CONFIG

    timesteps = schedule(request, SCHEDULER_CONFIG)
    at = sorted(resolve_captures(capture, timesteps, spec.boundary_ratio).values())
    if len(at) < 2:
        return 0.0
    boundary = spec.boundary_ratio * 1000
    per_step = [2 if (request.uses_cfg_high if t >= boundary else request.uses_cfg_low) else 1 for t in timesteps]
    lengths = [sum(per_step[a + 1:b + 1]) for a, b in zip(at[:-1], at[1:])]
    return sum(lengths) / len(lengths) / max(1, forward_passes(request))


# The pixels of a 480p, 81-frame video: the size the profiles' VAE time and MP4 bytes are given for.
PIXELS_480P = 832 * 480 * 81


def plan(params: ExperimentParams, *, gpus: int = 8, gpu: str = "h200", calibration: str | None = None) -> dict[str, Any]:
    """The plan of `params` on `gpus` GPUs of profile `gpu` (see the module docstring)."""
    from models.engine import forward_passes
    from models.presets import preset_spec

    if gpu not in PROFILES:
        raise PlanError(f"gpu: unknown profile {gpu!r}; allowed: {', '.join(PROFILES)}")
    if gpus < 1:
        raise PlanError(f"gpus: must be >= 1, got {gpus}")
    prof, pricing = PROFILES[gpu], _pricing(calibration)
    n = _prompt_count(params)
    spec = preset_spec(params.preset)
    base = params.base_request("plan", 0)
    claimed_tokens = base.latent_tokens(spec.vae_stride, spec.patch_size)
    claimed_passes = forward_passes(base)
    pass_s = prof.pass_scale * pricing.true_pass_seconds(claimed_tokens)

    def video_seconds(req, batch: int) -> float:
        tok = req.latent_tokens(spec.vae_stride, spec.patch_size)
        px = req.width * req.height * req.frames
        return (forward_passes(req) * prof.pass_scale * pricing.true_pass_seconds(tok) * batch
                + prof.text_encoder_seconds + prof.vae_seconds_480p * px / PIXELS_480P * batch)

    # validator replays per claim: checkpoint (all passes, no VAE), segment (its mean share)
    replay_passes = 0.0
    if "checkpoint" in params.policies:
        replay_passes += claimed_passes
    if "segment" in params.policies:
        replay_passes += claimed_passes * _segment_share(base, spec, params.capture)
    replay_s = replay_passes * pass_s + (prof.text_encoder_seconds if replay_passes else 0.0)

    rows = _config_rows(params, base, spec, n, video_seconds, replay_s)
    configs = len(rows)
    generations = n * configs
    gen_h = sum(r["gpu_hours"] for r in rows)
    val_h = sum(r["validator_gpu_hours"] for r in rows)
    # wall time: prompts spread over the GPUs, each GPU pays one pipeline build
    per_prompt_s = sum(r["seconds_per_video"] + r["validator_seconds_per_claim"] for r in rows)
    wall_h = (math.ceil(n / gpus) * per_prompt_s + prof.build_seconds) / 3600

    storage, latent_elems = _storage(params, spec, base, prof, generations)
    names = list(params.capture)
    return {
        "preset": params.preset, "prompts": n, "configurations": configs, "generations": generations,
        "request": {"width": base.width, "height": base.height, "frames": base.frames, "steps": base.steps},
        "gpu": prof.name, "gpus": gpus, "profile_source": prof.source, "pass_seconds": pass_s,
        "pricing_source": pricing.source, "rows": rows,
        "generation_gpu_hours": gen_h, "validator_gpu_hours": val_h, "total_gpu_hours": gen_h + val_h,
        "wall_hours": wall_h, "storage_bytes": storage,
        "video_hours": generations * base.frames / base.fps / 3600,
        "latent_elements": latent_elems, "policies": list(params.policies), "capture": names,
    }


def _config_rows(params: ExperimentParams, base, spec, n: int, video_seconds, replay_s: float) -> list[dict]:
    """One row per configuration (canonical, then each deviation): passes, tokens, seconds and GPU-hours
    of its generations and of the validator's replays of them."""
    from models.deviations import parse_deviation
    from models.engine import forward_passes

    rows = []
    for dev_spec in (None,) + params.all_deviations():
        dev = parse_deviation(dev_spec) if dev_spec else None
        req = dev.apply_request(base) if dev else base
        batch = dev.apply_runtime(params.validator_runtime).batch_size if dev else params.validator_runtime.batch_size
        gen_s = video_seconds(req, batch)
        val_s = replay_s if dev else 0.0
        rows.append({
            "configuration": dev_spec or "canonical", "kind": dev.kind if dev else "canonical",
            "forward_passes": forward_passes(req) * batch,
            "tokens": req.latent_tokens(spec.vae_stride, spec.patch_size),
            "seconds_per_video": gen_s, "validator_seconds_per_claim": val_s,
            "gpu_hours": n * gen_s / 3600, "validator_gpu_hours": n * val_s / 3600,
        })
    return rows


def _storage(params: ExperimentParams, spec, base, prof, generations: int) -> tuple[dict[str, float], int]:
    """Bytes of everything the run keeps (and what the chain would), and the latent's element count."""
    from models.presets import SCHEDULER_CONFIG

    z = int(spec.transformer_config.get("in_channels", spec.z_dim))
    _, _, t, h, w = base.latent_shape(spec.vae_stride, z)
    latent_elems = z * t * h * w
    names = [c for c in params.capture]
    solver_ckpts = [c for c in names if c != "init"]  # the initial noise has no solver state yet
    order = int(SCHEDULER_CONFIG.get("solver_order", 2))
    # UniPC's state: `order` model outputs and the last sample (latent-sized, float32) and `order`
    # timesteps (one 8-byte scalar each)
    solver_bytes = (order + 1) * latent_elems * 4 + order * 8
    video_b = prof.mp4_bytes_480p * base.width * base.height * base.frames / PIXELS_480P
    storage = {
        "videos": generations * video_b,
        "latents_bf16": generations * len(names) * latent_elems * 2,
        "latents_fp32": generations * len(names) * latent_elems * 4,
        "solver_states_fp32": generations * len(solver_ckpts) * solver_bytes,
        "fingerprints": generations * len(names) * params.fingerprint_k * 2,
        "commitments": generations * 32,  # the SHA-256 of each video on the chain
    }
    storage["as_stored_here"] = storage["videos"] + storage["latents_fp32"] + storage["solver_states_fp32"]
    return storage, latent_elems


def compare_with_proposal(p: dict[str, Any]) -> list[dict[str, Any]]:
    """This plan's figures beside the proposal's, with where and why they differ."""
    s = p["storage_bytes"]
    per_video_h = p["generation_gpu_hours"] * 3600 / p["generations"]
    rows = [
        ("generations", PROPOSAL["generations"], p["generations"], "1,000 prompts x 10 configurations in both"),
        ("hours of video", PROPOSAL["video_hours"], p["video_hours"], "81 frames at 16 fps"),
        ("generation GPU-hours", PROPOSAL["gpu_hours"], p["generation_gpu_hours"],
         f"the proposal implies {PROPOSAL['gpu_hours'] * 3600 / PROPOSAL['generations']:.0f} s per video (from Wan2.2's "
         f"published benchmark); this plan {per_video_h:.0f} s per generation on average: "
         f"{p['rows'][0]['seconds_per_video']:.0f} s per honest video on the `{p['gpu']}` profile, the configurations "
         "with fewer or more passes as in the table above"),
        ("validator replay GPU-hours", None, p["validator_gpu_hours"],
         "not in the proposal (it counts generation alone): checkpoint and segment replays of every claim"),
        ("video GB", PROPOSAL["video_gb"], s["videos"] / GB,
         "the project encodes at constant QP 12 (bit-reproducible, measured 31 MB per 480p video on random-weight, "
         "noise-like frames); the proposal's 3.5 MB per video is a typical rate-controlled encode"),
        ("latents GB, bf16", PROPOSAL["latents_bf16_gb"], s["latents_bf16"] / GB,
         f"{len(p['capture'])} latents of {p['latent_elements']:,} values per generation: agrees"),
        ("latents GB, fp32", PROPOSAL["latents_fp32_gb"], s["latents_fp32"] / GB,
         "agrees; this project stores latents in float32"),
        ("solver states GB, fp32", None, s["solver_states_fp32"] / GB,
         "not in the proposal: the segment policy needs the UniPC state (3 latent-sized tensors) at each checkpoint after the first"),
        ("fingerprints GB", None, s["fingerprints"] / GB, "192 bytes per generation"),
        ("total GB as this project stores it", PROPOSAL["total_gb"], s["as_stored_here"] / GB,
         "videos + fp32 latents + solver states"),
    ]
    return [{"quantity": q, "proposal": prop, "this_plan": mine, "note": note} for q, prop, mine, note in rows]


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"


def to_markdown(p: dict[str, Any], comparison: list[dict[str, Any]] | None = None) -> str:
    r = p["request"]
    lines = [f"# Plan: {p['prompts']:,} prompts x {p['configurations']} configurations of `{p['preset']}` "
             f"({r['width']}x{r['height']}, {r['frames']} frames, {r['steps']} steps)", "",
             f"- GPU profile `{p['gpu']}`: {p['profile_source']}; {p['pass_seconds']:.3g} s per pass at the claimed size",
             f"- pass-time fit: {p['pricing_source']}",
             f"- policies {', '.join(p['policies'])}; checkpoints {', '.join(p['capture'])}", "",
             "| configuration | kind | passes | tokens | s per video | validator s per claim | GPU-h | validator GPU-h |",
             "|---|---|---|---|---|---|---|---|"]
    for row in p["rows"]:
        lines.append(f"| {row['configuration']} | {row['kind']} | {row['forward_passes']} | {row['tokens']:,} | "
                     f"{_num(row['seconds_per_video'])} | {_num(row['validator_seconds_per_claim'])} | "
                     f"{_num(row['gpu_hours'])} | {_num(row['validator_gpu_hours'])} |")
    s = p["storage_bytes"]
    lines += ["", f"- **GPU-hours**: generation {_num(p['generation_gpu_hours'])}, validator replays "
              f"{_num(p['validator_gpu_hours'])}, total {_num(p['total_gpu_hours'])}",
              f"- **wall time on {p['gpus']} GPU(s)**: {_num(p['wall_hours'])} h (prompts spread over the GPUs, "
              "one pipeline build each)",
              f"- **storage**: videos {_num(s['videos'] / GB)} GB; latents {_num(s['latents_bf16'] / GB)} GB bf16 / "
              f"{_num(s['latents_fp32'] / GB)} GB fp32; solver states {_num(s['solver_states_fp32'] / GB)} GB; "
              f"fingerprints {s['fingerprints'] / 1e6:,.3g} MB; commitments {s['commitments'] / 1e6:,.3g} MB; "
              f"as stored by this project {_num(s['as_stored_here'] / GB)} GB"]
    if comparison:
        lines += ["", "## Beside the proposal's figures", "", "| quantity | proposal | this plan | where they differ |",
                  "|---|---|---|---|"]
        for c in comparison:
            lines.append(f"| {c['quantity']} | {_num(c['proposal'])} | {_num(c['this_plan'])} | {c['note']} |")
    return "\n".join(lines) + "\n"
