"""Calibrate the emulated-hardware noise (hwnoise:EPS) against the GPU measurement.

On an H100 at A14B scale one forward pass of one expert differs by ~5.5e-3 (relative L2) between
attention kernels (docs/facts.md). This script measures, on a preset here, the per-forward-pass
relative difference that each real benign change and each hwnoise EPS produces, and prints the EPS
whose per-forward difference matches the GPU figure. Results: benchmarks/results/hwnoise_calibration.*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.deviations import parse_deviation
from models.presets import build_pipeline, preset_spec
from models.request import GenerationRequest, Runtime

GPU_KERNEL_DIFF = 5.5e-3  # docs/facts.md: A14B expert, H100, bf16, other attention kernels


def one_forward(pipe, x, t, emb, dev=None, run_seed=0, runtime=None):
    from models.patching import pipeline_attention_backend

    runtime = runtime or Runtime()
    if dev is not None:
        runtime = dev.apply_runtime(runtime)
    ctx = {"run_seed": run_seed, "runtime": runtime}
    with torch.no_grad(), runtime.apply(), pipeline_attention_backend(pipe, runtime.attention_backend):
        if dev is not None:
            with dev.patch(pipe, ctx):
                return pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]
        return pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rt = Runtime(dtype=args.dtype, device=args.device)
    pipe = build_pipeline(args.preset, rt)
    spec = preset_spec(args.preset)
    req = GenerationRequest(model=args.preset, prompt="calibration")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(req.latent_shape(), generator=g).to(rt.device, rt.torch_dtype)
    emb = torch.randn(1, spec.text_len, spec.transformer_config["text_dim"], generator=g).to(rt.device, rt.torch_dtype)
    t = torch.tensor([700.0], device=rt.device)
    ref = one_forward(pipe, x, t, emb, runtime=rt).float()

    def rel(out):
        return float((out.float() - ref).norm() / ref.norm())

    rows = {}
    for spec_ in ("batch:2", "threads:1", "attention:_native_math", "splitk:2", "fp8"):
        if spec_ == "batch:2":
            out = one_forward(pipe, torch.cat([x, x.roll(1, 2)]), t.expand(2), torch.cat([emb, emb.roll(1, 1)]), runtime=rt)[:1]
        else:
            out = one_forward(pipe, x, t, emb, parse_deviation(spec_), runtime=rt)
        rows[spec_] = rel(out)
    eps_rows = {}
    for eps in (1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2):
        eps_rows[eps] = sum(rel(one_forward(pipe, x, t, emb, parse_deviation(f"hwnoise:{eps:g}"), s, rt)) for s in range(3)) / 3
    # log-linear interpolation of EPS at the GPU figure
    import numpy as np

    e = np.array(list(eps_rows)); d = np.array(list(eps_rows.values()))
    calibrated = float(np.exp(np.interp(np.log(GPU_KERNEL_DIFF), np.log(d), np.log(e))))
    result = {"preset": args.preset, "dtype": args.dtype, "device": args.device, "gpu_kernel_diff": GPU_KERNEL_DIFF,
              "per_forward_rel_l2": rows, "hwnoise_per_forward_rel_l2": {f"{k:g}": v for k, v in eps_rows.items()},
              "calibrated_eps": calibrated}
    out = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"hwnoise_calibration_{args.preset}_{args.dtype}_{args.device}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Per-forward-pass differences, {args.preset} {args.dtype} on {args.device}", "",
             "| change | rel. L2 of one expert forward |", "|---|---|"]
    lines += [f"| {k} | {v:.2e} |" for k, v in rows.items()]
    lines += [f"| hwnoise:{k:g} (mean of 3 seeds) | {v:.2e} |" for k, v in eps_rows.items()]
    lines += ["", f"EPS matching the H100 kernel difference {GPU_KERNEL_DIFF:g}: **{calibrated:.2e}**"]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
