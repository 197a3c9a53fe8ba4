"""Revenue per GPU-second over the fairness grid of four price models, from a `gpu_pricing.py` result,
with the held-out checks of the stage fit the grid's seconds come from.

    python benchmarks/pricing_measured.py benchmarks/results/speed/gpu_pricing_h200.json \\
        --end-to-end benchmarks/results/speed/gpu_end_to_end_h200.json \\
        --calibration benchmarks/results/speed/pricing_stage_calibration_h200.json \\
        --out benchmarks/results/speed/pricing_measured_h200

Writes OUT.json and OUT.md (CPU only: it reads the measurements); `--calibration` also writes the
stage-complete calibration JSON (`PricingParams.from_calibration` reads it); `--end-to-end` adds a
`gpu_end_to_end.py` run's non-model seconds as a point the overhead fit did not see."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.io import write_atomic
from sim.pricing import measured_fairness, stage_calibration

HONEST = (
    "**What this shows and what it does not.** The passes and the VAE decodes are measured; the 300 grid "
    "requests are not. Their seconds are the stage fit's predictions from those measurements, so a price "
    "model built on the same fit is flat on the grid almost by construction (row (c) against the stage seconds, "
    "(d) against the wall seconds). "
    "The evidence that the stage-complete price is fair is the fits' R^2, their leave-one-out errors and "
    "the real generations, each predicted by fits that did not see it (tables below); the overhead fit "
    "rests on {n} generation(s) and is a rough estimate, not a law.")


def _pct(x) -> str:
    return "n/a" if x is None else "0.0%" if abs(x) < 5e-4 else f"{x:+.1%}"


def _fit_lines(r: dict) -> list[str]:
    f = r["fit"]
    sizes = len({(g["width"], g["height"], g["frames"]) for g in r["held_out"]["generations"]})
    form = ("through zero (fewer than 3 sizes: no per-request term fitted)" if sizes < 3
            else f"+ {f['overhead_seconds']:.2f} s per request")
    oh = (f"non-model overhead (wall minus the stages) {f['overhead_seconds_per_pixel'] * 1e6:.3f} us per decoded "
          f"pixel {form}, from {f['overhead_points']} generation(s)"
          + (f", R^2 = {f['overhead_r2']:.4f} (with {f['overhead_points']} points: {f['overhead_points'] - 1} "
             "degree(s) of freedom)" if f["overhead_r2"] is not None else ""))
    return [f"- pass fit: {f['alpha_seconds']:.4g} N^2 + {f['beta_seconds']:.4g} N + {f['gamma_seconds']:.4g} s "
            f"(N = patches), R^2 = {f['pass_r2']:.6f}; VAE {f['vae_seconds_per_pixel'] * 1e6:.3f} us per decoded pixel, "
            f"R^2 = {f['vae_r2']:.6f}; text encoder {f['text_encoder_seconds']:.2f} s (median of "
            f"{f['text_encoder_points']} generations)", f"- {oh}"]


def _variant_table(r: dict) -> list[str]:
    lines = [f"Over the {r['requests']} requests of the fairness grid (4 A14B sizes x 17..81 frames x 10..50 steps x "
             "3 guidance settings), revenue per GPU-second over its median, and the unit model's largest error "
             "(units x unit_seconds against the seconds), against the fit's model-stage seconds (text encoder, "
             "passes, VAE) and against its wall seconds (stages + fitted overhead):", "",
             "| price model | charged | stages: min..max | max/min | CV | max error | wall: min..max | max/min | CV "
             "| max error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        st, w = v["stages"], v.get("wall")
        charged = " + ".join(["passes"] + (["constant"] if v["charge_constant"] else []) + v["charge_stages"])
        row = (f"| ({name}) {v['label']} | {charged} | {st['min']:.3f}..{st['max']:.3f} | {st['max_over_min']:.3f} | "
               f"{st['cv']:.3f} | {_pct(st['max_error'])} |")
        row += (f" {w['min']:.3f}..{w['max']:.3f} | {w['max_over_min']:.3f} | {w['cv']:.3f} | {_pct(w['max_error'])} |"
                if w else " | | | |")
        lines.append(row)
    wr = r["variants"]["a"]["stages"]["worst_request"]
    lines += ["", f"(a)'s largest error is at {wr['width']}x{wr['height']}, {wr['frames']} frames, {wr['steps']} steps, "
              f"guidance {wr['guidance_high']}/{wr['guidance_low']}: its units cover {1 + r['variants']['a']['stages']['max_error']:.0%} "
              "of that request's model-stage seconds (the rest is the unpriced VAE, text encoder and per-pass constant)."]
    return lines


def _held_out_lines(r: dict) -> list[str]:
    h = r["held_out"]
    lines = ["## Held-out checks", "",
             f"- leave-one-out, pass fit ({len(h['passes_loo']['points'])} points, each predicted by the fit of the "
             f"others): largest error {_pct(h['passes_loo']['max_abs_error'])} (absolute)",
             f"- leave-one-out, VAE fit ({len(h['vae_loo']['points'])} sizes): largest error "
             f"{_pct(h['vae_loo']['max_abs_error'])} (absolute)", "",
             "Each real generation predicted by fits that did not see it (passes and VAE never do; the text "
             "encoder and the overhead come from the other generation only):", "",
             "| generation | stages predicted / measured (s) | error | wall predicted / measured (s) | error |",
             "|---|---|---|---|---|"]
    for g in h["generations"]:
        lines.append(f"| {g['width']}x{g['height']}, {g['frames']} f, {g['steps']} steps | "
                     f"{g['predicted_stage_sum']:.2f} / {g['measured_stage_sum']:.2f} | {_pct(g['stage_sum_error'])} | "
                     f"{g.get('predicted_wall', float('nan')):.2f} / {g.get('measured_wall', float('nan')):.2f} | "
                     f"{_pct(g.get('wall_error'))} |")
    lines += ["", "What each price model charges for those real generations (units x unit_seconds, from the same "
              "held-out fits) against their measured stage seconds and wall seconds:", "",
              "| generation | " + " | ".join(f"({k}) stages / wall" for k in r["variants"]) + " |",
              "|---|" + "---|" * len(r["variants"])]
    for g in h["generations"]:
        cells = [f"{_pct(p['stage_sum_error'])} / {_pct(p.get('wall_error'))}" for p in g["priced"].values()]
        lines.append(f"| {g['width']}x{g['height']}, {g['frames']} f, {g['steps']} steps | " + " | ".join(cells) + " |")
    e = h.get("end_to_end")
    if e:
        lines += ["", f"- the end-to-end run ({e['width']}x{e['height']}, {e['frames']} frames, {e['steps']} steps; "
                  f"another runtime: compile {e['runtime']['compile']}, VAE {e['runtime']['vae_dtype']}, so only its "
                  f"non-model seconds are compared): overhead {e['measured_overhead']:.2f} s measured, "
                  f"{e['predicted_overhead']:.2f} s predicted by the generations' fit ({_pct(e['overhead_error'])}); "
                  f"text encoder {e['measured_text_encoder']:.2f} s against the fit's {e['predicted_text_encoder']:.2f} s"]
    return lines


def report(m: dict, r: dict) -> list[str]:
    return ([f"# DiT pricing against measured seconds ({m['preset']}, random weights, {m['device']}, {m['runtime']}, "
             f"{m['measured']})", ""] + _fit_lines(r)
            + ["", HONEST.format(n=r["fit"]["overhead_points"]), ""] + _variant_table(r) + [""] + _held_out_lines(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("measured")
    ap.add_argument("--out", required=True)
    ap.add_argument("--end-to-end", help="a gpu_end_to_end.py JSON: its non-model seconds as a held-out point")
    ap.add_argument("--calibration", help="also write the stage-complete calibration JSON here")
    args = ap.parse_args()
    m = json.loads(Path(args.measured).read_text())
    e2e = json.loads(Path(args.end_to_end).read_text()) if args.end_to_end else None
    r = measured_fairness(m, end_to_end=e2e)
    lines = report(m, r)
    write_atomic(args.out + ".json", json.dumps(r, indent=1, default=str))
    write_atomic(args.out + ".md", "\n".join(lines) + "\n")
    if args.calibration:
        stage_calibration(m).save(args.calibration)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
