"""The experiment fanned out on a real local Ray cluster (CPU): the same scores table as a
single-process run, a worker killed mid-run loses nothing, and the flow reports progress."""

import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from flows.fanout import Cluster, FanOut
from sim import experiment as ex

pytestmark = pytest.mark.slow

DEVS = ("threads:1", "fp8", "steps:6")


def params_at(out):
    return ex.ExperimentParams(prompts=4, out=str(out), deviations=DEVS, hwnoise_eps=(3e-3,), bootstrap=20, strips=1)


def table(params, n):
    frames = [pd.read_parquet(Path(params.out) / "scores" / f"p{i:04d}.parquet") for i in range(n)]
    return pd.concat(frames, ignore_index=True).sort_values(["prompt_id", "deviation", "policy", "metric"],
                                                            ignore_index=True)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    import torch

    # the workers run one PyTorch thread each (cpus_per_worker=1): so does the reference
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    params = params_at(tmp_path_factory.mktemp("single") / "run")
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    for i, p in enumerate(prompts):
        ex.run_prompt(params, i, p, len(prompts))
    torch.set_num_threads(threads)
    return table(params, len(prompts))


def test_two_workers_give_the_single_process_table_even_when_one_is_killed(ray_local, single, tmp_path):
    params = params_at(tmp_path / "run")
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    results, killed, killed_at = [], None, None
    with Cluster(FanOut(workers=2), "cpu") as cluster:
        pids = cluster.pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        for res in cluster.run_prompts(params, prompts):
            results.append(res)
            if killed is None:  # the other worker is in the middle of a prompt: kill its process
                killed = next(p for p in pids if p != res["pid"])
                killed_at = time.time()
                os.kill(killed, signal.SIGKILL)
    assert sorted(r["prompt_id"] for r in results) == [0, 1, 2, 3]
    restarted = {r["pid"] for r in results} - set(pids)
    assert restarted, "the killed worker was not restarted (no result came from a new process)"
    # a prompt the killed worker finished just before the kill may still be delivered after it
    assert all(r["finished_at"] < killed_at for r in results if r["pid"] == killed)
    pd.testing.assert_frame_equal(table(params, 4), single)


def test_the_flow_fans_out_and_reports_progress(ray_local, single, prefect_harness, tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.experiment import experiment_flow

    params = params_at(tmp_path / "run")
    summary = experiment_flow(params, fanout=FanOut(workers=2))
    pd.testing.assert_frame_equal(table(params, 4), single)
    assert Path(summary["report"]).exists()

    async def progress():
        async with get_client() as client:
            arts = await client.read_artifacts()
            return [a for a in arts if a.key == "experiment-progress"]

    arts = asyncio.run(progress())
    assert arts and max(float(a.data) for a in arts) == 100.0


def test_a_fanout_wider_than_the_gpu_limit_runs_within_it(ray_local, prefect_harness, tmp_path, monkeypatch):
    """Prefect refuses at once (does not wait for) more slots than a limit holds: a fan-out of 2 on a
    limit of 1 runs with 1 worker instead of failing; no limit, or a wide one, changes nothing."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.experiment import experiment_flow
    from flows.gpu import workers_within_limit

    async def create(name, limit, active=True):
        async with get_client() as client:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit, active=active))

    asyncio.run(create("gpu-one", 1))
    asyncio.run(create("gpu-four", 4))
    asyncio.run(create("gpu-off", 1, active=False))
    for name, want in (("gpu-none", (2, None)), ("gpu-four", (2, 4)), ("gpu-off", (2, None)), ("gpu-one", (1, 1))):
        monkeypatch.setenv("T2VSIM_GPU_LIMIT", name)
        assert workers_within_limit(2) == want, name
    monkeypatch.setenv("T2VSIM_GPU_TIMEOUT", "60")
    params = ex.ExperimentParams(prompts=2, out=str(tmp_path / "run"), deviations=("steps:6",), hwnoise_eps=(3e-3,),
                                 bootstrap=20, strips=1)
    experiment_flow(params, fanout=FanOut(workers=2))
    assert sorted(p.name for p in (Path(params.out) / "scores").glob("p*.parquet")) == ["p0000.parquet", "p0001.parquet"]


def test_fanout_settings_are_checked():
    with pytest.raises(ValueError, match="workers"):
        FanOut(workers=-1)
    with pytest.raises(ValueError, match="at least 1 worker"):
        Cluster(FanOut(workers=0))


def test_workers_may_import_the_drivers_plugins(monkeypatch):
    """A worker parses the run's deviations itself: the modules allowed by --allow-plugin (and
    T2VSIM_ALLOW_PLUGINS) go with it; t2vsim's own packages need no entry."""
    from flows.fanout import worker_env
    from models.deviations import PLUGIN_ENV, allow_plugins

    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    env = worker_env()
    assert PLUGIN_ENV not in env and env["FSSPEC_S3_ENDPOINT_URL"] == "http://127.0.0.1:9"
    monkeypatch.setenv(PLUGIN_ENV, "deploy_plugins")
    with allow_plugins(["my_plugins.cheats"]):
        assert worker_env()[PLUGIN_ENV] == "deploy_plugins,my_plugins.cheats"
    assert worker_env()[PLUGIN_ENV] == "deploy_plugins"


def test_a_plugin_deviation_runs_on_a_worker(ray_local, tmp_path):
    """End to end: a deviation from a plugin module the driver allowed (`--allow-plugin tests`) is
    parsed and run by a Ray worker process, which gets the allowance from the driver."""
    from models.deviations import allow_plugins

    with allow_plugins(["tests"]):
        params = ex.ExperimentParams(prompts=2, out=str(tmp_path / "run"), bootstrap=20, strips=1,
                                     deviations=("tests.test_deviations:DoubleSeed",), hwnoise_eps=(3e-3,))
        ex.open_run(params)
        prompts = ex.load_prompts(params)
        with Cluster(FanOut(workers=1), "cpu") as cluster:
            results = list(cluster.run_prompts(params, prompts[:1]))
    assert results and results[0]["pid"] != os.getpid()
    scores = pd.read_parquet(Path(params.out) / "scores" / "p0000.parquet")
    assert "tests.test_deviations:DoubleSeed" in set(scores["deviation"])
