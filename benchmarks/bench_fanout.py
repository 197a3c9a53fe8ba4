"""The Ray boundary of the experiment fan-out (`flows/fanout.py`): cluster start, actor start, and
the round trip of one call through the experiment's own actor, with the payload a prompt sends
(the parameter JSON) and returns (its result dict).

    python benchmarks/bench_fanout.py [--calls 200] [--out benchmarks/results/fanout]

Writes OUT.json and OUT.md. Compare the per-call time with a prompt's seconds (tiny on this CPU:
~10 s) to see what the boundary costs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/fanout")
    args = ap.parse_args()

    import ray

    from flows.fanout import Cluster, FanOut
    from sim.experiment import ExperimentParams

    blob = ExperimentParams(prompts=20).model_dump_json()
    reply = {"prompt_id": 0, "rows": 720, "pid": 1, "seconds": 1.0}
    t0 = time.perf_counter()
    cluster = Cluster(FanOut(workers=2))
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster.pids()  # the actors' processes are up
    t_actors = time.perf_counter() - t0
    try:
        actor = cluster.actors[0]
        ray.get(actor.ping.remote(blob))
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            ray.get(actor.ping.remote(blob))
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        ray.get([a.ping.remote(reply) for a in cluster.actors for _ in range(args.calls // 2)])
        pipelined = (time.perf_counter() - t) / (2 * (args.calls // 2))
    finally:
        cluster.close()
    res = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
           "ray": ray.__version__, "calls": args.calls, "params_json_bytes": len(blob),
           "cluster_start_s": round(t_init, 2), "actors_start_s": round(t_actors, 2),
           "round_trip_ms_median": round(1e3 * statistics.median(times), 3),
           "round_trip_ms_p90": round(1e3 * sorted(times)[int(0.9 * len(times))], 3),
           "pipelined_ms_per_call": round(1e3 * pipelined, 3)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    md = ["# Ray boundary of the experiment fan-out", "", f"Ray {res['ray']}, {res['machine']}, one run.", "",
          "| quantity | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in res.items() if k not in ("ray", "machine")]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
