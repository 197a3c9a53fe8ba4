"""Honest PoC mismatch rate at scale: benign distances at several nonce sizes, in one process.

    python3 benchmarks/gpu_poc_threshold.py --preset a14b-random --offload text-encoder --tag h200 \
        --point 5:160=batch:4,attention:_native_flash,attention:_native_efficient,fp8 \
        --point 81:12=attention:_native_flash,fp8 --out $OUT

Each `--point FRAMES:NONCES=CONDITIONS` runs `sim.poc.measure.measure` for that many nonces at that
many frames (the pipeline is built once). Per condition it reports the median, 95th percentile and
largest distance, the share of nonces over each threshold with a Clopper-Pearson 95% interval, and
what that share means for an honest node under the validator's binomial test (Gonka: 200 samples,
allowed rate 0.1, p < 0.05): its probability of being rejected. Results are written after each
point (poc_threshold_<preset>_<tag>.json / .md), so a time limit keeps what was done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLDS = (0.01, 0.02, 0.03, 0.05)


def parse_point(text: str) -> tuple[int, int, tuple[str, ...]]:
    head, _, conds = text.partition("=")
    frames, _, nonces = head.partition(":")
    if not (frames.isdigit() and nonces.isdigit() and conds):
        raise SystemExit(f"--point: {text!r} is not FRAMES:NONCES=COND,COND,...")
    return int(frames), int(nonces), tuple(c.strip() for c in conds.split(",") if c.strip())


def summarise(data: dict, params) -> list[dict]:
    import numpy as np
    from scipy.stats import binomtest

    from sim.poc.power import rejection_probability

    rows = []
    for cond, c in data["conditions"].items():
        if "distances" not in c:
            rows.append({"condition": cond, "kind": c["kind"], "error": c.get("error")})
            continue
        d = np.asarray(c["distances"])
        row = {"condition": cond, "kind": c["kind"], "n": int(d.size), "median": float(np.median(d)),
               "p95": float(np.percentile(d, 95)), "max": float(d.max()), "seconds": c["seconds"], "at": {}}
        for t in THRESHOLDS:
            k = int((d > t).sum())
            ci = binomtest(k, d.size).proportion_ci(0.95, method="exact")
            q = k / d.size
            row["at"][f"{t:g}"] = {"mismatches": k, "rate": q, "ci95": [ci.low, ci.high],
                                   "p_reject_at_200": rejection_probability(q, 200, params),
                                   "p_reject_at_200_upper": rejection_probability(ci.high, 200, params)}
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    md = [f"# Honest PoC mismatch at scale: {result['preset']} ({result['machine']})", "",
          f"created {result['created']}; offload {result['offload']}; pipeline build {result['build_s']:.1f} s", "",
          "Distance: L2 between a condition's 12-dim PoC vector and the reference's (bf16, batch 1, default "
          "attention) for the same nonces. `rate (CI)`: share of nonces over the threshold with a Clopper-Pearson "
          "95% interval; `P(rej)`: probability that an honest node with that rate is rejected by the binomial "
          "test at 200 samples (allowed 0.1, p < 0.05), at the rate and at its upper bound.", ""]
    for p in result["points"]:
        md += [f"## {p['frames']} frames (latent {'x'.join(map(str, p['latent']))}, {p['tokens']} tokens), "
               f"{p['nonces']} nonces, {p['s_per_nonce']:.3f} s/nonce", "",
               "| condition | kind | median | p95 | max | " + " | ".join(
                   f"rate > {t:g} (CI) | P(rej) {t:g}" for t in THRESHOLDS) + " |",
               "|---|---|---|---|---|" + "---|---|" * len(THRESHOLDS)]
        for r in p["rows"]:
            if "error" in r:
                md.append(f"| {r['condition']} | {r['kind']} | n/a ({(r['error'] or '')[:60]}) |")
                continue
            cells = []
            for t in THRESHOLDS:
                a = r["at"][f"{t:g}"]
                cells.append(f"{a['rate']:.3f} ({a['ci95'][0]:.3f}-{a['ci95'][1]:.3f}) | "
                             f"{a['p_reject_at_200']:.3f} / {a['p_reject_at_200_upper']:.3f}")
            md.append(f"| {r['condition']} | {r['kind']} | {r['median']:.4f} | {r['p95']:.4f} | {r['max']:.4f} | "
                      + " | ".join(cells) + " |")
        md.append("")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--offload", default="none", choices=("none", "text-encoder", "all"))
    ap.add_argument("--point", action="append", required=True, help="FRAMES:NONCES=COND,COND,... (repeatable)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    points = [parse_point(p) for p in args.point]

    import torch

    from models.presets import build_pipeline
    from models.request import Runtime
    from sim.poc.measure import machine_description, measure, write_measurement
    from sim.poc.params import PocParams

    ref = Runtime(device=args.device, dtype=args.dtype, batch_size=1, offload=args.offload)
    t0 = time.perf_counter()
    build_pipeline(args.preset, ref)
    build_s = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"poc_threshold_{args.preset}" + (f"_{args.tag}" if args.tag else "")
    result = {"preset": args.preset, "machine": machine_description(args.device), "offload": args.offload,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_s": build_s, "points": []}
    params = PocParams()
    for frames, nonces, conds in points:
        print(f"{frames} frames, {nonces} nonces: {', '.join(conds)}", flush=True)
        data = measure(args.preset, nonces=nonces, conditions=conds, reference=ref, frames=frames,
                       progress=lambda c: print(f"  measuring {c}", flush=True))
        write_measurement(data, out / f"poc_measure_{args.preset}_f{frames}_{args.tag or args.device}.json")
        lat = data["shape"]["latent"]
        result["points"].append({
            "frames": frames, "nonces": nonces, "latent": lat, "tokens": lat[1] * (lat[2] // 2) * (lat[3] // 2),
            "s_per_nonce": data["reference_seconds"] / nonces, "rows": summarise(data, params),
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if args.device.startswith("cuda") else None})
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        (out / f"{stem}.md").write_text(markdown(result))
        print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
