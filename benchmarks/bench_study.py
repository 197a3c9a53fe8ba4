"""A protocol-parameter study of 200 grid points (5 sampling rates x 5 slash fractions x 8
thresholds), 2 network epochs each, timed on this machine; then the same study rerun (every point
skipped: the resume cost).

    .venv/bin/python benchmarks/bench_study.py [--workers 2] [--executor auto|ray|processes|inline]
        [--run-dir RUN] [--label synthetic]

Without --run-dir the evidence is the synthetic run of tests/network_fixtures.py (scores drawn from
chosen distributions, not measured). Writes benchmarks/results/study_LABEL.{json,md} (seconds,
executor, per-point seconds, the closed form's agreement with the simulation per cheat, the
cheapest safe set) and keeps the study directory's report.html beside them as
study_LABEL_report.html.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", default="auto", choices=["auto", "ray", "processes", "inline"])
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--label", default=None)
    ap.add_argument("--requests", type=int, default=2000, help="requests per simulated epoch")
    ap.add_argument("--source", default="scores", choices=["scores", "deployable", "at_scale"],
                    help="evidence of --run-dir (at_scale: benchmarks/results/at_scale)")
    ap.add_argument("--rule", default="full-final-pinned", help="at_scale: the rule")
    ap.add_argument("--size", default="256x256x5", help="at_scale: the WxHxF size")
    ap.add_argument("--preset", default="a14b-random", help="at_scale: the preset")
    ap.add_argument("--rates", default=None, help="sampling rate multipliers, comma-separated (default: the study's)")
    ap.add_argument("--slashes", default=None, help="slash fractions, comma-separated (default: the study's)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    return ap.parse_args()


def _study_params(args, tmp: Path):
    """The study's parameters from the options, its evidence run (the synthetic one without --run-dir) and label."""
    from sim.network.study import StudyParams

    if args.run_dir is None:
        from tests.network_fixtures import make_synthetic_run

        run_dir, label = make_synthetic_run(tmp / "run"), args.label or "synthetic"
    else:
        run_dir, label = Path(args.run_dir), args.label or Path(args.run_dir).name
    extra = {}
    if args.source == "at_scale":
        extra = dict(at_scale_rule=args.rule, at_scale_size=args.size, at_scale_preset=args.preset)
    if args.rates:
        extra["rate_multipliers"] = tuple(float(x) for x in args.rates.split(","))
    if args.slashes:
        extra["slash_fractions"] = tuple(float(x) for x in args.slashes.split(","))
    p = StudyParams(run_dir=str(run_dir), requests_per_epoch=args.requests, source=args.source, **extra)
    return p, run_dir, label


def _timed_study(args, p, out: Path) -> dict:
    """Run every point, write the report, then rerun (every point done); the seconds of each."""
    from flows.study import run_points
    from sim.network.study import prepare
    from sim.network.study_report import write_report

    t0, c0 = time.perf_counter(), time.process_time()
    ev, pts, todo = prepare(p, out)
    used, timings = run_points(p.model_dump_json(), ev.model_dump_json(), todo, str(out), args.workers, args.executor)
    run_s = time.perf_counter() - t0
    summary = write_report(out, dict(executor=used, workers=args.workers))
    total_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    _, _, again = prepare(p, out)
    run_points(p.model_dump_json(), ev.model_dump_json(), again, str(out), args.workers, args.executor)
    resume_s = time.perf_counter() - t1
    return dict(ev=ev, pts=pts, used=used, timings=timings, run_s=run_s, summary=summary, total_s=total_s,
                resume_s=resume_s, again=again, c0=c0)


def _markdown(row: dict, false_slash_target: float) -> list[str]:
    best = row["cheapest_safe"]
    lines = [f"Network study, {row['points']} points x {row['epochs_per_point']} epochs of {row['requests_per_epoch']:,} "
             f"requests ({row['hosts_per_point']} hosts), evidence: {row['run_dir']} ({row['source']}: "
             f"{row['evidence_note']}) (benchmarks/bench_study.py)", "",
             f"- {row['seconds_points']} s for the points ({row['executor']}, {row['workers']} workers; median point "
             f"{row['point_seconds_median']} s, slowest {row['point_seconds_max']} s), {row['seconds_with_report']} s "
             f"with the report; rerun (every point done): {row['resume_seconds']} s, {row['resume_points_run']} points run",
             f"- machine: {row['machine']}, load average {row['load_average']} at the end; {row['measured_at']}",
             "- cheapest safe set (honest false-slash <= {:.0%}/epoch): {}".format(
                 false_slash_target, "none in the grid" if not best else
                 f"sampling x{best['rate_multiplier']:g}, slash {best['slash_fraction']:g}, threshold "
                 f"{best['threshold_label']} ({best['threshold']:.4g}), honest false-slash "
                 f"{best['honest_false_slash']:.3%} (closed form, conservative) / {best['honest_sim_false_slash']:.2%} "
                 f"(simulated)"), "",
             "Closed form against simulation, per cheat over the grid:", "",
             "| cheat | pays: closed form | conservative | simulated | verdicts agree | median abs gain diff (GNK/epoch) | "
             "max | median relative | median abs P(INVALID) diff |", "|---|---|---|---|---|---|---|---|---|"]
    for c in row["agreement"]:
        lines.append(f"| {c['cheat']} | {c['closed_pays']} | {c['conservative_pays']} | {c['sim_pays']} | "
                     f"{c['agree']:.0%} | {c['median_abs_gain_diff_gnk']:.3g} | {c['max_abs_gain_diff_gnk']:.3g} | "
                     f"{c['median_rel_gain_diff']:.2f} | {c['median_abs_p_invalid_diff']:.3f} |")
    return lines


def main() -> None:
    args = _parse()
    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    p, run_dir, label = _study_params(args, tmp)
    out = tmp / "study"
    s = _timed_study(args, p, out)
    ev, secs = s["ev"], sorted(t["seconds"] for t in s["timings"])
    row = dict(label=label, run_dir=os.path.relpath(run_dir, ROOT) if args.run_dir else "synthetic (tests/network_fixtures.py)",
               source=args.source, evidence_note=ev.note,
               points=len(s["pts"]), epochs_per_point=p.epochs, requests_per_epoch=p.requests_per_epoch,
               hosts_per_point=p.honest_hosts + p.hosts_per_cheat * len(ev.cheats), cheats=ev.cheats,
               executor=s["used"], workers=args.workers, seconds_points=round(s["run_s"], 1),
               seconds_with_report=round(s["total_s"], 1),
               driver_cpu_seconds=round(time.process_time() - s["c0"], 1),
               point_seconds_median=round(secs[len(secs) // 2], 2), point_seconds_max=round(secs[-1], 2),
               resume_seconds=round(s["resume_s"], 2), resume_points_run=len(s["again"]),
               agreement=s["summary"]["cheats"], cheapest_safe=s["summary"]["cheapest_safe"],
               false_slash_target=p.false_slash_target,
               machine=f"{platform.node()} ({platform.processor() or platform.machine()}), {os.cpu_count()} cores, shared",
               load_average=round(os.getloadavg()[0], 2), measured_at=time.strftime("%Y-%m-%d %H:%M"))
    res = Path(args.out)
    res.mkdir(parents=True, exist_ok=True)
    (res / f"study_{label}.json").write_text(json.dumps(row, indent=1))
    shutil.copy(out / "report.html", res / f"study_{label}_report.html")
    lines = _markdown(row, p.false_slash_target)
    (res / f"study_{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
