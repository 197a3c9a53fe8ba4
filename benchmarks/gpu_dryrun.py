"""The dry run of a new GPU box without Prefect: the same `sim.dryrun.run_dry_run` the `t2vsim dryrun`
flow calls (one canonical and one of each default deviation, a bit-identical rerun, a PoC batch and a
calibration point; checks that device, attention backend, TF32 and determinism are what was asked).

    python benchmarks/gpu_dryrun.py --preset small --device cuda --expect-gpu H200 --out DIR

Writes DIR/verdict.json and DIR/verdict.md (and the experiment's run directory under DIR); prints the
verdict. For machines where Prefect is not installed (the GPU wheel set carries no Prefect).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--attention", default="native", help="the asked diffusers attention backend")
    ap.add_argument("--expect-gpu", default=None, help="text the device name must contain")
    ap.add_argument("--nonces", type=int, default=4, help="nonces of the PoC batch")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from pydantic import ValidationError

    from models.request import Runtime
    from sim.dryrun import DryRunParams, run_dry_run, verdict_markdown

    try:
        params = DryRunParams(preset=args.preset, expect_gpu=args.expect_gpu, poc_nonces=args.nonces, out=args.out,
                              runtime=Runtime(device=args.device, attention_backend=args.attention))
    except ValidationError as err:
        e = err.errors()[0]
        raise SystemExit(f"{'.'.join(map(str, e['loc']))}: {e['msg']}")
    verdict = run_dry_run(params)
    print(verdict_markdown(verdict))
    raise SystemExit(0 if verdict["passed"] else 1)


if __name__ == "__main__":
    main()
