"""Measured seconds for the pricing model: one process on a GPU, `a14b-random` built once.

- one high-noise expert pass (batch 1, bf16, the default runtime) per latent shape of the pricing
  grid: 832x480 and 1280x720 at 17, 33, 49, 65 and 81 frames (the low-noise expert has the same
  architecture; one shape checks it);
- the VAE decode (float32, the default) per shape, as far as memory allows;
- end-to-end generations through `models.engine.generate`, whose per-stage seconds check that
  "text encoder + passes x pass time + VAE" predicts a whole run.

    python benchmarks/gpu_pricing.py --out DIR [--deadline SECONDS]

Writes DIR/gpu_pricing.json after every measurement. `sim/pricing.py` (`measured_fairness`) turns
it into revenue per measured GPU-second across the fairness grid.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import gpu_timing  # the benchmarks folder: on the path when the script runs
from gpu_timing import timed

T0 = time.perf_counter()
SIZES = ((832, 480), (1280, 720))
FRAMES = (17, 33, 49, 65, 81)
DEVICE = "cuda"


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=480)
    ap.add_argument("--preset", default="a14b-random", help="tiny with --device cpu: a dry run of the script")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--scale", type=int, default=1, help="divide sizes by this (dry runs on tiny)")
    return ap.parse_args()


class _Results:
    """The result dict, written to OUT/gpu_pricing.json (atomically) on every save, and the time left."""

    def __init__(self, out: Path, deadline: float, res: dict):
        self.out, self.deadline, self.res = out, deadline, res

    def save(self) -> None:
        tmp = self.out / ".gpu_pricing.json.tmp"
        tmp.write_text(json.dumps(self.res, indent=1))
        tmp.replace(self.out / "gpu_pricing.json")

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - T0)


def _expert_passes(pipe, spec, sizes, g, results: _Results) -> None:
    """One timed high-noise expert pass per shape (and the low-noise one on the smallest)."""
    res = results.res
    emb = torch.randn(1, spec.text_len, spec.transformer_config["text_dim"], generator=g).to(DEVICE, torch.bfloat16)
    ts = torch.tensor([700.0], device=DEVICE)
    for w, h in sizes:
        for f in FRAMES:
            shape = ((f - 1) // 4 + 1, h // 8, w // 8)
            tokens = shape[0] * (shape[1] // 2) * (shape[2] // 2)
            if results.left() < 60:
                break
            x = torch.randn(1, spec.z_dim, *shape, generator=g).to(DEVICE, torch.bfloat16)
            experts = [("high", pipe.transformer)] + ([("low", pipe.transformer_2)] if (f, w) == (17, sizes[0][0]) else [])
            for name, m in experts:
                sec, _ = timed(lambda: m(hidden_states=x, timestep=ts, encoder_hidden_states=emb, return_dict=False), repeats=2)
                res["passes"].append({"width": w, "height": h, "frames": f, "latent": list(shape), "tokens": tokens,
                                      "expert": name, "seconds": sec})
                print(res["passes"][-1], flush=True)
            results.save()


def _vae_decodes(pipe, sizes, g, results: _Results) -> None:
    """The VAE: one untimed decode of the smallest shape, then one timed decode per shape."""
    res = results.res
    first = True
    for w, h in sizes:
        for f in (FRAMES if w == sizes[0][0] else (17, 49, 81)):
            if results.left() < 110:
                break
            z = torch.randn(1, pipe.vae.config.z_dim, (f - 1) // 4 + 1, h // 8, w // 8, generator=g).to(DEVICE)
            try:
                if DEVICE == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sec, _ = timed(lambda: pipe.vae.decode(z, return_dict=False), repeats=1, warmup=1 if first else 0)
                first = False
                peak = torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else None
                res["vae"].append({"width": w, "height": h, "frames": f, "seconds": sec, "peak_gb": peak})
            except torch.OutOfMemoryError as err:
                res["vae"].append({"width": w, "height": h, "frames": f, "error": f"out of memory: {str(err)[:120]}"})
            print(res["vae"][-1], flush=True)
            del z
            results.save()


def _generations(preset: str, sizes, rt, results: _Results) -> None:
    """End-to-end generations whose per-stage seconds check the pass-time prediction."""
    from models.engine import generate
    from models.request import GenerationRequest

    res = results.res
    for w, h, f, steps in ((sizes[0][0], sizes[0][1], 17, 20), (sizes[1][0], sizes[1][1], 17, 10)):
        if results.left() < 70:
            res["generate"].append({"width": w, "height": h, "frames": f, "steps": steps, "not_run": "deadline"})
            continue
        req = GenerationRequest(model=preset, prompt="a red fox running through snow", width=w, height=h,
                                frames=f, steps=steps)
        t0 = time.perf_counter()
        gen = generate(req, rt)
        res["generate"].append({"width": w, "height": h, "frames": f, "steps": steps,
                                "wall_seconds": time.perf_counter() - t0, "stages": gen.cost.seconds,
                                "forward_passes": dict(gen.cost.forward_passes)})
        print(res["generate"][-1], flush=True)
        results.save()


def main() -> None:
    args = _parse()
    global DEVICE
    DEVICE = args.device
    gpu_timing.use(DEVICE)
    import diffusers

    from models.presets import build_pipeline, preset_spec
    from models.request import Runtime

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = _Results(out, args.deadline, {
        "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
        "diffusers": diffusers.__version__, "preset": args.preset, "runtime": "bf16, native attention, eager",
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "passes": [], "vae": [], "generate": []})

    rt = Runtime(device=DEVICE)
    t0 = time.perf_counter()
    pipe = build_pipeline(args.preset, rt)
    results.res["build_seconds"] = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    sizes = [(w // args.scale // 16 * 16, h // args.scale // 16 * 16) for w, h in SIZES]
    with rt.apply(), torch.inference_mode():
        _expert_passes(pipe, preset_spec(args.preset), sizes, g, results)
        _vae_decodes(pipe, sizes, g, results)
    _generations(args.preset, sizes, rt, results)
    results.save()


if __name__ == "__main__":
    main()
