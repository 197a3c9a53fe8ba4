"""`t2vsim pricing ...`: the DiT price of a request, calibrated on this machine, and how fair it is
across sizes. Only typer is imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_common import RUNS, Group, df_table, show, value
from flows.cli_generate import Device, DTypeChoice

pricing = typer.Typer(cls=Group, name="pricing", help="DiT pricing: calibration of the pass-time fit and "
                      "fairness across request sizes.", no_args_is_help=True)


@pricing.command("calibrate")
def calibrate(
    preset: Annotated[str, typer.Option(help="model preset")] = "tiny",
    device: Device = "cpu",
    dtype: Annotated[DTypeChoice, typer.Option(help="dtype of the timed transformer; float32, because the "
                                                    "calibration feeds inputs in its first parameter's dtype")]
    = DTypeChoice("float32"),
    repeats: Annotated[int, typer.Option(help="timings per size (median)")] = 3,
    out: Annotated[Path, typer.Option(help="output JSON")] = RUNS / "calibration.json",
):
    """Time forward passes over a grid of sizes and fit alpha, beta (with R^2)."""
    from flows.network import calibration_flow
    from flows.server import temporary_server
    from models.io import check_out_file
    from models.presets import preset_spec
    from models.request import Runtime
    from sim.pricing import CalibrationParams

    preset_spec(preset)
    Runtime(device=device, dtype=value(dtype)).check_device()
    params = CalibrationParams(preset=preset, device=device, dtype=value(dtype), repeats=repeats)
    check_out_file(out)
    with temporary_server():
        cal = calibration_flow(params, str(out))
    show(f"seconds = {cal['alpha_seconds']:.4g} N^2 + {cal['beta_seconds']:.4g} N + "
         f"{cal['gamma_seconds']:.4g}; R^2 = {cal['r2']:.5f} -> {out}")


@pricing.command("fairness")
def fairness(
    calibration: Annotated[Optional[Path], typer.Option(help="calibration JSON (default: docs/facts.md A14B on "
                                                             "H100)")] = None,
    charge_constant: Annotated[bool, typer.Option(help="also charge the per-pass constant")] = False,
    charge_stages: Annotated[str, typer.Option(help="comma-separated stages also charged (text_encoder, vae, "
                                                    "overhead), from a stage calibration "
                                                    "(benchmarks/pricing_measured.py --calibration)")] = "",
    out: Annotated[Optional[Path], typer.Option(help="write the tidy table as Parquet")] = None,
):
    """Revenue per GPU-second across sizes, frames, steps: DiT units vs naive prices (flat is fair)."""
    from models.io import check_out_file, write_parquet_atomic
    from sim.pricing import PricingParams, fairness_summary, fairness_table

    kw = dict(charge_constant=charge_constant, charge_stages=tuple(s.strip() for s in charge_stages.split(",") if s.strip()))
    p = PricingParams.from_calibration(calibration, **kw) if calibration else PricingParams(**kw)
    if out:
        check_out_file(out)
    table = fairness_table(p)
    if out:
        write_parquet_atomic(out, table)
    show(df_table(fairness_summary(table), f"Revenue per GPU-second spread ({p.source})"))


def register(app: typer.Typer) -> None:
    app.add_typer(pricing, name="pricing")
