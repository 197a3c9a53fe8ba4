"""The experiment's prompts fanned out over Ray actors (one per GPU, or per CPU share on a CPU run).

Each actor keeps its process, and so the pipelines `models.presets.build_pipeline` caches in it,
for the whole run: a prompt's canonical generation, its deviations, the validator's replays and
the scoring all run in one actor, on one GPU. Ray places the actors (`num_gpus=1` each on a GPU
run) and `ray.util.ActorPool` hands the next prompt to whichever actor is free; an actor whose
process dies is restarted by Ray and the call it was running is retried (`max_restarts`,
`max_task_retries`), and a prompt finished before the death is never redone: its score file is on
the run's storage. Everything an actor writes goes to the run directory (`sim.storage`), so a
killed run, driver included, resumes where it stopped.

No Prefect here (the flow wraps this in a task and reports progress); the functions are used by
`flows/experiment.py`, `benchmarks/bench_fanout.py` and the tests.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from sim import experiment as ex

# Environment variables a worker needs to reach the same storage (fsspec's own configuration,
# e.g. FSSPEC_S3_ENDPOINT_URL) and the project's settings; credentials are the worker host's own.
FORWARDED_ENV_PREFIXES = ("FSSPEC_", "T2VSIM_")


class FanOut(BaseModel):
    """How the experiment's prompts are spread (`workers=0`: in the flow's own process)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(0, ge=0, le=4096, description="Ray actors, each running one prompt at a time "
                                                         "(0: no Ray, every prompt in this process)")
    address: str | None = Field(None, description="Ray cluster to join ('auto', 'HOST:6379' or 'ray://HOST:10001'); "
                                                  "None: start a local cluster for this run")
    cpus_per_worker: int = Field(1, ge=1, le=1024, description="CPU cores (and PyTorch threads) per actor on a CPU run")
    gpus_per_worker: float = Field(1.0, gt=0, le=8, description="GPUs per actor on a CUDA run")
    max_restarts: int = Field(-1, ge=-1, description="restarts of a dead actor (-1: unlimited)")
    max_task_retries: int = Field(-1, ge=-1, description="retries of the prompt a dead actor was running (-1: unlimited)")


def _actor_class():
    import ray

    @ray.remote
    class PromptWorker:
        """One worker: its process keeps the built pipelines between prompts."""

        def __init__(self, threads: int | None):
            if threads is not None:
                import torch

                torch.set_num_threads(threads)

        def pid(self) -> int:
            return os.getpid()

        def ping(self, payload: Any = None) -> Any:
            return payload

        def run_prompt(self, params_json: str, prompt_id: int, prompt: str, n_prompts: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            params = ex.ExperimentParams.model_validate_json(params_json)
            rows = len(ex.run_prompt(params, prompt_id, prompt, n_prompts))
            return {"prompt_id": prompt_id, "rows": rows, "pid": os.getpid(), "seconds": time.perf_counter() - t0,
                    "finished_at": time.time()}

    return PromptWorker


def worker_env() -> dict[str, str]:
    """The environment variables a worker gets: those of `FORWARDED_ENV_PREFIXES`, and the plugin
    modules this process may import deviations from (`--allow-plugin` included), so that a worker
    parses the run's deviations as the driver did."""
    from models.deviations import PLUGIN_ENV, TRUSTED_PACKAGES, allowed_plugins

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    plugins = sorted(allowed_plugins() - set(TRUSTED_PACKAGES))
    if plugins:
        env[PLUGIN_ENV] = ",".join(plugins)
    return env


class Cluster:
    """A Ray connection for one run: joins `address` or starts a local cluster, and the actors."""

    def __init__(self, fanout: FanOut, device: str = "cpu"):
        import ray

        from models.deviations import PLUGIN_ENV

        if fanout.workers < 1:
            raise ValueError("workers: a Ray fan-out needs at least 1 worker")
        self.fanout = fanout
        self.started = False
        env = worker_env()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                                      "include_dashboard": False}
            if fanout.address is None:
                kwargs["num_cpus"] = max(os.cpu_count() or 1, fanout.workers * fanout.cpus_per_worker)
            ray.init(address=fanout.address, **kwargs)
            self.started = True
        gpu = str(device).startswith("cuda")
        options: dict[str, Any] = {"max_restarts": fanout.max_restarts, "max_task_retries": fanout.max_task_retries}
        if not self.started and PLUGIN_ENV in env:  # joined an initialised Ray: the plugins per actor
            options["runtime_env"] = {"env_vars": {PLUGIN_ENV: env[PLUGIN_ENV]}}
        if gpu:
            options.update(num_gpus=fanout.gpus_per_worker, num_cpus=1)
        else:
            options.update(num_cpus=fanout.cpus_per_worker)
        cls = _actor_class().options(**options)
        threads = None if gpu else fanout.cpus_per_worker
        self.actors = [cls.remote(threads) for _ in range(fanout.workers)]

    def pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def run_prompts(self, params: ex.ExperimentParams, prompts: list[str]) -> Iterator[dict[str, Any]]:
        """Each prompt's result as it finishes (in completion order)."""
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        blob, n = params.model_dump_json(), len(prompts)
        yield from pool.map_unordered(lambda actor, item: actor.run_prompt.remote(blob, item[0], item[1], n),
                                      list(enumerate(prompts)))

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        if self.started:
            ray.shutdown()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_fanned_out(params: ex.ExperimentParams, prompts: list[str], fanout: FanOut,
                   on_done: Callable[[dict[str, Any], int, int], None] | None = None) -> list[dict[str, Any]]:
    """Run every prompt of an opened run on Ray; `on_done(result, done, total)` after each."""
    results = []
    with Cluster(fanout, params.validator_runtime.device) as cluster:
        for res in cluster.run_prompts(params, prompts):
            results.append(res)
            if on_done is not None:
                on_done(res, len(results), len(prompts))
    return sorted(results, key=lambda r: r["prompt_id"])
