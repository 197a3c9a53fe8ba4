"""`t2vsim network ...`: epochs on the mock chain and the economics of cheating (the pricing of a
request is `t2vsim pricing`, flows/cli_pricing.py). Only typer is imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_common import RUNS, Group, df_table, given, literal_choices, merge_config, show
from flows.cli_generate import AllowPlugin
from sim.network.params import ExecutorGroup, NetworkParams

# The choices of the options below are the Literals of NetworkParams' fields.
_fields = NetworkParams.model_fields
Fidelity = literal_choices("Fidelity", _fields["fidelity"].annotation)
ScoreDraw = literal_choices("ScoreDraw", _fields["score_draw"].annotation)
SamplingHash = literal_choices("SamplingHash", _fields["sampling_hash"].annotation)
WeightsSource = literal_choices("WeightsSource", _fields["weights_source"].annotation)

# Defaults of the host options of `network run`, used when neither the command line nor --config sets them.
HOST_DEFAULTS = dict(honest=8, malicious=2, deviation="steps:2", cheat_rate=0.5, poc_cheaters=0)
# What `network run` writes into its --out directory (refused if it holds anything).
NETWORK_FILES = ("params.json", "epochs.parquet", "hosts.parquet", "poc.parquet", "chain.db", "chain.db-wal",
                 "chain.db-shm")
EPOCH_COLUMNS = ["epoch", "requests", "units", "mean_unit_price_ngonka", "validations", "cheats", "cheats_caught",
                 "cheats_missed", "false_rejections", "poc_rejected", "honest_mean_gain_gnk", "malicious_mean_gain_gnk",
                 "malicious_became_invalid", "statuses"]

net = typer.Typer(cls=Group, name="network", help="Network epochs on the mock chain: requesters, executors, "
                  "validators, and whether cheating pays.", no_args_is_help=True)

# Options shared by the commands (one name, one type, one meaning each).
RunDir = Annotated[Optional[Path], typer.Option(help="experiment run directory (surrogate: scores.parquet + "
                                                     "thresholds.json)")]
Requests = Annotated[Optional[int], typer.Option(help="requests per epoch [default: 1000]")]
Honest = Annotated[Optional[int], typer.Option(help="honest hosts [default: 8]")]
Malicious = Annotated[Optional[int], typer.Option(help="malicious hosts [default: 2]")]
Policy = Annotated[Optional[str], typer.Option(help="validation policy [default: full]")]
Metric = Annotated[Optional[str], typer.Option(help="metric of the policy (default: the run's only one)")]
Threshold = Annotated[Optional[float], typer.Option(help="validation threshold of the policy (default: the "
                                                         "calibrated one of the run)")]
ScoreDrawOpt = Annotated[Optional[ScoreDraw], typer.Option(
    "--score-draw", help="surrogate: per_inference (validators of an inference share its measured score; default) "
    "or per_validation")]
Config = Annotated[Optional[Path], typer.Option(help="JSON file with NetworkParams fields; options given on the "
                                                     "command line override it")]


def host_groups(honest, malicious, deviation, cheat_rate, poc_cheaters, poc_cheat, poc_strategy):
    """NetworkParams.hosts from the host options (left out: HOST_DEFAULTS), and whether they need a
    PoC stage each epoch."""
    h = {k: (HOST_DEFAULTS.get(k) if v is None else v) for k, v in dict(
        honest=honest, malicious=malicious, deviation=deviation, cheat_rate=cheat_rate, poc_cheaters=poc_cheaters,
        poc_cheat=poc_cheat, poc_strategy=poc_strategy).items()}
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
    needs_poc = bool(h["poc_cheaters"] or (h["poc_strategy"] or "honest") != "honest")
    return hosts, needs_poc


def network_params(config, hosts: dict, **fields) -> NetworkParams:
    """NetworkParams from --config with every option given on the command line over it; a host
    option rebuilds `hosts` (a PoC strategy implies PoC weights unless --weights says otherwise)."""
    from sim.network import TINY_MIX

    data = merge_config(config, **fields)
    if "hosts" not in data or any(v is not None for v in hosts.values()):
        data["hosts"], needs_poc = host_groups(**hosts)
        if needs_poc and fields.get("weights_source") is None:
            data["weights_source"] = "poc"  # a PoC strategy only means something in a PoC stage
    if data.get("fidelity") == "real" and "mix" not in data and str(data.get("preset", "tiny")).startswith("tiny"):
        data["mix"] = TINY_MIX
    return NetworkParams.model_validate(data)


def check_run(p: NetworkParams, out: Path, db: str | None) -> None:
    """Everything `network run` can refuse, before any flow starts or anything is written: a used
    --out, a real run without threshold, an unusable database, an unknown deviation."""
    from models.io import check_out_dir

    check_out_dir(out)  # a new or empty --out only: earlier epochs, hosts and params are never replaced
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

        make_engine(db).dispose()
    if p.fidelity == "surrogate":
        backend = p.surrogate_backend()
        for g in p.hosts:
            if g.deviation:
                backend.check_deviation(g.deviation)


@net.command("run")
def run(
    run_dir: RunDir = None,
    fidelity: Annotated[Optional[Fidelity], typer.Option(help="surrogate (scores from run_dir; default) or real "
                                                              "(runs the models)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="epochs [default: 2]")] = None,
    requests: Requests = None,
    blocks: Annotated[Optional[int], typer.Option(help="blocks per epoch (Gonka 17,280; compressed) "
                                                       "[default: 100]")] = None,
    honest: Honest = None,
    malicious: Malicious = None,
    deviation: Annotated[Optional[str], typer.Option(help="malign deviation the malicious hosts use "
                                                          "[default: steps:2]")] = None,
    cheat_rate: Annotated[Optional[float], typer.Option(help="share of their requests malicious hosts cheat on "
                                                             "(0..1) [default: 0.5]")] = None,
    policy: Policy = None,
    metric: Metric = None,
    threshold: Threshold = None,
    preset: Annotated[Optional[str], typer.Option(help="model preset (real fidelity: tiny on a CPU)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="run seed [default: 0]")] = None,
    sampling_hash: Annotated[Optional[SamplingHash], typer.Option(help="sha256 (Gonka) or splitmix64 (fast)")] = None,
    score_draw: ScoreDrawOpt = None,
    weights_source: Annotated[Optional[WeightsSource], typer.Option(
        "--weights-source", "--weights", help="epoch weights: capacity (default) or poc (a sim.poc stage each epoch; implied by "
        "--poc-strategy/--poc-cheaters)")] = None,
    poc_fidelity: Annotated[Optional[Fidelity], typer.Option(help="PoC stage fidelity: surrogate (default) or "
                                                                  "real")] = None,
    poc_strategy: Annotated[Optional[str], typer.Option(help="PoC strategy of the malicious hosts (honest, fp8, "
                                                             "int4, one-expert, fabricate:F, inflate:X, duplicate:K, "
                                                             "copy:HOST)")] = None,
    poc_cheaters: Annotated[Optional[int], typer.Option(help="of the honest hosts, how many cheat in the PoC "
                                                             "stage only [default: 0]")] = None,
    poc_cheat: Annotated[Optional[str], typer.Option(help="PoC strategy of those hosts (default inflate:2)")] = None,
    poc_nonces: Annotated[Optional[int], typer.Option(help="nonces per PoC stage for a host of the reference "
                                                           "speed (default 1000)")] = None,
    db: Annotated[Optional[str], typer.Option(help="database URL or SQLite path (default OUT/chain.db)")] = None,
    out: Annotated[Path, typer.Option(help="output directory (new or empty)")] = RUNS / "network",
    config: Config = None,
    allow_plugin: AllowPlugin = None,
):
    """Run epochs and print the per-epoch table (also Prefect artifacts, Parquet under OUT)."""
    from models.deviations import allow_plugins

    hosts = dict(honest=honest, malicious=malicious, deviation=deviation, cheat_rate=cheat_rate,
                 poc_cheaters=poc_cheaters, poc_cheat=poc_cheat, poc_strategy=poc_strategy)
    with allow_plugins(allow_plugin or ()):
        p = network_params(config, hosts, run_dir=run_dir and str(run_dir), fidelity=fidelity, epochs=epochs,
                           requests_per_epoch=requests, blocks_per_epoch=blocks, policy=policy, metric=metric,
                           threshold=threshold, seed=seed, preset=preset, sampling_hash=sampling_hash,
                           weights_source=weights_source, poc_fidelity=poc_fidelity, poc_nonces=poc_nonces,
                           score_draw=score_draw)
        check_run(p, out, db)
        from flows.network import network_flow
        from flows.server import temporary_server

        with temporary_server():
            res = network_flow(p, str(out), db)
    show(*result_tables(res), f"{res['blocks']} blocks, {res['messages']} messages in {res['seconds']:.1f} s; "
         f"tables in {out}")


def result_tables(res: dict) -> list:
    """The per-epoch table, and the PoC stages' per strategy when the weights came from them."""
    items = [df_table(res["epochs"], "Per-epoch results", EPOCH_COLUMNS)]
    if res.get("poc") is not None:
        poc = res["poc"].groupby(["epoch", "poc_strategy"]).agg(
            hosts=("host", "count"), accepted=("accepted", "sum"), mean_weight=("weight", "mean")).reset_index()
        items.append(df_table(poc, "PoC stage per epoch and strategy"))
    return items


@net.command("economics")
def economics(
    run_dir: Annotated[Path, typer.Option(help="experiment run directory")],
    requests: Requests = None,
    honest: Honest = None,
    malicious: Malicious = None,
    policy: Policy = None,
    metric: Metric = None,
    threshold: Threshold = None,
    score_draw: ScoreDrawOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="also write the table as Parquet")] = None,
):
    """Per cheating strategy: compute saving, catch chance per epoch, expected profit vs honest."""
    from models.io import check_out_file
    from sim.network.economics import largest_undetected, setting_from, strategy_table

    count = (HOST_DEFAULTS["honest"] if honest is None else honest) + \
        (HOST_DEFAULTS["malicious"] if malicious is None else malicious)
    p = NetworkParams(run_dir=str(run_dir), hosts=(ExecutorGroup(count=count),), **given(
        requests_per_epoch=requests, policy=policy, metric=metric, threshold=threshold, score_draw=score_draw))
    if out:
        check_out_file(out)
    b = p.surrogate_backend()
    tab = strategy_table({d: b.fail_rate(d) for d in b.malign}, b.executor_share, b.fail_rate(None), p.chain,
                         setting_from(p), undetected=largest_undetected(run_dir))
    if out:
        from models.io import write_parquet_atomic

        write_parquet_atomic(out, tab)
    show(df_table(tab, f"Does cheating pay? ({b.policy}/{b.metric}, threshold {b.threshold:.4g})",
                  ["strategy", "cheat_rate", "compute_saving", "q_fail", "p_checked", "p_invalid_epoch",
                   "profit_ngonka", "gain_vs_honest_ngonka", "pays"]))


@net.command("sweep")
def sweep(
    run_dir: Annotated[Path, typer.Option(help="experiment run directory")],
    out: Annotated[Path, typer.Option(help="output Parquet")] = RUNS / "network" / "sweep.parquet",
    requests: Requests = None,
    hosts: Annotated[int, typer.Option(help="hosts")] = 10,
    policy: Policy = None,
    metric: Metric = None,
):
    """Sweep sampling rate x threshold x slash fraction: where cheating stops paying (Parquet)."""
    import pandas as pd

    from flows.network import sweep_flow
    from flows.server import temporary_server
    from models.io import check_out_file

    params = NetworkParams.model_validate(dict(run_dir=str(run_dir), hosts=[dict(count=hosts)], **given(
        requests_per_epoch=requests, policy=policy, metric=metric)))
    params.surrogate_backend()  # refused before the flow starts
    check_out_file(out)
    with temporary_server():
        path = sweep_flow(params, str(out))
    rows = pd.read_parquet(path)
    summary = rows.groupby(["strategy", "reward_share"])["pays"].mean().reset_index()
    summary = summary.rename(columns={"pays": "share_of_grid_where_it_pays"})
    show(df_table(summary, f"Sweep ({len(rows)} rows) -> {path}"))


def register(app: typer.Typer) -> None:
    from flows.cli_pricing import calibrate, fairness

    # the pricing commands' old place (`t2vsim pricing ...` now), kept for old scripts
    net.command("calibrate", hidden=True)(calibrate)
    net.command("fairness", hidden=True)(fairness)
    app.add_typer(net, name="network")



