"""The end-to-end GPU benchmark's CPU smoke run: every section runs on the tiny preset (real regional
compile, bfloat16 VAE), its JSON has the stage keys, and it imports nothing outside the GPU
machine's wheel set (torch, diffusers, transformers, numpy, piq, av, pydantic and their own needs)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Packages of this project's environment that the GPU machine does not have.
NOT_THERE = ("prefect", "sqlmodel", "sqlalchemy", "typer", "rich", "ray", "pandas", "pyarrow", "fsspec", "lpips",
             "scipy", "sklearn", "matplotlib")
BLOCKER = f"""
import importlib.machinery, runpy, sys
_find = importlib.machinery.PathFinder.find_spec
def find_spec(name, path=None, target=None):  # as if the package were not installed
    return None if name.split(".")[0] in {NOT_THERE!r} else _find(name, path, target)
importlib.machinery.PathFinder.find_spec = find_spec
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
assert not {{m.split(".")[0] for m in sys.modules}} & set({NOT_THERE!r})
"""


@pytest.mark.slow
def test_the_cpu_smoke_run_has_every_section_and_needs_only_the_gpu_wheels(tmp_path):
    cmd = [sys.executable, "-c", BLOCKER, str(ROOT / "benchmarks" / "gpu_end_to_end.py"), "--out", str(tmp_path),
           "--preset", "tiny", "--device", "cpu", "--width", "64", "--height", "64", "--frames", "5", "--steps", "4",
           "--poc-nonces", "4"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_end_to_end.json").read_text())
    video = res["video"]
    assert set(video["stages"]) == {"text_encoder", "high", "low", "vae"}
    assert video["mp4_encode_seconds"] > 0 and video["mp4_same_bytes"] and video["mp4_bytes"] > 0
    assert all(v > 0 for v in video["stages"].values())
    assert video["passes"] == {"high": 6, "low": 2} and video["graphs_compiled_during_run"] == 0
    assert video["warmup"]["graphs_compiled"] >= 1 and video["runtime"]["compile"] == "regional"
    for key in ("wall_seconds", "transformer_mfu", "floor_seconds", "end_to_end_over_floor", "peak_gb"):
        assert key in video
    assert 0 < res["reference"]["pass"]["rel_l2"] < 5e-2
    assert 15 < res["reference"]["vae"]["psnr_uint8_frames"] < 60
    assert res["poc"]["eager"]["nonces_per_s"] > 0 and res["poc"]["compiled"]["nonces_per_s"] > 0
    assert res["poc"]["compiled"]["graphs_compiled_during_run"] == 0
    for key in ("device", "versions", "measured", "matrix_rate", "build", "total_seconds"):
        assert key in res
    md = (tmp_path / "gpu_end_to_end.md").read_text()
    assert "One video" in md and "PoC throughput" in md and "torch" in md
