"""Evidence at scale, the GPU half: run a plan and write one JSON line per generation.

    python benchmarks/gpu_at_scale.py --plan benchmarks/plans/at_scale_480p.json --out DIR [--deadline S]
        [--resume DONE.jsonl ...] [--profile]

A plan is a JSON list of blocks, run in order in one process (a preset's pipeline is built once):

    {"preset": "a14b-random", "width": 832, "height": 480, "frames": 17, "steps": 40,
     "prompts": [0], "configs": ["canonical", "batch:2", "fp8-scaled", ...],
     "challenge": [4, 20, 32], "selfnorm": false, "cheat_direction": "fp8-scaled"}

(`"validator_compile": "regional"` makes the validator itself compile: its records form their own
group in the report.)

What each line holds is described in `sim/at_scale.py`. Lines are appended to DIR/at_scale.jsonl as
soon as each generation is measured, so a run cut short keeps what it did. Needs only torch,
diffusers, transformers, piq, av and pydantic (the GPU wheel set). `benchmarks/at_scale_report.py`
turns the lines into tables. `--resume` skips generations already in the given files (the
committed results), so a plan larger than one GPU call is spread over several. `--profile` first
profiles one canonical generation of the first block (torch.profiler: GPU-busy time against wall
time, the top operators) into DIR/profile.json and DIR/profile.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", required=True, help="JSON file: a list of blocks (see above)")
    ap.add_argument("--out", required=True, help="directory for at_scale.jsonl and at_scale_meta.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline", type=float, default=540.0,
                    help="seconds after the start (profile included) after which no new prompt starts")
    ap.add_argument("--attention", default="_native_cudnn", help="the validator's attention backend")
    ap.add_argument("--resume", nargs="*", default=[], help="JSON-lines files whose generations are not rerun")
    ap.add_argument("--profile", action="store_true", help="profile one canonical generation first")
    args = ap.parse_args()

    import diffusers
    import torch

    from sim.at_scale import done_keys, load_plan, measure

    try:
        blocks = load_plan(args.plan)
    except (OSError, ValueError) as err:
        raise SystemExit(f"plan: {err}")
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "diffusers": diffusers.__version__, "attention": args.attention,
            "plan": json.loads(Path(args.plan).read_text()), "generations": 0}
    if args.profile:
        _profile(blocks[0], args, out)
    done = done_keys([*args.resume, out / "at_scale.jsonl"])
    with (out / "at_scale.jsonl").open("a") as sink:
        for rec in measure(blocks, device=args.device, attention=args.attention,
                           deadline_s=args.deadline - (time.perf_counter() - t0),
                           log=lambda s: print(s, flush=True), done=done):
            sink.write(json.dumps(rec) + "\n")
            sink.flush()
            meta["generations"] += 1
            meta["card"] = rec["card"]
            lat = rec["latent_rel_l2"]
            print(json.dumps({k: rec[k] for k in ("preset", "prompt_id", "config", "gen_s", "peak_gb")}
                             | {"switch": lat.get("switch"), "final": lat.get("final"), "psnr": rec.get("video_psnr_db"),
                                "local": [x.get("local_err") for x in rec["local"]]}), flush=True)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "at_scale_meta.json").write_text(json.dumps(meta, indent=1))
    print(f"wall {meta['wall_s']} s", flush=True)


def _profile(block, args, out: Path) -> None:
    """One warm-up and one profiled canonical generation of the block's first prompt."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from models.engine import generate
    from models.request import GenerationRequest, Runtime
    from sim.experiment import ExperimentParams, load_prompts

    pi = block.prompts[0]
    prompt = load_prompts(ExperimentParams(prompts=max(2, pi + 1), seed=block.seed))[pi]
    req = GenerationRequest(model=block.preset, prompt=prompt, width=block.width, height=block.height,
                            frames=block.frames, steps=block.steps, seed=pi, truncate_prompt=True)
    runtime = Runtime(device=args.device, attention_backend=args.attention, offload=block.offload)
    t0 = time.perf_counter()
    generate(req, runtime, None, capture=["switch", "final"], run_seed=pi)
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate(req, runtime, None, capture=["switch", "final"], run_seed=pi)
    torch.cuda.synchronize()
    plain_s = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        generate(req, runtime, None, capture=["switch", "final"], run_seed=pi)
        torch.cuda.synchronize()
        prof_s = time.perf_counter() - t0
    ev = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in ev)
    top = sorted(ev, key=lambda e: e.self_device_time_total, reverse=True)[:25]
    cpu_top = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    res = {"card": torch.cuda.get_device_name(0), "size": [block.width, block.height, block.frames, block.steps],
           "first_generation_s": round(warm_s, 2), "plain_generation_s": round(plain_s, 2),
           "profiled_wall_s": round(prof_s, 2), "gpu_busy_s": round(gpu_us / 1e6, 2),
           "top_gpu": [{"op": e.key, "gpu_s": round(e.self_device_time_total / 1e6, 3), "calls": e.count} for e in top],
           "top_cpu": [{"op": e.key, "cpu_s": round(e.self_cpu_time_total / 1e6, 3), "calls": e.count} for e in cpu_top]}
    (out / "profile.json").write_text(json.dumps(res, indent=1))
    (out / "profile.txt").write_text(ev.table(sort_by="self_cuda_time_total", row_limit=40))
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("top")}), flush=True)


if __name__ == "__main__":
    main()
