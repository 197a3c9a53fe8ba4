"""Bad input across the CLIs and the parameter APIs: each case asserts the exit status (1 for a
user's mistake, 2 for a usage error) and the first line printed, that no traceback is printed, and
that no file anywhere in the working directory changed (none of these commands may write).

Everything runs in-process (typer's CliRunner) and fails before any model is built or any flow
starts, so the whole suite takes seconds."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from flows.cli import app
from tests.network_fixtures import make_synthetic_run

runner = CliRunner()


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under `root`: a digest of a file's bytes (or 'dir') and its mode."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = ("dir", p.stat().st_mode)
        for name in filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    (ws / "keep.txt").write_text("a user's file\n")
    (ws / "sub").mkdir()
    (ws / "sub" / "keep2.txt").write_text("another\n")
    (ws / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (ws / "list.json").write_text("[1, 2]")
    (ws / "notjson.json").write_text("{epochs: 3")
    for name, data in {"capture.json": {"capture": ["init", "bogus"]}, "agg.json": {"aggregations": ["median"]},
                       "emptyout.json": {"out": ""}, "boolframes.json": {"request": {"frames": True}},
                       "boolseed.json": {"seed": True}, "nanshift.json": {"request": {"shift": "NaN"}}}.items():
        (ws / name).write_text(json.dumps(data))
    make_synthetic_run(ws / "exp", n_prompts=20)
    (ws / "net").mkdir()  # an earlier network run
    (ws / "net" / "epochs.parquet").write_bytes(b"earlier epochs")
    (ws / "net" / "params.json").write_text("{}")
    return ws


G = ["generate", "--prompt", "a fox", "--out", "o"]
E = ["experiment", "--out", "runs/e", "--no-progress"]
N = ["network", "run", "--run-dir", "exp", "--out", "runs/n"]
P = ["poc", "run", "--direct"]

CASES = [
    # generate: request fields, bounds and finiteness
    (G[:2] + ["   ", "--out", "o"], 1, "error: prompt: prompt must contain text, got only whitespace"),
    (G + ["--shift", "nan"], 1, "error: shift: Input should be a finite number"),
    (G + ["--shift", "inf"], 1, "error: shift: Input should be a finite number"),
    (G + ["--shift", "1000"], 1, "error: shift: shift must be in (0, 100], got 1000.0"),
    (G + ["--steps", "100000"], 1, "error: steps: steps must be in 1..1000, got 100000"),
    (G + ["--steps", "0"], 1, "error: steps: steps must be in 1..1000, got 0"),
    (G + ["--width", "4096", "--height", "4096"], 1, "error: width: width must be a positive multiple of 16 up to 1920"),
    (G + ["--height", "50"], 1, "error: height: height must be a positive multiple of 16 up to 1920, got 50"),
    (G + ["--frames", "10"], 1, "error: frames: frames must be of the form 4k+1"),
    (G + ["--frames", "1001"], 1, "error: frames: frames must be of the form 4k+1 (1, 5, 9, ..., 81) up to 241"),
    (G + ["--fps", "0"], 1, "error: fps: fps must be in 1..120, got 0"),
    (G + ["--seed", "-1"], 1, "error: seed: seed must be in 0..2**63-1, got -1"),
    (G + ["--guidance-high", "51"], 1, "error: guidance_high: guidance_high must be in 0..50"),
    (G + ["--guidance-low", "nan"], 1, "error: guidance_low: Input should be a finite number"),
    (G + ["--preset", "huge"], 1, "error: model: unknown preset 'huge'"),
    # generate: runtime, deviation, plugins, captures
    (G + ["--device", "cuda"], 1, "error: device: 'cuda' asked for but no CUDA device is available"),
    (G + ["--device", "tpu"], 1, "error: device: device must be cpu, cuda or cuda:N, got 'tpu'"),
    (G + ["--dtype", "float8"], 1, "error: dtype: Input should be 'bfloat16', 'float32' or 'float16'"),
    (G + ["--attention", "fast"], 1, "error: attention_backend: attention_backend must be one of"),
    (G + ["--threads", "0"], 1, "error: threads: Input should be greater than or equal to 1"),
    (G + ["--deviation", "warp"], 1, "error: unknown deviation 'warp'"),
    (G + ["--deviation", "steps:x"], 1, "error: deviation steps: argument must be an integer, got 'x'"),
    (G + ["--deviation", "os.path:join"], 1, "error: deviation 'os.path:join': module 'os.path' is not an allowed plugin"),
    (G + ["--deviation", "models.deviations:Deviation"], 1,
     "error: deviation 'models.deviations:Deviation': models.deviations.Deviation is not a usable deviation"),
    (G + ["--deviation", "x.y:Z", "--allow-plugin", "bad name"], 1, "error: allow_plugin: 'bad name' is not a module"),
    (G + ["--capture", "step:99"], 1, "error: capture: step 99 outside 0..3"),
    (G + ["--capture", "bogus"], 1, "error: capture: unknown name 'bogus'; allowed: init, switch, final, step:K"),
    (G + ["--capture", "step:x"], 1, "error: capture: unknown name 'step:x'"),
    # generate: output directory
    (G[:-1] + ["keep.txt"], 1, "error: out: keep.txt exists and is not a directory"),
    (G[:-1] + ["."], 1, "error: out: . is not empty and not t2vsim's own output (holds agg.json, binary.bin"),
    (G[:-1] + ["sub"], 1, "error: out: sub is not empty and not t2vsim's own output (holds keep2.txt)"),
    (G[:-1] + ["keep.txt/x"], 1, "error: out: "),
    (G[:-1] + [""], 1, "error: out: . is not empty"),  # typer reads an empty path as "."
    # generate: usage errors (click's, status 2)
    (G + ["--width", "abc"], 2, "Usage: t2vsim generate [OPTIONS]"),
    (G + ["--bogus"], 2, "Usage: t2vsim generate [OPTIONS]"),
    (["generate", "--out", "o"], 2, "Usage: t2vsim generate [OPTIONS]"),
    # experiment
    (E + ["--prompts", "1"], 1, "error: prompts: a count must be >= 2"),
    (E + ["--prompts", "0"], 1, "error: prompts: a count must be >= 2"),
    (E + ["--prompts", "1000000"], 1, "error: prompts: a count must be in 2..100000"),
    (E + ["--prompts", " "], 1, "error: prompts: give a count, 'vbench' or a prompt file"),
    (E + ["--prompts", "missing.txt"], 1, "error: prompts: cannot read prompt file missing.txt"),
    (E + ["--prompts", "binary.bin"], 1, "error: prompts: cannot read prompt file binary.bin"),
    (E + ["--deviation", "warp"], 1, "error: deviations: unknown deviation 'warp'"),
    (E + ["--deviation", "os.path:join"], 1, "error: deviations: deviation 'os.path:join': module"),
    (E + ["--policy", "oracle"], 1, "error: policies: "),
    (E + ["--metric", "vmaf"], 1, "error: metrics: "),
    (E + ["--steps", "0"], 1, "error: request: steps: steps must be in 1..1000"),
    (E + ["--steps", "100000"], 1, "error: request: steps: steps must be in 1..1000, got 100000"),
    (E + ["--hwnoise-eps", "nan"], 1, "error: hwnoise_eps.0: Input should be a finite number"),
    (E + ["--hwnoise-eps", "2"], 1, "error: hwnoise_eps: each level must be in (0, 1]"),
    (E + ["--hwnoise-headline", "0.5"], 1, "error: hwnoise_headline: 0.5 is not one of hwnoise_eps"),
    (E + ["--bootstrap", "-1"], 1, "error: bootstrap: Input should be greater than or equal to 0"),
    (E + ["--bootstrap", "10000000"], 1, "error: bootstrap: Input should be less than or equal to 100000"),
    (E + ["--fingerprint-k", "0"], 1, "error: fingerprint_k: Input should be greater than or equal to 1"),
    (E + ["--seed", "-1"], 1, "error: seed: Input should be greater than or equal to 0"),
    (E + ["--device", "cuda"], 1, "error: device: 'cuda' asked for but no CUDA device is available"),
    (E + ["--dtype", "int8"], 1, "error: dtype: Input should be 'bfloat16', 'float32' or 'float16'"),
    (E + ["--config", "binary.bin"], 1, "error: config: binary.bin is not UTF-8 text"),
    (E + ["--config", "missing.json"], 1, "error: config: cannot read missing.json"),
    (E + ["--config", "list.json"], 1, "error: config: list.json must hold a JSON object of fields, got list"),
    (E + ["--config", "notjson.json"], 1, "error: config: notjson.json is not valid JSON"),
    (E + ["--config", "capture.json"], 1, "error: capture: unknown name 'bogus'"),
    (E + ["--config", "agg.json"], 1, "error: aggregations: unknown aggregation 'median'"),
    (["experiment", "--config", "emptyout.json"], 1, "error: out: must be a directory path, got an empty"),
    (E + ["--config", "boolframes.json"], 1, "error: request: frames: frames must be a number, got the boolean"),
    (E + ["--config", "boolseed.json"], 1, "error: seed: seed must be a number, got the boolean True"),
    (E + ["--config", "nanshift.json"], 1, "error: request: shift: Input should be a finite number"),
    (E[:2] + ["keep.txt"], 1, "error: out: keep.txt exists and is not a directory"),
    (E[:2] + ["nosuchproto://bucket/run"], 1, "error: out: cannot open 'nosuchproto://bucket/run'"),  # a URL stays one
    (E[:2] + ["sub"], 1, "error: out: sub is not empty and not a t2vsim run directory (holds keep2.txt)"),
    (E + ["--prompts", "x", "--steps", "y"], 2, "Usage: t2vsim experiment [OPTIONS]"),
    # network run
    (N[:2] + ["--run-dir", "missing", "--out", "runs/n"], 1, "error: run_dir 'missing' does not exist"),
    (N[:2] + ["--out", "runs/n"], 1, "error: run_dir is required for surrogate fidelity"),
    (N + ["--threshold", "nan"], 1, "error: threshold: Input should be a finite number"),
    (N + ["--threshold", "inf"], 1, "error: threshold: Input should be a finite number"),
    (N + ["--threshold", "-1"], 1, "error: threshold: must be a finite distance >= 0 for full/latent_rel_l2"),
    (N + ["--threshold", "-100"], 1, "error: threshold: threshold must be >= -80"),
    (N + ["--epochs", "0"], 1, "error: epochs: Input should be greater than or equal to 1"),
    (N + ["--epochs", "100000"], 1, "error: epochs: Input should be less than or equal to 10000"),
    (N + ["--requests", "100000000"], 1, "error: requests_per_epoch: Input should be less than or equal to 10000000"),
    (N + ["--cheat-rate", "2"], 1, "error: cheat_rate: Input should be less than or equal to 1"),
    (N + ["--cheat-rate", "nan"], 1, "error: cheat_rate: Input should be a finite number"),
    (N + ["--honest", "-1"], 1, "error: honest: must be >= 0, got -1"),
    (N + ["--honest", "2", "--poc-cheaters", "3"], 1, "error: poc_cheaters (3) must be <= honest (2)"),
    (N + ["--weights", "stake"], 1, "error: weights_source: Input should be 'capacity' or 'poc'"),
    (N + ["--deviation", "warp"], 1, "error: deviation 'warp' was not measured in"),
    (N + ["--fidelity", "quantum"], 1, "error: fidelity: Input should be 'surrogate' or 'real'"),
    (N + ["--sampling-hash", "md5"], 1, "error: sampling_hash: Input should be 'sha256' or 'splitmix64'"),
    (N + ["--poc-strategy", "bogus"], 1, "error: poc_strategy: unknown strategy 'bogus'"),
    (N + ["--db", "bogus://x"], 1, "error: database url bogus://x: backend 'bogus' not supported"),
    (N + ["--db", "nodir/chain.db"], 1, "error: database url sqlite:///"),
    (N + ["--db", "postgresql+psycopg://u@127.0.0.1:1/db"], 1, "error: cannot reach the chain database at"),
    (N[:-1] + ["net", "--db", "other.db"], 1, "error: out: net is not empty and not t2vsim's own output (holds epochs.parquet, params.json)"),
    (N[:-1] + ["keep.txt"], 1, "error: out: keep.txt exists and is not a directory"),
    (N + ["--config", "binary.bin"], 1, "error: config: binary.bin is not UTF-8 text"),
    (N + ["--epochs", "two"], 2, "Usage: t2vsim network run [OPTIONS]"),
    # poc
    (P + ["--mix", "honest"], 1, "error: mix: each part must be STRATEGY=N, got 'honest'"),
    (P + ["--mix", "lazy=2"], 1, "error: participant p000: strategy: unknown strategy 'lazy'"),
    (P + ["--mix", "honest=100000000"], 1, "error: mix: 100,000,000 participants; at most 10,000 in one stage"),
    (P + ["--capacity", "0"], 1, "error: capacity: nonces per participant must be an integer in 1..100,000,000"),
    (P + ["--samples", "0"], 1, "error: samples: Input should be greater than or equal to 1"),
    (P + ["--distance-threshold", "nan"], 1, "error: distance_threshold: Input should be a finite number"),
    (P + ["--fidelity", "quick"], 1, "error: fidelity: Input should be 'surrogate' or 'real'"),
    (P + ["--out", "keep.txt"], 1, "error: out: keep.txt exists and is not a directory"),
    (["poc", "power", "--sample-size", "0"], 1, "error: sample_size: each size must be an integer in 1..100000, got 0"),
    (["poc", "power", "--sample-size", "a"], 2, "Usage: t2vsim poc power [OPTIONS]"),
    (["poc", "power", "--cheat", " "], 1, "error: cheat: give at least one value"),
    (["poc", "power", "--distance-threshold", "-1"], 1, "error: distance_threshold: Input should be greater than 0"),
    (["poc", "measure", "--device", "cuda"], 1, "error: device: 'cuda' asked for but no CUDA device is available"),
    (["poc", "measure", "--out", "sub"], 1, "error: out: sub is a directory; give a file path"),
    # network economics / sweep, pricing calibrate
    (["network", "economics", "--run-dir", "missing"], 1, "error: run_dir 'missing' does not exist"),
    (["network", "economics", "--run-dir", "exp", "--threshold", "nan"], 1, "error: threshold: Input should be a finite"),
    (["network", "sweep", "--run-dir", "missing"], 1, "error: run_dir 'missing' does not exist"),
    (["network", "sweep", "--run-dir", "exp", "--out", "sub"], 1, "error: out: sub is a directory; give a file path"),
    (["pricing", "calibrate", "--preset", "huge"], 1, "error: unknown preset 'huge'"),
    (["pricing", "calibrate", "--device", "cuda"], 1, "error: device: 'cuda' asked for but no CUDA device"),
    (["pricing", "fairness", "--charge-stages", "vae"], 1,
     "error: charge_stages: 'vae' is charged but vae_seconds_per_pixel is 0"),
    (["pricing", "fairness", "--charge-stages", "gpu"], 1, "error: charge_stages"),
]


@pytest.mark.parametrize("args,code,first", CASES, ids=[" ".join(c[0])[:80] for c in CASES])
def test_cli_bad_input(workspace, monkeypatch, args, code, first):
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    res = runner.invoke(app, args)
    out = res.output
    assert res.exit_code == code, out
    assert "Traceback" not in out and res.exception is None or isinstance(res.exception, SystemExit), out
    assert out.splitlines()[0].startswith(first), out
    if code == 1:
        assert len(out.strip().splitlines()) == 1, out  # one line, nothing else
    assert snapshot(workspace) == before, "a refused command changed files"


def _first_error(fn) -> str:
    with pytest.raises(ValidationError) as err:
        fn()
    from flows.cli_common import pydantic_message

    return pydantic_message(err.value)


def _api_cases():
    from models.request import GenerationRequest, Runtime
    from sim.experiment import ExperimentParams
    from sim.network import ExecutorGroup, NetworkParams
    from sim.poc import PocParams

    return [
        (lambda: GenerationRequest(prompt="  \n"), "prompt: prompt must contain text, got only whitespace"),
        (lambda: GenerationRequest(prompt="p", frames=True), "frames: frames must be a number, got the boolean True"),
        (lambda: GenerationRequest(prompt="p", steps=False), "steps: steps must be a number, got the boolean False"),
        (lambda: GenerationRequest(prompt="p", shift=math.nan), "shift: Input should be a finite number"),
        (lambda: GenerationRequest(prompt="p", guidance_high=math.inf), "guidance_high: Input should be a finite number"),
        (lambda: GenerationRequest(prompt="p", width=4096, height=4096), "width: width must be a positive multiple of 16 up to 1920, got 4096"),
        (lambda: GenerationRequest(prompt="p", steps=100_000), "steps: steps must be in 1..1000, got 100000"),
        (lambda: Runtime(batch_size=True), "batch_size: batch_size must be a number, got the boolean True"),
        (lambda: Runtime(threads=5000), "threads: Input should be less than or equal to 1024"),
        (lambda: ExperimentParams(capture=("init", "middle")), "capture: unknown name 'middle'; allowed: init, switch, final, step:K"),
        (lambda: ExperimentParams(capture=("step:50",)), "capture: step 50 outside 0..7"),
        (lambda: ExperimentParams(capture=()), "capture: at least one checkpoint is needed"),
        (lambda: ExperimentParams(aggregations=("median",)), "aggregations: unknown aggregation 'median'"),
        (lambda: ExperimentParams(out=""), "out: must be a directory path, got an empty string"),
        (lambda: ExperimentParams(out="   "), "out: must be a directory path, got an empty string"),
        (lambda: ExperimentParams(prompts=True), "prompts: prompts must be a number, got the boolean True"),
        (lambda: ExperimentParams(bootstrap=True), "bootstrap: bootstrap must be a number, got the boolean True"),
        (lambda: ExperimentParams(calib_fraction=math.nan), "calib_fraction: Input should be a finite number"),
        (lambda: ExperimentParams(request={"shift": math.nan}), "request: shift: Input should be a finite number"),
        (lambda: ExperimentParams(deviations=("os.path:join",)), "deviations: deviation 'os.path:join': module 'os.path' is not an allowed plugin"),
        (lambda: NetworkParams(run_dir="r", threshold=math.nan), "threshold: Input should be a finite number"),
        (lambda: NetworkParams(run_dir="r", threshold=-100.0), "threshold: threshold must be >= -80 (no metric's distance is lower), got -100.0"),
        (lambda: NetworkParams(run_dir="r", epochs=True), "epochs: epochs must be a number, got the boolean True"),
        (lambda: NetworkParams(run_dir="r", hosts=(ExecutorGroup(count=2),), gpu_cost_fraction=math.inf), "gpu_cost_fraction: Input should be a finite number"),
        (lambda: ExecutorGroup(count=True), "count: count must be a number, got the boolean True"),
        (lambda: PocParams(distance_threshold=math.inf), "distance_threshold: Input should be a finite number"),
    ]


API_IDS = [f"api{i}" for i in range(26)]


@pytest.mark.parametrize("i", range(26), ids=API_IDS)
def test_api_bad_input_names_the_field(i):
    cases = _api_cases()
    assert len(cases) == len(API_IDS)
    fn, first = cases[i]
    assert _first_error(fn).startswith(first)


def test_the_suite_is_large_enough():
    assert len(CASES) + len(API_IDS) >= 60
    assert {c[1] for c in CASES} == {1, 2}
    assert len({re.sub(r"\s+", " ", " ".join(c[0])) for c in CASES}) == len(CASES)  # no case twice
