"""Scoring benchmarks: what scoring, statistics and the report cost, and how well JL fingerprints
track full-latent relative L2.

    .venv/bin/python benchmarks/bench_scoring.py [--quick] [--no-generate]

Writes benchmarks/results/scoring.json and scoring.md. Sections:
1. scoring of one tiny video (64x64, 9 frames; piq frame metrics, latent metrics, fingerprints)
   against one tiny-preset generation on the same CPU;
2. fingerprint fidelity for k in {4, 8, 16, 32, 64, 128}: ratio of fingerprint distance to the true
   relative L2 over perturbation sizes 1e-6..1 (float16 floor included), rank correlation, and the
   AUC of telling a GPU-kernel-sized difference (5.5e-3) from an FP8-sized one (3.4e-2);
3. projection time of a 480p/81-frame latent (2,096,640 values), streamed block by block;
4. statistics and report time on a synthetic table shaped like the default experiment
   (20 prompts, 18 deviations, 4 policies, 23 metrics);
5. full-replay scoring of one prompt's 18 claims (hash check, MP4 decode, piq metrics), one claim at
   a time on one or on all PyTorch threads, and side by side (`FullReplay.score_many`, the experiment's way).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _time(fn, repeat=5):
    fn()  # warm-up (imports, caches)
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench_scoring(generate: bool) -> dict:
    import torch

    from sim.fingerprint import Fingerprinter
    from sim.metrics import score_frames, score_latents

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    test = np.clip(ref.astype(int) + rng.integers(-3, 4, ref.shape), 0, 255).astype(np.uint8)
    lat = [torch.randn(1, 16, 3, 8, 8) for _ in range(3)]
    lat2 = [x + 1e-3 * torch.randn_like(x) for x in lat]
    out = {
        "frames_s": _time(lambda: score_frames(ref, test, ("ssim", "psnr", "gmsd", "haarpsi"), ("mean", "worst", "p90"))),
        "latents_s": _time(lambda: [score_latents(a, b) for a, b in zip(lat, lat2)]),
    }
    for k in (32, 64):
        fp = Fingerprinter(k, 0)
        out[f"fingerprint_k{k}_s"] = _time(lambda: [fp.distance(fp.project(a), fp.project(b)) for a, b in zip(lat, lat2)])
    out["total_s"] = out["frames_s"] + out["latents_s"] + out["fingerprint_k64_s"]
    if generate:
        from models.engine import generate as gen
        from models.request import GenerationRequest

        req = GenerationRequest(model="tiny", prompt="a red fox running through snow", seed=0)
        out["generation_request"] = {"width": req.width, "height": req.height, "frames": req.frames, "steps": req.steps}
        out["generation_s"] = _time(lambda: gen(req), repeat=3)
        out["scoring_share_of_generation"] = out["total_s"] / out["generation_s"]
    return out


def bench_fingerprint_fidelity(n_pairs: int) -> list[dict]:
    import torch
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from sim.fingerprint import Fingerprinter

    g = torch.Generator().manual_seed(0)
    shape = (1, 16, 3, 8, 8)  # the tiny preset's latent (3,072 values)
    sizes = np.geomspace(1e-6, 1.0, 13)
    rows = []
    for k in (4, 8, 16, 32, 64, 128):
        fp = Fingerprinter(k, 0)
        ratio = {float(e): [] for e in sizes}
        pairs_true, pairs_fp = [], []
        benign_fp, malign_fp = [], []
        for i in range(n_pairs):
            x = torch.randn(shape, generator=g)
            d = torch.randn(shape, generator=g)
            d = d / d.norm() * x.norm()
            fx = fp.project(x)
            for e in sizes:
                ratio[float(e)].append(fp.distance(fx, fp.project(x + float(e) * d)) / float(e))
            e = float(10 ** np.random.default_rng(i).uniform(-4, 0))
            pairs_true.append(e)
            pairs_fp.append(fp.distance(fx, fp.project(x + e * d)))
            benign_fp.append(fp.distance(fx, fp.project(x + 5.5e-3 * d)))
            d2 = torch.randn(shape, generator=g)
            malign_fp.append(fp.distance(fx, fp.project(x + 3.4e-2 * d2 / d2.norm() * x.norm())))
        y = np.r_[np.zeros(n_pairs), np.ones(n_pairs)]
        row = {"k": k, "bytes_per_vector": fp.bytes_per_vector,
               "spearman_1e-4_to_1": float(spearmanr(pairs_true, pairs_fp).statistic),
               "auc_5.5e-3_vs_3.4e-2": float(roc_auc_score(y, np.r_[benign_fp, malign_fp]))}
        for e, r in ratio.items():
            row[f"ratio_median@{e:.0e}"] = float(np.median(r))
            row[f"ratio_p5@{e:.0e}"] = float(np.percentile(r, 5))
            row[f"ratio_p95@{e:.0e}"] = float(np.percentile(r, 95))
        rows.append(row)
    return rows


def bench_projection_480p() -> dict:
    import torch

    from sim.fingerprint import Fingerprinter

    x = torch.randn(1, 16, 21, 60, 104)
    out = {"values": int(x.numel())}
    for k in (8, 64):
        fp = Fingerprinter(k, 0)
        t = time.perf_counter()
        fp.project(x)
        out[f"k{k}_s"] = time.perf_counter() - t
    return out


def synthetic_scores(n_prompts=20, seed=0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    benign = ["batch:2", "threads:1", "attention:_native_math", "splitk:2"] + [f"hwnoise:{e:g}" for e in (3e-4, 1e-3, 3e-3, 1e-2)]
    malign = {"steps:6": 0.03, "lowres:32x32": 0.2, "fp8": 0.014, "seed:+1": 1.4, "one-expert:high": 0.05, "no-cfg": 0.01,
              "guidance:3.5": 2.4e-4, "cache:0.5": 0.02, "prompt-swap": 0.3, "model:tiny-lite": 1.0}
    metrics = {"full": [f"{m}.{a}" for m in ("ssim", "psnr", "gmsd", "haarpsi") for a in ("mean", "worst", "p90")],
               "checkpoint": [f"{m}@{c}" for m in ("rel_l2", "cosine") for c in ("init", "switch", "final")],
               "fingerprint": ["fp@switch", "fp@final", "fp.max"], "segment": ["rel_l2", "cosine"]}
    rows = []
    for p in range(n_prompts):
        split = "calib" if p % 2 == 0 else "test"
        for policy, ms in metrics.items():
            for m in ms:
                for d in benign + list(malign):
                    eps = float(d.split(":")[1]) if d.startswith("hwnoise") else 0.0
                    size = eps if eps else (malign.get(d) or 1e-7)
                    rows.append(dict(run_id="bench", preset="tiny", prompt_id=p, prompt=f"prompt {p}", split=split,
                                     deviation=d, kind="malign" if d in malign else "benign", policy=policy, metric=m,
                                     score=float(size * rng.lognormal(0, 0.5)), hwnoise_eps=eps,
                                     executor_compute_share=1.0, validator_compute_share=1.0, bytes_kept=100))
    return pd.DataFrame(rows)


def bench_stats_report() -> dict:
    from sim.report import write_report
    from sim.stats import compute_stats

    df = synthetic_scores()
    t = time.perf_counter()
    stats = compute_stats(df)
    t_stats = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as run:
        t = time.perf_counter()
        write_report(run, df, {"strips": 0}, stats)
        t_report = time.perf_counter() - t
    return {"rows": len(df), "comparisons": len(stats.table), "eps_comparisons": len(stats.eps_curve),
            "stats_s": t_stats, "report_s": t_report}


def bench_claims(n_claims: int = 18, repeat: int = 5) -> dict:
    """Full-replay scoring of one prompt's claims: 64x64, 9-frame MP4s (the tiny preset's), each a
    noisy copy of the validator's video, scored against it."""
    import hashlib

    import torch

    from models.request import GenerationRequest
    from models.video import encode_mp4
    from sim.policies import Claim, ValidationContext, get_policy

    class Replay:  # what the policy reads of the validator's own generation
        def __init__(self, mp4):
            self.mp4, self.sha256 = mp4, hashlib.sha256(mp4).hexdigest()
            self.cost = type("Cost", (), {"compute_share": 1.0})()

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    ref = np.stack([np.stack([(xx * 4 + 9 * t) % 256, (yy * 4 + 5 * t) % 256, (xx + yy) * 2 % 256], -1) for t in range(9)])
    ref = np.clip(ref + rng.normal(0, 20, ref.shape), 0, 255).astype(np.uint8)
    request = GenerationRequest(model="tiny", prompt="bench", seed=0)
    policy = get_policy("full")
    with tempfile.TemporaryDirectory() as tmp:
        claims = []
        for i in range(n_claims):
            frames = np.clip(ref.astype(int) + rng.integers(-3 - i, 4 + i, ref.shape), 0, 255).astype(np.uint8)
            mp4 = encode_mp4(frames, 16)
            d = Path(tmp) / f"c{i}"
            d.mkdir()
            (d / "video.mp4").write_bytes(mp4)
            claims.append(Claim(request, hashlib.sha256(mp4).hexdigest(), d))

        def run(mode):
            ctx = ValidationContext(scoring_threads=1 if mode == "one_1thread" else None,
                                    scoring_workers=None if mode == "side_by_side" else 1)
            ctx.replays[request.key()] = Replay(encode_mp4(ref, 16))
            return policy.score_many(claims, ctx)

        out = {"claims": n_claims, "torch_threads": torch.get_num_threads()}
        for mode in ("one_1thread", "one_all_threads", "side_by_side"):
            out[f"{mode}_s"] = _time(lambda: run(mode), repeat)
        scores = [[r.scores for r in run(m)] for m in ("one_1thread", "one_all_threads", "side_by_side")]
        out["same_scores"] = scores[0] == scores[1] == scores[2]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer fingerprint pairs")
    ap.add_argument("--no-generate", action="store_true", help="skip the tiny-preset generation timing")
    args = ap.parse_args()
    import torch

    res = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
           "torch": torch.__version__}
    res["scoring_tiny"] = bench_scoring(not args.no_generate)
    print("scoring one tiny video:", json.dumps(res["scoring_tiny"], indent=1))
    res["fingerprint_fidelity"] = bench_fingerprint_fidelity(50 if args.quick else 200)
    for r in res["fingerprint_fidelity"]:
        print(f"k={r['k']:4d}  spearman={r['spearman_1e-4_to_1']:.4f}  auc(5.5e-3 vs 3.4e-2)={r['auc_5.5e-3_vs_3.4e-2']:.4f}  "
              f"ratio@1e-6={r['ratio_median@1e-06']:.3g}  ratio@1e-3={r['ratio_median@1e-03']:.3f} "
              f"[{r['ratio_p5@1e-03']:.3f}, {r['ratio_p95@1e-03']:.3f}]  ratio@1e-1={r['ratio_median@1e-01']:.3f} "
              f"[{r['ratio_p5@1e-01']:.3f}, {r['ratio_p95@1e-01']:.3f}]")
    res["projection_480p"] = bench_projection_480p()
    print("480p projection:", res["projection_480p"])
    res["stats_report"] = bench_stats_report()
    print("stats + report:", res["stats_report"])
    res["claims"] = bench_claims()
    print("full-replay scoring of one prompt's claims:", res["claims"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scoring.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "scoring.md").write_text(markdown(res))
    print(f"wrote {RESULTS / 'scoring.json'} and scoring.md")


def markdown(res: dict) -> str:
    s = res["scoring_tiny"]
    L = [f"# Scoring benchmarks ({res['machine']}, torch {res['torch']})", "",
         "## Scoring one tiny video (64x64, 9 frames)", "", "| what | seconds |", "|---|---|",
         f"| 4 frame metrics x 3 aggregations (piq, 1 thread) | {s['frames_s']:.4f} |",
         f"| latent metrics, 3 latents | {s['latents_s']:.4f} |",
         f"| fingerprints k=64, 3 latents x 2 | {s['fingerprint_k64_s']:.4f} |",
         f"| total | {s['total_s']:.4f} |"]
    if "generation_s" in s:
        L += [f"| one tiny-preset generation ({s['generation_request']}) | {s['generation_s']:.3f} |",
              f"| scoring / generation | {100 * s['scoring_share_of_generation']:.1f}% |"]
    L += ["", "## Fingerprint distance / true relative L2 (tiny latent, 3,072 values)", "",
          "Median [5th, 95th percentile] of the ratio; 1e-6 shows the float16 floor.", "",
          "| k | bytes | ratio @1e-6 | ratio @1e-4 | ratio @1e-3 | ratio @1e-2 | ratio @1e-1 | Spearman (1e-4..1) | AUC 5.5e-3 vs 3.4e-2 |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in res["fingerprint_fidelity"]:
        cell = lambda e: f"{r[f'ratio_median@{e}']:.3g} [{r[f'ratio_p5@{e}']:.3g}, {r[f'ratio_p95@{e}']:.3g}]"  # noqa: E731
        L.append(f"| {r['k']} | {r['bytes_per_vector']} | {cell('1e-06')} | {cell('1e-04')} | {cell('1e-03')} | "
                 f"{cell('1e-02')} | {cell('1e-01')} | {r['spearman_1e-4_to_1']:.4f} | {r['auc_5.5e-3_vs_3.4e-2']:.4f} |")
    p = res["projection_480p"]
    L += ["", f"## Projection of a 480p latent ({p['values']:,} values, streamed)", "",
          f"k=8: {p['k8_s']:.2f} s; k=64: {p['k64_s']:.2f} s", ""]
    r = res["stats_report"]
    L += ["## Statistics and report (synthetic table shaped like the default experiment)", "",
          f"{r['rows']:,} rows, {r['comparisons']} comparisons (+{r['eps_comparisons']} on the EPS curve): "
          f"statistics {r['stats_s']:.1f} s, report {r['report_s']:.1f} s.", ""]
    c = res.get("claims")
    if c:
        L += ["## Full-replay scoring of one prompt's claims (hash check, MP4 decode, 4 piq metrics x 3 aggregations)", "",
              f"{c['claims']} claims of 64x64, 9 frames; seconds for all of them (median of 5):", "",
              "| one at a time, 1 PyTorch thread | one at a time, " + f"{c['torch_threads']} threads | side by side "
              "(`FullReplay.score_many`, one thread per worker) | same scores |", "|---|---|---|---|",
              f"| {c['one_1thread_s']:.3f} | {c['one_all_threads_s']:.3f} | {c['side_by_side_s']:.3f} | {c['same_scores']} |", ""]
    return "\n".join(L)


if __name__ == "__main__":
    main()
