"""The protocol-parameter study as a Prefect flow: every grid point runs real network epochs
(sim/network/study.py), fanned out over Ray (the project's scale-out path, as flows/fanout.py does
for the experiment's prompts) or, without Ray, over local processes; each point's result is written
atomically to OUT/points/, so a rerun of the same study skips finished points. Then the map
(sim/network/study_report.py): OUT/report.html, OUT/points.parquet, OUT/summary.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

Executor = Literal["auto", "ray", "processes", "inline"]


def _one(params_json: str, evidence_json: str, point: dict, out: str) -> dict:
    from sim.network.study import Evidence, StudyParams, run_point

    p = StudyParams.model_validate_json(params_json)
    ev = Evidence.model_validate_json(evidence_json)
    rec = run_point(p, ev, point, out)
    return {"index": point["index"], "seconds": rec["seconds"], "pid": os.getpid()}


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def run_points(params_json: str, evidence_json: str, points: list[dict], out: str, workers: int = 1,
               executor: Executor = "auto", address: str | None = None,
               on_done: Callable[[dict, int, int], None] | None = None) -> tuple[str, list[dict]]:
    """Run the points; returns (executor used, per-point timings). `auto`: Ray when `workers > 1` and
    Ray is installed, else processes (`inline` for one worker)."""
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    if executor == "auto":
        executor = "inline" if workers == 1 else ("ray" if ray_available() else "processes")
    done: list[dict] = []

    def _record(r: dict) -> None:
        done.append(r)
        if on_done is not None:
            on_done(r, len(done), len(points))

    if not points:
        return executor, done
    if executor == "inline":
        for pt in points:
            _record(_one(params_json, evidence_json, pt, out))
    elif executor == "processes":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_one, params_json, evidence_json, pt, out) for pt in points]
            for f in as_completed(futs):
                _record(f.result())
    elif executor == "ray":
        import ray

        from flows.fanout import worker_env

        started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"runtime_env": {"env_vars": worker_env()}, "log_to_driver": False,
                                  "include_dashboard": False}
            if address is None:
                kw["num_cpus"] = workers
            ray.init(address=address, **kw)
            started = True
        try:
            remote = ray.remote(num_cpus=1, max_retries=3)(_one)
            pending = [remote.remote(params_json, evidence_json, pt, out) for pt in points]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                _record(ray.get(ready[0]))
        finally:
            if started:
                ray.shutdown()
    else:
        raise ValueError(f"executor: {executor!r}; allowed: auto, ray, processes, inline")
    return executor, done


@task
def _run_points_task(params_json: str, evidence_json: str, points: list[dict], out: str, workers: int,
                     executor: str, address: str | None) -> tuple[str, list[dict]]:
    return run_points(params_json, evidence_json, points, out, workers, executor, address)


@flow(name="network-study")
def study_flow(params: dict[str, Any], out: str, workers: int = 1, executor: Executor = "auto",
               address: str | None = None) -> dict:
    """Run (or resume) a study into `out` and write its map; returns the summary."""
    from sim.network.study import StudyParams, prepare
    from sim.network.study_report import write_report

    p = StudyParams.model_validate(params)
    t0 = time.perf_counter()
    ev, pts, todo = prepare(p, out)
    used, timings = _run_points_task(p.model_dump_json(), ev.model_dump_json(), todo, out, workers, executor, address)
    seconds = time.perf_counter() - t0
    summary = write_report(out, run_info=dict(executor=used, workers=workers, points=len(pts), ran=len(todo),
                                              skipped=len(pts) - len(todo), seconds=round(seconds, 2)))
    create_markdown_artifact(key="network-study", markdown=summary_markdown(summary))
    return summary


def summary_markdown(summary: dict) -> str:
    best = summary.get("cheapest_safe")
    lines = ["# Network study", "", f"{summary['points']} points ({summary['run']['ran']} run, "
             f"{summary['run']['skipped']} already done) in {summary['run']['seconds']} s with "
             f"{summary['run']['executor']} x{summary['run']['workers']}", ""]
    if best:
        lines.append(f"Cheapest safe set: sampling x{best['rate_multiplier']:g}, slash {best['slash_fraction']:g}, "
                     f"threshold {best['threshold_label']} ({best['threshold']:.4g}); honest false-slash "
                     f"{best['honest_false_slash']:.2%} per epoch")
    else:
        lines.append(f"No grid point keeps every cheat from paying at an honest false-slash risk <= "
                     f"{summary['false_slash_target']:.2%}")
    lines += ["", "| cheat | points where it pays (closed form / conservative / simulated) | verdicts agree | "
              "median abs gain difference (GNK) |", "|---|---|---|---|"]
    for c in summary["cheats"]:
        lines.append(f"| {c['cheat']} | {c['closed_pays']} / {c['conservative_pays']} / {c['sim_pays']} | "
                     f"{c['agree']:.0%} | {c['median_abs_gain_diff_gnk']:.4g} |")
    return "\n".join(lines)


def load_summary(out: str | Path) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())
