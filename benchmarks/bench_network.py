"""Surrogate network epochs on SQLite: 100 hosts, one epoch, 10k / 100k (/ 1M) requests.

    .venv/bin/python benchmarks/bench_network.py [--sizes 10000 100000] [--hash sha256|splitmix64]

Prints seconds per size and writes benchmarks/results/network.json and network.md. The run
directory is synthetic (scores drawn in tests/network_fixtures.py), which does not change the cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--hash", default="sha256", choices=["sha256", "splitmix64"])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--blocks", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    from sim.network import ExecutorGroup, NetworkParams, run_network
    from tests.network_fixtures import make_synthetic_run

    tmp = Path(tempfile.mkdtemp(prefix="bench-network-"))
    run = make_synthetic_run(tmp / "run")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "network.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": []}
    for n in args.sizes:
        p = NetworkParams(run_dir=str(run), epochs=1, requests_per_epoch=n, blocks_per_epoch=args.blocks,
                          sampling_hash=args.hash,
                          hosts=(ExecutorGroup(count=args.hosts - 10),
                                 ExecutorGroup(count=10, strategy="malicious", deviation="steps:2", cheat_rate=0.2)))
        t0 = time.perf_counter()
        res = run_network(p, f"sqlite:///{tmp / f'chain-{n}-{args.hash}.db'}")
        secs = time.perf_counter() - t0
        ep = res.epochs.iloc[0]
        row = dict(requests=n, hosts=args.hosts, blocks_per_epoch=args.blocks, sampling_hash=args.hash,
                   seconds=round(secs, 2), us_per_request=round(secs / n * 1e6, 1), messages=res.messages,
                   validations=int(ep["validations"]), cheats_caught=int(ep["cheats_caught"]),
                   machine=f"{platform.node()} ({platform.processor() or platform.machine()}), 2 cores, shared",
                   measured_at=time.strftime("%Y-%m-%d %H:%M"))
        print(json.dumps(row))
        results["runs"] = [r for r in results["runs"] if not (r["requests"] == n and r["sampling_hash"] == args.hash
                                                             and r["hosts"] == args.hosts)] + [row]
    results["runs"].sort(key=lambda r: (r["sampling_hash"], r["requests"]))
    path.write_text(json.dumps(results, indent=2))
    lines = ["| requests | hosts | hash | seconds | us/request | messages | validations | measured |", "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['requests']:,} | {r['hosts']} | {r['sampling_hash']} | {r['seconds']} | "
                     f"{r['us_per_request']} | {r['messages']:,} | {r['validations']:,} | {r['measured_at']} |")
    (out / "network.md").write_text("Surrogate network, one epoch, SQLite (benchmarks/bench_network.py)\n\n"
                                    + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
