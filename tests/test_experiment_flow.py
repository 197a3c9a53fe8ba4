"""The experiment as a Prefect flow and as `t2vsim experiment` (a real local Prefect backend)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

pytestmark = pytest.mark.slow


def test_flow_runs_and_publishes_artifacts(prefect_harness, tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.experiment import experiment_flow
    from sim.experiment import ExperimentParams

    params = ExperimentParams(prompts=2, out=str(tmp_path / "run"), deviations=("threads:1", "steps:6"),
                              hwnoise_eps=(3e-3,), bootstrap=20, strips=1)
    summary = experiment_flow(params)
    assert {r["deviation"] for r in summary["verdicts"]} == {"steps:6"}
    assert Path(summary["report"]).exists()

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    keys = {a.key for a in asyncio.run(artifacts())}
    assert {"validation-summary", "validation-verdicts"} <= keys


def test_cli_experiment_prints_the_table_and_refuses_mixing(prefect_harness, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["experiment", "--prompts", "2", "--out", str(out), "--deviation", "threads:1", "--deviation", "seed:+1",
            "--hwnoise-eps", "0.003", "--bootstrap", "20", "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "seed:+1" in res.output and "report:" in res.output
    params = json.loads((out / "params.json").read_text())
    assert params["deviations"] == ["threads:1", "seed:+1"]
    res = runner.invoke(app, [*args[:-1], "--seed", "5"])
    assert res.exit_code == 1 and "different parameter set" in " ".join(res.output.split())


def test_cli_experiment_bad_input(tmp_path):
    runner = CliRunner()
    for extra, needle in ((["--deviation", "warp"], "unknown deviation 'warp'"),
                          (["--policy", "oracle"], "unknown policy 'oracle'"),
                          (["--metric", "vmaf"], "vmaf")):
        res = runner.invoke(app, ["experiment", "--out", str(tmp_path / "x"), *extra])
        assert res.exit_code == 1, res.output
        assert needle in " ".join(res.output.split())
    assert not (tmp_path / "x").exists()
