"""Does cheating pay? Per strategy: compute saving, chance of being caught per epoch, expected
profit against honest work; and a sweep over sampling rate, threshold and slash fraction.

The model of one epoch for one host that receives `requests` requests and cheats on a share `r`:

- a request is checked by validator v with Gonka's probability P_v (sim/chain/rules.py); with n
  equal-weight validators, P(checked) = 1 - (1 - P)^(n-1);
- one validation fails with the measured rate q (malign rows of the experiment above the
  threshold; honest work: the benign rows' rate, i.e. the false-reject rate);
- a failed validation opens a vote: the reporter and a committee of k; the work is invalidated
  when the failing weight exceeds the quorum (equal weights). With `correlated=True` (the
  surrogate's default `score_draw="per_inference"`: every validator of an inference sees the same
  measured score) the committee fails exactly when the reporter did, so P(invalidated) =
  P(checked) x q; with `correlated=False` each member fails independently with q;
- invalidated work earns nothing (refunded); the sequence of checked outcomes runs through the
  consecutive rule and the SPRT (Monte Carlo, `trials` paths); INVALID stops the host's work for
  the rest of the epoch, forfeits its epoch reward and slashes its collateral;
- compute costs `gpu_cost_ngonka_per_second` per GPU-second, times the deviation's measured
  compute share on cheated work.

Expected profit = paid revenue + reward - compute - slash. A strategy "pays" when its expected
profit exceeds the honest host's.

A cheated inference fails a validation with probability max(q_cheat, q_honest): the experiment
measures a malign deviation on the validator's own hardware, without the hardware differences
that make honest work fail at q_honest, but a cheater's work crosses hardware too. (Without this
floor a deviation that saves nothing but is never failed would "pay" by escaping the false
rejections honest work suffers.) Multi-epoch effects (reputation reset raising later sampling)
make cheating worse still and are left to the simulation (`run_network`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy.stats import binom

from sim.chain import rules
from sim.chain.params import ChainParams


@dataclass(frozen=True)
class Setting:
    """What a host faces in one epoch."""

    hosts: int = 10
    requests: int = 100  # requests this host receives per epoch
    traffic: int = 1_000  # requests on the network per epoch (sets MinAvg)
    reputation: int = 0
    revenue_per_request_ngonka: float = 258_000.0  # 2,582 units (480p, 81 f, 40 steps) x 100 ngonka
    gpu_seconds_per_request: float = 270.0  # docs/facts.md: 80 passes at 480p on an H100
    gpu_cost_ngonka_per_second: float = 478.0  # 50% of the revenue per GPU-second at the base price
    collateral_ngonka: float = 1e12
    reward_ngonka: float = 323_000e9 / 10  # the epoch reward split over `hosts` equal weights
    correlated: bool = True  # validators of one inference see one score (score_draw="per_inference")


def p_checked(chain: ChainParams, s: Setting) -> tuple[float, float]:
    """(per-validator probability, probability that at least one validator checks)."""
    target = rules.target_validators(s.reputation, s.traffic, chain)
    per = float(rules.validation_probability(target, 1.0, float(s.hosts), 1.0))
    return per, 1.0 - (1.0 - per) ** (s.hosts - 1)


def p_vote_invalid(q: float, chain: ChainParams) -> float:
    """P(the vote invalidates | the reporter failed it), committee members failing independently with q."""
    k = chain.vote_committee_size
    x = np.arange(k + 1)
    invalid = (1 + x) / (1 + k) > chain.vote_quorum
    return float(binom.pmf(x, k, q)[invalid].sum())


def p_invalidated(q: float, chain: ChainParams, s: Setting) -> float:
    """P(a request is invalidated) when one validation fails with probability q."""
    per, checked = p_checked(chain, s)
    if s.correlated:
        return checked * q
    p_any_fail = 1.0 - (1.0 - per * q) ** (s.hosts - 1)
    return p_any_fail * p_vote_invalid(q, chain)


def invalid_time(p_inv_given_checked: float, n_checked: int, chain: ChainParams, trials: int,
                 rng: np.random.Generator) -> tuple[float, float]:
    """Monte Carlo of the consecutive rule and the SPRT over `n_checked` checked outcomes.

    Returns (P(INVALID within the epoch), expected share of the epoch served before INVALID)."""
    if n_checked <= 0:
        return 0.0, 1.0
    up, down = rules.sprt_increments(chain)
    limit = rules.consecutive_limit(chain) or np.iinfo(np.int64).max
    llr = np.zeros(trials)
    consec = np.zeros(trials, dtype=np.int64)
    hit_at = np.full(trials, n_checked, dtype=np.int64)
    alive = np.ones(trials, bool)
    for step in range(n_checked):
        bad = rng.random(trials) < p_inv_given_checked
        llr = np.where(bad, llr + up, llr + down)
        consec = np.where(bad, consec + 1, 0)
        hit = alive & ((llr >= chain.sprt_llr_threshold) | (consec >= limit))
        hit_at[hit] = step + 1
        alive &= ~hit
        if chain.sprt_restart_on_accept:
            llr = np.where(llr <= -chain.sprt_llr_threshold, 0.0, llr)
        if not alive.any():
            break
    caught = ~alive
    return float(caught.mean()), float(np.mean(np.where(caught, hit_at / n_checked, 1.0)))


def expected_profit(q_cheat: float, q_honest: float, share: float, cheat_rate: float, chain: ChainParams,
                    s: Setting, trials: int = 2000, seed: int = 0) -> dict:
    """Expected one-epoch outcome of a host cheating on `cheat_rate` of its work (a cheated
    inference fails with max(q_cheat, q_honest): see the module docstring)."""
    rng = np.random.default_rng(seed)
    q_cheat = max(q_cheat, q_honest)
    per, checked = p_checked(chain, s)
    pi_cheat = p_invalidated(q_cheat, chain, s)
    pi_honest = p_invalidated(q_honest, chain, s)
    pi = cheat_rate * pi_cheat + (1 - cheat_rate) * pi_honest
    n_checked = int(round(s.requests * checked))
    p_inv_checked = min(1.0, pi / checked) if checked > 0 else 0.0
    p_invalid, served = invalid_time(p_inv_checked, n_checked, chain, trials, rng)
    work = s.requests * served
    fee = chain.validator_fee_fraction * checked * (1 - pi)  # share of paid work that goes to validators
    revenue = work * s.revenue_per_request_ngonka * (1 - pi) * (1 - fee)
    compute = work * s.gpu_seconds_per_request * s.gpu_cost_ngonka_per_second * (cheat_rate * share + 1 - cheat_rate)
    reward = s.reward_ngonka * (1 - p_invalid)
    slash = p_invalid * chain.slash_invalid_fraction * s.collateral_ngonka
    return dict(p_check_per_validator=per, p_checked=checked, p_invalidated_cheat=pi_cheat,
                p_invalidated_honest=pi_honest, p_invalid_epoch=p_invalid, served_share=served,
                revenue_ngonka=revenue, compute_ngonka=compute, reward_ngonka=reward, slash_ngonka=slash,
                profit_ngonka=revenue + reward - compute - slash)


def largest_undetected(run_dir) -> dict | None:
    """The cheat with the largest compute saving that the experiment's deployable validator does not
    detect (RUN/validator.json, written by sim/deployable.py), as {"strategy", "q_fail", "compute_share"}:
    its fail rate is the deployed rule's rejection rate of it on held-out prompts. None without one."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "validator.json"
    if not path.is_file():
        return None
    dep = json.loads(path.read_text())
    lu = (dep.get("adaptive") or {}).get("largest_undetected_saving")
    if not lu:
        return None
    return {"strategy": f"largest undetected saving ({lu['deviation']})", "q_fail": float(lu["reject_rate"]),
            "compute_share": 1.0 - float(lu["saving"])}


def strategy_table(fail_rates: dict[str, float], compute_shares: dict[str, float], benign_fail_rate: float,
                   chain: ChainParams, s: Setting, cheat_rates: Sequence[float] = (0.1, 0.5, 1.0),
                   trials: int = 2000, seed: int = 0, undetected: dict | None = None) -> "object":
    """One row per (strategy, cheat rate): saving, catch chance, profit vs honest, whether it pays.
    `undetected` (`largest_undetected`) adds the strategy a cheater who knows the deployed validator
    picks: the largest saving that rule does not detect, at the rule's rejection rate."""
    import pandas as pd

    if undetected:
        fail_rates = {**fail_rates, undetected["strategy"]: undetected["q_fail"]}
        compute_shares = {**compute_shares, undetected["strategy"]: undetected["compute_share"]}
    honest = expected_profit(benign_fail_rate, benign_fail_rate, 1.0, 0.0, chain, s, trials, seed)
    rows = [dict(strategy="honest", cheat_rate=0.0, compute_share=1.0, compute_saving=0.0,
                 q_fail=benign_fail_rate, **honest, gain_vs_honest_ngonka=0.0, pays=False)]
    for dev in sorted(fail_rates):
        for r in cheat_rates:
            out = expected_profit(fail_rates[dev], benign_fail_rate, compute_shares[dev], r, chain, s, trials, seed)
            gain = out["profit_ngonka"] - honest["profit_ngonka"]
            rows.append(dict(strategy=dev, cheat_rate=r, compute_share=compute_shares[dev],
                             compute_saving=r * (1 - compute_shares[dev]), q_fail=fail_rates[dev], **out,
                             gain_vs_honest_ngonka=gain, pays=bool(gain > 0)))
    return pd.DataFrame(rows)


def sweep(backend, chain: ChainParams, s: Setting, *, rate_multipliers: Iterable[float] = (0.1, 0.3, 1.0, 3.0),
          threshold_quantiles: Iterable[float] = (0.9, 0.99, 0.999, 1.0),
          slash_fractions: Iterable[float] = (0.0, 0.2, 0.5, 1.0), cheat_rates: Iterable[float] = (0.1, 0.5, 1.0),
          reward_shares: Iterable[float] = (1.0, 0.0), trials: int = 1000, seed: int = 0) -> "object":
    """Tidy rows over sampling rate x threshold x slash fraction x strategy x cheat rate.

    The threshold is a quantile of the benign scores (1.0 = the largest benign score: no false
    rejections); each strategy's fail rate is recomputed from its measured scores at that threshold.
    `reward_shares` scales the epoch reward (1.0 = Gonka's; 0.0 = fees only, i.e. after subsidies end)."""
    import pandas as pd

    rows = []
    benign = backend.benign
    for mult, tq, slash, rs in itertools.product(rate_multipliers, threshold_quantiles, slash_fractions, reward_shares):
        c = chain.model_copy(update={"validation_rate_multiplier": mult, "slash_invalid_fraction": slash})
        thr = float(np.quantile(benign[np.isfinite(benign)], tq))
        q_h = float(np.mean(benign > thr))
        st = Setting(**{**s.__dict__, "reward_ngonka": s.reward_ngonka * rs})
        honest = expected_profit(q_h, q_h, 1.0, 0.0, c, st, trials, seed)
        for dev in sorted(backend.malign):
            q = float(np.mean(backend.malign[dev] > thr))
            for r in cheat_rates:
                out = expected_profit(q, q_h, backend.executor_share[dev], r, c, st, trials, seed)
                gain = out["profit_ngonka"] - honest["profit_ngonka"]
                rows.append(dict(rate_multiplier=mult, threshold_quantile=tq, threshold=thr, slash_fraction=slash,
                                 reward_share=rs, strategy=dev, cheat_rate=r, q_fail=q, q_false_reject=q_h,
                                 compute_share=backend.executor_share[dev], p_checked=out["p_checked"],
                                 p_invalid_epoch=out["p_invalid_epoch"], honest_p_invalid_epoch=honest["p_invalid_epoch"],
                                 profit_ngonka=out["profit_ngonka"], honest_profit_ngonka=honest["profit_ngonka"],
                                 gain_vs_honest_ngonka=gain, pays=bool(gain > 0)))
    return pd.DataFrame(rows)


def setting_from(params, backend=None, host_share: float | None = None) -> Setting:
    """A `Setting` matching a NetworkParams run: mean request of its mix, its host count and rules."""
    chain = params.chain
    pricing = chain.pricing
    shares = np.array([m.share for m in params.mix], float)
    shares /= shares.sum()
    units = np.array([pricing.units(width=m.width, height=m.height, frames=m.frames, steps=m.steps,
                                    guidance_high=m.guidance_high, guidance_low=m.guidance_low, shift=m.shift)
                      for m in params.mix])
    mean_units = float((units * shares).sum())
    price = chain.price_rule.base_unit_price_ngonka
    n = params.n_hosts
    share = host_share if host_share is not None else 1.0 / n
    gpu_s = mean_units * pricing.unit_seconds
    revenue_per_s = price / pricing.unit_seconds
    collateral = float(np.mean([g.collateral_gnk for g in params.hosts for _ in range(g.count)])) * 1e9
    return Setting(correlated=params.score_draw == "per_inference",
                   hosts=n, requests=max(1, int(round(params.requests_per_epoch * share))),
                   traffic=params.requests_per_epoch, reputation=0, revenue_per_request_ngonka=mean_units * price,
                   gpu_seconds_per_request=gpu_s, gpu_cost_ngonka_per_second=params.gpu_cost_fraction * revenue_per_s,
                   collateral_ngonka=collateral, reward_ngonka=chain.epoch_reward_ngonka(0) * share)
