"""`t2vsim shapes ...`: train the `shapes` preset, list its templated prompts, measure prompt following."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from flows.cli_common import RUNS


shapes = typer.Typer(help="The trained `shapes` preset: training, templated prompts, prompt following.",
                     no_args_is_help=True)


def train(
    work: Annotated[Path, typer.Option(help="work directory (checkpoints; resumes if it exists)")] = RUNS / "shapes_train",
    stage: Annotated[Optional[List[str]], typer.Option(help="vae, high, low (repeat; default all, in order)")] = None,
    vae_steps: Annotated[Optional[int], typer.Option(help="VAE optimiser steps")] = None,
    expert_steps: Annotated[Optional[int], typer.Option(help="optimiser steps per expert")] = None,
    seed: Annotated[int, typer.Option(help="seed of initial weights, data and noise")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
    max_minutes: Annotated[Optional[float], typer.Option(help="stop each stage after this long (resumable)")] = None,
    export_to: Annotated[Optional[Path], typer.Option(help="write the diffusers directory here when complete")] = None,
    hardware: Annotated[str, typer.Option(help="hardware description for the card")] = "",
) -> None:
    """Train (or resume) the VAE and the two experts; export when complete."""
    from pydantic import ValidationError

    from flows.cli_common import fail, pydantic_message
    from models import shapes_train

    fields = {k: v for k, v in dict(vae_steps=vae_steps, expert_steps=expert_steps, seed=seed,
                                    threads=threads).items() if v is not None}
    try:
        cfg = shapes_train.TrainConfig(**fields)
    except ValidationError as err:
        fail(pydantic_message(err))
    stages = tuple(stage or shapes_train.STAGES)
    bad = [s for s in stages if s not in shapes_train.STAGES]
    if bad:
        fail(f"stage: {bad[0]!r} is not one of {', '.join(shapes_train.STAGES)}")
    if max_minutes is not None and max_minutes <= 0:
        fail(f"max_minutes must be > 0, got {max_minutes}")
    if export_to is not None:  # refused before any training
        from models.io import check_out_dir

        check_out_dir(export_to, shapes_train.EXPORT_FILES, what="export_to")
    try:
        shapes_train.check_config(cfg, work)
    except shapes_train.TrainError as err:
        fail(str(err))
    from flows.server import temporary_server
    from flows.shapes import train_flow

    try:
        with temporary_server():
            res = train_flow(cfg, str(work), stages, max_seconds=max_minutes * 60 if max_minutes else None,
                             export_to=str(export_to) if export_to else None, hardware=hardware)
    except shapes_train.TrainError as err:
        fail(str(err))
    for name, st in res["stages"].items():
        typer.echo(f"{name}: step {st['step']}/{st['of']}, loss {st['loss']}, {st['seconds']:.0f} s")
    if res["exported"]:
        typer.echo(f"exported: {export_to}")


def prompts(
    n: Annotated[int, typer.Argument(help="how many distinct templated prompts")] = 20,
    seed: Annotated[int, typer.Option(help="sample seed")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="write them here, one a line (else print)")] = None,
) -> None:
    """A seeded sample of templated prompts (a prompt file for `t2vsim experiment --prompts FILE`)."""
    from flows.cli_common import fail
    from models.io import check_out_file, write_atomic
    from models.shapes_data import templated_prompts

    try:
        lines = templated_prompts(n, seed)
    except ValueError as err:
        fail(str(err))
    if n < 1:
        fail(f"n must be >= 1, got {n}")
    text = "\n".join(lines) + "\n"
    if out:
        write_atomic(check_out_file(out), text)
    else:
        typer.echo(text, nl=False)


def quality(
    prompts: Annotated[int, typer.Option(help="templated prompts (a seeded sample)")] = 20,
    deviation: Annotated[Optional[List[str]], typer.Option(help="deviation spec (repeat); 'honest' is always run")] = None,
    preset: Annotated[str, typer.Option(help="model preset")] = "shapes",
    seed: Annotated[int, typer.Option(help="prompt sample and request seeds")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="directory for quality.json and quality.md")] = None,
) -> None:
    """Prompt-following accuracy (colour, shape, motion read off the frames) with chance levels."""
    from flows.cli_common import fail
    from models.deviations import parse_deviation
    from models.presets import preset_spec
    from models.shapes_data import templated_prompts

    try:
        preset_spec(preset)
        for d in deviation or ():
            parse_deviation(d)
        ps = templated_prompts(prompts, seed)
    except ValueError as err:
        fail(str(err))
    if prompts < 1:
        fail(f"prompts must be >= 1, got {prompts}")
    if out is not None:
        from models.io import check_out_dir
        from sim.shapes_quality import QUALITY_FILES

        check_out_dir(out, QUALITY_FILES)
    from flows.server import temporary_server
    from flows.shapes import quality_flow
    from sim.shapes_quality import markdown_table

    with temporary_server():
        res = quality_flow(ps, [None, *(deviation or ())], preset=preset, seed=seed, out=str(out) if out else None)
    typer.echo(markdown_table(res["accuracy"], res["seconds"]))


def register(app: typer.Typer) -> None:
    shapes.command("train")(train)
    shapes.command("prompts")(prompts)
    shapes.command("quality")(quality)
    app.add_typer(shapes, name="shapes")
