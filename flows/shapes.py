"""Prefect flows of the `shapes` preset: train it (three resumable stages, then export) and measure
its prompt following. Thin wiring over `models.shapes_train` and `sim.shapes_quality`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from models import shapes_train
from models.io import check_out_dir, write_atomic
from sim import shapes_quality


@task(name="shapes-train-stage")
def train_stage_task(stage: str, cfg: shapes_train.TrainConfig, work: str, max_seconds: float | None) -> dict[str, Any]:
    return shapes_train.train_stage(stage, cfg, work, max_seconds=max_seconds)


@flow(name="shapes-train")
def train_flow(cfg: shapes_train.TrainConfig, work: str, stages: tuple[str, ...] = shapes_train.STAGES,
               max_seconds: float | None = None, export_to: str | None = None, hardware: str = "") -> dict[str, Any]:
    """Train (or resume) the stages in order; each stops at `max_seconds` and resumes on the next run.
    Exports the diffusers directory when every stage is complete and `export_to` is given."""
    done = {}
    for stage in stages:
        done[stage] = train_stage_task(stage, cfg, work, max_seconds)
        if done[stage]["step"] < done[stage]["of"]:
            break  # out of time: later stages need this one
    complete = all(s["step"] >= s["of"] for s in done.values()) and len(done) == len(stages)
    if complete and export_to:
        shapes_train.export(cfg, work, export_to, hardware=hardware)
        create_markdown_artifact((Path(export_to) / "CARD.md").read_text(), key="shapes-card",
                                 description="the trained shapes preset")
    return {"stages": done, "exported": bool(complete and export_to)}


@flow(name="shapes-quality")
def quality_flow(prompts: list[str], deviations: list[str | None], preset: str = "shapes", seed: int = 0,
                 out: str | None = None) -> dict[str, Any]:
    """Prompt-following accuracy of honest and deviating generations; writes quality.json/.md under out."""
    if out:
        check_out_dir(out, shapes_quality.QUALITY_FILES)
    res = shapes_quality.evaluate(prompts, deviations, preset=preset, seed=seed)
    md = shapes_quality.markdown_table(res["accuracy"], res["seconds"])
    if out:
        write_atomic(Path(out) / "quality.json", json.dumps(res, indent=1, default=str))
        write_atomic(Path(out) / "quality.md", md)
    create_markdown_artifact(md, key="shapes-quality", description="prompt following on the shapes preset")
    return res
