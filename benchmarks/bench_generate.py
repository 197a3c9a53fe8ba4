"""Speed of the model layer on this machine: medians of 5 runs.

- tiny generation itself (64x64, 9 frames, 4 steps), in-process after imports and the first build;
- the whole `t2vsim generate` command (a fresh process: imports, build, generate, encode, save);
- `t2vsim --help`.
Writes benchmarks/results/generate.json and generate.md. Absolute times are for the machine named.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
T2VSIM = [sys.executable, "-m", "flows.cli"]


def timed(fn, n=5):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    from models.engine import generate
    from models.request import GenerationRequest, Runtime

    req = GenerationRequest(prompt="a sailing boat at sea")
    generate(req)  # build the pipeline once
    rows = {}
    rows["tiny generation (in-process)"] = timed(lambda: generate(req))
    rows["tiny generation, float32"] = timed(lambda: generate(req, Runtime(dtype="float32")))
    with tempfile.TemporaryDirectory() as d:
        cmd = [*T2VSIM, "generate", "--prompt", "a sailing boat at sea", "--out", os.path.join(d, "g")]
        rows["t2vsim generate (whole command)"] = timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
    rows["t2vsim --help"] = timed(lambda: subprocess.run([*T2VSIM, "--help"], check=True, capture_output=True))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}"
    result = {
        "machine": machine,
        "torch_threads": __import__("torch").get_num_threads(),
        "seconds": {k: {"median": statistics.median(v), "runs": v} for k, v in rows.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generate.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Model layer speed ({machine})", "", "| what | median of 5 (s) |", "|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.3f} |" for k, v in rows.items()]
    (RESULTS / "generate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
