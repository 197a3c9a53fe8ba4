"""Small preset on a GPU: is the MP4 reproducible on a rerun, and where does a generation's wall
time go (model stages, MP4 encoding, frame scoring on the CPU)?

    python benchmarks/gpu_small_check.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="small")
    args = ap.parse_args()
    import torch

    from models.engine import generate
    from models.request import GenerationRequest, Runtime
    from models.video import encode_mp4
    from sim.metrics import score_frames

    rt = Runtime(device=args.device)
    req = GenerationRequest(model=args.preset, prompt="a lighthouse on a cliff at dawn", steps=10)
    t0 = time.perf_counter()
    generate(req, rt)
    res = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "preset": args.preset,
           "request": f"{req.width}x{req.height}, {req.frames} frames, {req.steps} steps",
           "first_call_seconds": time.perf_counter() - t0, "runs": []}
    shas = []
    for _ in range(3):
        t0 = time.perf_counter()
        g = generate(req, rt)
        wall = time.perf_counter() - t0
        shas.append(g.sha256)
        res["runs"].append({"wall": wall, "stages": g.cost.seconds})
    t0 = time.perf_counter()
    encode_mp4(g.frames, req.fps)
    res["encode_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_frames(g.frames, g.frames)
    res["score_frames_cpu_seconds"] = time.perf_counter() - t0
    res["same_mp4_on_rerun"] = len(set(shas)) == 1
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"gpu_{args.preset}_check.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
