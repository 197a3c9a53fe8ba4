"""Network epochs on the mock chain, surrogate and real fidelity, the economics of cheating.

The surrogate tests use a synthetic experiment run directory (tests/network_fixtures.py: scores
drawn from chosen distributions, not measured)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from sim.chain import ChainParams, check_invariants, open_chain
from sim.network import (TINY_MIX, ExecutorGroup, NetworkParams, RunDirError, SurrogateBackend, poc_stage_weights,
                         run_network)
from sim.network.economics import p_checked, setting_from, strategy_table, sweep
from sim.network.epoch import splitmix_draws
from tests.network_fixtures import make_synthetic_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("synthetic") / "run")


def _params(run_dir, **kw):
    base = dict(run_dir=str(run_dir), epochs=2, requests_per_epoch=600, blocks_per_epoch=20,
                hosts=(ExecutorGroup(count=6), ExecutorGroup(count=2, strategy="malicious", deviation="steps:2",
                                                             cheat_rate=0.5)))
    base.update(kw)
    return NetworkParams(**base)


def test_surrogate_epochs_catch_cheats_and_keep_invariants(run_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    res = run_network(_params(run_dir), url)
    eng = open_chain(url)
    assert check_invariants(eng) == []
    ep = res.epochs
    assert list(ep["epoch"]) == [0, 1] and (ep["requests"] == 600).all()
    assert (ep["cheats_caught"] + ep["cheats_missed"] <= ep["cheats"]).all()
    assert ep["cheats_caught"].sum() > 0  # steps:2 fails every validation in the synthetic run
    assert ep["cheats_caught"].sum() == ep["cheats_checked"].sum()
    assert ep["false_rejections"].sum() <= 0.05 * ep["honest_checked"].sum()
    assert ep["malicious_became_invalid"].sum() >= 2
    hosts = res.hosts
    mal = hosts[hosts.strategy == "malicious"]
    hon = hosts[hosts.strategy == "honest"]
    assert (mal.slashed_ngonka > 0).all() and (hon.slashed_ngonka == 0).all()
    assert (mal.compute_seconds < mal.honest_seconds).all()
    assert hon.rewards_ngonka.min() > mal.rewards_ngonka.max()
    eng.dispose()


def test_same_seed_same_result_other_seed_differs(run_dir, tmp_path):
    a = run_network(_params(run_dir, seed=3), f"sqlite:///{tmp_path / 'a.db'}").epochs
    b = run_network(_params(run_dir, seed=3), f"sqlite:///{tmp_path / 'b.db'}").epochs
    c = run_network(_params(run_dir, seed=4), f"sqlite:///{tmp_path / 'c.db'}").epochs
    assert a.equals(b)
    assert not a.equals(c)


def test_sampling_rate_matches_gonkas_formula(run_dir, tmp_path):
    p = _params(run_dir, epochs=1, requests_per_epoch=3000, hosts=(ExecutorGroup(count=10),))
    res = run_network(p, f"sqlite:///{tmp_path / 'c.db'}")
    _, checked = p_checked(p.chain, setting_from(p))
    observed = res.epochs["honest_checked"].sum() / res.epochs["requests"].sum()
    assert observed == pytest.approx(checked, abs=0.03)


def test_splitmix_draws_are_uniform_and_keyed():
    u = splitmix_draws(7, np.arange(50_000, dtype=np.uint64))
    assert abs(u.mean() - 0.5) < 0.01 and u.min() >= 0 and u.max() < 1
    assert not np.array_equal(u[:100], splitmix_draws(8, np.arange(100, dtype=np.uint64)))


def test_bad_parameters_and_run_dirs(run_dir, tmp_path):
    with pytest.raises(ValidationError, match="cheat_rate"):
        ExecutorGroup(count=1, strategy="malicious", deviation="steps:2", cheat_rate=1.5)
    with pytest.raises(ValidationError, match="requests_per_epoch"):
        _params(run_dir, requests_per_epoch=-1)
    with pytest.raises(ValidationError, match="seconds_per_unit"):
        ExecutorGroup(count=1, seconds_per_unit=0)
    with pytest.raises(ValidationError, match="run_dir is required"):
        NetworkParams()
    with pytest.raises(ValidationError, match="slash_invalid_fraction"):
        ChainParams(slash_invalid_fraction=1.5)
    with pytest.raises(RunDirError, match="does not exist"):
        SurrogateBackend(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="scores.parquet"):
        SurrogateBackend(tmp_path / "empty")
    with pytest.raises(RunDirError, match="policy 'segment'.*allowed"):
        SurrogateBackend(run_dir, policy="segment")
    with pytest.raises(RunDirError, match="deviation 'lowres:32x32'.*allowed"):
        run_network(_params(run_dir, hosts=(ExecutorGroup(count=2), ExecutorGroup(
            count=1, strategy="malicious", deviation="lowres:32x32", cheat_rate=1.0))), f"sqlite:///{tmp_path / 'x.db'}")


def test_economics_says_which_strategies_pay(run_dir):
    b = SurrogateBackend(run_dir)
    p = _params(run_dir)
    tab = strategy_table({d: b.fail_rate(d) for d in b.malign}, b.executor_share, b.fail_rate(None), p.chain,
                         setting_from(p), trials=300)
    steps = tab[tab.strategy == "steps:2"]
    assert not steps.pays.any() and (steps[steps.cheat_rate >= 0.5].p_invalid_epoch > 0.9).all()
    honest = tab[tab.strategy == "honest"].iloc[0]
    assert honest.p_invalid_epoch < 0.01
    # more sampling never lowers the chance of being caught
    rows = sweep(b, p.chain, setting_from(p), rate_multipliers=(0.1, 1.0), threshold_quantiles=(0.99,),
                 slash_fractions=(0.2,), cheat_rates=(1.0,), reward_shares=(0.0,), trials=200)
    fp8 = rows[rows.strategy == "fp8"].set_index("rate_multiplier")
    assert fp8.loc[1.0, "p_invalid_epoch"] >= fp8.loc[0.1, "p_invalid_epoch"]
    assert set(rows.columns) >= {"rate_multiplier", "threshold_quantile", "slash_fraction", "pays", "gain_vs_honest_ngonka"}


def test_poc_stage_weights_drive_the_epoch(run_dir, tmp_path):
    pytest.importorskip("sim.poc.stage")
    res = run_network(_params(run_dir, epochs=1, requests_per_epoch=50, hosts=(ExecutorGroup(count=3),)),
                      f"sqlite:///{tmp_path / 'c.db'}", weights_fn=poc_stage_weights("surrogate"))
    assert (res.hosts.weight > 0).all()


@pytest.mark.slow
def test_network_flow_writes_tables_and_artifacts(run_dir, tmp_path, prefect_harness):
    import pandas as pd

    from flows.network import network_flow

    res = network_flow(_params(run_dir, epochs=1, requests_per_epoch=100), str(tmp_path / "o"))
    assert len(res["epochs"]) == 1
    assert len(pd.read_parquet(tmp_path / "o" / "epochs.parquet")) == 1
    assert (tmp_path / "o" / "params.json").is_file()


@pytest.mark.slow
def test_real_fidelity_tiny_preset(tmp_path):
    p = NetworkParams(fidelity="real", preset="tiny", policy="full", threshold=0.5, epochs=2, blocks_per_epoch=6,
                      requests_per_epoch=2, mix=TINY_MIX,
                      hosts=(ExecutorGroup(count=3), ExecutorGroup(count=2, strategy="malicious", deviation="seed:+1",
                                                                   cheat_rate=1.0)))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    res = run_network(p, url)
    assert check_invariants(open_chain(url)) == []
    ep = res.epochs
    assert ep["requests"].sum() == 4
    assert (res.hosts[res.hosts.strategy == "malicious"].compute_seconds > 0).any()
