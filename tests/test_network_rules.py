"""The network's rules against docs/facts.md section 2 (Gonka): the validators' sampling formula as
the agents apply it, and the surrogate's reading of an experiment run (which rows are honest
work, how validators of one inference agree), with the economics model matching the simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.chain import ChainParams, open_chain
from sim.chain import rules
from sim.network import ExecutorGroup, NetworkParams, NetworkSimulation, RunDirError, SurrogateBackend, run_network
from sim.network.economics import Setting, p_invalidated, setting_from
from tests.network_fixtures import make_synthetic_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("synthetic-rules") / "run")


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 1000), min_size=3, max_size=8), data=st.data())
def test_expected_validators_per_inference_is_gonkas_target(run_dir, weights, data):
    """Sum over validators of P(check) = target (when no P is clipped at 1), for an ACTIVE executor
    and for one that became INVALID after finishing (it is out of the total power then)."""
    n = len(weights)
    p = NetworkParams(run_dir=str(run_dir), hosts=(ExecutorGroup(count=n),))
    sim = NetworkSimulation(p, "sqlite://")
    ids = [h.id for h in sim.hosts]
    sim.weights = dict(zip(ids, weights))
    invalid = data.draw(st.sets(st.sampled_from(ids), max_size=n - 2))
    sim.status = {i: ("INVALID" if i in invalid else "ACTIVE") for i in ids}
    sim.reputation = {i: data.draw(st.integers(0, 100)) for i in ids}
    sim.traffic = data.draw(st.integers(0, 20_000))
    probs = sim.check_probabilities(ids)
    assert set(probs) == {i for i in ids if i not in invalid}
    for k, e in enumerate(ids):
        target = rules.target_validators(sim.reputation[e], sim.traffic, p.chain)
        ps = np.array([probs[v][k] for v in probs])
        assert probs.get(e, np.zeros(n))[k] == 0.0  # never its own validator
        assert ps.max() <= 1.0
        if ps.max() < 1.0:
            assert ps.sum() == pytest.approx(target, rel=1e-9)
        else:
            assert ps.sum() <= target + 1e-9


def _run_with_hwnoise(root, headline=3e-3):
    """The synthetic run plus hwnoise rows at the headline level (small) and at 3e-2 (large, outside
    the benign class the thresholds were chosen on), and the experiment's params.json."""
    import pandas as pd

    make_synthetic_run(root)
    df = pd.read_parquet(root / "scores.parquet")
    base = df[df.deviation == "batch:2"]
    extra = []
    for eps, level in ((headline, 0.005), (3e-2, 0.5)):
        rows = base.copy()
        rows["deviation"] = f"hwnoise:{eps:g}"
        rows["hwnoise_eps"] = eps
        rows["score"] = level
        extra.append(rows)
    pd.concat([df, *extra], ignore_index=True).to_parquet(root / "scores.parquet")
    (root / "params.json").write_text(json.dumps({"hwnoise_headline": headline, "metrics": ["ssim"]}))
    return root


def test_honest_rows_are_the_runs_benign_class(tmp_path):
    root = _run_with_hwnoise(tmp_path / "run")
    run_class = SurrogateBackend(root)  # benign_eps="run": the headline level only
    every = SurrogateBackend(root, benign_eps="all")
    none = SurrogateBackend(root, benign_eps=None)
    assert 0.5 not in run_class.benign and 0.005 in run_class.benign
    assert 0.5 in every.benign
    assert 0.005 not in none.benign and len(none.benign) == len(run_class.benign) - 100
    assert run_class.fail_rate(None) < 0.05 < every.fail_rate(None)
    with pytest.raises(ValueError, match="benign_eps must be"):
        SurrogateBackend(root, benign_eps="loud")


def test_undetermined_threshold_is_a_clear_error(tmp_path):
    root = make_synthetic_run(tmp_path / "run")
    (root / "thresholds.json").write_text(json.dumps(
        {"full/latent_rel_l2": {"threshold": None, "rule": "undetermined: no malign calib rows"}}))
    with pytest.raises(RunDirError, match="threshold of 'full/latent_rel_l2' is undetermined.*pass threshold="):
        SurrogateBackend(root)
    assert SurrogateBackend(root, threshold=0.05).threshold == 0.05


def test_validators_of_one_inference_share_its_measured_score(run_dir):
    ids = [f"e0-{i}" for i in range(200)] * 3
    devs = ["fp8"] * len(ids)
    corr = SurrogateBackend(run_dir, score_draw="per_inference")
    s, ok = corr.validate(ids, devs, ["v"] * len(ids), np.random.default_rng(0))
    s = s.reshape(3, 200)
    assert (s == s[0]).all() and (ok.reshape(3, 200) == ok[:200]).all()
    indep = SurrogateBackend(run_dir, score_draw="per_validation")
    s2, _ = indep.validate(ids, devs, ["v"] * len(ids), np.random.default_rng(0))
    assert (s2.reshape(3, 200) != s2[:200]).any()
    with pytest.raises(ValueError, match="score_draw"):
        SurrogateBackend(run_dir, score_draw="sometimes")


@pytest.mark.parametrize("score_draw", ["per_inference", "per_validation"])
def test_catch_rate_matches_the_economics_model(run_dir, tmp_path, score_draw):
    """Share of fp8 cheats invalidated in the simulation ~ the model's P(invalidated), for both
    score draws (correlated validators invalidate every checked cheat that fails; independent
    ones need a committee majority)."""
    p = NetworkParams(run_dir=str(run_dir), epochs=1, requests_per_epoch=3000, blocks_per_epoch=20, seed=5,
                      score_draw=score_draw, chain=ChainParams(
                          block_seconds=864.0, validation_window_blocks=5, expiration_blocks=10, vote_timeout_blocks=3,
                          invalid_consecutive=10_000, sprt_llr_threshold=1e9),  # keep the cheater working
                      hosts=(ExecutorGroup(count=9), ExecutorGroup(count=1, strategy="malicious", deviation="fp8",
                                                                   cheat_rate=1.0)))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    res = run_network(p, url)
    ep = res.epochs.iloc[0]
    b = p.surrogate_backend()
    s = setting_from(p)
    model = p_invalidated(b.fail_rate("fp8"), p.chain, s)
    observed = ep.cheats_caught / ep.cheats
    sd = np.sqrt(model * (1 - model) / ep.cheats)
    assert abs(observed - model) < 4 * sd + 0.01
    if score_draw == "per_inference":
        assert ep.cheats_caught / ep.cheats_checked == pytest.approx(b.fail_rate("fp8"), abs=0.08)
    open_chain(url).dispose()


def test_correlated_model_invalidates_every_failed_check():
    c = ChainParams()
    s = Setting(hosts=10, traffic=1000)
    checked = 1 - (1 - rules.validation_probability(1.0, 1, 10, 1)) ** 9
    assert p_invalidated(0.2, c, s) == pytest.approx(float(checked) * 0.2)
    indep = Setting(hosts=10, traffic=1000, correlated=False)
    assert p_invalidated(0.2, c, indep) < p_invalidated(0.2, c, s)
    assert p_invalidated(1.0, c, indep) == pytest.approx(float(checked))


def test_a_cheat_fails_at_least_as_often_as_honest_work(run_dir):
    """A deviation that saves nothing and is never failed does not 'pay' by escaping the false
    rejections honest work suffers (its work crosses hardware too); a real saving does pay."""
    from sim.network.economics import strategy_table

    p = NetworkParams(run_dir=str(run_dir))
    s = setting_from(p)
    fees_only = Setting(**{**s.__dict__, "reward_ngonka": 0.0})
    tab = strategy_table({"free": 0.0, "saver": 0.0}, {"free": 1.0, "saver": 0.5}, 0.01, p.chain, fees_only,
                         cheat_rates=(1.0,), trials=200)
    free = tab[tab.strategy == "free"].iloc[0]
    assert free.gain_vs_honest_ngonka == pytest.approx(0.0, abs=1.0) and not free.pays
    assert tab[tab.strategy == "saver"].iloc[0].pays
