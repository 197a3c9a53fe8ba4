"""Prefect flow of a PoC stage: a mix of participants, one stage, weights and verdicts out.

Thin wiring over `sim.poc.run_poc_stage`; the network epochs call that function directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from sim.poc import PocParams, participants_from_mix, run_poc_stage
from sim.poc.measure import write_measurement as write_json


POC_FILES = ("poc_stage.json", "poc_stage.md")


def write_stage(result: dict[str, Any], markdown: str, out: Path) -> Path:
    """poc_stage.json and poc_stage.md into a fresh directory renamed to `out` (models.io policy)."""
    from models.io import staged_dir

    with staged_dir(out, POC_FILES) as tmp:
        write_json(result, tmp / "poc_stage.json")
        (tmp / "poc_stage.md").write_text(markdown)
    return out


@task(name="poc-stage")
def poc_stage_task(mix: str, capacity: int, block_hash: str, params: PocParams, fidelity: str, preset: str,
                   seed: int, device: str, dtype: str) -> dict[str, Any]:
    from models.request import Runtime

    participants = participants_from_mix(mix, capacity, seed=seed)
    runtime = Runtime(device=device, dtype=dtype) if fidelity == "real" else None
    result = run_poc_stage(participants, block_hash=block_hash, params=params, fidelity=fidelity,
                           preset=preset, runtime=runtime, seed=seed)
    return {"result": result.to_dict(), "markdown": result.to_markdown()}


@flow(name="poc-stage")
def poc_stage_flow(mix: str = "honest=8,fp8=1,one-expert:high=1,fabricate:0.5=1,copy=1,inflate:2=1",
                   capacity: int = 1000, block_hash: str = "block-0", params: PocParams = PocParams(),
                   fidelity: str = "surrogate", preset: str = "tiny", seed: int = 0, device: str = "cpu",
                   dtype: str = "float32", out: str | None = None) -> dict[str, Any]:
    """Run one PoC stage; write `poc_stage.json` and `poc_stage.md` under `out` if given."""
    res = poc_stage_task(mix, capacity, block_hash, params, fidelity, preset, seed, device, dtype)
    if out:
        write_stage(res["result"], res["markdown"], Path(out))
    create_markdown_artifact(res["markdown"], key="poc-stage", description="PoC stage verdicts and weights")
    return res["result"]
