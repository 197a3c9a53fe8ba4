"""Prefect flow of the dry run for a new GPU box (`sim/dryrun.py`): every model section under the
GPU concurrency limit, the one-page verdict published as a markdown artifact, and the flow run
failed when a check fails."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.gpu import gpu_slots
from sim.dryrun import DryRunParams, run_dry_run, verdict_markdown


class DryRunFailed(RuntimeError):
    """A check of the dry run failed (the verdict names it)."""


@flow(name="dry-run", log_prints=True)
def dry_run_flow(params: DryRunParams = DryRunParams(), fail_on_check: bool = True) -> dict[str, Any]:
    """Run the dry run into `params.out` and publish RUN/verdict.md."""
    logger = get_run_logger()
    with gpu_slots(1):
        verdict = run_dry_run(params)
    md = verdict_markdown(verdict)
    create_markdown_artifact(key="dry-run-verdict", markdown=md, description=f"dry run on {verdict['device']}")
    failed = [c["check"] for c in verdict["checks"] if not c["ok"]]
    logger.info("dry run %s on %s", "passed" if not failed else f"failed ({', '.join(failed)})", verdict["device"])
    if failed and fail_on_check:
        raise DryRunFailed(f"dry run failed: {', '.join(failed)} (see {params.out}/verdict.md)")
    return verdict
