"""`t2vsim poc ...`: run a PoC stage, measure PoC vector distances, show strategies and detection power.

Only typer is imported at module level; everything heavy loads inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DEFAULT_MIX = "honest=8,fp8=1,int4=1,one-expert:high=1,fabricate:0.5=1,copy=1,inflate:2=1,duplicate:2=1"


from flows.cli_common import Group, fail as _fail, show  # noqa: F401

POC_FILES = ("poc_stage.json", "poc_stage.md")  # what `poc run --out DIR` writes (flows.poc)
MAX_SAMPLE_SIZE = 100_000


def _params(**fields):
    from sim.poc import PocParams

    return PocParams(**{k: v for k, v in fields.items() if v is not None})


def _sizes(samples: str) -> list[int]:
    sizes = []
    for s in (x.strip() for x in samples.split(",")):
        if not s:
            continue
        if not s.isdigit() or not 1 <= int(s) <= MAX_SAMPLE_SIZE:
            raise ValueError(f"samples: each size must be an integer in 1..{MAX_SAMPLE_SIZE}, got {s!r}")
        sizes.append(int(s))
    if not sizes:
        raise ValueError(f"samples: give at least one sample size, comma-separated (e.g. 10,20,50), got {samples!r}")
    return sizes


def register(app: typer.Typer) -> None:
    poc = typer.Typer(cls=Group, help="Proof-of-Compute for the DiT: stages, measurements, cheats, detection power.",
                      no_args_is_help=True)
    app.add_typer(poc, name="poc")

    @poc.command("run")
    def run(
        mix: str = typer.Option(DEFAULT_MIX, help="participants as STRATEGY=N,...; `copy` copies the first honest one"),
        capacity: int = typer.Option(1000, help="nonces each participant computes in the stage"),
        fidelity: str = typer.Option("surrogate", help="surrogate (measured distances) or real (run the model)"),
        preset: str = typer.Option("tiny", help="model preset for real fidelity"),
        block_hash: str = typer.Option("block-0", help="the stage's block hash (seeds every nonce)"),
        samples: Optional[int] = typer.Option(None, help="leaves sampled per participant (default 200, Gonka)"),
        threshold: Optional[float] = typer.Option(None, help="mismatch distance threshold (default: measured)"),
        allowed_rate: Optional[float] = typer.Option(None, help="allowed mismatch rate (default 0.1, Gonka)"),
        measurement: Optional[Path] = typer.Option(None, help="measurement file for surrogate fidelity"),
        honest: Optional[str] = typer.Option(None, help="measured benign condition honest nodes draw from "
                                             "(surrogate; default dtype:bfloat16)"),
        seed: int = typer.Option(0, help="stage seed (plans, sampling, surrogate draws)"),
        device: str = typer.Option("cpu", help="validator device for real fidelity"),
        dtype: str = typer.Option("float32", help="validator dtype for real fidelity"),
        out: Optional[Path] = typer.Option(None, help="directory for poc_stage.json and poc_stage.md"),
        flow: bool = typer.Option(True, "--flow/--direct", help="run as a Prefect flow, or call the stage directly"),
    ) -> None:
        """Run one PoC stage with a mix of participants; print weights and verdicts."""
        from rich.table import Table

        from sim.poc import participants_from_mix, run_poc_stage

        from models.io import check_out_dir
        from models.presets import preset_spec
        from models.request import Runtime

        params = _params(samples=samples, distance_threshold=threshold, allowed_mismatch_rate=allowed_rate,
                         measurement=str(measurement) if measurement else None, honest_condition=honest)
        if fidelity not in ("surrogate", "real"):
            _fail(f"fidelity: must be surrogate or real, got {fidelity!r}")
        # everything is checked before a stage starts or anything is written
        participants_from_mix(mix, capacity, seed=seed)
        runtime = Runtime(device=device, dtype=dtype).check_device() if fidelity == "real" else None
        if fidelity == "real":
            preset_spec(preset)
        if out is not None:
            check_out_dir(out, POC_FILES)
        if flow:
            from flows.poc import poc_stage_flow
            from flows.server import temporary_server

            with temporary_server():
                result = poc_stage_flow(mix=mix, capacity=capacity, block_hash=block_hash, params=params,
                                        fidelity=fidelity, preset=preset, seed=seed, device=device, dtype=dtype,
                                        out=str(out) if out else None)
        else:
            res = run_poc_stage(participants_from_mix(mix, capacity, seed=seed), block_hash=block_hash,
                                params=params, fidelity=fidelity, preset=preset, runtime=runtime, seed=seed)
            result = res.to_dict()
            if out:
                from flows.poc import write_stage

                write_stage(result, res.to_markdown(), out)
        table = Table(title=f"PoC stage {block_hash} ({fidelity})")
        for col in ("participant", "strategy", "count", "weight", "verdict"):
            table.add_column(col, no_wrap=col != "verdict")
        for row in result["participants"]:
            structural = "mismatches over distance" not in row["reason"]
            verdict = (f"{'accepted' if row['accepted'] else '[red]rejected[/]'} "
                       f"{row['mismatches']}/{row['sampled']} p={row['p_value']:.3g}")
            table.add_row(row["participant"], row["strategy"], str(row["count"]), f"{row['weight']:g}",
                          f"[red]rejected[/] {row['reason']}" if structural and not row["accepted"] else verdict)
        summary = Table(title="per strategy")
        for col in ("strategy", "participants", "accepted", "rejected", "leaf mismatch rate"):
            summary.add_column(col)
        for spec, s in result["summary"].items():
            summary.add_row(spec, str(s["participants"]), str(s["accepted"]), str(s["rejected"]),
                            f"{s['mismatch_rate']:.3f}")
        show(table, summary)

    @poc.command("measure")
    def measure(
        preset: str = typer.Option("tiny", help="model preset"),
        nonces: int = typer.Option(256, help="nonces per condition"),
        device: str = typer.Option("cpu", help="reference device (cpu, cuda)"),
        dtype: str = typer.Option("float32", help="reference dtype (the validator's)"),
        conditions: Optional[str] = typer.Option(
            None, help="comma-separated conditions, e.g. batch:4,dtype:bfloat16,fp8 (default: all for the device)"),
        frames: Optional[int] = typer.Option(None, help="PoC frames (default: the preset's smallest request)"),
        out: Path = typer.Option(Path("out/poc/measured_distances.json"), help="measurement file to write"),
    ) -> None:
        """Measure PoC vector distances under benign and malign conditions (the surrogate's input)."""
        from rich.table import Table

        from flows.cli_common import console as make_console
        from models.io import check_out_file
        from models.request import Runtime
        from sim.poc.measure import measure as run_measure, write_measurement

        console = make_console()
        reference = Runtime(device=device, dtype=dtype, batch_size=1).check_device()
        check_out_file(out)
        conds = tuple(c.strip() for c in conditions.split(",") if c.strip()) if conditions else None
        data = run_measure(preset, nonces=nonces, conditions=conds, reference=reference, frames=frames,
                           progress=lambda c: console.print(f"measuring {c}"))
        write_measurement(data, out)
        table = Table(title=f"share of nonces over each distance ({preset}, {data['machine']})")
        table.add_column("condition")
        for t in data["thresholds"]:
            table.add_column(f"{t:g}")
        for cond, rates in data["rates"].items():
            table.add_row(cond, *(f"{rates[f'{t:g}']:.3f}" for t in data["thresholds"]))
        show(table, f"recommended threshold: {data['recommended_threshold']}; wrote {out}")

    @poc.command("strategies")
    def strategies() -> None:
        """List participant strategies (honest and the cheats)."""
        from rich.table import Table

        from sim.poc import strategy_table

        table = Table(title="PoC strategies")
        for col in ("spec", "kind", "description"):
            table.add_column(col)
        for row in strategy_table():
            table.add_row(row["spec"], row["kind"], row["description"])
        show(table)

    @poc.command("power")
    def power(
        measurement: Optional[Path] = typer.Option(None, help="measurement file (default: the bundled one)"),
        threshold: Optional[float] = typer.Option(None, help="distance threshold (default: measured)"),
        samples: str = typer.Option("10,20,50,100,200,400", help="sample sizes, comma-separated"),
        cheats: Optional[str] = typer.Option(None, help="strategies, comma-separated (default: all cheats)"),
        honest: Optional[str] = typer.Option(None, help="measured benign condition honest nodes draw from "
                                             "(default dtype:bfloat16; e.g. attention:_native_flash in a GPU measurement)"),
    ) -> None:
        """Probability that the validator rejects each strategy, per sample size (exact binomial)."""
        from rich.table import Table

        from sim.poc.measure import Measurement
        from sim.poc.power import DEFAULT_CHEATS, power_table

        params = _params(distance_threshold=threshold, honest_condition=honest)
        sizes = _sizes(samples)
        m = Measurement.load(measurement)
        specs = [c.strip() for c in cheats.split(",") if c.strip()] if cheats else list(DEFAULT_CHEATS)
        if not specs:
            raise ValueError(f"cheats: give at least one strategy, comma-separated, got {cheats!r}")
        rows = power_table(m, params, cheats=specs, sample_sizes=sizes)
        table = Table(title=f"P(reject) at threshold {params.distance_threshold:g} ({m.path})")
        table.add_column("strategy")
        table.add_column("leaf mismatch")
        for n in sizes:
            table.add_column(f"n={n}")
        for spec in specs:
            r = [x for x in rows if x["strategy"] == spec]
            q = r[0]["leaf_mismatch_rate"]
            table.add_row(spec, "structural" if q is None else f"{q:.3f}", *(f"{x['p_reject']:.3f}" for x in r))
        show(table)
