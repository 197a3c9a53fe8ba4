"""Surrogate network epochs against a REAL experiment run directory: a tiny run (tiny preset, CPU,
2 prompts, a short deviation list) is built once per session with sim.experiment's own functions,
then one surrogate epoch draws its validation scores from it. Every catch and false rejection
must follow from the run's scores and threshold."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sqlalchemy import select

from sim.chain import ChainParams, check_invariants, open_chain
from sim.chain import tables as T
from sim.network import ExecutorGroup, NetworkParams, run_network
from sim.network.economics import setting_from, strategy_table

MALIGN = ("fp8", "steps:6", "seed:+1")
PROMPTS = ("a red fox running through snow", "a sailboat on a calm lake at dusk")  # 1 calib, 1 test


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    from sim import experiment as ex

    root = tmp_path_factory.mktemp("tiny-experiment")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    params = ex.ExperimentParams(
        preset="tiny", prompts=str(root / "prompts.txt"), request={"steps": 8},
        deviations=("threads:1", "splitk:2", *MALIGN), hwnoise_eps=(3e-3,), hwnoise_headline=3e-3,
        policies=("full", "checkpoint"), metrics=("ssim",), aggregations=("mean",), bootstrap=20, strips=0,
        out=str(root / "run"))
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    for i, p in enumerate(prompts):
        ex.run_prompt(params, i, p, len(prompts))
    ex.analyse(params, len(prompts))
    return root / "run"


def _params(run_dir, policy: str, **kw) -> NetworkParams:
    return NetworkParams(
        run_dir=str(run_dir), policy=policy, score_split="calib", epochs=1, requests_per_epoch=400,
        blocks_per_epoch=12, seed=11,
        chain=ChainParams(block_seconds=864.0, validation_window_blocks=4, expiration_blocks=8, vote_timeout_blocks=2,
                          invalid_consecutive=10_000, sprt_llr_threshold=1e9),  # keep every cheater at work
        hosts=(ExecutorGroup(count=4), *(ExecutorGroup(count=1, strategy="malicious", deviation=d, cheat_rate=1.0)
                                         for d in MALIGN)), **kw)


@pytest.mark.slow
@pytest.mark.parametrize("policy,threshold", [("full", "run"), ("checkpoint", "run"), ("checkpoint", "middle")])
def test_surrogate_epoch_follows_the_runs_scores(real_run, tmp_path, policy, threshold):
    """threshold "run": the run's calibrated one; "middle": the median malign calib score, so that
    some deviations sit at or under it (never caught) and the others over it (always caught)."""
    scores = pd.read_parquet(real_run / "scores.parquet")
    thresholds = json.loads((real_run / "thresholds.json").read_text())
    p = _params(real_run, policy)
    backend = p.surrogate_backend()
    key = f"{policy}/{backend.metric}"
    assert backend.threshold == thresholds[key]["threshold"]
    rows = scores[(scores.policy == policy) & (scores.metric == backend.metric) & (scores.split == "calib")]
    if threshold == "middle":
        mid = float(np.median(rows[rows.kind == "malign"].score))
        p = _params(real_run, policy, threshold=mid)
        backend = p.surrogate_backend()
        assert backend.threshold == mid
        qs = [float(np.mean(rows[rows.deviation == d].score > mid)) for d in MALIGN]
        assert 0.0 in qs and 1.0 in qs
    # honest work is the run's benign class: benign deviations and hwnoise at the headline level
    benign = rows[(rows.kind == "benign")]
    assert sorted(benign.deviation.unique()) == ["hwnoise:0.003", "splitk:2", "threads:1"]
    assert np.array_equal(np.sort(backend.benign), np.sort(benign.score.to_numpy()))

    url = f"sqlite:///{tmp_path / 'c.db'}"
    res = run_network(p, url)
    eng = open_chain(url)
    assert check_invariants(eng) == []
    inf = T.Inference.__table__
    with eng.connect() as c:
        df = pd.DataFrame(c.execute(select(inf.c.truth_deviation, inf.c.status, inf.c.validations)).mappings().all())
    eng.dispose()
    checked = df[df.validations > 0]
    thr = backend.threshold
    for dev in MALIGN:
        q = float(np.mean(rows[rows.deviation == dev].score.to_numpy() > thr))
        mine = checked[checked.truth_deviation == dev]
        caught = int((mine.status == "INVALIDATED").sum())
        assert len(mine) > 20, dev
        print(f"{policy} {dev}: q={q:g} caught {caught}/{len(mine)} checked")
        if q == 1.0:  # every calib score over the threshold: caught whenever sampled
            assert caught == len(mine), dev
        elif q == 0.0:  # none over it: never caught
            assert caught == 0, dev
        else:  # validators of one inference share its row: caught with the row's failure rate
            assert binomtest(caught, len(mine), q).pvalue > 1e-4, (dev, q, caught, len(mine))
    q_honest = float(np.mean(benign.score.to_numpy() > thr))
    honest = checked[checked.truth_deviation.isna()]
    false_rej = int((honest.status == "INVALIDATED").sum())
    if q_honest == 0.0:
        assert false_rej == 0
    else:
        assert binomtest(false_rej, len(honest), q_honest).pvalue > 1e-4
    ep = res.epochs.iloc[0]
    assert ep.false_rejections == false_rej and ep.cheats_caught == int((checked.status == "INVALIDATED").sum()) - false_rej

    # the economics on the same run: a strategy its detector always catches never pays
    tab = strategy_table({d: backend.fail_rate(d) for d in backend.malign}, backend.executor_share,
                         backend.fail_rate(None), ChainParams(), setting_from(p), trials=200)
    for dev in MALIGN:
        if backend.fail_rate(dev) == 1.0:
            assert not tab[(tab.strategy == dev) & (tab.cheat_rate >= 0.5)].pays.any(), dev
