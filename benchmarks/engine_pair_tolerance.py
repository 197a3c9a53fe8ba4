"""Does the validator's rule tolerate the engine pair? From finished experiment runs that include
the benign deviation `engine:vllm-omni`:

    .venv/bin/python benchmarks/run_experiment.py --config benchmarks/configs/engine6_own.json      # validator: own schedule
    .venv/bin/python benchmarks/run_experiment.py --config benchmarks/configs/engine6_pinned.json   # validator: Runtime(schedule="wan")
    .venv/bin/python benchmarks/engine_pair_tolerance.py runs/engine6_own runs/engine6_pinned

For each policy/metric: the largest score of the other benign deviations on calibration prompts (the
threshold a rule tuned without the engine pair would use), how many engine-pair claims it accepts,
how many malign claims it accepts, and the test-prompt malign acceptance once the threshold is
widened to accept the engine pair's calibration claims. Latent policies cannot score engine-pair
claims (vLLM-Omni exposes no latents: every score infinite). Prints markdown.
"""

from __future__ import annotations

import sys

import pandas as pd

CHECKS = (("full", "ssim.mean"), ("full", "gmsd.mean"), ("full", "psnr.mean"), ("fingerprint", "fp_dist.max"),
          ("checkpoint", "rel_l2.max"))


def main(runs: list[str]) -> None:
    print("| run | policy/metric | other benign, calib max | engine pair median (max) | engine pair accepted | "
          "malign accepted | widened: test malign accepted |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        df = pd.read_parquet(f"{run}/scores.parquet")
        df = df[~df.deviation.str.startswith("hwnoise") | (df.deviation == "hwnoise:0.003")]
        for pol, metric in CHECKS:
            m = df[(df.policy == pol) & (df.metric == metric)]
            if m.empty:
                continue
            ben = m[(m.kind == "benign") & (m.deviation != "engine:vllm-omni")]
            thr = ben[ben.split == "calib"].score.max()
            eng, mal = m[m.deviation == "engine:vllm-omni"], m[m.kind == "malign"]
            wide = max(thr, eng[eng.split == "calib"].score.max())
            test_mal = mal[mal.split == "test"]
            print(f"| {run} | {pol}/{metric} | {thr:.4g} | {eng.score.median():.4g} ({eng.score.max():.4g}) | "
                  f"{(eng.score <= thr).sum()}/{len(eng)} | {(mal.score <= thr).sum()}/{len(mal)} | "
                  f"{(test_mal.score <= wide).sum()}/{len(test_mal)} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/engine6_own", "runs/engine6_pinned"])
