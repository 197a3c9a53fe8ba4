"""A14B at real scale on a GPU: building `a14b-random`, forward-pass timing, and the size of each
benign and malign change on one expert forward pass (bf16), next to the emulated hardware noise.

    python benchmarks/bench_gpu_a14b.py --out DIR [--latent 21x60x104] [--skip-generate]

Prints a table and writes DIR/gpu_a14b.json and DIR/gpu_a14b.md. Needs a CUDA device with ~75 GB.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import gpu_timing  # the benchmarks folder: on the path when the script runs
from gpu_timing import peak_gb, reset_peak, sync, timed


DEVICE = "cuda"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--latent", default="21x60x104", help="latent T x H x W of the forward passes")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--preset", default="a14b-random", help="a14b-random on a GPU; tiny for a dry run on a CPU")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--offload", nargs="?", const="all", default="none", choices=("none", "text-encoder", "all"),
                    help="components kept in host memory (bare --offload: all; a14b-random on 80 GB)")
    ap.add_argument("--skip-forward", action="store_true", help="skip the forward-pass timings and differences")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    gpu_timing.use(DEVICE)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from models.presets import build_pipeline, preset_spec, seeded_tensor
    from models.request import Runtime

    res: dict = {"device": torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "cpu",
                 "torch": torch.__version__, "preset": args.preset}
    import diffusers

    res["diffusers"] = diffusers.__version__
    rt = Runtime(device=DEVICE, dtype="bfloat16", offload=args.offload)
    res["offload"] = args.offload
    reset_peak()
    t0 = time.perf_counter()
    pipe = build_pipeline(args.preset, rt)
    sync()
    res["build_seconds"] = time.perf_counter() - t0
    param_bytes = sum(p.numel() * p.element_size() for m in (pipe.transformer, pipe.transformer_2, pipe.text_encoder, pipe.vae)
                      for p in m.parameters())
    res["weights_gb"] = param_bytes / 1e9
    res["build_peak_gb"] = peak_gb()
    res["expert_params"] = sum(p.numel() for p in pipe.transformer.parameters())
    # Portability: GPU weights equal the CPU draws rounded to bf16, tensor by tensor.
    checks = {}
    last = len(pipe.transformer.blocks) - 1
    for name in ("blocks.0.attn1.to_q.weight", f"blocks.{last}.ffn.net.2.weight", "scale_shift_table"):
        p = dict(pipe.transformer.named_parameters())[name]
        cpu = seeded_tensor(0, "transformer." + name, tuple(p.shape)).to(p.dtype)
        checks[name] = bool(torch.equal(cpu, p.detach().cpu()))
    res["weights_equal_cpu_draws"] = checks
    print(json.dumps(res, indent=1), flush=True)

    spec = preset_spec(args.preset)
    diffs: dict[str, dict] = {}
    if not args.skip_forward:
        forward_differences(args, pipe, spec, rt, res, diffs)
    generate_once(args, rt, res)
    write(args, res, diffs, checks)


def forward_differences(args, pipe, spec, rt, res, diffs) -> None:
    from models.deviations import parse_deviation
    from models.patching import pipeline_attention_backend

    t, h, w = (int(x) for x in args.latent.split("x"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, t, h, w, generator=g).to(DEVICE, torch.bfloat16)
    emb = torch.randn(1, spec.text_len, spec.transformer_config["text_dim"], generator=g).to(DEVICE, torch.bfloat16)
    ts = torch.tensor([700.0], device=DEVICE)
    tokens = t * (h // 2) * (w // 2)
    expert = pipe.transformer

    def fwd(xx=x, tt=ts, ee=emb):
        with torch.no_grad():
            return expert(hidden_states=xx, timestep=tt, encoder_hidden_states=ee, return_dict=False)[0]

    reset_peak()
    sec, ref = timed(fwd, repeats=3, warmup=0)
    ref = ref.float()
    flops = None
    from models.engine import block_flops

    flops = block_flops(tokens, spec) * spec.num_layers
    res["forward"] = {"latent": args.latent, "tokens": tokens, "seconds_median3": sec,
                      "tflops_per_s": flops / sec / 1e12, "peak_gb": peak_gb()}
    print(json.dumps(res["forward"]), flush=True)

    def rel(o):
        return float((o.float() - ref).norm() / ref.norm())

    sec2, again = timed(fwd, repeats=1, warmup=0)
    diffs["rerun"] = {"rel_l2": rel(again), "seconds": sec2}
    for backend in ("_native_cudnn", "_native_flash", "_native_efficient", "_native_math"):
        try:
            with pipeline_attention_backend(pipe, backend):
                s, o = timed(fwd, repeats=1, warmup=0)
            diffs[f"attention:{backend}"] = {"rel_l2": rel(o), "seconds": s}
        except Exception as err:  # a kernel unavailable for this shape/card is a finding, not a crash
            diffs[f"attention:{backend}"] = {"error": str(err)[:200]}
        print(backend, diffs[f"attention:{backend}"], flush=True)
    # back on the default kernel?
    s, o = timed(fwd, repeats=1, warmup=0)
    diffs["default again after switches"] = {"rel_l2": rel(o), "seconds": s}
    with torch.no_grad():
        xb = torch.cat([x, x.roll(1, 2)])
        s, o = timed(lambda: expert(hidden_states=xb, timestep=ts.expand(2), encoder_hidden_states=emb.expand(2, -1, -1),
                                    return_dict=False)[0], repeats=1, warmup=0)
    diffs["batch:2"] = {"rel_l2": rel(o[:1]), "seconds": s}
    ctx = {"run_seed": 1, "runtime": rt}
    for spec_ in ("splitk:2", "fp8", "hwnoise:0.001", "hwnoise:0.003", "hwnoise:0.01"):
        dev = parse_deviation(spec_)
        with dev.patch(pipe, ctx):
            s, o = timed(fwd, repeats=1, warmup=0)
        diffs[spec_] = {"rel_l2": rel(o), "seconds": s}
        print(spec_, diffs[spec_], flush=True)
    s, o = timed(lambda: fwd(tt=torch.tensor([690.0], device=DEVICE)), repeats=1, warmup=0)
    diffs["timestep 690 instead of 700"] = {"rel_l2": rel(o), "seconds": s}
    res["per_forward"] = diffs


def generate_once(args, rt, res) -> None:
    if not args.skip_generate:
        from models.engine import generate
        from models.request import GenerationRequest

        req = GenerationRequest(model=args.preset, prompt="a red fox running through snow", frames=17, steps=4)
        try:
            reset_peak()
            t0 = time.perf_counter()
            gen = generate(req, rt)
            res["generate"] = {"request": f"{req.width}x{req.height}, {req.frames} frames, {req.steps} steps", "wall_seconds": time.perf_counter() - t0,
                               "cost": gen.cost.to_dict(), "peak_gb": peak_gb(),
                               "sha256": gen.sha256}
            gen2 = generate(req, rt)
            res["generate"]["rerun_same_mp4"] = gen2.sha256 == gen.sha256
            res["generate"]["rerun_final_rel_l2"] = float(
                (gen2.latents["final"] - gen.latents["final"]).norm() / gen.latents["final"].norm())
        except torch.OutOfMemoryError as err:
            res["generate"] = {"error": f"out of memory: {str(err)[:200]}"}
        print(json.dumps(res.get("generate"), default=str), flush=True)


def write(args, res, diffs, checks) -> None:
    tokens = res.get("forward", {}).get("tokens")
    out_dir = Path(args.out)
    stem = ("gpu_a14b" if args.preset == "a14b-random" else f"gpu_{args.preset}_{DEVICE}") + ("" if args.offload == "none" else "_offload" if args.offload == "all" else f"_offload_{args.offload}")
    (out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    lines = [f"# {args.preset} on {res['device']} (bf16, diffusers {res['diffusers']}, torch {res['torch']})", "",
             f"- build: {res['build_seconds']:.1f} s, weights {res['weights_gb']:.1f} GB, peak during build "
             f"{res['build_peak_gb']:.1f} GB; expert parameters {res['expert_params'] / 1e9:.2f} B; GPU weights equal "
             f"the CPU draws: {all(checks.values())}",
             ]
    if "forward" in res:
        lines += [f"- one expert forward, latent {args.latent} ({tokens} tokens): {res['forward']['seconds_median3']:.3f} s "
                  f"(median of 3), {res['forward']['tflops_per_s']:.0f} TFLOP/s by the block FLOP count"]
    lines += ["", "| change (one expert forward, bf16) | rel. L2 vs default | seconds |", "|---|---|---|"]
    for k, v in diffs.items():
        lines.append(f"| {k} | {v.get('rel_l2', float('nan')):.2e} | {v.get('seconds', float('nan')):.3f} |"
                     if "rel_l2" in v else f"| {k} | error: {v['error'][:60]} | |")
    if "generate" in res and "cost" in res["generate"]:
        gcost = res["generate"]["cost"]
        lines += ["", f"- generate {res['generate']['request']}: {res['generate']['wall_seconds']:.1f} s wall, "
                      f"stages {json.dumps({k: round(v, 2) for k, v in gcost['seconds'].items()})}, peak "
                      f"{res['generate']['peak_gb']:.1f} GB, rerun gives the same MP4: {res['generate']['rerun_same_mp4']}"]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
