"""`t2vsim poc ...`: run a PoC stage, measure PoC vector distances, show strategies and detection power.

Only typer and the parameter models are imported at module level; everything heavy loads inside
the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from flows.cli_common import RUNS, Group, each, literal_choices, rich_table, show, value
from flows.cli_generate import Device, DTypeChoice
from sim.poc.params import DEFAULT_STAGE_MIX, POC_FILES, PocParams, PocStageParams

MAX_SAMPLE_SIZE = 100_000
DEFAULT_SAMPLE_SIZES = (10, 20, 50, 100, 200, 400)
Fidelity = literal_choices("PocFidelity", PocStageParams.model_fields["fidelity"].annotation)
# The reference (validator) of a PoC measurement or stage computes in float32 by default: honest
# nodes in bf16 are then the largest benign difference measurable on a CPU (docs/poc.md).
DEFAULT_REFERENCE_DTYPE = DTypeChoice(PocStageParams.model_fields["dtype"].default)

poc = typer.Typer(cls=Group, help="Proof-of-Compute for the DiT: stages, measurements, cheats, detection power.",
                  no_args_is_help=True)

# Options named after the PocParams field they set.
DistanceThreshold = Annotated[Optional[float], typer.Option(help="mismatch distance threshold (default: measured)")]
HonestCondition = Annotated[Optional[str], typer.Option(
    help="measured benign condition honest nodes draw from (surrogate; default dtype:bfloat16; e.g. "
    "attention:_native_flash in a GPU measurement)")]
Measurement = Annotated[Optional[Path], typer.Option(help="measurement file (default: the bundled one)")]
ReferenceDType = Annotated[DTypeChoice, typer.Option(help="dtype of the reference (the validator's)")]


def poc_params(**fields) -> PocParams:
    return PocParams(**{k: v for k, v in fields.items() if v is not None})


def sample_sizes(sizes: list[int] | None) -> list[int]:
    sizes = list(sizes or DEFAULT_SAMPLE_SIZES)
    for n in sizes:
        if not 1 <= n <= MAX_SAMPLE_SIZE:
            raise ValueError(f"sample_size: each size must be an integer in 1..{MAX_SAMPLE_SIZE}, got {n}")
    return sizes


def stage_tables(result: dict, title: str):
    """The per-participant and per-strategy tables of a stage result."""
    rows = []
    for row in result["participants"]:
        structural = "mismatches over distance" not in row["reason"]
        verdict = (f"{'accepted' if row['accepted'] else '[red]rejected[/]'} "
                   f"{row['mismatches']}/{row['sampled']} p={row['p_value']:.3g}")
        rows.append({"participant": row["participant"], "strategy": row["strategy"], "count": row["count"],
                     "weight": f"{row['weight']:g}",
                     "verdict": f"[red]rejected[/] {row['reason']}" if structural and not row["accepted"] else verdict})
    table = rich_table(title, rows, ["participant", "strategy", "count", "weight", "verdict"])
    for col in table.columns[:-1]:
        col.no_wrap = True
    summary = rich_table("per strategy", [
        {"strategy": spec, "participants": s["participants"], "accepted": s["accepted"], "rejected": s["rejected"],
         "leaf mismatch rate": f"{s['mismatch_rate']:.3f}"} for spec, s in result["summary"].items()],
        ["strategy", "participants", "accepted", "rejected", "leaf mismatch rate"])
    return table, summary


def check_stage(params: PocStageParams, out: Path | None) -> None:
    """Everything a stage can refuse, before it starts or anything is written."""
    from models.io import check_out_dir
    from models.presets import preset_spec
    from models.request import Runtime
    from sim.poc import participants_from_mix

    participants_from_mix(params.mix, params.capacity, seed=params.seed)
    if params.fidelity == "real":
        Runtime(device=params.device, dtype=params.dtype).check_device()
        preset_spec(params.preset)
    if out is not None:
        check_out_dir(out, POC_FILES)


@poc.command("run")
def run(
    mix: Annotated[str, typer.Option(help="participants as STRATEGY=N,...; `copy` copies the first honest one")]
    = DEFAULT_STAGE_MIX,
    capacity: Annotated[int, typer.Option(help="nonces each participant computes in the stage")] = 1000,
    fidelity: Annotated[Fidelity, typer.Option(help="surrogate (measured distances) or real (run the model)")]
    = Fidelity("surrogate"),
    preset: Annotated[str, typer.Option(help="model preset for real fidelity")] = "tiny",
    block_hash: Annotated[str, typer.Option(help="the stage's block hash (seeds every nonce)")] = "block-0",
    samples: Annotated[Optional[int], typer.Option(help="leaves sampled per participant (default 200, Gonka)")] = None,
    distance_threshold: DistanceThreshold = None,
    allowed_mismatch_rate: Annotated[Optional[float], typer.Option(help="allowed mismatch rate (default 0.1, "
                                                                       "Gonka)")] = None,
    measurement: Measurement = None,
    honest_condition: HonestCondition = None,
    seed: Annotated[int, typer.Option(help="stage seed (plans, sampling, surrogate draws)")] = 0,
    device: Device = "cpu",
    reference_dtype: ReferenceDType = DEFAULT_REFERENCE_DTYPE,
    out: Annotated[Optional[Path], typer.Option(help="directory for params.json, poc_stage.json and "
                                                     "poc_stage.md")] = None,
    flow: Annotated[bool, typer.Option("--flow/--direct", help="run as a Prefect flow, or call the stage "
                                                               "directly")] = True,
) -> None:
    """Run one PoC stage with a mix of participants; print weights and verdicts."""
    validation = poc_params(samples=samples, distance_threshold=distance_threshold,
                            allowed_mismatch_rate=allowed_mismatch_rate,
                            measurement=str(measurement) if measurement else None, honest_condition=honest_condition)
    params = PocStageParams(mix=mix, capacity=capacity, block_hash=block_hash, validation=validation,
                            fidelity=value(fidelity), preset=preset, seed=seed, device=device,
                            dtype=value(reference_dtype))
    check_stage(params, out)
    if flow:
        from flows.poc import poc_stage_flow
        from flows.server import temporary_server

        with temporary_server():
            result = poc_stage_flow(params, out=str(out) if out else None)
    else:
        from flows.poc import run_stage, write_stage

        res = run_stage(params)
        result = res.to_dict()
        if out:
            write_stage(params, result, res.to_markdown(), out)
    show(*stage_tables(result, f"PoC stage {block_hash} ({params.fidelity})"))


@poc.command("measure")
def measure(
    preset: Annotated[str, typer.Option(help="model preset")] = "tiny",
    nonces: Annotated[int, typer.Option(help="nonces per condition")] = 256,
    device: Device = "cpu",
    reference_dtype: ReferenceDType = DEFAULT_REFERENCE_DTYPE,
    condition: Annotated[Optional[List[str]], typer.Option(
        help="condition (repeat), e.g. batch:4, dtype:bfloat16, fp8 (default: all for the device)")] = None,
    frames: Annotated[Optional[int], typer.Option(help="PoC frames (default: the preset's smallest request)")] = None,
    out: Annotated[Path, typer.Option(help="measurement file to write")] = RUNS / "poc" / "measured_distances.json",
) -> None:
    """Measure PoC vector distances under benign and malign conditions (the surrogate's input)."""
    from flows.cli_common import console as make_console
    from models.io import check_out_file
    from models.request import Runtime
    from sim.poc.measure import measure as run_measure, write_measurement

    console = make_console()
    reference = Runtime(device=device, dtype=value(reference_dtype), batch_size=1).check_device()
    check_out_file(out)
    conds = each(condition, "condition") if condition else None
    data = run_measure(preset, nonces=nonces, conditions=conds, reference=reference, frames=frames,
                       progress=lambda c: console.print(f"measuring {c}"))
    write_measurement(data, out)
    cols = [f"{t:g}" for t in data["thresholds"]]
    rows = [{"condition": cond, **{c: f"{rates[c]:.3f}" for c in cols}} for cond, rates in data["rates"].items()]
    table = rich_table(f"share of nonces over each distance ({preset}, {data['machine']})", rows, ["condition", *cols])
    show(table, f"recommended threshold: {data['recommended_threshold']}; wrote {out}")


@poc.command("strategies")
def strategies() -> None:
    """List participant strategies (honest and the cheats)."""
    from sim.poc import strategy_table

    show(rich_table("PoC strategies", list(strategy_table()), ["spec", "kind", "description"]))


@poc.command("power")
def power(
    measurement: Measurement = None,
    distance_threshold: DistanceThreshold = None,
    sample_size: Annotated[Optional[List[int]], typer.Option(
        help=f"sample size (repeat) [default: {', '.join(map(str, DEFAULT_SAMPLE_SIZES))}]")] = None,
    cheat: Annotated[Optional[List[str]], typer.Option(help="strategy (repeat) [default: all cheats]")] = None,
    honest_condition: HonestCondition = None,
) -> None:
    """Probability that the validator rejects each strategy, per sample size (exact binomial)."""
    from sim.poc.measure import Measurement as LoadedMeasurement
    from sim.poc.power import DEFAULT_CHEATS, power_table

    params = poc_params(distance_threshold=distance_threshold, honest_condition=honest_condition)
    sizes = sample_sizes(sample_size)
    m = LoadedMeasurement.load(measurement)
    specs = list(each(cheat, "cheat")) if cheat is not None else list(DEFAULT_CHEATS)
    rows = power_table(m, params, cheats=specs, sample_sizes=sizes)
    out_rows = []
    for spec in specs:
        r = [x for x in rows if x["strategy"] == spec]
        q = r[0]["leaf_mismatch_rate"]
        out_rows.append({"strategy": spec, "leaf mismatch": "structural" if q is None else f"{q:.3f}",
                         **{f"n={n}": f"{x['p_reject']:.3f}" for n, x in zip(sizes, r)}})
    show(rich_table(f"P(reject) at threshold {params.distance_threshold:g} ({m.path})", out_rows,
                    ["strategy", "leaf mismatch", *(f"n={n}" for n in sizes)]))


def register(app: typer.Typer) -> None:
    app.add_typer(poc, name="poc")
