"""Surrogate network epochs on SQLite: 100 hosts, one epoch, 10k / 100k (/ 1M) requests.

    .venv/bin/python benchmarks/bench_network.py [--sizes 10000 100000] [--hash sha256|splitmix64]
        [--writes batched|per_block] [--flush-blocks 10]

Prints seconds (wall and CPU) per size, checks the chain invariants on what each run wrote (not timed) and
writes benchmarks/results/network.json and network.md,
one row per (requests, hosts, hash, chain writes). `--writes per_block` times the reference path
(apply_block, one transaction per block); rows measured before the batched path existed are the
per-block path too. The run
directory is synthetic (scores drawn in tests/network_fixtures.py), which does not change the cost.

    .venv/bin/python benchmarks/bench_network.py --baseline REV [--repeats 2]

instead times this tree against git revision REV (exported with `git archive`), each size in
fresh processes, alternating baseline and current `--repeats` times (so both see the same load on
a shared machine), and writes the seconds and the ratio (best current / best baseline) to
network_vs_baseline.{json,md}.

    .venv/bin/python benchmarks/bench_network.py --economics runs/tiny20 [--label tiny20-cpu]

instead tabulates the economics of cheating on a real experiment run directory: for every policy
with a calibrated threshold (its primary metric), each malign deviation's measured fail rate and
compute share, P(INVALID) per epoch and expected profit against honest work (default
NetworkParams: the A14B request mix, 10 hosts, 1,000 requests per epoch, Gonka's rules), plus the
sweep (sampling rate x threshold x slash fraction x reward) summarised as the share of the grid
where each strategy pays. Writes benchmarks/results/network_economics_LABEL.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def economics(run_dir: str, label: str, out: Path) -> None:
    import pandas as pd

    from sim.network import ExecutorGroup, NetworkParams, RunDirError
    from sim.network.backends import _primary_metric
    from sim.network.economics import Setting, setting_from, strategy_table, sweep

    scores = pd.read_parquet(Path(run_dir) / "scores.parquet")
    run_params = json.loads((Path(run_dir) / "params.json").read_text())
    tables, sweeps, skipped = [], [], {}
    for policy in sorted(scores["policy"].unique()):
        metric = _primary_metric(Path(run_dir), policy)
        try:
            p = NetworkParams(run_dir=run_dir, policy=policy, metric=metric, hosts=(ExecutorGroup(count=10),))
            b = p.surrogate_backend()
        except RunDirError as err:
            skipped[policy] = str(err)
            continue
        s = setting_from(p)
        for reward in (1.0, 0.0):  # Gonka's epoch reward, and fees only (after subsidies end)
            st = Setting(**{**s.__dict__, "reward_ngonka": s.reward_ngonka * reward})
            tab = strategy_table({d: b.fail_rate(d) for d in b.malign}, b.executor_share, b.fail_rate(None), p.chain,
                                 st, cheat_rates=(0.1, 0.5, 1.0), trials=2000, seed=0)
            tab.insert(0, "policy", f"{policy}/{b.metric}")
            tab.insert(1, "threshold", b.threshold)
            tab.insert(2, "reward_share", reward)
            tables.append(tab)
        sw = sweep(b, p.chain, s, trials=500, seed=0)
        g = sw.groupby(["strategy", "reward_share"])["pays"].mean().unstack("reward_share")
        g.columns = [f"pays_share_reward_{c:g}" for c in g.columns]
        g = g.reset_index()
        g.insert(0, "policy", f"{policy}/{b.metric}")
        sweeps.append(g)
        print(f"{policy}/{b.metric}: threshold {b.threshold:.4g}, {len(b.benign)} honest rows, "
              f"false-reject rate {b.fail_rate(None):.3f}")
    _write_economics(pd.concat(tables, ignore_index=True), pd.concat(sweeps, ignore_index=True), run_dir, label,
                     run_params, skipped, out)


def _write_economics(tab, sw, run_dir: str, label: str, run_params: dict, skipped: dict, out: Path) -> None:
    gnk = 1e9
    meta = dict(run_dir=run_dir, label=label, preset=run_params.get("preset"), prompts=run_params.get("prompts"),
                steps=run_params.get("request", {}).get("steps"), device=run_params.get("validator_runtime", {}).get("device"),
                hwnoise_headline=run_params.get("hwnoise_headline"), skipped=skipped,
                setting="default NetworkParams: A14B mix, 10 hosts, 1,000 requests/epoch, Gonka rules, GPU cost 0.5 "
                        "of revenue per GPU-second, score_draw per_inference",
                machine=f"{platform.node()} ({platform.processor() or platform.machine()})",
                measured_at=time.strftime("%Y-%m-%d %H:%M"))
    (out / f"network_economics_{label}.json").write_text(json.dumps(
        dict(meta=meta, strategies=json.loads(tab.to_json(orient="records")),
             sweep=json.loads(sw.to_json(orient="records"))), indent=1))
    lines = [f"Economics of cheating on `{run_dir}` ({meta['preset']} preset, {meta['prompts']} prompts, "
             f"{meta['steps']} steps, {meta['device']}); {meta['setting']}. benchmarks/bench_network.py --economics",
             "", "| policy/metric | reward | strategy | cheat rate | compute saving | q fail | P(INVALID)/epoch | "
             "profit (GNK) | gain vs honest (GNK) | pays |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in tab.itertuples():
        lines.append(f"| {r.policy} | {'Gonka' if r.reward_share else 'fees only'} | {r.strategy} | {r.cheat_rate:g} | "
                     f"{r.compute_saving:.2f} | {r.q_fail:.2f} | {r.p_invalid_epoch:.2f} | {r.profit_ngonka / gnk:,.4g} | "
                     f"{r.gain_vs_honest_ngonka / gnk:,.4g} | {'yes' if r.pays else 'no'} |")
    cols = [c for c in sw.columns if c.startswith("pays_share")]
    lines += ["", "Share of the sweep grid (sampling x threshold quantile x slash x cheat rate) where it pays:", "",
              "| policy/metric | strategy | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in sw.to_dict("records"):
        lines.append(f"| {r['policy']} | {r['strategy']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    (out / f"network_economics_{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def compare(rev: str, sizes: list[int], repeats: int, hash_: str, out: Path) -> None:
    import resource
    import subprocess

    base = Path(tempfile.mkdtemp(prefix="bench-network-base-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True,
                            text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    rows = []
    for n in sizes:
        secs: dict[str, list[float]] = {"baseline": [], "current": []}
        cpu: dict[str, list[float]] = {"baseline": [], "current": []}
        for _ in range(repeats):
            for label, tree in (("baseline", base), ("current", ROOT)):
                scratch = Path(tempfile.mkdtemp(prefix=f"bench-network-{label}-"))
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                res = subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_network.py"), "--sizes", str(n),
                                      "--hash", hash_, "--out", str(scratch)], check=True, capture_output=True,
                                     text=True, cwd=tree)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                row = json.loads(res.stdout.strip().splitlines()[-1])
                secs[label].append(row["seconds"])
                # CPU seconds of the whole process (set-up included): less sensitive to a shared machine's load
                cpu[label].append(round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2))
                print(json.dumps(dict(label=label, requests=n, seconds=row["seconds"], cpu_seconds=cpu[label][-1])),
                      flush=True)
        rows.append(dict(requests=n, baseline_rev=f"{rev} ({commit})", current_rev=head, hash=hash_,
                         baseline_seconds=secs["baseline"], current_seconds=secs["current"],
                         baseline_cpu_seconds=cpu["baseline"], current_cpu_seconds=cpu["current"],
                         ratio_best=round(min(secs["current"]) / min(secs["baseline"]), 3),
                         cpu_ratio_best=round(min(cpu["current"]) / min(cpu["baseline"]), 3),
                         machine=f"{platform.node()} ({platform.processor() or platform.machine()}), 2 cores, shared",
                         measured_at=time.strftime("%Y-%m-%d %H:%M")))
    (out / "network_vs_baseline.json").write_text(json.dumps({"runs": rows}, indent=2))
    lines = ["Surrogate network epoch, current tree vs a baseline revision, alternating fresh processes "
             "(benchmarks/bench_network.py --baseline)", "",
             "| requests | baseline | wall s | CPU s | current | wall s | CPU s | current / baseline, wall (best) | "
             "CPU (best) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['requests']:,} | {r['baseline_rev']} | {', '.join(map(str, r['baseline_seconds']))} | "
                     f"{', '.join(map(str, r['baseline_cpu_seconds']))} | {r['current_rev']} | "
                     f"{', '.join(map(str, r['current_seconds']))} | {', '.join(map(str, r['current_cpu_seconds']))} | "
                     f"{r['ratio_best']} | {r['cpu_ratio_best']} |")
    (out / "network_vs_baseline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--economics", metavar="RUN_DIR", help="tabulate the economics on an experiment run instead")
    ap.add_argument("--label", default=None, help="name of the economics result files (default: the run's name)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--hash", default="sha256", choices=["sha256", "splitmix64"])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--writes", default="batched", choices=["batched", "per_block"], help="chain write path")
    ap.add_argument("--flush-blocks", type=int, default=10, help="blocks per flush of the batched path")
    ap.add_argument("--blocks", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--baseline", metavar="REV", help="time this tree against git revision REV instead")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per size with --baseline")
    ap.add_argument("--render", action="store_true", help="only rewrite network.md from network.json")
    args = ap.parse_args()
    if args.baseline:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        compare(args.baseline, args.sizes, args.repeats, args.hash, out)
        return
    if args.render:
        render(json.loads((Path(args.out) / "network.json").read_text()), Path(args.out))
        return
    if args.economics:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        economics(args.economics, args.label or Path(args.economics).name, out)
        return

    epochs(args)


def epochs(args) -> None:
    """Time one epoch per size; keep one row per (size, hash, hosts, blocks, chain writes)."""
    from tests.network_fixtures import make_synthetic_run

    tmp = Path(tempfile.mkdtemp(prefix="bench-network-"))
    run = make_synthetic_run(tmp / "run")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "network.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": []}
    for n in args.sizes:
        row = time_epoch(args, n, run, tmp)
        print(json.dumps(row))
        results["runs"] = [r for r in results["runs"] if not (
            r["requests"] == n and r["sampling_hash"] == args.hash and r["hosts"] == args.hosts
            and r.get("blocks_per_epoch", 100) == args.blocks
            and r.get("chain_writes", "per_block") == args.writes)] + [row]
    render(results, out)


def time_epoch(args, n: int, run: Path, tmp: Path) -> dict:
    """One epoch of `n` requests, timed (wall and CPU of this process; a writer process's CPU is
    given apart), then the chain's invariants checked on the database it wrote (not timed)."""
    import resource

    from sim.chain import check_invariants, make_engine
    from sim.network import ExecutorGroup, NetworkParams, run_network

    p = NetworkParams(run_dir=str(run), epochs=1, requests_per_epoch=n, blocks_per_epoch=args.blocks,
                      sampling_hash=args.hash, chain_writes=args.writes, flush_blocks=args.flush_blocks,
                      hosts=(ExecutorGroup(count=args.hosts - 10),
                             ExecutorGroup(count=10, strategy="malicious", deviation="steps:2", cheat_rate=0.2)))
    url = f"sqlite:///{tmp / f'chain-{n}-{args.hash}.db'}"
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_network(p, url)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t1 = time.perf_counter()
    engine = make_engine(url)
    bad = check_invariants(engine)
    engine.dispose()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ep = res.epochs.iloc[0]
    return dict(requests=n, hosts=args.hosts, blocks_per_epoch=args.blocks, sampling_hash=args.hash,
                chain_writes=args.writes, flush_blocks=args.flush_blocks if args.writes == "batched" else None,
                seconds=round(secs, 2), cpu_seconds=round(cpu, 2),
                writer_cpu_seconds=round(child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime, 2),
                max_rss_mib=round(rss_mib), load_average=round(load, 2), us_per_request=round(secs / n * 1e6, 1),
                messages=res.messages, validations=int(ep["validations"]), cheats_caught=int(ep["cheats_caught"]),
                invariants="hold" if not bad else f"{len(bad)} broken: {bad[:3]}",
                invariants_seconds=round(time.perf_counter() - t1, 2),
                machine=f"{platform.node()} ({platform.processor() or platform.machine()}), 2 cores, shared",
                measured_at=time.strftime("%Y-%m-%d %H:%M"))


def render(results: dict, out: Path) -> None:
    results["runs"].sort(key=lambda r: (r.get("chain_writes", "per_block"), r["sampling_hash"], r["requests"],
                                        r.get("blocks_per_epoch", 100)))
    (out / "network.json").write_text(json.dumps(results, indent=2))
    lines = ["| requests | hosts | blocks | hash | chain writes | seconds | CPU s | writer CPU s | us/request | messages | "
             "validations | invariants | load avg | measured |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        w = r.get("chain_writes", "per_block")
        w = f"batched (flush every {r['flush_blocks']} blocks)" if w == "batched" else "per block (reference)"
        lines.append(f"| {r['requests']:,} | {r['hosts']} | {r.get('blocks_per_epoch', 100)} | {r['sampling_hash']} | {w} | "
                     f"{r['seconds']} | {r.get('cpu_seconds', '')} | {r.get('writer_cpu_seconds', '')} | "
                     f"{r['us_per_request']} | {r['messages']:,} | {r['validations']:,} | {r.get('invariants', '')} | "
                     f"{r.get('load_average', '')} | {r['measured_at']} |")
    (out / "network.md").write_text(
        "Surrogate network, one epoch, SQLite (benchmarks/bench_network.py). Machine: 2 cores shared with other "
        "users (load average at the end of each run given); wall seconds include chain creation and the result "
        "tables; CPU s is the simulation's process, writer CPU s the chain's writer process beside it (rows without "
        "it wrote inline); the invariants are checked on the written chain after the timed run.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
