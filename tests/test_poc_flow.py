"""`t2vsim poc ...` and the PoC Prefect flow."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from flows.cli_poc import register


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    a.command("noop")(lambda: None)  # a root command so `poc` stays a sub-app
    register(a)
    return a


runner = CliRunner()


def test_poc_run_direct_writes_results(app, tmp_path):
    res = runner.invoke(app, ["poc", "run", "--direct", "--mix", "honest=3,fp8=1,duplicate:2=1", "--capacity", "300",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "poc_stage.json").read_text())
    by_strategy = {r["strategy"]: r for r in data["participants"]}
    assert by_strategy["honest"]["accepted"] and by_strategy["honest"]["weight"] == 300
    assert not by_strategy["fp8"]["accepted"] and not by_strategy["duplicate:2"]["accepted"]
    assert "| honest | 3 | 3 | 0 |" in (tmp_path / "poc_stage.md").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--mix", "honest"], "STRATEGY=N"), (["--mix", "lazy=2"], "unknown strategy"),
    (["--samples", "0"], "samples"), (["--fidelity", "quick"], "fidelity"),
    (["--measurement", "/nonexistent.json"], "no file"),
])
def test_poc_run_refuses_bad_input(app, args, needle):
    res = runner.invoke(app, ["poc", "run", "--direct", *args])
    assert res.exit_code == 1
    assert needle in res.output


def test_poc_strategies_and_power(app):
    res = runner.invoke(app, ["poc", "strategies"])
    assert res.exit_code == 0 and "one-expert" in res.output and "duplicate" in res.output
    res = runner.invoke(app, ["poc", "power", "--sample-size", "10", "--sample-size", "200", "--cheat", "fp8", "--cheat", "fabricate:0.2"])
    assert res.exit_code == 0 and "fabricate:0.2" in res.output and "n=200" in res.output
    res = runner.invoke(app, ["poc", "power", "--cheat", "fabricate:7"])
    assert res.exit_code == 1 and "fabricate" in res.output


def test_poc_power_honest_condition(app):
    from sim.poc.measure import Measurement

    m = Measurement.load()
    # honest nodes drawn from the fp8 distances: the honest row shows fp8's mismatch rate at the threshold
    res = runner.invoke(app, ["poc", "power", "--cheat", "honest", "--honest-condition", "fp8", "--distance-threshold", "0.03"])
    assert res.exit_code == 0, res.output
    assert f"{m.rate('fp8', 0.03):.3f}" in res.output
    res = runner.invoke(app, ["poc", "power", "--honest-condition", "attention:_native_cudnn"])
    assert res.exit_code == 1 and "attention:_native_cudnn" in res.output and "no distances" in res.output


@pytest.mark.slow
def test_poc_measure_small(app, tmp_path):
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["poc", "measure", "--nonces", "6", "--condition", "batch:3", "--condition", "fp8", "--condition", "fabricated",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data["conditions"]) == {"batch:3", "fp8", "fabricated"}
    assert max(data["conditions"]["batch:3"]["distances"]) < 1e-3
    assert min(data["conditions"]["fabricated"]["distances"]) > 0.1
    res = runner.invoke(app, ["poc", "measure", "--condition", "warp:9", "--out", str(out)])
    assert res.exit_code == 1 and "warp:9" in res.output


@pytest.mark.slow
def test_poc_flow_runs_under_prefect(prefect_harness, tmp_path):
    from flows.poc import poc_stage_flow
    from sim.poc import PocStageParams

    params = PocStageParams(mix="honest=2,one-expert:low=1", capacity=100)
    result = poc_stage_flow(params, out=str(tmp_path))
    assert [r["accepted"] for r in result["participants"]] == [True, True, False]
    assert (tmp_path / "poc_stage.json").exists() and (tmp_path / "poc_stage.md").exists()
    assert PocStageParams.model_validate_json((tmp_path / "params.json").read_text()) == params
