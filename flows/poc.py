"""Prefect flow of a PoC stage: a mix of participants, one stage, weights and verdicts out.

Thin wiring over `sim.poc.run_poc_stage`; the network epochs call that function directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from sim.poc import POC_FILES, PocStageParams, participants_from_mix, run_poc_stage
from models.io import write_json_atomic


def write_stage(params: PocStageParams, result: dict[str, Any], markdown: str, out: Path) -> Path:
    """params.json, poc_stage.json and poc_stage.md into a fresh directory renamed to `out`
    (models.io policy)."""
    from models.io import staged_dir

    with staged_dir(out, POC_FILES) as tmp:
        write_json_atomic(tmp / "params.json", params.model_dump(mode="json"))
        write_json_atomic(tmp / "poc_stage.json", result, allow_nan=True)
        (tmp / "poc_stage.md").write_text(markdown)
    return out


def run_stage(params: PocStageParams):
    """The stage of `params` (sim.poc.run_poc_stage), a PocStageResult."""
    from models.request import Runtime

    runtime = Runtime(device=params.device, dtype=params.dtype) if params.fidelity == "real" else None
    return run_poc_stage(participants_from_mix(params.mix, params.capacity, seed=params.seed),
                         block_hash=params.block_hash, params=params.validation, fidelity=params.fidelity,
                         preset=params.preset, runtime=runtime, seed=params.seed)


@task(name="poc-stage")
def poc_stage_task(params: PocStageParams) -> dict[str, Any]:
    result = run_stage(params)
    return {"result": result.to_dict(), "markdown": result.to_markdown()}


@flow(name="poc-stage")
def poc_stage_flow(params: PocStageParams = PocStageParams(), out: str | None = None) -> dict[str, Any]:
    """Run one PoC stage; write `params.json`, `poc_stage.json` and `poc_stage.md` under `out` if given."""
    res = poc_stage_task(params)
    if out:
        write_stage(params, res["result"], res["markdown"], Path(out))
    create_markdown_artifact(res["markdown"], key="poc-stage", description="PoC stage verdicts and weights")
    return res["result"]
