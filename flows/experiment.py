"""Prefect flow of the validation experiment: generation and scoring per prompt as tasks, then
statistics and the report. Thin wiring over `sim.experiment`; the same flow runs from the CLI
(`t2vsim experiment`), from a deployment, or from Python.

With `fanout.workers > 0` the prompts run on Ray actors (`flows/fanout.py`), in one task
`fan-out`; otherwise each prompt is a task of this process. Either way the model sections hold the
Prefect global concurrency limit named by `T2VSIM_GPU_LIMIT` (default `gpu`; create it with
`prefect gcl create gpu --limit N`; where it does not exist nothing waits), and progress is a Prefect
progress artifact (`experiment-progress`) and log lines."""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact

from flows.fanout import FanOut
from flows.gpu import gpu_slots, limit_name, workers_within_limit
from sim import experiment as ex


def _io_error(task, task_run, state) -> bool:
    """Retry only on I/O errors; a bad parameter or a model error is final."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(name="open-run", retries=2, retry_delay_seconds=1, retry_condition_fn=_io_error, cache_policy=NONE)
def open_run(params: ex.ExperimentParams) -> list[str]:
    ex.open_run(params)
    return ex.load_prompts(params)


@task(name="generate-and-score", task_run_name="prompt-{prompt_id}", cache_policy=NONE)
def generate_and_score(params: ex.ExperimentParams, prompt_id: int, prompt: str, n_prompts: int,
                       on_generation=None) -> int:
    # Generation runs the model in this process; not retried (a failure is a finding, and the
    # run directory already makes a rerun resume where it stopped).
    with gpu_slots(1):
        return len(ex.run_prompt(params, prompt_id, prompt, n_prompts, on_generation=on_generation))


@task(name="fan-out", cache_policy=NONE)
def fan_out(params: ex.ExperimentParams, prompts: list[str], fanout: FanOut, progress_id=None) -> int:
    """Every prompt on Ray actors; a dead actor's prompt is retried by Ray (flows/fanout.py)."""
    from flows.fanout import run_fanned_out

    logger = get_run_logger()

    def done(res, k, total):
        logger.info("prompt %d done on worker pid %d (%.1f s), %d/%d", res["prompt_id"], res["pid"],
                    res["seconds"], k, total)
        _progress(progress_id, k, total)

    # A local cluster's workers use this machine's GPUs: hold one slot of its limit each, and start
    # no more workers than the limit has slots. A remote cluster's GPUs are Ray's to share out (each
    # actor asks for its GPU).
    if fanout.address is None:
        workers, slots = workers_within_limit(fanout.workers)
        if workers < fanout.workers:
            logger.warning("fan-out: %d workers asked, the GPU limit %r has %d slots: running %d workers",
                           fanout.workers, limit_name(), slots, workers)
            fanout = fanout.model_copy(update={"workers": workers})
    with gpu_slots(fanout.workers) if fanout.address is None else contextlib.nullcontext():
        results = run_fanned_out(params, prompts, fanout, on_done=done)
    return sum(r["rows"] for r in results)


@task(name="statistics-and-report", retries=2, retry_delay_seconds=1, retry_condition_fn=_io_error,
      cache_policy=NONE)
def analyse(params: ex.ExperimentParams, n_prompts: int) -> dict[str, Any]:
    return ex.analyse(params, n_prompts)


@flow(name="validation-experiment", log_prints=True)
def experiment_flow(params: ex.ExperimentParams = ex.ExperimentParams(), show_progress: bool = False,
                    fanout: FanOut = FanOut()) -> dict[str, Any]:
    """Run (or resume) a validation experiment and write RUN/report.html. `show_progress`: log each
    generation, not only each prompt."""
    logger = get_run_logger()
    prompts = open_run(params)
    n = len(prompts)
    progress_id = create_progress_artifact(progress=0.0, key="experiment-progress",
                                           description=f"prompts done of {n}, {params.out}")
    if fanout.workers > 0:
        fan_out(params, prompts, fanout, progress_id)
    else:
        on_gen = (lambda spec: logger.info("generation %s done", spec)) if show_progress else None
        for i, prompt in enumerate(prompts):
            rows = generate_and_score(params, i, prompt, n, on_generation=on_gen)
            logger.info("prompt %d/%d done (%d score rows)", i + 1, n, rows)
            _progress(progress_id, i + 1, n)
    summary = analyse(params, n)
    create_markdown_artifact(key="validation-summary", markdown=summary["markdown"],
                             description=f"validation experiment {params.out}")
    create_table_artifact(key="validation-verdicts", table=summary["verdicts"],
                          description="best policy per malign deviation (held-out prompts)")
    return summary


def _progress(progress_id, done: int, total: int) -> None:
    if progress_id is not None:
        update_progress_artifact(progress_id, progress=100.0 * done / max(1, total))
