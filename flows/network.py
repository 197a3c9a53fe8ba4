"""Prefect flows of the network area: epochs on the mock chain, pricing calibration, the
economics sweep. Thin wiring over sim.network, sim.pricing and sim.chain."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from models.io import write_parquet_atomic
from sim.network.params import NetworkParams
from sim.pricing import CalibrationParams


def _records(df) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


@task
def simulate(params_json: str, db_url: str, work_dir: str | None = None) -> dict:
    from sim.network import NetworkParams, run_network

    params = NetworkParams.model_validate_json(params_json)
    backend = None
    if params.fidelity == "real" and work_dir is not None:  # generations under OUT/gens, not a temp dir
        from sim.network.real import RealBackend

        backend = RealBackend(params, work_dir)
    res = run_network(params, db_url, backend=backend)
    return {"epochs": res.epochs, "hosts": res.hosts, "poc": res.extra.get("poc"), "seconds": res.seconds,
            "blocks": res.blocks, "messages": res.messages}


@flow(name="network-epochs")
def network_flow(params: NetworkParams, out: str, db_url: str | None = None) -> dict:
    """Run the network simulation, write epochs/hosts Parquet (and poc.parquet when the weights
    come from a PoC stage) and params.json under `out`, and publish the per-epoch table as Prefect
    artifacts."""
    from models.io import staged_dir, write_json_atomic

    p = NetworkParams.model_validate(params)
    out_dir = Path(out)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(f"out: {out_dir} already holds a run; nothing is replaced: pass a new or empty out")
    # Everything is written into a fresh directory beside `out`, renamed to `out` when complete.
    with staged_dir(out_dir) as tmp:
        shown_url = db_url or f"sqlite:///{(out_dir / 'chain.db').resolve()}"
        db_url = db_url or f"sqlite:///{(tmp / 'chain.db').resolve()}"
        write_json_atomic(tmp / "params.json", json.loads(p.model_dump_json()))
        res = simulate(p.model_dump_json(), db_url, str(tmp))
        write_parquet_atomic(tmp / "epochs.parquet", res["epochs"])
        write_parquet_atomic(tmp / "hosts.parquet", res["hosts"])
        if res.get("poc") is not None:
            write_parquet_atomic(tmp / "poc.parquet", res["poc"])
    if res.get("poc") is not None:
        create_table_artifact(key="network-poc", table=_records(res["poc"]),
                              description="per epoch and host: PoC strategy, claimed count, mismatches, verdict, weight")
    create_table_artifact(key="network-epochs", table=_records(res["epochs"]),
                          description="per-epoch requests, units, price, validations, cheats caught/missed")
    create_markdown_artifact(key="network-summary", markdown=epochs_markdown(res["epochs"], res, shown_url))
    return res


def epochs_markdown(epochs, res: dict, db_url: str) -> str:
    cols = ["epoch", "requests", "units", "mean_unit_price_ngonka", "validations", "cheats", "cheats_caught",
            "cheats_missed", "false_rejections", "poc_rejected", "honest_mean_gain_gnk", "malicious_mean_gain_gnk",
            "statuses"]
    cols = [c for c in cols if c in epochs.columns]
    lines = ["# Network simulation", "", f"{res['blocks']} blocks, {res['messages']} messages, "
             f"{res['seconds']:.1f} s; chain: `{db_url}`", "", "| " + " | ".join(cols) + " |",
             "|" + "---|" * len(cols)]
    for _, r in epochs.iterrows():
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


@flow(name="pricing-calibration")
def calibration_flow(params: CalibrationParams = CalibrationParams(), out: str = "runs/calibration.json") -> dict:
    """Time forward passes over a grid of latent sizes and fit alpha, beta (stored with R^2 and the
    parameters in `out`)."""
    from models.request import Runtime
    from sim.pricing import calibrate

    cal = calibrate(params.preset, Runtime(device=params.device, dtype=params.dtype), repeats=params.repeats)
    cal.save(out)
    create_markdown_artifact(key="pricing-calibration", markdown=(
        f"# Calibration {params.preset} on {params.device}\n\nseconds = {cal.alpha_seconds:.4g} N^2 + "
        f"{cal.beta_seconds:.4g} N + {cal.gamma_seconds:.4g}, R^2 = {cal.r2:.5f}, {len(cal.points)} sizes"))
    return json.loads(cal.model_dump_json())


@flow(name="network-sweep")
def sweep_flow(params: NetworkParams, out: str) -> str:
    """Where does cheating stop paying? Sampling rate x threshold x slash fraction (tidy Parquet)."""
    from sim.network.economics import setting_from, sweep

    p = NetworkParams.model_validate(params)
    backend = p.surrogate_backend()
    rows = sweep(backend, p.chain, setting_from(p), seed=p.seed)
    path = write_parquet_atomic(Path(out), rows)
    summary = rows.groupby(["strategy", "reward_share"])["pays"].mean().reset_index()
    create_table_artifact(key="network-sweep", table=_records(summary),
                          description="share of the grid where each strategy pays")
    return str(path)
