"""`t2vsim network ...`: epochs on the mock chain, the economics of cheating, pricing calibration
and fairness. Only typer is imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


from flows.cli_common import Group, fail as _fail, read_config, show  # noqa: F401
from flows.cli_generate import ALLOW_PLUGIN_HELP

# Defaults of the host options of `network run`, used when neither the command line nor --config sets them.
HOST_DEFAULTS = dict(honest=8, malicious=2, deviation="steps:2", cheat_rate=0.5, poc_cheaters=0)
# What `network run` writes into its --out directory (refused if it holds anything).
NETWORK_FILES = ("params.json", "epochs.parquet", "hosts.parquet", "poc.parquet", "chain.db", "chain.db-wal",
                 "chain.db-shm")


def _params(run_dir, fidelity, epochs, requests, blocks, honest, malicious, deviation, cheat_rate, policy, metric,
            threshold, seed, preset, sampling_hash, config, weights=None, poc_fidelity=None, poc_strategy=None,
            poc_cheaters=None, poc_cheat=None, poc_nonces=None, score_draw=None):
    """NetworkParams from --config with every option given on the command line over it (an option
    left out keeps the file's value, else the default)."""
    from sim.network import TINY_MIX, ExecutorGroup, NetworkParams

    data = read_config(config)
    host_opts = dict(honest=honest, malicious=malicious, deviation=deviation, cheat_rate=cheat_rate,
                     poc_cheaters=poc_cheaters, poc_cheat=poc_cheat, poc_strategy=poc_strategy)
    if "hosts" not in data or any(v is not None for v in host_opts.values()):
        h = {k: (HOST_DEFAULTS.get(k) if v is None else v) for k, v in host_opts.items()}
        for k in ("honest", "malicious", "poc_cheaters"):
            if isinstance(h[k], int) and h[k] < 0:
                raise ValueError(f"{k.replace('_', '-')}: must be >= 0, got {h[k]}")
        if h["poc_cheaters"] > h["honest"]:
            raise ValueError(f"poc_cheaters ({h['poc_cheaters']}) must be <= honest ({h['honest']}): they are honest "
                             "hosts that cheat in the PoC stage only")
        hosts = []
        if h["honest"] - h["poc_cheaters"]:
            hosts.append(ExecutorGroup(count=h["honest"] - h["poc_cheaters"]))
        if h["poc_cheaters"]:
            hosts.append(ExecutorGroup(count=h["poc_cheaters"], poc_strategy=h["poc_cheat"] or "inflate:2"))
        if h["malicious"]:
            hosts.append(ExecutorGroup(count=h["malicious"], strategy="malicious", deviation=h["deviation"],
                                       cheat_rate=h["cheat_rate"], poc_strategy=h["poc_strategy"] or "honest"))
        data["hosts"] = hosts
        if weights is None and (h["poc_cheaters"] or (h["poc_strategy"] or "honest") != "honest"):
            weights = "poc"  # a PoC strategy only means something in a PoC stage
    for k, v in dict(run_dir=run_dir, fidelity=fidelity, epochs=epochs, requests_per_epoch=requests,
                     blocks_per_epoch=blocks, policy=policy, metric=metric, threshold=threshold, seed=seed,
                     preset=preset, sampling_hash=sampling_hash, weights_source=weights, poc_fidelity=poc_fidelity,
                     poc_nonces=poc_nonces, score_draw=score_draw).items():
        if v is not None:
            data[k] = v
    if data.get("fidelity") == "real" and "mix" not in data and str(data.get("preset", "tiny")).startswith("tiny"):
        data["mix"] = TINY_MIX
    return NetworkParams.model_validate(data)


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
    net = typer.Typer(cls=Group, name="network", help="Network epochs on the mock chain: requesters, executors, validators, "
                      "DiT pricing, and whether cheating pays.", no_args_is_help=True)
    app.add_typer(net, name="network")

    opt_run_dir = typer.Option(None, help="experiment run directory (surrogate: scores.parquet + thresholds.json)")

    @net.command()
    def run(
        run_dir: Optional[Path] = opt_run_dir,
        fidelity: Optional[str] = typer.Option(None, help="surrogate (scores from run_dir; default) or real (runs the models)"),
        epochs: Optional[int] = typer.Option(None, help="epochs [default: 2]"),
        requests: Optional[int] = typer.Option(None, help="requests per epoch [default: 1000]"),
        blocks: Optional[int] = typer.Option(None, help="blocks per epoch (Gonka 17,280; compressed) [default: 100]"),
        honest: Optional[int] = typer.Option(None, help="honest hosts [default: 8]"),
        malicious: Optional[int] = typer.Option(None, help="malicious hosts [default: 2]"),
        deviation: Optional[str] = typer.Option(None, help="malign deviation the malicious hosts use [default: steps:2]"),
        cheat_rate: Optional[float] = typer.Option(None, help="share of their requests malicious hosts cheat on (0..1) "
                                                   "[default: 0.5]"),
        policy: Optional[str] = typer.Option(None, help="validation policy [default: full]"),
        metric: Optional[str] = typer.Option(None, help="metric of the policy (default: the run's only one)"),
        threshold: Optional[float] = typer.Option(None, help="override the calibrated threshold"),
        preset: Optional[str] = typer.Option(None, help="model preset (real fidelity: tiny on a CPU)"),
        seed: Optional[int] = typer.Option(None, help="run seed [default: 0]"),
        sampling_hash: Optional[str] = typer.Option(None, help="sha256 (Gonka) or splitmix64 (fast)"),
        score_draw: Optional[str] = typer.Option(None, help="surrogate: per_inference (validators of an inference "
                                                 "share its measured score; default) or per_validation"),
        weights: Optional[str] = typer.Option(None, help="epoch weights: capacity (default) or poc (a sim.poc stage "
                                              "each epoch; implied by --poc-strategy/--poc-cheaters)"),
        poc_fidelity: Optional[str] = typer.Option(None, help="PoC stage fidelity: surrogate (default) or real"),
        poc_strategy: Optional[str] = typer.Option(None, help="PoC strategy of the malicious hosts (honest, fp8, "
                                                   "int4, one-expert, fabricate:F, inflate:X, duplicate:K, copy:HOST)"),
        poc_cheaters: Optional[int] = typer.Option(None, help="of the honest hosts, how many cheat in the PoC stage "
                                                   "only [default: 0]"),
        poc_cheat: Optional[str] = typer.Option(None, help="PoC strategy of those hosts (default inflate:2)"),
        poc_nonces: Optional[int] = typer.Option(None, help="nonces per PoC stage for a host of the reference speed "
                                                 "(default 1000)"),
        db: Optional[str] = typer.Option(None, help="database URL or SQLite path (default OUT/chain.db)"),
        out: Path = typer.Option(Path("runs/network"), help="output directory (new or empty)"),
        config: Optional[Path] = typer.Option(None, help="JSON file with NetworkParams fields; options given on the "
                                              "command line override it"),
        allow_plugin: Optional[List[str]] = typer.Option(None, help=ALLOW_PLUGIN_HELP),
    ):
        """Run epochs and print the per-epoch table (also Prefect artifacts, Parquet under OUT)."""
        from models.deviations import allow_plugins
        from models.io import check_out_dir

        with allow_plugins(allow_plugin or ()):
            p = _params(run_dir and str(run_dir), fidelity, epochs, requests, blocks, honest, malicious, deviation,
                        cheat_rate, policy, metric, threshold, seed, preset, sampling_hash, config, weights,
                        poc_fidelity, poc_strategy, poc_cheaters, poc_cheat, poc_nonces, score_draw)
            # a new or empty --out only, with or without --db: earlier epochs, hosts and params are never replaced
            check_out_dir(out)
            if out.is_dir() and any(out.iterdir()):
                raise ValueError(f"out: {out} already holds a run ({', '.join(sorted(x.name for x in out.iterdir())[:3])}); "
                                 "nothing is replaced: choose a new or empty --out")
            if p.fidelity == "real":
                from models.presets import preset_spec
                from sim.policies import get_policy

                preset_spec(p.preset)
                get_policy(p.policy)
                if p.threshold is None and not p.run_dir:
                    raise ValueError("threshold: real fidelity needs --threshold or a --run-dir with thresholds.json")
            if db is not None:
                from sim.chain import make_engine

                make_engine(db).dispose()  # an unusable database is refused before any flow starts
            if p.fidelity == "surrogate":  # fail fast, before any flow starts
                backend = p.surrogate_backend()
                for g in p.hosts:
                    if g.deviation:
                        backend.check_deviation(g.deviation)
            from flows.network import network_flow
            from flows.server import temporary_server

            with temporary_server():
                res = network_flow(p.model_dump(mode="json"), str(out), db)
        items = [_table(res["epochs"], "Per-epoch results", EPOCH_COLUMNS)]
        if res.get("poc") is not None:
            poc = res["poc"].groupby(["epoch", "poc_strategy"]).agg(
                hosts=("host", "count"), accepted=("accepted", "sum"), mean_weight=("weight", "mean")).reset_index()
            items.append(_table(poc, "PoC stage per epoch and strategy"))
        show(*items, f"{res['blocks']} blocks, {res['messages']} messages in {res['seconds']:.1f} s; tables in {out}")

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
        from models.io import check_out_file
        from sim.network import ExecutorGroup, NetworkParams
        from sim.network.economics import largest_undetected, setting_from, strategy_table

        p = NetworkParams(run_dir=str(run_dir), requests_per_epoch=requests, policy=policy, metric=metric,
                          threshold=threshold, hosts=(ExecutorGroup(count=honest + malicious),),
                          **({"score_draw": score_draw} if score_draw else {}))
        if out:
            check_out_file(out)
        b = p.surrogate_backend()
        tab = strategy_table({d: b.fail_rate(d) for d in b.malign}, b.executor_share, b.fail_rate(None), p.chain,
                             setting_from(p), undetected=largest_undetected(run_dir))
        if out:
            from sim.parquet import write_parquet

            write_parquet(tab, out)
        show(_table(tab, f"Does cheating pay? ({b.policy}/{b.metric}, threshold {b.threshold:.4g})",
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

        from flows.network import sweep_flow
        from flows.server import temporary_server
        from models.io import check_out_file
        from sim.network import NetworkParams

        params = dict(run_dir=str(run_dir), requests_per_epoch=requests, policy=policy, metric=metric,
                      hosts=[dict(count=hosts)])
        NetworkParams.model_validate(params).surrogate_backend()  # refused before the flow starts
        check_out_file(out)
        with temporary_server():
            path = sweep_flow(params, str(out))
        rows = pd.read_parquet(path)
        summary = rows.groupby(["strategy", "reward_share"])["pays"].mean().reset_index()
        summary = summary.rename(columns={"pays": "share_of_grid_where_it_pays"})
        show(_table(summary, f"Sweep ({len(rows)} rows) -> {path}"))

    @net.command()
    def calibrate(
        preset: str = typer.Option("tiny", help="model preset"),
        device: str = typer.Option("cpu", help="cpu or cuda"),
        dtype: str = typer.Option("float32", help="float32 or bfloat16"),
        repeats: int = typer.Option(3, help="timings per size (median)"),
        out: Path = typer.Option(Path("runs/calibration.json"), help="output JSON"),
    ):
        """Time forward passes over a grid of sizes and fit alpha, beta (with R^2)."""
        from flows.network import calibration_flow
        from flows.server import temporary_server
        from models.io import check_out_file
        from models.presets import preset_spec
        from models.request import Runtime

        preset_spec(preset)
        Runtime(device=device, dtype=dtype).check_device()
        if not 1 <= repeats <= 1000:
            raise ValueError(f"repeats: must be in 1..1000, got {repeats}")
        check_out_file(out)
        with temporary_server():
            cal = calibration_flow(preset, device, dtype, repeats, str(out))
        show(f"seconds = {cal['alpha_seconds']:.4g} N^2 + {cal['beta_seconds']:.4g} N + "
                        f"{cal['gamma_seconds']:.4g}; R^2 = {cal['r2']:.5f} -> {out}")

    @net.command()
    def fairness(
        calibration: Optional[Path] = typer.Option(None, help="calibration JSON (default: docs/facts.md A14B on H100)"),
        charge_constant: bool = typer.Option(False, help="also charge the per-pass constant"),
        out: Optional[Path] = typer.Option(None, help="write the tidy table as Parquet"),
    ):
        """Revenue per GPU-second across sizes, frames, steps: DiT units vs naive prices (flat is fair)."""
        from models.io import check_out_file
        from sim.pricing import PricingParams, fairness_summary, fairness_table

        p = (PricingParams.from_calibration(calibration, charge_constant=charge_constant) if calibration
             else PricingParams(charge_constant=charge_constant))
        if out:
            check_out_file(out)
        table = fairness_table(p)
        if out:
            from sim.parquet import write_parquet

            write_parquet(table, out)
        show(_table(fairness_summary(table), f"Revenue per GPU-second spread ({p.source})"))
