"""The benign/malign size table on the trained `shapes` preset (and on random `tiny` beside it):
how far does each executor change move the latents and the video from the canonical run, and does
the changed video still follow its prompt?

For each templated prompt, a canonical generation on the GPU (the validator's view), then one per
executor change; per change: latent rel-L2 at the expert switch and at the end, video PSNR against
the canonical frames, and prompt-following accuracy (colour, shape and motion read off the frames,
`sim/shapes_quality.py`). Mean, min and max over prompts; accuracies with exact 95% bounds.

    python benchmarks/gpu_shapes_sizes.py --out benchmarks/results [--prompts 20] [--presets shapes,tiny]

Writes gpu_shapes_sizes.json and gpu_shapes_sizes.md (naming the card) under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

# (label, kind, deviation spec); attention backends are the diffusers names.
CHANGES = [
    ("flash attention", "benign", "attention:flash"),
    ("math attention", "benign", "attention:_native_math"),
    ("batch of 2", "benign", "batch:2"),
    ("batch of 4", "benign", "batch:4"),
    ("TF32 enabled", "benign?", "tf32"),
    ("CPU executor", "benign", "device:cpu"),
    ("hwnoise:0.001 (emulation)", "benign", "hwnoise:0.001"),
    ("fp8-rounded weights", "malign", "fp8"),
    ("6 of 8 steps", "malign", "steps:6"),
    ("4 of 8 steps", "malign", "steps:4"),
    ("high expert only", "malign", "one-expert:high"),
    ("low expert only", "malign", "one-expert:low"),
    ("no CFG", "malign", "no-cfg"),
    ("step cache 0.5", "malign", "cache:0.5"),
    ("seed + 1", "malign", "seed:+1"),
    ("16x16 upscaled", "malign", "lowres:16x16"),
    ("another prompt", "malign", "prompt-swap"),
]


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _spread(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def run_preset(preset: str, prompts: list[str], device: str, dtype: str, changes) -> dict:
    from models.deviations import parse_deviation
    from models.engine import generate
    from models.request import GenerationRequest, Runtime
    from sim.metrics import rel_l2
    from sim.shapes_quality import accuracy, score_video

    rt = Runtime(device=device, dtype=dtype)
    canon, rows = {}, {}
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        req = GenerationRequest(model=preset, prompt=p, seed=i, steps=8, truncate_prompt=True)
        canon[i] = generate(req, rt, capture=("switch", "final"))
    per_video = (time.perf_counter() - t0) / len(prompts)
    table = []
    for label, kind, spec in [("canonical (rerun)", "benign", None), *changes]:
        try:
            parse_deviation(spec) if spec else None
        except ValueError as err:
            table.append({"change": label, "kind": kind, "deviation": spec, "error": str(err)})
            continue
        sw, fi, ps, qual, secs = [], [], [], [], []
        for i, p in enumerate(prompts):
            req = GenerationRequest(model=preset, prompt=p, seed=i, steps=8, truncate_prompt=True)
            t0 = time.perf_counter()
            try:
                g = generate(req, rt, deviation=spec, capture=("switch", "final"))
            except Exception as err:  # a backend missing on this card: recorded, not fatal
                table.append({"change": label, "kind": kind, "deviation": spec, "error": repr(err)[:300]})
                break
            secs.append(time.perf_counter() - t0)
            c = canon[i]
            for name, out in (("switch", sw), ("final", fi)):
                if name in g.checkpoints and name in c.checkpoints:
                    out.append(rel_l2(c.checkpoints[name].latents, g.checkpoints[name].latents))
            ps.append(_psnr(c.frames, g.frames) if g.frames.shape == c.frames.shape else None)
            if preset == "shapes":
                qual.append(score_video(p, g.frames))
        else:
            row = {"change": label, "kind": kind, "deviation": spec, "latent_rel_l2_switch": _spread(sw),
                   "latent_rel_l2_final": _spread(fi), "video_psnr_db": _spread(ps),
                   "seconds_per_video": sum(secs) / len(secs)}
            if qual:
                row["prompt_following"] = accuracy(qual)
            table.append(row)
            rows[label] = row
    canon_q = accuracy([score_video(p, canon[i].frames) for i, p in enumerate(prompts)]) if preset == "shapes" else None
    return {"preset": preset, "canonical_seconds_per_video": per_video, "canonical_prompt_following": canon_q,
            "table": table}


def markdown(res: dict) -> str:
    out = [f"# Benign/malign size table on trained `shapes` and random `tiny` ({res['device']}, {res['dtype']})", "",
           f"{res['prompts']} templated prompts, request defaults of each preset; {res['date']}.", ""]
    for pr in res["presets"]:
        out += [f"## {pr['preset']} (canonical {pr['canonical_seconds_per_video']:.2f} s per video)", ""]
        if pr["canonical_prompt_following"]:
            a = pr["canonical_prompt_following"]
            out.append("Canonical prompt following: " + ", ".join(
                f"{k} {v['accuracy']:.0%} [{v['ci_low']:.0%}, {v['ci_high']:.0%}] (chance {v['chance_uniform']:.0%})"
                for k, v in a.items()) + "\n")
        out += ["| executor change | kind | latent rel-L2 at switch | final latent rel-L2 | video PSNR vs canonical "
                "| all-three prompt following | s / video |", "|---|---|---|---|---|---|---|"]
        for r in pr["table"]:
            if "error" in r:
                out.append(f"| {r['change']} | {r['kind']} | not run: {r['error'][:80]} | | | | |")
                continue

            def f(s, fmt):
                return "" if s["mean"] is None else f"{s['mean']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"

            pf = r.get("prompt_following", {}).get("all")
            pf_s = f"{pf['accuracy']:.0%} [{pf['ci_low']:.0%}, {pf['ci_high']:.0%}]" if pf else ""
            out.append(f"| {r['change']} | {r['kind']} | {f(r['latent_rel_l2_switch'], '.4f')} | "
                       f"{f(r['latent_rel_l2_final'], '.4f')} | {f(r['video_psnr_db'], '.1f')} | {pf_s} | "
                       f"{r['seconds_per_video']:.2f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--presets", default="shapes,tiny")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    from models.shapes_data import templated_prompts

    prompts = templated_prompts(args.prompts, args.seed)
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    res = {"device": dev_name, "dtype": args.dtype, "prompts": len(prompts), "prompt_list": prompts,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "presets": []}
    for preset in args.presets.split(","):
        res["presets"].append(run_preset(preset.strip(), prompts, args.device, args.dtype, CHANGES))
        print(f"{preset}: done", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_shapes_sizes.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "gpu_shapes_sizes.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
