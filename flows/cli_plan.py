"""`t2vsim plan` (the cost of an experiment before it runs) and `t2vsim dry-run` (a new GPU box's
check-out run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        config: Optional[Path] = typer.Option(None, help="a JSON file of ExperimentParams; default: the proposal's STAGE 1 plan"),
        prompts: Optional[int] = typer.Option(None, help="override the prompt count"),
        gpus: int = typer.Option(8, help="GPUs the run is spread over (wall time)"),
        gpu: str = typer.Option("h200", help="GPU profile: h200 (measured here) or h100 (docs/facts.md)"),
        calibration: Optional[Path] = typer.Option(None, help="a calibration JSON (t2vsim network calibrate / dry-run) "
                                                              "for the pass-time fit"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="also write the plan as JSON here"),
    ) -> None:
        """GPU-hours per configuration, wall time on N GPUs and storage of an experiment config."""
        from pydantic import ValidationError

        from flows.cli_generate import fail, pydantic_message
        from sim.experiment import ExperimentError, ExperimentParams
        from sim.plan import STAGE1_PARAMS, PlanError, compare_with_proposal, plan as make_plan, to_markdown

        from models.io import check_out_file, write_atomic

        if json_out is not None:
            check_out_file(json_out, what="json")
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
        if json_out is not None:
            write_atomic(json_out, json.dumps(p, indent=1, default=str))

    @app.command(name="dry-run")
    def dry_run(
        preset: str = typer.Option("tiny", help="model preset"),
        device: str = typer.Option("cpu", help="device asked for"),
        dtype: str = typer.Option("bfloat16", help="dtype"),
        attention: str = typer.Option("native", help="attention backend asked for"),
        tf32: bool = typer.Option(False, help="TF32 asked for"),
        deterministic: bool = typer.Option(True, help="deterministic algorithms asked for"),
        offload: str = typer.Option("none", help="offload: none, text-encoder, all"),
        expect_gpu: Optional[str] = typer.Option(None, help="text the device name must contain, e.g. H200"),
        deviation: Optional[List[str]] = typer.Option(None, help="deviation (repeat); default: the benign and malign sets"),
        steps: int = typer.Option(8, help="denoising steps"),
        out: Path = typer.Option(Path("runs/dryrun"), help="output directory"),
    ) -> None:
        """Check out a new GPU box: generations, PoC, calibration, settings, rerun identity; writes OUT/verdict.md."""
        from pydantic import ValidationError

        from flows.cli_generate import fail, pydantic_message
        from sim.dryrun import DryRunParams

        fields = dict(preset=preset, expect_gpu=expect_gpu, out=str(out),
                      request={"steps": steps, "truncate_prompt": True},
                      runtime={"device": device, "dtype": dtype, "attention_backend": attention, "tf32": tf32,
                               "deterministic": deterministic, "offload": offload})
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
