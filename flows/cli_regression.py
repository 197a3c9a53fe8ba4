"""`t2vsim regression ...`: the nightly regression of the validation experiment (flows/regression.py)
on demand, and the comparison of two finished runs (sim.regression)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_common import RUNS, Group, merge_config

regression = typer.Typer(cls=Group, help="Regression of the validation experiment: a dated run compared with a "
                         "baseline run; fails when detection got worse.", no_args_is_help=True)

FrrTolerance = Annotated[Optional[float], typer.Option(help="tolerated rise of a deviation's benign FRR "
                                                            "[default: 0.05]")]


@regression.command("run")
def run(
    runs_root: Annotated[Path, typer.Option(help="directory of the dated runs")] = RUNS / "regression",
    baseline: Annotated[Optional[Path], typer.Option(help="baseline run directory (made from this run if it does "
                                                          "not exist) [default: RUNS_ROOT/baseline]")] = None,
    frr_tolerance: FrrTolerance = None,
    run_date: Annotated[Optional[str], typer.Option(help="YYYY-MM-DD of the run [default: today, UTC]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="a JSON file of ExperimentParams fields (default: the "
                                                        "nightly tiny run)")] = None,
) -> None:
    """Run the experiment into RUNS_ROOT/DATE, compare it with the baseline; exit 1 on a regression."""
    from sim.experiment import ExperimentParams
    from sim.regression import DEFAULT_FRR_TOLERANCE, REGRESSION_PARAMS, check_tolerance, run_date_of

    params = ExperimentParams.model_validate(merge_config(config)) if config else REGRESSION_PARAMS
    tol = check_tolerance(DEFAULT_FRR_TOLERANCE if frr_tolerance is None else frr_tolerance)
    date = run_date_of(run_date)
    from flows.regression import regression_flow
    from flows.server import temporary_server

    with temporary_server():
        res = regression_flow(params, runs_root=str(runs_root), baseline=str(baseline or runs_root / "baseline"),
                              frr_tolerance=tol, run_date=date)
    typer.echo(f"{res['status']}: run {res['run']}, baseline {res['baseline']}")


@regression.command("compare")
def compare(
    baseline: Annotated[Path, typer.Argument(help="the baseline run directory")],
    run_dir: Annotated[Path, typer.Argument(help="the run compared with it")],
    frr_tolerance: FrrTolerance = None,
) -> None:
    """Compare two finished runs' verdicts (RUN/summary.json); print the table, exit 1 on a regression."""
    from sim.regression import DEFAULT_FRR_TOLERANCE, check_tolerance, compare_runs, regression_error

    tol = check_tolerance(DEFAULT_FRR_TOLERANCE if frr_tolerance is None else frr_tolerance)
    comparison = compare_runs(baseline, run_dir, tol)
    typer.echo(comparison.to_markdown(run=str(run_dir), baseline=str(baseline)), nl=False)
    if not comparison.passed:
        raise regression_error(comparison, baseline)


def register(app: typer.Typer) -> None:
    app.add_typer(regression, name="regression")
