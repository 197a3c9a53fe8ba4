"""`t2vsim experiment`: the validation experiment (the project's main job) as a Prefect flow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from flows.cli_common import merge_config, rich_table, show, value
from flows.cli_generate import AllowPlugin, OptionalDType


def experiment_params(config, sweep: bool, request: dict, runtime: dict, **fields):
    """ExperimentParams from --config with the options given over it (a request or runtime option
    changes that one field of the file's request or validator_runtime)."""
    from sim.experiment import ExperimentParams

    data = merge_config(config, **fields)
    data["request"] = {**(data.get("request") or {"steps": 8, "truncate_prompt": True}),
                       **{k: v for k, v in request.items() if v is not None}}
    runtime = {**(data.get("validator_runtime") or {}), **{k: v for k, v in runtime.items() if v is not None}}
    if runtime:
        data["validator_runtime"] = runtime
    if sweep:
        from models.deviations import SEVERITY_SWEEP

        base = data.get("deviations", ExperimentParams.model_fields["deviations"].default)
        data["deviations"] = [*base, *SEVERITY_SWEEP] if isinstance(base, (list, tuple)) else base
    return ExperimentParams.model_validate(data)


def repeated(values) -> tuple | None:
    return tuple(values) if values else None


def experiment(
    preset: Annotated[Optional[str], typer.Option(help="model preset [default: tiny]")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="a count (seeded sample of the bundled VBench prompts), "
                                                        "'vbench', or a file [default: 20]")] = None,
    out: Annotated[Optional[str], typer.Option(help="run directory or URL, e.g. s3://bucket/run (resumes if it "
                                                    "exists) [default: runs/experiment]")] = None,
    deviation: Annotated[Optional[List[str]], typer.Option(help="deviation spec (repeat); default: the benign and "
                                                                "malign sets")] = None,
    hwnoise_eps: Annotated[Optional[List[float]], typer.Option(help="emulated hardware noise levels (repeat)")] = None,
    hwnoise_headline: Annotated[Optional[float], typer.Option(help="hwnoise level counted as benign in the headline "
                                                                   "table [default: 3e-3]")] = None,
    metric: Annotated[Optional[List[str]], typer.Option(help="frame metric of the full policy (repeat)")] = None,
    policy: Annotated[Optional[List[str]], typer.Option(help="full, checkpoint, fingerprint, segment (repeat)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="denoising steps of every request [default: 8]")] = None,
    truncate_prompt: Annotated[Optional[bool], typer.Option(
        "--truncate-prompt/--no-truncate-prompt", help="truncate prompts over the text encoder's limit (recorded) "
        "[default: truncate]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="run seed [default: 0]")] = None,
    fingerprint_k: Annotated[Optional[int], typer.Option(help="fingerprint dimensions [default: 32]")] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help="bootstrap resamples [default: 1000]")] = None,
    device: Annotated[Optional[str], typer.Option(help="validator device [default: cpu]")] = None,
    dtype: OptionalDType = None,
    sweep: Annotated[bool, typer.Option(help="add the severity sweep (models.deviations.SEVERITY_SWEEP) to the "
                                             "deviations (those of --deviation or --config, else the default sets)")]
    = False,
    config: Annotated[Optional[Path], typer.Option(help="a JSON file of ExperimentParams fields; options given on "
                                                        "the command line override it")] = None,
    allow_plugin: AllowPlugin = None,
    progress: Annotated[bool, typer.Option(help="log each generation (progress is also a Prefect artifact)")] = True,
    overlap: Annotated[Optional[bool], typer.Option("--overlap/--no-overlap", help="encode, save and score each "
                                                    "video on a background thread while the next one generates "
                                                    "(same results)")] = None,
    workers: Annotated[int, typer.Option(help="Ray workers (0: every prompt in this process)")] = 0,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join (default: start a local one)")]
    = None,
) -> None:
    """Run (or resume) the validation experiment and write RUN/report.html; prints the verdict table."""
    from models.deviations import allow_plugins
    from sim.experiment import load_prompts, open_run

    with allow_plugins(allow_plugin or ()):
        params = experiment_params(
            config, sweep, dict(steps=steps, truncate_prompt=truncate_prompt), dict(device=device, dtype=value(dtype)),
            preset=preset, prompts=int(prompts) if prompts and prompts.strip().isdigit() else prompts, out=out,
            seed=seed, fingerprint_k=fingerprint_k, bootstrap=bootstrap, hwnoise_headline=hwnoise_headline,
            overlap=overlap,
            deviations=repeated(deviation), hwnoise_eps=repeated(hwnoise_eps), metrics=repeated(metric),
            policies=repeated(policy))
        params.validator_runtime.check_device()
        from flows.fanout import FanOut

        fanout = FanOut(workers=workers, address=ray_address)
        load_prompts(params)  # a bad prompt file is refused before the run directory is touched
        open_run(params)  # refuses a mismatched run directory before any work starts
        from flows.experiment import experiment_flow
        from flows.server import temporary_server

        with temporary_server():
            summary = experiment_flow(params, show_progress=progress, fanout=fanout)
    show(*verdict_tables(summary, params.preset), f"report: {summary['report']}")


def verdict_tables(summary: dict, preset: str) -> list:
    tables = [rich_table("Deployable validator, one rule for every claim (held-out prompts; count, exact 95% bounds)",
                         summary["deployable"], overflow="fold")] if summary.get("deployable") else []
    tables.append(rich_table(f"Oracle view: best policy per malign deviation (held-out prompts), {preset}",
                             summary["verdicts"], overflow="fold"))
    return tables


def register(app: typer.Typer) -> None:
    app.command()(experiment)
