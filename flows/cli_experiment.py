"""`t2vsim experiment`: the validation experiment (the project's main job) as a Prefect flow."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def experiment(
        preset: str = typer.Option("tiny", help="model preset"),
        prompts: str = typer.Option("20", help="a count (seeded sample of the bundled VBench prompts), 'vbench', or a file"),
        out: Path = typer.Option(Path("runs/experiment"), help="run directory (resumes if it exists)"),
        deviation: Optional[List[str]] = typer.Option(None, help="deviation spec (repeat); default: the benign and malign sets"),
        hwnoise_eps: Optional[List[float]] = typer.Option(None, help="emulated hardware noise levels (repeat)"),
        hwnoise_headline: float = typer.Option(3e-3, help="hwnoise level counted as benign in the headline table"),
        metric: Optional[List[str]] = typer.Option(None, help="frame metric of the full policy (repeat)"),
        policy: Optional[List[str]] = typer.Option(None, help="full, checkpoint, fingerprint, segment (repeat)"),
        steps: int = typer.Option(8, help="denoising steps of every request"),
        truncate_prompt: bool = typer.Option(True, help="truncate prompts over the text encoder's limit (recorded)"),
        seed: int = typer.Option(0, help="run seed"),
        fingerprint_k: int = typer.Option(32, help="fingerprint dimensions"),
        bootstrap: int = typer.Option(1000, help="bootstrap resamples"),
        device: str = typer.Option("cpu", help="validator device"),
        dtype: str = typer.Option("bfloat16", help="validator dtype"),
        config: Optional[Path] = typer.Option(None, help="a JSON file of ExperimentParams (other options ignored)"),
        progress: bool = typer.Option(True, help="log each generation (progress is also a Prefect artifact)"),
        workers: int = typer.Option(0, help="Ray workers (0: every prompt in this process)"),
        ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: start a local one)"),
    ) -> None:
        """Run (or resume) the validation experiment and write RUN/report.html; prints the verdict table."""
        from pydantic import ValidationError
        from rich.console import Console
        from rich.table import Table

        from flows.cli_generate import fail, pydantic_message
        from sim.experiment import ExperimentError, ExperimentParams

        try:
            if config is not None:
                try:
                    params = ExperimentParams.model_validate_json(config.read_text())
                except OSError as err:
                    fail(f"config: cannot read {config}: {err}")
            else:
                fields = dict(preset=preset, prompts=int(prompts) if prompts.isdigit() else prompts, out=str(out),
                              request={"steps": steps, "truncate_prompt": truncate_prompt}, seed=seed, fingerprint_k=fingerprint_k, bootstrap=bootstrap,
                              hwnoise_headline=hwnoise_headline,
                              validator_runtime={"device": device, "dtype": dtype})
                if deviation:
                    fields["deviations"] = tuple(deviation)
                if hwnoise_eps:
                    fields["hwnoise_eps"] = tuple(hwnoise_eps)
                if metric:
                    fields["metrics"] = tuple(metric)
                if policy:
                    fields["policies"] = tuple(policy)
                params = ExperimentParams(**fields)
        except ValidationError as err:
            fail(pydantic_message(err))
        from sim.experiment import load_prompts, open_run

        try:  # refuse a mismatched run directory or a bad prompt file before any work starts
            open_run(params)
            load_prompts(params)
        except ExperimentError as err:
            fail(str(err))
        from flows.experiment import experiment_flow
        from flows.fanout import FanOut

        try:
            fanout = FanOut(workers=workers, address=ray_address)
        except ValidationError as err:
            fail(pydantic_message(err))
        try:
            summary = experiment_flow(params, show_progress=progress, fanout=fanout)
        except (ExperimentError, ValueError) as err:
            fail(str(err))
        t = Table(title=f"Best policy per malign deviation (held-out prompts), {params.preset}")
        cols = list(summary["verdicts"][0]) if summary["verdicts"] else []
        for c in cols:
            t.add_column(c, overflow="fold")
        for row in summary["verdicts"]:
            t.add_row(*(str(row[c]) for c in cols))
        console = Console(width=max(160, Console().width))
        console.print(t)
        console.print(f"report: {summary['report']}")
