"""`t2vsim experiment`: the validation experiment (the project's main job) as a Prefect flow."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from flows.cli_common import read_config, show
from flows.cli_generate import ALLOW_PLUGIN_HELP


def rows_table(title: str, rows: list[dict]):
    """A rich Table of dict rows (the columns of the first)."""
    from rich.table import Table

    t = Table(title=title)
    cols = list(rows[0]) if rows else []
    for c in cols:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*(str(row.get(c, "")) for c in cols))
    return t


def register(app: typer.Typer) -> None:
    @app.command()
    def experiment(
        preset: Optional[str] = typer.Option(None, help="model preset [default: tiny]"),
        prompts: Optional[str] = typer.Option(None, help="a count (seeded sample of the bundled VBench prompts), "
                                              "'vbench', or a file [default: 20]"),
        out: Optional[str] = typer.Option(None, help="run directory or URL, e.g. s3://bucket/run (resumes if it exists) [default: runs/experiment]"),
        deviation: Optional[List[str]] = typer.Option(None, help="deviation spec (repeat); default: the benign and malign sets"),
        hwnoise_eps: Optional[List[float]] = typer.Option(None, help="emulated hardware noise levels (repeat)"),
        hwnoise_headline: Optional[float] = typer.Option(None, help="hwnoise level counted as benign in the headline "
                                                         "table [default: 3e-3]"),
        metric: Optional[List[str]] = typer.Option(None, help="frame metric of the full policy (repeat)"),
        policy: Optional[List[str]] = typer.Option(None, help="full, checkpoint, fingerprint, segment (repeat)"),
        steps: Optional[int] = typer.Option(None, help="denoising steps of every request [default: 8]"),
        truncate_prompt: Optional[bool] = typer.Option(None, "--truncate-prompt/--no-truncate-prompt",
                                                       help="truncate prompts over the text encoder's limit "
                                                       "(recorded) [default: truncate]"),
        seed: Optional[int] = typer.Option(None, help="run seed [default: 0]"),
        fingerprint_k: Optional[int] = typer.Option(None, help="fingerprint dimensions [default: 32]"),
        bootstrap: Optional[int] = typer.Option(None, help="bootstrap resamples [default: 1000]"),
        device: Optional[str] = typer.Option(None, help="validator device [default: cpu]"),
        dtype: Optional[str] = typer.Option(None, help="validator dtype [default: bfloat16]"),
        sweep: bool = typer.Option(False, help="add the severity sweep (models.deviations.SEVERITY_SWEEP) to the "
                                   "deviations (those of --deviation or --config, else the default sets)"),
        config: Optional[Path] = typer.Option(None, help="a JSON file of ExperimentParams fields; options given on "
                                              "the command line override it"),
        allow_plugin: Optional[List[str]] = typer.Option(None, help=ALLOW_PLUGIN_HELP),
        progress: bool = typer.Option(True, help="log each generation (progress is also a Prefect artifact)"),
        workers: int = typer.Option(0, help="Ray workers (0: every prompt in this process)"),
        ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: start a local one)"),
    ) -> None:
        """Run (or resume) the validation experiment and write RUN/report.html; prints the verdict table."""
        from models.deviations import allow_plugins
        from sim.experiment import ExperimentParams, load_prompts, open_run

        data = read_config(config)
        request = dict(data.get("request") or {"steps": 8, "truncate_prompt": True})
        request.update({k: v for k, v in (("steps", steps), ("truncate_prompt", truncate_prompt)) if v is not None})
        runtime = dict(data.get("validator_runtime") or {})
        runtime.update({k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        cli = dict(preset=preset, prompts=int(prompts) if prompts and prompts.strip().isdigit() else prompts,
                   out=None if out is None else str(out), seed=seed, fingerprint_k=fingerprint_k, bootstrap=bootstrap,
                   hwnoise_headline=hwnoise_headline, deviations=tuple(deviation) if deviation else None,
                   hwnoise_eps=tuple(hwnoise_eps) if hwnoise_eps else None, metrics=tuple(metric) if metric else None,
                   policies=tuple(policy) if policy else None)
        data.update({k: v for k, v in cli.items() if v is not None}, request=request)
        if sweep:
            from models.deviations import SEVERITY_SWEEP

            base = data.get("deviations", ExperimentParams.model_fields["deviations"].default)
            data["deviations"] = [*base, *SEVERITY_SWEEP] if isinstance(base, (list, tuple)) else base
        if runtime:
            data["validator_runtime"] = runtime
        with allow_plugins(allow_plugin or ()):
            params = ExperimentParams.model_validate(data)
            params.validator_runtime.check_device()
            from flows.fanout import FanOut

            fanout = FanOut(workers=workers, address=ray_address)
            load_prompts(params)  # a bad prompt file is refused before the run directory is touched
            open_run(params)  # refuses a mismatched run directory before any work starts
            from flows.experiment import experiment_flow
            from flows.server import temporary_server

            with temporary_server():
                summary = experiment_flow(params, show_progress=progress, fanout=fanout)
        tables = [rows_table("Deployable validator, one rule for every claim (held-out prompts; count, exact 95% bounds)",
                             summary["deployable"])] if summary.get("deployable") else []
        tables.append(rows_table(f"Oracle view: best policy per malign deviation (held-out prompts), {params.preset}",
                                 summary["verdicts"]))
        show(*tables, f"report: {summary['report']}")
