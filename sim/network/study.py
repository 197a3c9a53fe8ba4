"""Protocol-parameter studies: which cheats pay over a grid of (sampling rate x slash fraction x
threshold), answered twice per grid point, by the closed form of sim/network/economics.py and by
real network epochs on the mock chain, side by side.

The evidence comes from an experiment run directory (`Evidence`):

- `source="scores"`: the run's scores.parquet for one policy and metric. The threshold axis is a
  list of quantiles of the honest (benign) scores; at each threshold a cheat's fail rate is the
  share of its measured scores above it (k of n, with Clopper-Pearson bounds) and the honest
  false-reject rate (FRR) the share of benign scores above it. The simulated epochs draw their
  validation scores from the same rows (sim/network/backends.py `SurrogateBackend`).
- `source="deployable"`: the deployable validator of sim/deployable.py (RUN/validator.json): each
  cheat's rejection rate on held-out prompts and the rule's FRR, with their bounds. The rule has one
  fitted threshold, so the threshold axis has one point (`deployed`); the simulated epochs draw
  pass/fail from those rates (`RatesBackend`).
- `source="at_scale"`: a rule of the GPU measurements at scale (sim/at_scale.py; `run_dir` is a
  directory with `at_scale.json`, as written by benchmarks/at_scale_report.py, and its `*.jsonl`
  generations): each cheat family's rejection rate under the rule (1 - its FAR, k of n) and the
  rule's FRR, for one preset and size; one threshold (`deployed`, the rule's); compute shares from
  the generations, the validator's share from the rule's replay cost. Drawn like `deployable`.

Two views of every cheat: the measured one (point estimates) and the conservative one, which takes
the upper bound of the cheat's false-accept rate (FAR = 1 - fail rate; so its fail rate at the lower
bound) and the upper bound of the honest FRR. A cheat "pays" at a point when its expected profit
per epoch exceeds the honest host's. The cheapest safe parameter set is the grid point with the
lowest sampling rate (then the lowest slash fraction, then the highest threshold) where no cheat
pays in the conservative closed form nor in the simulation and the honest executor's false-slash
risk (P(INVALID) per epoch) is at most `false_slash_target` in both.

A simulated cheat pays when its hosts' mean profit exceeds the honest hosts' by more than two
standard errors of that difference (a few hosts' epochs are noisy: an honest host slashed by bad luck
would otherwise make a cheat that saves nothing "pay"). Profit per host and epoch in the simulation: payments + epoch rewards - slashed collateral - GPU
cost of its own executions (the closed form's terms; validator fees and validation compute, which
honest and cheating hosts share alike, are left out of both).

No Prefect here: flows/study.py fans the points out (Ray, or processes) and writes the report.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.request import no_bool

SCHEMA = 1


class StudyError(ValueError):
    """A study's inputs or output directory are not usable (the message names the field)."""


class StudyParams(BaseModel):
    """One study: the evidence, the grid and the network each grid point runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    run_dir: str = Field(description="experiment run directory (scores.parquet, thresholds.json; validator.json "
                         "for source='deployable')")
    source: Literal["scores", "deployable", "at_scale"] = Field(
        "scores", description="scores: the run's scores of `policy`; deployable: the deployable validator's rule "
        "(validator.json); at_scale: a rule of the GPU measurements at scale (at_scale.json)")
    at_scale_rule: str = Field("full-final-pinned", description="rule of at_scale.json (source='at_scale')")
    at_scale_preset: str = Field("a14b-random", description="preset of the at-scale rule (source='at_scale')")
    at_scale_size: str = Field("256x256x5", description="WxHxF size of the at-scale rule (source='at_scale')")
    policy: str = Field("full", description="validation policy of the scores (source='scores')")
    metric: Optional[str] = Field(None, description="metric of the policy (None: the only one, or its primary)")
    score_split: Literal["test", "calib", "all"] = Field("test", description="rows of scores.parquet to use")
    benign_eps: str = Field("run", description="which emulated-hardware-noise rows count as honest (see "
                            "NetworkParams.benign_eps)")
    rate_multipliers: tuple[float, ...] = Field((0.1, 0.3, 1.0, 3.0, 10.0), min_length=1, description="sampling "
                                                "rate: ChainParams.validation_rate_multiplier (1 = Gonka)")
    slash_fractions: tuple[float, ...] = Field((0.0, 0.05, 0.2, 0.5, 1.0), min_length=1,
                                               description="collateral slashed on INVALID (Gonka 0.2)")
    threshold_quantiles: tuple[float, ...] = Field((0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0),
                                                   min_length=1, description="threshold as a quantile of the honest "
                                                   "scores (1.0: the largest; source='scores' only)")
    cheats: Optional[tuple[str, ...]] = Field(None, description="malign deviations to study (None: every measured one)")
    cheat_rate: float = Field(1.0, gt=0, le=1, description="share of its requests a cheating host cheats on")
    honest_hosts: int = Field(16, ge=2, le=10_000, description="honest hosts of each simulated network")
    hosts_per_cheat: int = Field(2, ge=1, le=1_000, description="cheating hosts per cheat in each simulated network")
    epochs: int = Field(2, ge=1, le=100, description="simulated epochs per grid point")
    requests_per_epoch: int = Field(2_000, ge=10, le=10_000_000, description="requests per simulated epoch")
    blocks_per_epoch: int = Field(30, ge=10, le=100_000, description="blocks per simulated epoch")
    reward_share: float = Field(1.0, ge=0, le=1, description="epoch reward as a share of Gonka's (0: fees only)")
    collateral_gnk: float = Field(1_000.0, ge=0, description="collateral per host (GNK)")
    false_slash_target: float = Field(0.01, ge=0, le=1, description="largest honest P(INVALID) per epoch the "
                                      "cheapest safe parameter set may have")
    trials: int = Field(2_000, ge=10, le=1_000_000, description="Monte Carlo paths of the closed form's SPRT")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of the rates' intervals")
    seed: int = Field(0, ge=0)

    _no_bool = field_validator("honest_hosts", "hosts_per_cheat", "epochs", "requests_per_epoch", "blocks_per_epoch",
                               "trials", "seed", "cheat_rate", "reward_share", "collateral_gnk",
                               "false_slash_target", mode="before")(no_bool)

    @field_validator("rate_multipliers")
    @classmethod
    def _rates(cls, v):
        if any(not x > 0 for x in v):
            raise ValueError(f"every sampling rate multiplier must be > 0, got {list(v)}")
        return tuple(sorted(set(v)))

    @field_validator("slash_fractions")
    @classmethod
    def _slash(cls, v):
        if any(not 0 <= x <= 1 for x in v):
            raise ValueError(f"every slash fraction must be in [0, 1], got {list(v)}")
        return tuple(sorted(set(v)))

    @field_validator("threshold_quantiles")
    @classmethod
    def _tq(cls, v):
        if any(not 0 < x <= 1 for x in v):
            raise ValueError(f"every threshold quantile must be in (0, 1], got {list(v)}")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _check(self) -> "StudyParams":
        if not Path(self.run_dir).expanduser().is_dir():
            raise ValueError(f"run_dir {self.run_dir!r} does not exist (an experiment run directory is needed)")
        return self

    def key(self) -> str:
        """Hash of everything that decides a point's result (the output directory is bound to it)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class Rate(BaseModel):
    """k of n, with exact bounds."""

    model_config = ConfigDict(frozen=True)
    k: int
    n: int
    rate: float
    lo: float
    hi: float

    @classmethod
    def of(cls, k: int, n: int, level: float) -> "Rate":
        from sim.stats import clopper_pearson

        if n <= 0:
            raise StudyError("a rate needs at least one measurement (n = 0)")
        lo, hi = clopper_pearson(k, n, level)
        return cls(k=int(k), n=int(n), rate=k / n, lo=float(lo), hi=float(hi))


class Evidence(BaseModel):
    """Per threshold: every cheat's fail rate and the honest FRR (a validation's rejection rates)."""

    model_config = ConfigDict(frozen=True)
    source: str
    run_dir: str
    policy: str
    metric: str
    thresholds: dict[str, float]  # threshold label -> absolute threshold (NaN-free; the deployed rule: 0)
    fail: dict[str, dict[str, Rate]]  # threshold label -> cheat -> rejection rate of its claims
    frr: dict[str, Rate]  # threshold label -> honest false-reject rate
    compute_share: dict[str, float]  # cheat -> executor compute relative to honest work
    validator_share: float = 1.0
    note: str = ""

    @property
    def cheats(self) -> list[str]:
        return sorted(self.compute_share)


def tq_label(q: float) -> str:
    return f"q{q:g}"


def evidence(p: StudyParams) -> Evidence:
    """The rates the study runs on, from the run directory (see the module docstring)."""
    from sim.network.backends import RunDirError, SurrogateBackend

    if p.source == "deployable":
        return _deployable_evidence(p)
    if p.source == "at_scale":
        return _at_scale_evidence(p)
    try:
        b = SurrogateBackend(p.run_dir, p.policy, p.metric, None, p.score_split,
                             None if p.benign_eps == "none" else p.benign_eps)
    except RunDirError as err:
        raise StudyError(str(err)) from None
    cheats = _chosen(p, sorted(b.malign))
    benign = b.benign[np.isfinite(b.benign)]
    thresholds, fail, frr = {}, {}, {}
    for q in p.threshold_quantiles:
        lab = tq_label(q)
        thr = float(np.quantile(benign, q))
        thresholds[lab] = thr
        frr[lab] = Rate.of(int(np.sum(b.benign > thr)), len(b.benign), p.level)
        fail[lab] = {d: Rate.of(int(np.sum(b.malign[d] > thr)), len(b.malign[d]), p.level) for d in cheats}
    return Evidence(source="scores", run_dir=str(p.run_dir), policy=b.policy, metric=str(b.metric),
                    thresholds=thresholds, fail=fail, frr=frr,
                    compute_share={d: float(b.executor_share[d]) for d in cheats},
                    validator_share=float(b.validator_share),
                    note=f"{len(b.benign)} honest rows, {len(cheats)} cheats ({p.score_split} split)")


def _chosen(p: StudyParams, measured: list[str]) -> list[str]:
    if p.cheats is None:
        if not measured:
            raise StudyError(f"run_dir {p.run_dir!r}: no malign deviation was measured; nothing to study")
        return measured
    unknown = [c for c in p.cheats if c not in measured]
    if unknown:
        raise StudyError(f"cheats: {unknown} were not measured in {p.run_dir}; allowed: {measured}")
    return sorted(set(p.cheats))


def _deployable_evidence(p: StudyParams) -> Evidence:
    path = Path(p.run_dir).expanduser() / "validator.json"
    if not path.is_file():
        raise StudyError(f"run_dir {p.run_dir!r} has no validator.json (source='deployable' needs an experiment "
                         "run with the deployable validator)")
    try:
        dep = json.loads(path.read_text())
        per = {r["deviation"]: r for r in dep["per_deviation"] if r.get("class") == "malign"}
        frr = dep["table"]["frr"]
        frr_rate = Rate.of(int(frr["k"]), int(frr["n"]), p.level)
        cfg = dep.get("config", {})
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise StudyError(f"{path}: not a deployable validator summary ({type(err).__name__}: {err})") from None
    cheats = _chosen(p, sorted(per))
    lab = "deployed"
    fail = {lab: {d: Rate.of(int(per[d]["rejected"]), int(per[d]["n"]), p.level) for d in cheats}}
    share = {d: float(per[d].get("executor_share", 1.0 - float(per[d].get("saving", 0.0)))) for d in cheats}
    return Evidence(source="deployable", run_dir=str(p.run_dir), policy="deployable",
                    metric=str(cfg.get("metric", "")), thresholds={lab: 0.0}, fail=fail, frr={lab: frr_rate},
                    compute_share=share, validator_share=float(dep["table"].get("validator_share", 1.0) or 1.0),
                    note=f"deployable rule: {cfg.get('challenged', '?')} of {cfg.get('segments', '?')} segments, "
                         f"FRR target {cfg.get('frr_target', '?')}")


def _replay_share(compute: str, challenged: float, steps: float) -> float:
    """A rule's validator compute relative to the generation: "1" (full replay), "|K|/N" (one step
    at each of |K| checkpoints of N), "2|K|/N" (two per checkpoint)."""
    per = {"1": None, "|K|/N": 1.0, "2|K|/N": 2.0}
    if compute not in per:
        raise StudyError(f"at_scale rule compute {compute!r} is not one of {sorted(per)}")
    return 1.0 if per[compute] is None else min(1.0, per[compute] * challenged / steps)


def _at_scale_shares(root: Path, p: StudyParams, cheats: list[str]):
    """From the run's generation lines: each cheat's executor compute shares (an adapted cheat's
    by its config, the others' by family), and the canonical runs' challenged steps and steps."""
    share: dict[str, list[float]] = {d: [] for d in cheats}
    challenged, steps = [], []
    for gen_path in sorted(root.glob("*.jsonl")):
        for line in gen_path.read_text().splitlines():
            g = json.loads(line) if line.strip() else None
            if not g or g.get("preset") != p.at_scale_preset or \
                    f"{g['width']}x{g['height']}x{g['frames']}" != p.at_scale_size:
                continue
            key = g["config"] if g.get("adapted") else g["config"].split(":", 1)[0]
            if g.get("kind") == "malign" and key in share:
                share[key].append(float(g["compute_share"]))
            if g.get("kind") == "canonical":
                challenged.append(len(g.get("local", [])))
                steps.append(int(g["steps"]))
    return share, challenged, steps


def _at_scale_evidence(p: StudyParams) -> Evidence:
    root = Path(p.run_dir).expanduser()
    path = root / "at_scale.json"
    if not path.is_file():
        raise StudyError(f"run_dir {p.run_dir!r} has no at_scale.json (source='at_scale' needs the directory of "
                         "benchmarks/at_scale_report.py's output)")
    try:
        rules = json.loads(path.read_text())["rules"]
        found = [r for r in rules if (r["preset"], r["size"], r["rule"]) ==
                 (p.at_scale_preset, p.at_scale_size, p.at_scale_rule)]
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise StudyError(f"{path}: not an at-scale summary ({type(err).__name__}: {err})") from None
    if not found:
        have = sorted({f"{r['preset']} {r['size']} {r['rule']}" for r in rules})
        raise StudyError(f"at_scale_rule/at_scale_preset/at_scale_size: no rule {p.at_scale_rule!r} for "
                         f"{p.at_scale_preset} {p.at_scale_size} in {path}; allowed: {have}")
    rule = found[0]
    # the cheats the rule was built against, by family, and those that know it (plan key `adapted`), by config
    far = {**rule["far_per_family"], **rule.get("far_adapted_per_config", {})}
    cheats = _chosen(p, sorted(f for f, (_, n) in far.items() if n > 0))
    share, challenged, steps = _at_scale_shares(root, p, cheats)
    missing = [d for d in cheats if not share[d]]
    if missing or not steps:
        raise StudyError(f"run_dir {p.run_dir!r}: no generations of {missing or 'the canonical config'} for "
                         f"{p.at_scale_preset} {p.at_scale_size} in its *.jsonl files")
    lab = "deployed"
    fail = {lab: {d: Rate.of(int(far[d][1]) - int(far[d][0]), int(far[d][1]), p.level) for d in cheats}}
    frr = Rate.of(int(rule["frr"][0]), int(rule["frr"][1]), p.level)
    return Evidence(source="at_scale", run_dir=str(p.run_dir), policy=rule["rule"], metric=rule.get("statistic", ""),
                    thresholds={lab: float(rule.get("threshold") or 0.0)}, fail=fail, frr={lab: frr},
                    compute_share={d: float(np.mean(share[d])) for d in cheats},
                    validator_share=_replay_share(rule["compute"], float(np.median(challenged)),
                                                  float(np.median(steps))),
                    note=f"{rule.get('description', rule['rule'])}; {p.at_scale_preset} {p.at_scale_size}, "
                         f"{rule['frr'][1]} honest and {rule['far'][1]} cheat claims")


# ---------------------------------------------------------------------------------------------
# The grid


def grid(p: StudyParams, ev: Evidence) -> list[dict]:
    """Every point: index, sampling rate multiplier, slash fraction, threshold label and value."""
    labels = list(ev.thresholds)
    pts = []
    for tl in labels:
        for r in p.rate_multipliers:
            for s in p.slash_fractions:
                pts.append(dict(index=len(pts), rate_multiplier=r, slash_fraction=s, threshold_label=tl,
                                threshold=ev.thresholds[tl]))
    return pts


def point_name(point: dict) -> str:
    return f"point-{point['index']:05d}.json"


def network_params(p: StudyParams, ev: Evidence, point: dict):
    """The NetworkParams of one grid point: honest hosts and `hosts_per_cheat` per cheat."""
    from sim.chain.params import ChainParams
    from sim.network import ExecutorGroup, NetworkParams

    base = NetworkParams.model_fields["chain"].default_factory()
    chain: ChainParams = base.model_copy(update={
        "validation_rate_multiplier": point["rate_multiplier"], "slash_invalid_fraction": point["slash_fraction"],
        "epoch_reward_gnk": base.epoch_reward_gnk * p.reward_share})
    hosts = [ExecutorGroup(count=p.honest_hosts, collateral_gnk=p.collateral_gnk)]
    for d in ev.cheats:
        hosts.append(ExecutorGroup(count=p.hosts_per_cheat, strategy="malicious", deviation=d, cheat_rate=p.cheat_rate,
                                   collateral_gnk=p.collateral_gnk))
    kw = dict(run_dir=p.run_dir, policy=p.policy, metric=ev.metric or None, score_split=p.score_split,
              benign_eps=p.benign_eps, seed=p.seed + point["index"], epochs=p.epochs,
              requests_per_epoch=p.requests_per_epoch, blocks_per_epoch=p.blocks_per_epoch, hosts=tuple(hosts),
              sampling_hash="splitmix64", chain=chain)
    if ev.source == "scores":
        kw["threshold"] = point["threshold"]
    else:
        kw["policy"], kw["metric"] = "full", None  # unused: the RatesBackend replaces the scores
    return NetworkParams(**kw)


class RatesBackend:
    """Validation outcomes drawn from rates (the deployable validator's): an inference of deviation d
    fails with probability fail[d], honest work with `frr`; one keyed draw per inference, so every
    validator of it agrees (as `score_draw='per_inference'`). Scores are 1.0 (fail) or 0.0."""

    threshold = 0.5
    reads_requests = False

    def __init__(self, fail: dict[str, float], frr: float, compute_share: dict[str, float],
                 validator_share: float = 1.0):
        self.fail, self.frr, self.executor_share = dict(fail), float(frr), dict(compute_share)
        self.validator_share = float(validator_share)
        self._salt: int | None = None

    def check_deviation(self, deviation: str) -> None:
        if deviation not in self.fail:
            raise StudyError(f"deviation {deviation!r} has no measured rate; allowed: {sorted(self.fail)}")

    def execute(self, inference_ids, requests, deviations):
        from sim.network.backends import Execution

        shas = [hashlib.sha256(f"rates:{i}:{d or ''}".encode()).hexdigest() for i, d in zip(inference_ids, deviations)]
        return Execution(shas, np.array([1.0 if d is None else self.executor_share[d] for d in deviations], float))

    def validate(self, inference_ids, deviations, validators, rng):
        from sim.network.backends import keyed_uniforms

        if self._salt is None:
            self._salt = int(rng.integers(0, 2**62))
        u = keyed_uniforms(self._salt, list(inference_ids))
        q = np.array([self.frr if d is None else self.fail[d] for d in deviations], float)
        failed = u < q
        return failed.astype(float), ~failed


# ---------------------------------------------------------------------------------------------
# One point: closed form and simulation


def closed_form(p: StudyParams, ev: Evidence, point: dict, params=None) -> dict:
    """Expected one-epoch profit of honest work and of each cheat (measured and conservative).

    The chain pays the epoch reward to the hosts still active at the epoch's end, by weight, so an
    invalidated host's share goes to the others: each view is solved twice, the second time with
    the reward scaled by the expected active share of the network from the first."""
    from sim.network.economics import setting_from

    params = params or network_params(p, ev, point)
    s = setting_from(params)
    out = {}
    for view in ("measured", "conservative"):
        first = _view_profits(p, ev, point, params.chain, s, view)
        active = (p.honest_hosts * (1 - first[f"honest_{view}"]["p_invalid_epoch"]) + p.hosts_per_cheat * sum(
            1 - first[f"{d}_{view}"]["p_invalid_epoch"] for d in ev.cheats)) / (p.honest_hosts + p.hosts_per_cheat * len(ev.cheats))
        scaled = type(s)(**{**s.__dict__, "reward_ngonka": s.reward_ngonka / max(active, 1e-9)})
        out.update(_view_profits(p, ev, point, params.chain, scaled, view, active_share=active))
    return out


def _view_profits(p: StudyParams, ev: Evidence, point: dict, chain, s, view: str, active_share: float = 1.0) -> dict:
    """One view's expected profits: `measured` (the rates as measured) or `conservative` (each
    cheat's FAR and the honest FRR at their upper bounds)."""
    from sim.network.economics import expected_profit

    frr = ev.frr[point["threshold_label"]]
    q_h = frr.rate if view == "measured" else frr.hi
    honest = expected_profit(q_h, q_h, 1.0, 0.0, chain, s, p.trials, p.seed)
    out = {f"honest_{view}": dict(profit_gnk=honest["profit_ngonka"] / 1e9, p_invalid_epoch=honest["p_invalid_epoch"],
                                  frr=q_h, active_share=active_share)}
    for d in ev.cheats:
        r = ev.fail[point["threshold_label"]][d]
        q = r.rate if view == "measured" else r.lo  # conservative: FAR at its upper bound
        o = expected_profit(q, q_h, ev.compute_share[d], p.cheat_rate, chain, s, p.trials, p.seed)
        gain = (o["profit_ngonka"] - honest["profit_ngonka"]) / 1e9
        out[f"{d}_{view}"] = dict(profit_gnk=o["profit_ngonka"] / 1e9, gain_gnk=gain, pays=bool(gain > 0),
                                  p_invalid_epoch=o["p_invalid_epoch"], fail_rate=q, far=1 - q)
    return out


def simulate(p: StudyParams, ev: Evidence, point: dict, db_dir: str | None = None) -> dict:
    """Run the point's network and measure each group's profit per host and epoch, and P(INVALID)."""
    from sim.network.epoch import NetworkSimulation

    params = network_params(p, ev, point)
    backend = None
    if ev.source in ("deployable", "at_scale"):
        tl = point["threshold_label"]
        backend = RatesBackend({d: ev.fail[tl][d].rate for d in ev.cheats}, ev.frr[tl].rate, ev.compute_share,
                               ev.validator_share)
    with tempfile.TemporaryDirectory(prefix="t2vsim-study-", dir=db_dir) as tmp:
        sim = NetworkSimulation(params, f"sqlite:///{Path(tmp) / 'chain.db'}", backend=backend)
        res = sim.run()
    chain = params.chain
    cost_per_s = params.gpu_cost_fraction * chain.price_rule.base_unit_price_ngonka / chain.pricing.unit_seconds
    hosts = res.hosts
    profit = (hosts["payments_ngonka"] + hosts["rewards_ngonka"] - hosts["slashed_ngonka"]
              - hosts["compute_seconds"] * cost_per_s) / p.epochs / 1e9
    invalid = {}
    for ep, pid in sim.invalid_events:
        invalid[pid] = invalid.get(pid, 0) + 1
    out = {"seconds": res.seconds, "messages": res.messages, "blocks": res.blocks}
    names = ["honest"] + ev.cheats
    for gi, name in enumerate(names):
        sel = hosts["group"] == gi
        ids = hosts.loc[sel, "host"].tolist()
        out[name] = dict(profit_gnk=float(profit[sel].mean()), hosts=len(ids),
                         p_invalid_epoch=sum(invalid.get(h, 0) for h in ids) / (len(ids) * p.epochs),
                         checked=int(hosts.loc[sel, "checked"].sum()), invalidated=int(hosts.loc[sel, "invalidated"].sum()))
    var = {}
    for gi, name in enumerate(names):
        x = profit[hosts["group"] == gi].to_numpy(float)
        var[name] = float(np.var(x, ddof=1)) / len(x) if len(x) > 1 else 0.0
    for d in ev.cheats:
        gain = out[d]["profit_gnk"] - out["honest"]["profit_gnk"]
        se = math.sqrt(var[d] + var["honest"])
        # a simulated cheat pays when its gain over honest hosts is positive beyond the noise of a few hosts'
        # epochs (two standard errors of the difference of the groups' mean profits)
        out[d].update(gain_gnk=gain, gain_se_gnk=se, pays=bool(gain > 0 and gain > 2 * se))
    return out


def run_point(p: StudyParams, ev: Evidence, point: dict, out_dir: str | Path) -> dict:
    """Closed form and simulation of one point, written atomically to OUT/points/ (returned)."""
    from models.io import write_json_atomic

    import time

    t0 = time.perf_counter()
    params = network_params(p, ev, point)
    cf = closed_form(p, ev, point, params)
    sim = simulate(p, ev, point)
    rec = dict(schema=SCHEMA, study=p.key(), point=point, closed_form=cf, simulated=sim,
               seconds=time.perf_counter() - t0)
    write_json_atomic(Path(out_dir) / "points" / point_name(point), _finite(rec))
    return rec


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------------------------------------
# The output directory: resumable per point


def prepare(p: StudyParams, out_dir: str | Path) -> tuple[Evidence, list[dict], list[dict]]:
    """Bind `out_dir` to the study (study.json, evidence.json) and return (evidence, all points,
    points still to run). A directory of another study is refused; finished points are kept."""
    from models.io import write_json_atomic

    out = Path(out_dir)
    ev = evidence(p)
    pts = grid(p, ev)
    meta = out / "study.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text())
        except json.JSONDecodeError as err:
            raise StudyError(f"out: {meta} is not valid JSON ({err}); use another out") from None
        if old.get("key") != p.key():
            raise StudyError(f"out: {out} holds another study (key {old.get('key')} != {p.key()}); use a new out "
                             "to change the study's parameters")
    elif out.exists() and any(x for x in out.iterdir() if not x.name.startswith(".")):
        raise StudyError(f"out: {out} exists and is not a study directory; use a new or empty out")
    write_json_atomic(meta, dict(schema=SCHEMA, key=p.key(), params=json.loads(p.model_dump_json())))
    write_json_atomic(out / "evidence.json", _finite(json.loads(ev.model_dump_json())))
    todo = [pt for pt in pts if not _done(out, p, pt)]
    return ev, pts, todo


def _done(out: Path, p: StudyParams, pt: dict) -> bool:
    f = out / "points" / point_name(pt)
    if not f.is_file():
        return False
    try:
        rec = json.loads(f.read_text())
    except json.JSONDecodeError:
        return False  # a torn file cannot exist (atomic writes), but a hand-edited one is redone
    return rec.get("study") == p.key() and rec.get("point", {}).get("index") == pt["index"]


def load_points(out_dir: str | Path) -> list[dict]:
    out = Path(out_dir)
    meta = json.loads((out / "study.json").read_text())
    recs = []
    for f in sorted((out / "points").glob("point-*.json")):
        rec = json.loads(f.read_text())
        if rec.get("study") == meta["key"]:
            recs.append(rec)
    return recs


def table(recs: Sequence[dict], cheats: Sequence[str]):
    """Tidy rows: one per (point, cheat): closed form (measured, conservative) beside simulated."""
    import pandas as pd

    rows = []
    for rec in recs:
        pt, cf, sm = rec["point"], rec["closed_form"], rec["simulated"]
        for d in cheats:
            m, c, s = cf[f"{d}_measured"], cf[f"{d}_conservative"], sm[d]
            rows.append(dict(index=pt["index"], rate_multiplier=pt["rate_multiplier"],
                             slash_fraction=pt["slash_fraction"], threshold_label=pt["threshold_label"],
                             threshold=pt["threshold"], cheat=d, fail_rate=m["fail_rate"],
                             fail_rate_conservative=c["fail_rate"],
                             closed_gain_gnk=m["gain_gnk"], closed_pays=m["pays"],
                             conservative_gain_gnk=c["gain_gnk"], conservative_pays=c["pays"],
                             sim_gain_gnk=s["gain_gnk"], sim_gain_se_gnk=s["gain_se_gnk"], sim_pays=s["pays"],
                             gain_diff_gnk=s["gain_gnk"] - m["gain_gnk"],
                             closed_p_invalid=m["p_invalid_epoch"], sim_p_invalid=s["p_invalid_epoch"],
                             honest_closed_p_invalid=cf["honest_measured"]["p_invalid_epoch"],
                             honest_conservative_p_invalid=cf["honest_conservative"]["p_invalid_epoch"],
                             honest_sim_p_invalid=sm["honest"]["p_invalid_epoch"],
                             honest_closed_profit_gnk=cf["honest_measured"]["profit_gnk"],
                             honest_sim_profit_gnk=sm["honest"]["profit_gnk"]))
    return pd.DataFrame(rows)


def cheapest_safe(tab, false_slash_target: float) -> dict | None:
    """The cheapest grid point where no cheat pays (conservative closed form and simulation) and the
    honest false-slash risk is within the target (conservative closed form and simulation)."""
    if tab.empty:
        return None
    g = tab.groupby("index").agg(rate_multiplier=("rate_multiplier", "first"),
                                 slash_fraction=("slash_fraction", "first"),
                                 threshold_label=("threshold_label", "first"), threshold=("threshold", "first"),
                                 any_pays=("conservative_pays", "any"), any_sim_pays=("sim_pays", "any"),
                                 honest_risk=("honest_conservative_p_invalid", "max"),
                                 honest_sim_risk=("honest_sim_p_invalid", "max"))
    ok = g[~g["any_pays"] & ~g["any_sim_pays"] & (g["honest_risk"] <= false_slash_target)
           & (g["honest_sim_risk"] <= false_slash_target)]
    if ok.empty:
        return None
    ok = ok.assign(_tq=ok["threshold"]).sort_values(["rate_multiplier", "slash_fraction", "_tq"],
                                                    ascending=[True, True, False])
    best = ok.iloc[0]
    return dict(index=int(best.name), rate_multiplier=float(best["rate_multiplier"]),
                slash_fraction=float(best["slash_fraction"]), threshold_label=str(best["threshold_label"]),
                threshold=float(best["threshold"]), honest_false_slash=float(best["honest_risk"]),
                honest_sim_false_slash=float(best["honest_sim_risk"]), safe_points=int(len(ok)), points=int(len(g)))
