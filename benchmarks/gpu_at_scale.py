"""Evidence at scale, the GPU half: run a plan and write one JSON line per generation.

    python benchmarks/gpu_at_scale.py --plan benchmarks/plans/at_scale_480p.json --out DIR [--deadline S]

A plan is a JSON list of blocks, run in order in one process (a preset's pipeline is built once):

    {"preset": "a14b-random", "width": 832, "height": 480, "frames": 17, "steps": 40,
     "prompts": [0], "configs": ["canonical", "batch:2", "fp8-scaled", ...],
     "challenge": [4, 20, 32], "selfnorm": false, "cheat_direction": "fp8-scaled"}

What each line holds is described in `sim/at_scale.py`. Lines are appended to DIR/at_scale.jsonl as
soon as each generation is measured, so a run cut short keeps what it did. Needs only torch,
diffusers, transformers, piq, av and pydantic (the GPU wheel set). `benchmarks/at_scale_report.py`
turns the lines into tables.
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
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds after which no new generation starts")
    ap.add_argument("--attention", default="_native_cudnn", help="the validator's attention backend")
    args = ap.parse_args()

    import diffusers
    import torch

    from sim.at_scale import load_plan, measure

    try:
        blocks = load_plan(args.plan)
    except (OSError, ValueError) as err:
        raise SystemExit(f"plan: {err}")
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "diffusers": diffusers.__version__, "attention": args.attention,
            "plan": json.loads(Path(args.plan).read_text()), "generations": 0}
    with (out / "at_scale.jsonl").open("a") as sink:
        for rec in measure(blocks, device=args.device, attention=args.attention, deadline_s=args.deadline,
                           log=lambda s: print(s, flush=True)):
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


if __name__ == "__main__":
    main()
