"""The two engines side by side on the tiny preset: how far apart their videos are, and what the
engine boundary costs per generation.

    .venv/bin/python benchmarks/bench_engines.py [--prompts 3] [--runs 5]

Needs vLLM-Omni's environment (`make vllm-omni-env`). For each prompt, in float32 and bfloat16:
diffusers with its own schedule, diffusers with the schedule pinned to vLLM-Omni's
(`Runtime(schedule="wan")`), and vLLM-Omni (`Runtime(engine="vllm-omni")`, a server started once).
Distances are between the decoded MP4s (what a validator compares): max and mean absolute
difference in uint8 levels and PSNR; the codec floor is diffusers' frames against its own decoded MP4.
Timing (float32, warm): the median wall time of a generation in-process against one through the
server (HTTP, vLLM-Omni's MP4 encoding, decoding it here), and the server's own inference time.
Writes benchmarks/results/engines.json and engines.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
RESULTS = Path(__file__).parent / "results"
PROMPTS = ("a red fox running through fresh snow", "waves breaking on a rocky shore at sunset",
           "a hot air balloon drifting over green fields", "a cat sleeping on a sunny windowsill")


def distances(a, b) -> dict[str, float]:
    import numpy as np

    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float((d.astype(np.float64) ** 2).mean())
    return {"max_abs": int(d.max()), "mean_abs": float(d.mean()),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))}


def idle_cpu(pgid: int, seconds: float = 5.0) -> float:
    """CPU cores the processes of group `pgid` use while no request is in flight."""
    def ticks() -> int:
        total = 0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                f = stat[stat.rindex(")") + 2:].split()
                if int(f[2]) == pgid:
                    total += int(f[11]) + int(f[12])
        return total

    a = ticks()
    time.sleep(seconds)
    return (ticks() - a) / os.sysconf("SC_CLK_TCK") / seconds


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    return ap.parse_args()


def _distance_rows(dtype: str, prompts: int, own, pinned, omni, timing: dict) -> list[dict]:
    """Per prompt, the distances between the decoded MP4s of the three engines in `dtype`."""
    from models.engine import generate
    from models.engines import vllm_omni
    from models.request import GenerationRequest
    from models.video import decode_mp4

    rows = []
    for i, prompt in enumerate(PROMPTS[:prompts]):
        req = GenerationRequest(prompt=prompt, seed=i)
        g_own, g_pin, g_omni = generate(req, own), generate(req, pinned), generate(req, omni)
        if i == 0 and dtype == "float32":
            timing["server_start_s"] = next(iter(vllm_omni._POOL.values())).start_seconds
        f_own, f_pin, f_omni = (decode_mp4(g.mp4) for g in (g_own, g_pin, g_omni))
        rows.append({"dtype": dtype, "prompt": prompt, "seed": i,
                     "codec_floor": distances(g_own.frames, f_own),
                     "diffusers_own_vs_pinned": distances(f_own, f_pin),
                     "vllm_omni_vs_diffusers_own": distances(f_omni, f_own),
                     "vllm_omni_vs_diffusers_pinned": distances(f_omni, f_pin),
                     "vllm_omni_sha256": g_omni.sha256})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _boundary_timing(runs: int, own, omni, timing: dict) -> None:
    """The idle server's CPU, the median generation in-process and through the server, and a repeat's bytes."""
    from models.engine import generate
    from models.engines import vllm_omni
    from models.request import GenerationRequest

    req = GenerationRequest(prompt=PROMPTS[0], seed=0)
    timing["idle_server_cpu_cores"] = idle_cpu(next(iter(vllm_omni._POOL.values())).pgid)
    for name, rt in (("diffusers in-process", own), ("vllm-omni server", omni)):
        if name.startswith("diffusers"):
            vllm_omni.stop_servers()  # an idle server spins (idle_server_cpu_cores): time without it
        times, inference = [], []
        for _ in range(runs):
            s = time.perf_counter()
            g = generate(req, rt)
            times.append(time.perf_counter() - s)
            if "engine_inference" in g.cost.seconds:
                inference.append(g.cost.seconds["engine_inference"])
        timing[name] = {"median_s": statistics.median(times), "runs": times}
        if inference:
            timing[name]["server_inference_median_s"] = statistics.median(inference)
    # the same request twice through the server gives the same bytes
    timing["vllm_omni_repeat_same_sha256"] = len({generate(req, omni).sha256 for _ in range(3)}) == 1


def _markdown(args, machine: str, rows: list[dict], timing: dict) -> list[str]:
    d_in, d_srv = timing["diffusers in-process"]["median_s"], timing["vllm-omni server"]["median_s"]

    def agg(dtype, key, field, fn=max):
        return fn(r[key][field] for r in rows if r["dtype"] == dtype)

    lines = [f"# diffusers vs vLLM-Omni ({machine})", "",
             f"tiny preset, {args.prompts} prompts, decoded MP4 frames (uint8 levels); worst prompt shown.", "",
             "| comparison | dtype | max abs | mean abs (worst) | PSNR dB (worst) |", "|---|---|---|---|---|"]
    for key in ("codec_floor", "diffusers_own_vs_pinned", "vllm_omni_vs_diffusers_own", "vllm_omni_vs_diffusers_pinned"):
        for dtype in ("float32", "bfloat16"):
            lines.append(f"| {key} | {dtype} | {agg(dtype, key, 'max_abs')} | {agg(dtype, key, 'mean_abs'):.3f} | "
                         f"{agg(dtype, key, 'psnr_db', min):.1f} |")
    lines += ["", f"Per generation (float32, warm, median of {args.runs}): diffusers in-process {d_in:.3f} s, "
              f"through the vLLM-Omni server {d_srv:.3f} s (server inference {timing['vllm-omni server'].get('server_inference_median_s', float('nan')):.3f} s); "
              f"boundary overhead {d_srv - d_in:+.3f} s (diffusers timed with no server running; an idle "
              f"server uses {timing['idle_server_cpu_cores']:.2f} CPU cores). Server start {timing.get('server_start_s') or float('nan'):.1f} s. "
              f"Same request 3x through the server, same SHA-256: {timing['vllm_omni_repeat_same_sha256']}."]
    return lines


def main() -> None:
    args = _parse()

    from models.engines import vllm_omni
    from models.request import Runtime

    if not vllm_omni.env_ready():
        sys.exit("no vLLM-Omni environment: run `make vllm-omni-env` first")
    rows, timing = [], {}
    t0 = time.perf_counter()
    for dtype in ("float32", "bfloat16"):
        own, pinned, omni = Runtime(dtype=dtype), Runtime(dtype=dtype, schedule="wan"), Runtime(dtype=dtype, engine="vllm-omni")
        rows += _distance_rows(dtype, args.prompts, own, pinned, omni, timing)
        if dtype == "float32":
            _boundary_timing(args.runs, own, omni, timing)
        vllm_omni.stop_servers()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    d_in, d_srv = timing["diffusers in-process"]["median_s"], timing["vllm-omni server"]["median_s"]
    result = {"machine": machine, "preset": "tiny (64x64, 9 frames, 4 steps)", "rows": rows, "timing": timing,
              "overhead_s": d_srv - d_in, "wall_s": time.perf_counter() - t0}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(result, indent=1))
    lines = _markdown(args, machine, rows, timing)
    (RESULTS / "engines.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
