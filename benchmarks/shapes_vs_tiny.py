"""How the validation experiment changes when the model is trained: two finished experiment runs
(`t2vsim experiment --preset tiny ...` and `--preset shapes ...` on the same templated prompts)
side by side: deviation sizes, score distributions per policy, best-policy FAR/FRR per cheat, and
prompt following of every committed video (frame read-off, `sim/shapes_quality.py`).

    python benchmarks/shapes_vs_tiny.py --run tiny=runs/tiny12 --run shapes=runs/shapes12 \
        --out benchmarks/results/shapes_vs_tiny

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _load(run: Path):
    import pandas as pd

    df = pd.read_parquet(run / "scores.parquet")
    summary = json.loads((run / "summary.json").read_text())
    params = json.loads((run / "params.json").read_text())
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").exists() else {}
    return df, summary, params, timing


def distributions(df) -> list[dict]:
    """Per policy, its metric and aggregation with the widest benign-to-malign gap on the pooled data:
    benign median and max, and each deviation's median (scores are distances: larger = further)."""
    out = []
    test = df[df["split"] == "test"] if "split" in df else df
    for (policy, metric), g in test.groupby(["policy", "metric"]):
        b = g[g["kind"] == "benign"]["score"]
        m = g[g["kind"] == "malign"]["score"]
        if b.empty or m.empty:
            continue
        out.append({"policy": policy, "metric": metric, "benign_median": float(b.median()),
                    "benign_max": float(b.max()), "malign_median": float(m.median()),
                    "per_deviation_median": {d: float(x.median()) for d, x in g.groupby("deviation")["score"]}})
    return out


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeat)")
    ap.add_argument("--out", required=True, help="output path without extension")
    return ap.parse_args()


def _sizes_section(res: dict, names: list[str]) -> list[str]:
    md = ["## Deviation sizes (median relative L2 of the final latent against the canonical one)", "",
          "| deviation | kind | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    sizes = {n: {s["deviation"]: s for s in r["deviation_sizes"]} for n, r in res.items()}
    for dev in dict.fromkeys(d for n in names for d in sizes[n]):
        kind = next(sizes[n][dev]["kind"] for n in names if dev in sizes[n])
        md.append(f"| {dev} | {kind} | " + " | ".join(
            f"{sizes[n][dev]['median_rel_l2_final']:.4g}" if dev in sizes[n] else "" for n in names) + " |")
    return md


def _verdicts_section(res: dict, names: list[str]) -> list[str]:
    """Per cheat and run: its best policy (an oracle view), the experiment's verdict, and on held-out
    prompts at the calibration threshold (FAR <= 1% there) the honest rows rejected and the cheat
    rows accepted, with exact 95% bounds."""
    md = ["", "## Best policy per cheat on held-out prompts (an oracle view: each cheat its own policy, "
              "chosen on calibration prompts)", "",
          "| deviation | " + " | ".join(f"{n}: policy / metric | {n}: verdict | {n}: test FRR | {n}: test FAR"
                                       for n in names) + " |",
          "|---|" + "---|---|---|---|" * len(names)]
    verd = {n: {v["deviation"]: v for v in r["verdicts"] if v.get("is_best", True)} for n, r in res.items()}
    for dev in dict.fromkeys(d for n in names for d in verd[n]):
        cells = []
        for n in names:
            v = verd[n].get(dev)
            cells += ["", "", "", ""] if v is None else [
                f"{v['policy']} / {v['metric']}", v.get("separation", ""),
                _count(v, "frr_at_far"), _count(v, "test_far_at_far")]
        md.append(f"| {dev} | " + " | ".join(cells) + " |")
    return md


def _count(v: dict, key: str) -> str:
    from sim.at_scale import rate_str

    k, n = v.get(f"{key}_k"), v.get(f"{key}_n")
    return "n/a" if k is None or not n else rate_str(int(k), int(n))


def _distributions_section(res: dict, names: list[str]) -> list[str]:
    md = ["", "## Score distributions (held-out prompts; distances, larger = further from the validator)", "",
          "| policy / metric | " + " | ".join(f"{n}: benign median / max | {n}: malign median" for n in names) + " |",
          "|---|" + "---|---|" * len(names)]
    dist = {n: {(x["policy"], x["metric"]): x for x in r["distributions"]} for n, r in res.items()}
    for key in sorted(set().union(*[set(d) for d in dist.values()])):
        cells = []
        for n in names:
            x = dist[n].get(key)
            cells += ["", ""] if x is None else [f"{x['benign_median']:.4g} / {x['benign_max']:.4g}",
                                                 f"{x['malign_median']:.4g}"]
        md.append(f"| {key[0]} / {key[1]} | " + " | ".join(cells) + " |")
    return md


def main() -> None:
    args = _parse()
    from sim.shapes_quality import markdown_table, score_run

    runs = dict(x.split("=", 1) for x in args.run)
    res = {}
    for name, d in runs.items():
        df, summary, params, timing = _load(Path(d))
        q = score_run(d)
        res[name] = {"run": d, "preset": params["preset"], "n_prompts": summary.get("n_prompts"),
                     "request": params["request"], "deviation_sizes": summary["deviation_sizes"],
                     "verdicts": summary["deviations"], "distributions": distributions(df),
                     "prompt_following": q["accuracy"], "timing": timing}
    names = list(res)
    md = ["# The experiment on trained `shapes` beside random `tiny`", "",
          "Same templated prompts; " + "; ".join(
              f"{n}: preset `{r['preset']}`, {r['n_prompts']} prompts, request {r['request']}, stages "
              + ", ".join(f"{k} {v:.2f}" if "_over_" in k else f"{k} {v:.0f} s" for k, v in r["timing"].items()
                         if isinstance(v, (int, float))) for n, r in res.items()), ""]
    md += _sizes_section(res, names) + _verdicts_section(res, names) + _distributions_section(res, names)
    for n in names:
        md += ["", f"## Prompt following of every committed video: {n}", "",
               markdown_table(res[n]["prompt_following"])]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
