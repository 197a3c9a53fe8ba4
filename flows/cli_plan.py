"""`t2vsim plan` (the cost of an experiment before it runs) and `t2vsim dry-run` (a new GPU box's
check-out run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from flows.cli_common import RUNS, literal_choices, value
from flows.cli_generate import DEFAULT_DTYPE, Device, DType
from models.request import Offload

OffloadChoice = literal_choices("OffloadChoice", Offload)

def plan(
    config: Annotated[Optional[Path], typer.Option(help="a JSON file of ExperimentParams; default: the proposal's STAGE 1 plan")] = None,
    prompts: Annotated[Optional[int], typer.Option(help="override the prompt count")] = None,
    gpus: Annotated[int, typer.Option(help="GPUs the run is spread over (wall time)")] = 8,
    gpu: Annotated[str, typer.Option(help="GPU profile: h200 (measured here) or h100 (docs/facts.md)")] = "h200",
    calibration: Annotated[Optional[Path], typer.Option(help="a calibration JSON (t2vsim pricing calibrate / dry-run) "
                                                          "for the pass-time fit")] = None,
    out: Annotated[Optional[Path], typer.Option(help="also write the plan as JSON here")] = None,
) -> None:
    """GPU-hours per configuration, wall time on N GPUs and storage of an experiment config."""
    from pydantic import ValidationError

    from flows.cli_common import fail, pydantic_message
    from sim.experiment import ExperimentError, ExperimentParams
    from sim.plan import STAGE1_PARAMS, PlanError, compare_with_proposal, plan as make_plan, to_markdown

    from models.io import check_out_file, write_atomic

    if out is not None:
        check_out_file(out)
    try:
        params = ExperimentParams.model_validate_json(config.read_text()) if config else STAGE1_PARAMS
        if prompts is not None:
            params = ExperimentParams(**{**json.loads(params.model_dump_json()), "prompts": prompts})
        p = make_plan(params, gpus=gpus, gpu=gpu, calibration=str(calibration) if calibration else None)
    except ValidationError as err:
        fail(pydantic_message(err))
    except OSError as err:
        fail(f"config/calibration: cannot read: {err}")
    except (PlanError, ExperimentError, ValueError) as err:
        fail(str(err))
    comparison = compare_with_proposal(p) if config is None else None
    if comparison is not None:
        p["proposal"] = comparison
    typer.echo(to_markdown(p, comparison))
    if out is not None:
        write_atomic(out, json.dumps(p, indent=1, default=str))


def dry_run(
    preset: Annotated[str, typer.Option(help="model preset")] = "tiny",
    device: Device = "cpu",
    dtype: DType = DEFAULT_DTYPE,
    attention: Annotated[str, typer.Option(help="attention backend asked for")] = "native",
    tf32: Annotated[bool, typer.Option(help="TF32 asked for")] = False,
    deterministic: Annotated[bool, typer.Option(help="deterministic algorithms asked for")] = True,
    offload: Annotated[OffloadChoice, typer.Option(help="what is moved off the GPU while idle")] = OffloadChoice("none"),
    expect_gpu: Annotated[Optional[str], typer.Option(help="text the device name must contain, e.g. H200")] = None,
    deviation: Annotated[Optional[List[str]], typer.Option(help="deviation (repeat); default: the benign and malign sets")] = None,
    steps: Annotated[int, typer.Option(help="denoising steps")] = 8,
    out: Annotated[Path, typer.Option(help="output directory")] = RUNS / "dryrun",
) -> None:
    """Check out a new GPU box: generations, PoC, calibration, settings, rerun identity; writes OUT/verdict.md."""
    from pydantic import ValidationError

    from flows.cli_common import fail, pydantic_message
    from sim.dryrun import DryRunParams

    fields = dict(preset=preset, expect_gpu=expect_gpu, out=str(out),
                  request={"steps": steps, "truncate_prompt": True},
                  runtime={"device": device, "dtype": value(dtype), "attention_backend": attention, "tf32": tf32,
                           "deterministic": deterministic, "offload": value(offload)})
    if deviation:
        fields["deviations"] = tuple(deviation)
    try:
        params = DryRunParams(**fields)
    except ValidationError as err:
        fail(pydantic_message(err))
    from models.io import check_out_dir
    from sim.dryrun import DRY_RUN_FILES

    check_out_dir(params.out, DRY_RUN_FILES)  # refused before the server or the model starts
    from flows.dryrun import dry_run_flow
    from flows.server import temporary_server

    try:
        with temporary_server():
            verdict = dry_run_flow(params, fail_on_check=False)
    except ValueError as err:
        fail(str(err))
    typer.echo((out / "verdict.md").read_text())
    raise typer.Exit(0 if verdict["passed"] else 1)


def register(app: typer.Typer) -> None:
    app.command()(plan)
    app.command(name="dry-run")(dry_run)
