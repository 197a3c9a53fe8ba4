"""A small synthetic experiment run directory for the network tests (synthetic: the scores are
drawn here from chosen distributions, not measured; the real ones come from sim/experiment.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_synthetic_run(root: Path, n_prompts: int = 200, seed: int = 0) -> Path:
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    devs = {  # deviation: (kind, score sampler, executor compute share)
        "batch:2": ("benign", lambda n: np.abs(rng.normal(0, 0.01, n)), 1.0),
        "attention:flash": ("benign", lambda n: np.abs(rng.normal(0, 0.012, n)), 1.0),
        "steps:2": ("malign", lambda n: 0.08 + np.abs(rng.normal(0, 0.02, n)), 0.5),
        "fp8": ("malign", lambda n: np.abs(rng.normal(0.02, 0.015, n)), 0.6),
        "guidance:3.5": ("malign", lambda n: np.abs(rng.normal(0, 0.011, n)), 1.0),
    }
    for dev, (kind, draw, share) in devs.items():
        scores = draw(n_prompts)
        for pid in range(n_prompts):
            rows.append(dict(run_id="synthetic", preset="tiny", prompt_id=pid, prompt=f"p{pid}",
                             split="calib" if pid % 2 == 0 else "test", deviation=dev, kind=kind, policy="full",
                             metric="latent_rel_l2", score=float(scores[pid]), executor_compute_share=share,
                             validator_compute_share=1.0, bytes_kept=1000, hwnoise_eps=0.0))
    df = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    df.to_parquet(root / "scores.parquet")
    calib = df[(df.kind == "benign") & (df.split == "calib")]["score"]
    thr = float(np.quantile(calib, 0.99))
    (root / "thresholds.json").write_text(json.dumps(
        {"full/latent_rel_l2": {"threshold": thr, "rule": "benign calib 99th percentile", "split": "calib"}}))
    return root
