"""Run the validation experiment without Prefect (same functions the flow wires), e.g. on a GPU
machine that has no Prefect installed:

    python benchmarks/run_experiment.py --preset small --prompts 6 --device cuda --out runs/small-gpu

Prints the verdict table and the time per stage (RUN/timing.json): wall against device seconds,
the MP4 encode and save seconds, and every prompt's wall time over its generation time
(`wall/generation`; `--no-overlap` encodes and scores each generation after it instead of beside
the next one).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--offload", nargs="?", const="all", default="none", choices=("none", "text-encoder", "all"),
                    help="components kept in host memory (bare --offload: all; a14b-random on 80 GB)")
    ap.add_argument("--out", default="runs/direct")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--no-overlap", action="store_true",
                    help="encode and score after each generation instead of on a background thread beside the next")
    ap.add_argument("--config", help="a JSON file of ExperimentParams (the other options are then ignored)")
    args = ap.parse_args()
    from pathlib import Path

    from sim import experiment as ex

    params = ex.ExperimentParams.model_validate_json(Path(args.config).read_text()) if args.config else ex.ExperimentParams(preset=args.preset, prompts=args.prompts, out=args.out, request={"steps": args.steps, "truncate_prompt": True},
                                 bootstrap=args.bootstrap, overlap=not args.no_overlap,
                                 validator_runtime={"device": args.device, "offload": args.offload})
    t0 = time.perf_counter()
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    for i, p in enumerate(prompts):
        t = time.perf_counter()
        ex.run_prompt(params, i, p, len(prompts))
        print(f"prompt {i}: {time.perf_counter() - t:.1f} s", flush=True)
    t_gen = time.perf_counter() - t0
    t1 = time.perf_counter()
    summary = ex.analyse(params, len(prompts))
    t_an = time.perf_counter() - t1
    for row in summary["verdicts"]:
        print(json.dumps(row))
    print(f"generation+scoring {t_gen:.1f} s, statistics+report {t_an:.1f} s, report {summary['report']}")
    print_stages(summary["timing"], params.overlap)


def _r(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def print_stages(t: dict, overlap: bool) -> None:
    """The stages of RUN/timing.json (seconds summed over prompts)."""
    for name in ("generation", "validator_replay"):
        print(f"{name}: wall {t[name]:.1f} s, device {t.get(name + '_device', 0):.1f} s, "
              f"wall/device {_r(t.get(name + '_wall_over_device'))}")
    print(f"MP4 encode ({'overlapped' if overlap else 'serial'}): {t.get('encode', 0):.1f} s, "
          f"saving the generations {t.get('save', 0):.1f} s (neither in the generation time)")
    print(f"scoring ({'overlapped' if overlap else 'serial'}): {t['scoring']:.1f} s, "
          f"waited for the background {t.get('scoring_waited', 0):.1f} s")
    gen = t["generation"] + t["validator_replay"]
    dev = t.get("generation_device", 0) + t.get("validator_replay_device", 0)
    print(f"prompts: wall {t.get('wall', 0):.1f} s, generation {gen:.1f} s, device {dev:.1f} s, "
          f"wall/generation {_r(t.get('wall_over_generation'))}, wall/device {_r(t.get('wall_over_device'))}")


if __name__ == "__main__":
    main()
