"""Scheduled regression of the validation experiment (deployment `validation-regression/nightly` in
prefect.yaml): run the tiny experiment into a dated run directory, compare its verdict table with a
baseline run's (`sim.regression`, which says what a regression is), publish the comparison as a
markdown artifact, and fail the flow run when detection got worse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from sim import experiment as ex
from sim.regression import (DEFAULT_FRR_TOLERANCE, REGRESSION_PARAMS, baseline_markdown, check_baseline,
                            check_tolerance, compare_runs, promote_baseline, read_summary, regression_error,
                            run_date_of)

ARTIFACT_KEY = "regression-comparison"


@flow(name="validation-regression", log_prints=True)
def regression_flow(params: ex.ExperimentParams = REGRESSION_PARAMS, runs_root: str = "runs/regression",
                    baseline: str | None = "runs/regression/baseline",
                    frr_tolerance: float = DEFAULT_FRR_TOLERANCE, run_date: str | None = None) -> dict[str, Any]:
    """Run the experiment `params` into RUNS_ROOT/RUN_DATE (today, UTC; `params.out` is replaced),
    compare its verdicts with `baseline` and raise RegressionDetected on a regression."""
    from flows.experiment import experiment_flow

    logger = get_run_logger()
    tol = check_tolerance(frr_tolerance)
    run = Path(runs_root) / run_date_of(run_date)
    base = Path(baseline) if baseline is not None else None
    check_baseline(base, run, params)
    experiment_flow(params.model_copy(update={"out": str(run)}))
    read_summary(run, "run")
    if base is None or not base.exists():
        target = str(promote_baseline(run, base)) if base is not None else str(run)
        create_markdown_artifact(key=ARTIFACT_KEY, markdown=baseline_markdown(run, target),
                                 description=f"regression {run.name}")
        logger.info("no baseline: %s is the baseline now", target)
        return {"run": str(run), "baseline": target, "status": "baseline", "comparison": None}
    comparison = compare_runs(base, run, tol)
    for note in comparison.notes:
        logger.info(note)
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=comparison.to_markdown(run=str(run), baseline=str(base)),
                             description=f"regression {run.name} against {base}")
    if not comparison.passed:
        raise regression_error(comparison, base)
    logger.info("no regression against %s (%d deviations compared)", base, len(comparison.rows))
    return {"run": str(run), "baseline": str(base), "status": "passed", "comparison": comparison.to_dict()}
