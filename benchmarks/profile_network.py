"""Where a surrogate epoch's time goes: cProfile of one epoch (100 hosts, 10 cheating), grouped.

    .venv/bin/python benchmarks/profile_network.py --requests 20000 [--hash sha256] [--writes batched]
    .venv/bin/python benchmarks/profile_network.py --stats FILE.prof   # group a saved profile

Groups (own time of the functions in each): the database driver (sqlite3/psycopg calls), SQLAlchemy
(statement compilation, parameters, result rows), the chain's rules and handlers (sim/chain), the
sampling hashes (hashlib, SplitMix64), pydantic, the network agents (sim/network), the rest. The
profiler's own overhead inflates small functions, so the shares are a guide, not a budget. Prints
a markdown table; with --out writes it (and the top functions) to a file.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROUPS = (("database driver", ("sqlite3", "psycopg", "{method 'execute", "{method 'executemany", "{method 'commit",
                               "{method 'fetch")),
          ("SQLAlchemy", ("sqlalchemy",)), ("sampling hashes", ("_hashlib", "hashlib", "{method 'digest",
                                                                 "seed_hashes", "seed_draws", "splitmix",
                                                                 "from_bytes", "{method 'encode", "rules.py:<genexpr>")),
          ("pydantic", ("pydantic",)), ("chain rules and handlers", ("sim/chain",)),
          ("network agents", ("sim/network",)), ("pricing", ("sim/pricing",)))


def group_of(key) -> str:
    filename, _, func = key
    text = f"{filename}:{func}"
    for name, marks in GROUPS:
        if any(m in text for m in marks):
            return name
    return "other (numpy, builtins, interpreter)"


def breakdown(stats: pstats.Stats) -> list[tuple[str, float]]:
    totals: dict[str, float] = {}
    for key, (cc, nc, tt, ct, callers) in stats.stats.items():
        totals[group_of(key)] = totals.get(group_of(key), 0.0) + tt
    return sorted(totals.items(), key=lambda kv: -kv[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--hash", default="sha256", choices=["sha256", "splitmix64"])
    ap.add_argument("--writes", default="batched", choices=["batched", "per_block"])
    ap.add_argument("--stats", default=None, help="group this saved profile instead of running one")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.stats:
        st, n, label = pstats.Stats(args.stats), None, args.label or Path(args.stats).name
        wall = None
    else:
        from sim.network import ExecutorGroup, NetworkParams, run_network
        from tests.network_fixtures import make_synthetic_run

        tmp = Path(tempfile.mkdtemp(prefix="profile-network-"))
        run = make_synthetic_run(tmp / "run")
        n = args.requests
        p = NetworkParams(run_dir=str(run), epochs=1, requests_per_epoch=n, blocks_per_epoch=100, sampling_hash=args.hash,
                          chain_writes=args.writes,
                          hosts=(ExecutorGroup(count=90), ExecutorGroup(count=10, strategy="malicious",
                                                                        deviation="steps:2", cheat_rate=0.2)))
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        run_network(p, f"sqlite:///{tmp / 'chain.db'}")
        pr.disable()
        wall = time.perf_counter() - t0
        st = pstats.Stats(pr)
        label = args.label or f"{n:,} requests, {args.hash}, {args.writes}"
    rows = breakdown(st)
    total = sum(t for _, t in rows)
    lines = [f"Profile: {label}" + (f", {wall:.1f} s under cProfile ({wall / n * 1e6:.0f} us/request)" if wall else ""),
             "", "| group | own seconds | share |", "|---|---|---|"]
    lines += [f"| {g} | {t:.2f} | {t / total:.0%} |" for g, t in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        import io

        buf = io.StringIO()
        st.stream = buf
        st.sort_stats("tottime").print_stats(25)
        Path(args.out).write_text(text + "\n\nTop functions by own time:\n\n```\n" + buf.getvalue().strip() + "\n```\n")


if __name__ == "__main__":
    main()
