"""Revenue per measured GPU-second over the fairness grid, from a `gpu_pricing.py` result.

    python benchmarks/pricing_measured.py benchmarks/results/speed/gpu_pricing_h200.json --out benchmarks/results/speed/pricing_measured_h200

Writes OUT.json and OUT.md (CPU only: it reads the measurements)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.io import write_atomic
from sim.pricing import measured_fairness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("measured")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    m = json.loads(Path(args.measured).read_text())
    r = measured_fairness(m)
    f, rate = r["fit"], r["revenue_per_gpu_second"]
    w = r["unit_model_worst_request"]
    lines = [f"# DiT pricing against measured seconds ({m['preset']}, {m['device']}, {m['runtime']}, {m['measured']})", "",
             f"- pass fit: {f['alpha_seconds']:.4g} N^2 + {f['beta_seconds']:.4g} N + {f['gamma_seconds']:.4g} s "
             f"(N = patches), R^2 = {f['pass_r2']:.6f}; VAE {f['vae_seconds_per_pixel'] * 1e6:.3f} us per decoded pixel, "
             f"R^2 = {f['vae_r2']:.6f}; text encoder {f['text_encoder_seconds']:.2f} s",
             f"- {r['requests']} requests of the fairness grid: DiT revenue per measured GPU-second spans "
             f"{rate['min']:.3f}..{rate['max']:.3f} of its median (max/min {rate['max_over_min']:.3f}, CV {rate['cv']:.3f})",
             f"- the unit model (passes only) is off by at most {r['unit_model_max_error']:+.1%}, at "
             f"{int(w['width'])}x{int(w['height'])}, {int(w['frames'])} frames, {int(w['steps'])} steps, guidance "
             f"{w['guidance_high']}/{w['guidance_low']}", "",
             "| generation | stage fit predicts (s) | stages measured (s) | wall (s) |", "|---|---|---|---|"]
    for c in r["generation_checks"]:
        lines.append(f"| {c['width']}x{c['height']}, {c['frames']} f, {c['steps']} steps | {c['predicted_seconds']:.2f} | "
                     f"{c['measured_seconds']:.2f} | {c['wall_seconds']:.2f} |")
    write_atomic(args.out + ".json", json.dumps(r, indent=1, default=str))
    write_atomic(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
