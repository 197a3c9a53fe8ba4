"""Prefect flow of the validation experiment: generation and scoring per prompt as tasks, then
statistics and the report. Thin wiring over `sim.experiment`; the same flow runs from the CLI
(`t2vsim experiment`), from a deployment, or from Python."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.artifacts import create_markdown_artifact, create_table_artifact

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
    return len(ex.run_prompt(params, prompt_id, prompt, n_prompts, on_generation=on_generation))


@task(name="statistics-and-report", retries=2, retry_delay_seconds=1, retry_condition_fn=_io_error,
      cache_policy=NONE)
def analyse(params: ex.ExperimentParams, n_prompts: int) -> dict[str, Any]:
    return ex.analyse(params, n_prompts)


@flow(name="validation-experiment", log_prints=True)
def experiment_flow(params: ex.ExperimentParams = ex.ExperimentParams(), show_progress: bool = False) -> dict[str, Any]:
    """Run (or resume) a validation experiment and write RUN/report.html."""
    logger = get_run_logger()
    prompts = open_run(params)
    n = len(prompts)
    gens_per_prompt = 1 + len(params.all_deviations())
    progress = _progress(show_progress, n * gens_per_prompt)
    try:
        for i, prompt in enumerate(prompts):
            if progress is not None:
                progress.update(progress.task_ids[0], description=f"prompt {i + 1}/{n}")
            on_gen = (lambda _spec: progress.advance(progress.task_ids[0])) if progress is not None else None
            rows = generate_and_score(params, i, prompt, n, on_generation=on_gen)
            logger.debug("prompt %d: %d score rows", i, rows)
    finally:
        if progress is not None:
            progress.stop()
    summary = analyse(params, n)
    create_markdown_artifact(key="validation-summary", markdown=summary["markdown"],
                             description=f"validation experiment {params.out}")
    create_table_artifact(key="validation-verdicts", table=summary["verdicts"],
                          description="best policy per malign deviation (held-out prompts)")
    return summary


def _progress(show: bool, total: int):
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    p.add_task("generations", total=total)
    p.start()
    return p
