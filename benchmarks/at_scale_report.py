"""Evidence at scale, the analysis half: tables and per-rule FAR/FRR from `gpu_at_scale.py` lines.

    python benchmarks/at_scale_report.py benchmarks/results/at_scale/*.jsonl --out benchmarks/results/at_scale/at_scale

Writes OUT.md (the tables), OUT.html (the same with a strip plot per statistic, in the experiment
report's style) and OUT.json (the rule rates); runs on any machine, no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lines", nargs="+", help="JSON-lines files written by gpu_at_scale.py")
    ap.add_argument("--out", required=True, help="output path without suffix")
    args = ap.parse_args()
    from sim.at_scale import evaluate_rules, load_rows, markdown
    from sim.at_scale_html import html

    df = load_rows(args.lines)
    rules = evaluate_rules(df)
    out = Path(args.out)
    meta = {"validator_attention": validator_attention(args.lines)}
    out.with_suffix(".md").write_text("# Evidence at scale (measured)\n\n" + markdown(df, rules, meta))
    out.with_suffix(".html").write_text(html(df, rules, {"source": ", ".join(Path(p).name for p in args.lines)}))
    out.with_suffix(".json").write_text(json.dumps({"rules": rules, "generations": len(df)}, indent=1))
    print(out.with_suffix(".md").read_text())


def validator_attention(lines: list[str]) -> list[str]:
    """The validator's attention backends, from the `_meta.json` written beside each lines file
    (`_native_cudnn`, gpu_at_scale.py's default, where none is)."""
    seen = []
    for path in lines:
        meta = Path(path).with_name(Path(path).stem + "_meta.json")
        a = json.loads(meta.read_text()).get("attention", "_native_cudnn") if meta.exists() else "_native_cudnn"
        if a not in seen:
            seen.append(a)
    return seen


if __name__ == "__main__":
    main()
