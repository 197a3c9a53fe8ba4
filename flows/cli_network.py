"""`t2vsim network ...`: epochs on the mock chain, the economics of cheating, pricing calibration
and fairness. Only typer is imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _params(run_dir, fidelity, epochs, requests, blocks, honest, malicious, deviation, cheat_rate, policy, metric,
            threshold, seed, preset, sampling_hash, config, weights=None, poc_fidelity=None, poc_strategy=None,
            poc_cheaters=0, poc_cheat=None, poc_nonces=None, score_draw=None):
    import json

    from pydantic import ValidationError

    from sim.network import TINY_MIX, ExecutorGroup, NetworkParams

    try:
        data = json.loads(Path(config).read_text()) if config else {}
        if poc_cheaters > honest:
            raise ValueError(f"poc_cheaters ({poc_cheaters}) must be <= honest ({honest}): they are honest hosts "
                             "that cheat in the PoC stage only")
        hosts = []
        if honest - poc_cheaters:
            hosts.append(ExecutorGroup(count=honest - poc_cheaters))
        if poc_cheaters:
            hosts.append(ExecutorGroup(count=poc_cheaters, poc_strategy=poc_cheat or "inflate:2"))
        if malicious:
            hosts.append(ExecutorGroup(count=malicious, strategy="malicious", deviation=deviation, cheat_rate=cheat_rate,
                                       poc_strategy=poc_strategy or "honest"))
        data.setdefault("hosts", hosts)
        if weights is None and (poc_cheaters or (poc_strategy or "honest") != "honest"):
            weights = "poc"  # a PoC strategy only means something in a PoC stage
        for k, v in dict(run_dir=run_dir, fidelity=fidelity, epochs=epochs, requests_per_epoch=requests,
                         blocks_per_epoch=blocks, policy=policy, metric=metric, threshold=threshold, seed=seed,
                         preset=preset, sampling_hash=sampling_hash, weights_source=weights, poc_fidelity=poc_fidelity,
                         poc_nonces=poc_nonces, score_draw=score_draw).items():
            if v is not None:
                data[k] = v
        if data.get("fidelity") == "real" and "mix" not in data and data.get("preset", "tiny").startswith("tiny"):
            data["mix"] = TINY_MIX
        return NetworkParams.model_validate(data)
    except ValidationError as err:
        _fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg'].removeprefix('Value error, ')}"
                        for e in err.errors()))
    except (OSError, ValueError) as err:
        _fail(str(err))


def _table(df, title: str, columns: list[str] | None = None):
    from rich.table import Table

    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    t = Table(title=title)
    for c in cols:
        t.add_column(c.replace("_", " "), justify="right")
    for _, r in df.iterrows():
        t.add_row(*[(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for c in cols])
    return t


EPOCH_COLUMNS = ["epoch", "requests", "units", "mean_unit_price_ngonka", "validations", "cheats", "cheats_caught",
                 "cheats_missed", "false_rejections", "poc_rejected", "honest_mean_gain_gnk", "malicious_mean_gain_gnk",
                 "malicious_became_invalid", "statuses"]


def register(app: typer.Typer) -> None:
    net = typer.Typer(name="network", help="Network epochs on the mock chain: requesters, executors, validators, "
                      "DiT pricing, and whether cheating pays.", no_args_is_help=True)
    app.add_typer(net, name="network")

    opt_run_dir = typer.Option(None, help="experiment run directory (surrogate: scores.parquet + thresholds.json)")

    @net.command()
    def run(
        run_dir: Optional[Path] = opt_run_dir,
        fidelity: str = typer.Option("surrogate", help="surrogate (scores from run_dir) or real (runs the models)"),
        epochs: int = typer.Option(2, help="epochs"),
        requests: int = typer.Option(1000, help="requests per epoch"),
        blocks: int = typer.Option(100, help="blocks per epoch (Gonka 17,280; compressed)"),
        honest: int = typer.Option(8, help="honest hosts"),
        malicious: int = typer.Option(2, help="malicious hosts"),
        deviation: str = typer.Option("steps:2", help="malign deviation the malicious hosts use"),
        cheat_rate: float = typer.Option(0.5, help="share of their requests malicious hosts cheat on (0..1)"),
        policy: str = typer.Option("full", help="validation policy"),
        metric: Optional[str] = typer.Option(None, help="metric of the policy (default: the run's only one)"),
        threshold: Optional[float] = typer.Option(None, help="override the calibrated threshold"),
        preset: Optional[str] = typer.Option(None, help="model preset (real fidelity: tiny on a CPU)"),
        seed: int = typer.Option(0, help="run seed"),
        sampling_hash: Optional[str] = typer.Option(None, help="sha256 (Gonka) or splitmix64 (fast)"),
        score_draw: Optional[str] = typer.Option(None, help="surrogate: per_inference (validators of an inference "
                                                 "share its measured score; default) or per_validation"),
        weights: Optional[str] = typer.Option(None, help="epoch weights: capacity (default) or poc (a sim.poc stage "
                                              "each epoch; implied by --poc-strategy/--poc-cheaters)"),
        poc_fidelity: Optional[str] = typer.Option(None, help="PoC stage fidelity: surrogate (default) or real"),
        poc_strategy: Optional[str] = typer.Option(None, help="PoC strategy of the malicious hosts (honest, fp8, "
                                                   "int4, one-expert, fabricate:F, inflate:X, duplicate:K, copy:HOST)"),
        poc_cheaters: int = typer.Option(0, help="of the honest hosts, how many cheat in the PoC stage only"),
        poc_cheat: Optional[str] = typer.Option(None, help="PoC strategy of those hosts (default inflate:2)"),
        poc_nonces: Optional[int] = typer.Option(None, help="nonces per PoC stage for a host of the reference speed "
                                                 "(default 1000)"),
        db: Optional[str] = typer.Option(None, help="database URL or SQLite path (default OUT/chain.db)"),
        out: Path = typer.Option(Path("runs/network"), help="output directory"),
        config: Optional[Path] = typer.Option(None, help="JSON file with NetworkParams fields"),
    ):
        """Run epochs and print the per-epoch table (also Prefect artifacts, Parquet under OUT)."""
        from rich.console import Console

        p = _params(run_dir and str(run_dir), fidelity, epochs, requests, blocks, honest, malicious, deviation,
                    cheat_rate, policy, metric, threshold, seed, preset, sampling_hash, config, weights, poc_fidelity,
                    poc_strategy, poc_cheaters, poc_cheat, poc_nonces, score_draw)
        if out.exists() and (out / "chain.db").exists() and db is None:
            _fail(f"{out / 'chain.db'} already exists; choose another --out or --db")
        from flows.network import network_flow
        from sim.chain import ChainDatabaseError
        from sim.network import RunDirError

        try:
            if p.fidelity == "surrogate":  # fail fast, before any flow starts
                backend = p.surrogate_backend()
                for g in p.hosts:
                    if g.deviation:
                        backend.check_deviation(g.deviation)
            res = network_flow(p.model_dump(mode="json"), str(out), db)
        except (ChainDatabaseError, RunDirError, ValueError) as err:
            _fail(str(err))
        con = Console()
        con.print(_table(res["epochs"], "Per-epoch results", EPOCH_COLUMNS))
        if res.get("poc") is not None:
            poc = res["poc"].groupby(["epoch", "poc_strategy"]).agg(
                hosts=("host", "count"), accepted=("accepted", "sum"), mean_weight=("weight", "mean")).reset_index()
            con.print(_table(poc, "PoC stage per epoch and strategy"))
        con.print(f"{res['blocks']} blocks, {res['messages']} messages in {res['seconds']:.1f} s; tables in {out}")

    @net.command()
    def economics(
        run_dir: Path = typer.Option(..., help="experiment run directory"),
        requests: int = typer.Option(1000, help="network requests per epoch"),
        honest: int = typer.Option(8, help="hosts (honest)"),
        malicious: int = typer.Option(2, help="hosts (malicious)"),
        policy: str = typer.Option("full", help="validation policy"),
        metric: Optional[str] = typer.Option(None, help="metric"),
        threshold: Optional[float] = typer.Option(None, help="override the calibrated threshold"),
        score_draw: Optional[str] = typer.Option(None, help="per_inference (default) or per_validation"),
        out: Optional[Path] = typer.Option(None, help="also write the table as Parquet"),
    ):
        """Per cheating strategy: compute saving, catch chance per epoch, expected profit vs honest."""
        from rich.console import Console

        from sim.network import ExecutorGroup, NetworkParams
        from sim.network.economics import largest_undetected, setting_from, strategy_table

        try:
            p = NetworkParams(run_dir=str(run_dir), requests_per_epoch=requests, policy=policy, metric=metric,
                              threshold=threshold, hosts=(ExecutorGroup(count=honest + malicious),),
                              **({"score_draw": score_draw} if score_draw else {}))
            b = p.surrogate_backend()
        except ValueError as err:
            _fail(str(err))
        tab = strategy_table({d: b.fail_rate(d) for d in b.malign}, b.executor_share, b.fail_rate(None), p.chain,
                             setting_from(p), undetected=largest_undetected(run_dir))
        if out:
            from flows.network import _write_parquet

            _write_parquet(tab, out)
        Console().print(_table(tab, f"Does cheating pay? ({b.policy}/{b.metric}, threshold {b.threshold:.4g})",
                               ["strategy", "cheat_rate", "compute_saving", "q_fail", "p_checked", "p_invalid_epoch",
                                "profit_ngonka", "gain_vs_honest_ngonka", "pays"]))

    @net.command()
    def sweep(
        run_dir: Path = typer.Option(..., help="experiment run directory"),
        out: Path = typer.Option(Path("runs/network/sweep.parquet"), help="output Parquet"),
        requests: int = typer.Option(1000, help="network requests per epoch"),
        hosts: int = typer.Option(10, help="hosts"),
        policy: str = typer.Option("full", help="validation policy"),
        metric: Optional[str] = typer.Option(None, help="metric"),
    ):
        """Sweep sampling rate x threshold x slash fraction: where cheating stops paying (Parquet)."""
        import pandas as pd
        from rich.console import Console

        from flows.network import sweep_flow

        params = dict(run_dir=str(run_dir), requests_per_epoch=requests, policy=policy, metric=metric,
                      hosts=[dict(count=hosts)])
        try:
            path = sweep_flow(params, str(out))
        except ValueError as err:
            _fail(str(err))
        rows = pd.read_parquet(path)
        summary = rows.groupby(["strategy", "reward_share"])["pays"].mean().reset_index()
        summary = summary.rename(columns={"pays": "share_of_grid_where_it_pays"})
        Console().print(_table(summary, f"Sweep ({len(rows)} rows) -> {path}"))

    @net.command()
    def calibrate(
        preset: str = typer.Option("tiny", help="model preset"),
        device: str = typer.Option("cpu", help="cpu or cuda"),
        dtype: str = typer.Option("float32", help="float32 or bfloat16"),
        repeats: int = typer.Option(3, help="timings per size (median)"),
        out: Path = typer.Option(Path("runs/calibration.json"), help="output JSON"),
    ):
        """Time forward passes over a grid of sizes and fit alpha, beta (with R^2)."""
        from rich.console import Console

        from flows.network import calibration_flow

        try:
            cal = calibration_flow(preset, device, dtype, repeats, str(out))
        except ValueError as err:
            _fail(str(err))
        Console().print(f"seconds = {cal['alpha_seconds']:.4g} N^2 + {cal['beta_seconds']:.4g} N + "
                        f"{cal['gamma_seconds']:.4g}; R^2 = {cal['r2']:.5f} -> {out}")

    @net.command()
    def fairness(
        calibration: Optional[Path] = typer.Option(None, help="calibration JSON (default: facts.md A14B on H100)"),
        charge_constant: bool = typer.Option(False, help="also charge the per-pass constant"),
        out: Optional[Path] = typer.Option(None, help="write the tidy table as Parquet"),
    ):
        """Revenue per GPU-second across sizes, frames, steps: DiT units vs naive prices (flat is fair)."""
        from rich.console import Console

        from sim.pricing import PricingParams, fairness_summary, fairness_table

        try:
            p = (PricingParams.from_calibration(calibration, charge_constant=charge_constant) if calibration
                 else PricingParams(charge_constant=charge_constant))
        except ValueError as err:
            _fail(str(err))
        table = fairness_table(p)
        if out:
            from flows.network import _write_parquet

            _write_parquet(table, out)
        Console().print(_table(fairness_summary(table), f"Revenue per GPU-second spread ({p.source})"))
