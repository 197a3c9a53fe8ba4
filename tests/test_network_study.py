"""Protocol-parameter studies (sim/network/study.py, flows/study.py): evidence, grid, closed form
beside simulated epochs, resumability, fan-out, the cheapest safe set and the map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from flows.study import run_points
from sim.network.study import (RatesBackend, StudyError, StudyParams, cheapest_safe, closed_form, evidence, grid,
                               load_points, network_params, prepare, run_point, table)
from sim.network.study_report import CATEGORIES, category, write_report
from sim.stats import clopper_pearson
from tests.network_fixtures import make_synthetic_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("run") / "run")


def _small(run_dir, **kw):
    base = dict(run_dir=str(run_dir), rate_multipliers=(0.3, 3.0), slash_fractions=(0.0, 0.5),
                threshold_quantiles=(0.9, 1.0), requests_per_epoch=400, blocks_per_epoch=20, honest_hosts=8,
                trials=300)
    base.update(kw)
    return StudyParams(**base)


def test_evidence_from_scores_counts_and_bounds(run_dir):
    p = _small(run_dir)
    ev = evidence(p)
    scores = pd.read_parquet(run_dir / "scores.parquet")
    test = scores[scores["split"] == "test"]
    benign = test[test["kind"] == "benign"]["score"].to_numpy()
    assert ev.cheats == sorted(test[test["kind"] == "malign"]["deviation"].unique())
    for q in p.threshold_quantiles:
        lab = f"q{q:g}"
        thr = ev.thresholds[lab]
        assert thr == pytest.approx(np.quantile(benign, q))
        assert ev.frr[lab].k == int((benign > thr).sum()) and ev.frr[lab].n == len(benign)
        for d in ev.cheats:
            s = test[test["deviation"] == d]["score"].to_numpy()
            r = ev.fail[lab][d]
            assert (r.k, r.n) == (int((s > thr).sum()), len(s))
            assert r.lo <= r.rate <= r.hi and 0 <= r.lo and r.hi <= 1
    # the largest honest score as threshold: no honest work fails; a lower threshold fails more of it
    assert ev.frr["q1"].k == 0 and ev.frr["q0.9"].k > 0
    assert ev.fail["q1"]["steps:2"].rate == 1.0  # steps:2 scores lie far above every benign one


def test_conservative_view_takes_far_at_its_upper_bound(run_dir):
    p = _small(run_dir)
    ev = evidence(p)
    pt = grid(p, ev)[0]
    cf = closed_form(p, ev, pt)
    for d in ev.cheats:
        r = ev.fail[pt["threshold_label"]][d]
        assert cf[f"{d}_measured"]["fail_rate"] == r.rate
        assert cf[f"{d}_conservative"]["fail_rate"] == r.lo
        assert cf[f"{d}_conservative"]["far"] == pytest.approx(1 - r.lo)
        assert cf[f"{d}_conservative"]["far"] >= cf[f"{d}_measured"]["far"]
    assert cf["honest_conservative"]["frr"] == ev.frr[pt["threshold_label"]].hi


def test_bad_study_inputs_name_the_field(run_dir, tmp_path):
    cases = [(dict(rate_multipliers=(0.3, -1.0)), "rate_multipliers"), (dict(slash_fractions=(1.5,)), "slash_fractions"),
             (dict(threshold_quantiles=(0.0,)), "threshold_quantiles"), (dict(epochs=True), "epochs"),
             (dict(requests_per_epoch=5), "requests_per_epoch"), (dict(run_dir=str(tmp_path / "none")), "run_dir"),
             (dict(source="magic"), "source"), (dict(cheat_rate=0), "cheat_rate"), (dict(unknown=1), "unknown")]
    for kw, field in cases:
        with pytest.raises(ValidationError) as err:
            _small(kw.pop("run_dir", run_dir), **kw)
        assert field in str(err.value)
    with pytest.raises(StudyError, match="cheats"):
        evidence(_small(run_dir, cheats=("nope",)))
    with pytest.raises(StudyError, match="validator.json"):
        evidence(_small(run_dir, source="deployable"))
    with pytest.raises(StudyError, match="policy"):
        evidence(_small(run_dir, policy="nope"))


def test_grid_covers_every_combination_once(run_dir):
    p = _small(run_dir, rate_multipliers=(1.0, 0.1, 1.0), slash_fractions=(0.2, 0.0, 1.0))
    assert p.rate_multipliers == (0.1, 1.0)  # sorted, repeats dropped
    pts = grid(p, evidence(p))
    assert len(pts) == 2 * 3 * 2
    keys = {(x["rate_multiplier"], x["slash_fraction"], x["threshold_label"]) for x in pts}
    assert len(keys) == len(pts) and [x["index"] for x in pts] == list(range(len(pts)))
    np_ = network_params(p, evidence(p), pts[-1])
    assert np_.chain.validation_rate_multiplier == pts[-1]["rate_multiplier"]
    assert np_.chain.slash_invalid_fraction == pts[-1]["slash_fraction"]
    assert np_.threshold == pts[-1]["threshold"] and np_.n_hosts == 8 + 2 * 3


def test_points_resume_and_a_changed_study_is_refused(run_dir, tmp_path):
    p = _small(run_dir)
    out = tmp_path / "study"
    ev, pts, todo = prepare(p, out)
    assert len(todo) == len(pts) == 8
    used, done = run_points(p.model_dump_json(), ev.model_dump_json(), todo[:3], str(out), workers=1)
    assert used == "inline" and len(done) == 3
    ev, pts, todo = prepare(p, out)
    assert [x["index"] for x in todo] == [x["index"] for x in pts[3:]]  # finished points are skipped
    run_points(p.model_dump_json(), ev.model_dump_json(), todo, str(out), workers=1)
    assert prepare(p, out)[2] == []
    files = sorted((out / "points").iterdir())
    assert len(files) == 8 and not [f for f in files if f.name.startswith(".")]  # atomic: no temporary left
    with pytest.raises(StudyError, match="out"):
        prepare(_small(run_dir, epochs=1), out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(StudyError, match="out"):
        prepare(p, tmp_path / "other")


def test_processes_give_the_same_points_as_inline(run_dir, tmp_path):
    p = _small(run_dir, threshold_quantiles=(0.9,), slash_fractions=(0.5,))
    res = {}
    for ex in ("inline", "processes"):
        out = tmp_path / ex
        ev, pts, todo = prepare(p, out)
        used, done = run_points(p.model_dump_json(), ev.model_dump_json(), todo, str(out), workers=2, executor=ex)
        assert used == ex
        res[ex] = {r["point"]["index"]: (r["closed_form"], {k: v for k, v in r["simulated"].items() if k != "seconds"})
                   for r in load_points(out)}
    assert res["inline"] == res["processes"]
    with pytest.raises(ValueError, match="workers"):
        run_points(p.model_dump_json(), ev.model_dump_json(), [], str(tmp_path), workers=0)
    with pytest.raises(ValueError, match="executor"):
        run_points(p.model_dump_json(), ev.model_dump_json(), pts, str(tmp_path), workers=2, executor="threads")


def test_closed_form_and_simulation_agree_where_they_must(run_dir, tmp_path):
    p = _small(run_dir, epochs=2)
    ev, pts, todo = prepare(p, tmp_path / "s")
    recs = [run_point(p, ev, pt, tmp_path / "s") for pt in pts]
    tab = table(recs, ev.cheats)
    steps = tab[tab["cheat"] == "steps:2"]
    # steps:2 fails every validation: caught in both views at every point, and never pays
    assert (steps["closed_p_invalid"] > 0.9).all() and steps["sim_p_invalid"].mean() > 0.7
    assert not steps["closed_pays"].any() and not steps["sim_pays"].any()
    # honest false-slash risk: none at the largest honest score, some at the 90% quantile with more sampling
    h = tab.drop_duplicates("index")
    assert (h[h["threshold_label"] == "q1"]["honest_sim_p_invalid"] == 0).all()
    hi = h[(h["threshold_label"] == "q0.9") & (h["rate_multiplier"] == 3.0)]
    lo = h[(h["threshold_label"] == "q0.9") & (h["rate_multiplier"] == 0.3)]
    assert (hi["honest_closed_p_invalid"].to_numpy() > lo["honest_closed_p_invalid"].to_numpy()).all()
    # at 500 requests per honest host and epoch (closed form ~0.42) the simulated honest risk is
    # above zero and its exact 95% interval over the 16 host-epochs holds the closed form (a block's
    # passes and votes interleave, as on Gonka; closing every vote after every pass inflated it)
    q = _small(run_dir, epochs=2, requests_per_epoch=4000, rate_multipliers=(3.0,), slash_fractions=(0.0,),
               threshold_quantiles=(0.9,))
    ev_q, pts_q, _ = prepare(q, tmp_path / "q")
    one = table([run_point(q, ev_q, pts_q[0], tmp_path / "q")], ev_q.cheats).iloc[0]
    k = round(one["honest_sim_p_invalid"] * 16)
    lo_q, hi_q = clopper_pearson(k, 16)
    assert k > 0 and lo_q <= one["honest_closed_p_invalid"] <= hi_q, (k, one["honest_closed_p_invalid"])
    # the slash shows in the simulated gain of a cheat that gets caught
    caught = steps[steps["threshold_label"] == "q1"].set_index(["rate_multiplier", "slash_fraction"])["sim_gain_gnk"]
    assert caught.loc[(3.0, 0.5)] < caught.loc[(3.0, 0.0)]


def test_closed_form_gives_invalidated_hosts_reward_to_the_others(run_dir, tmp_path):
    """The chain splits the epoch reward among the hosts still active at its end, so where a cheat's
    hosts are always invalidated an honest host earns more than 1/n of it: the closed form's honest
    profit follows the simulated one (it was ~75% short of it before it counted this)."""
    from sim.network.study import simulate

    p = _small(run_dir, epochs=2, rate_multipliers=(3.0,), slash_fractions=(0.0,), threshold_quantiles=(1.0,),
               hosts_per_cheat=4)
    ev = evidence(p)
    pt = grid(p, ev)[0]
    cf, sim = closed_form(p, ev, pt), simulate(p, ev, pt)
    assert cf["steps:2_measured"]["p_invalid_epoch"] > 0.9  # the caught cheat leaves the reward to others
    active = cf["honest_measured"]["active_share"]
    assert active < 0.9
    assert abs(cf["honest_measured"]["profit_gnk"] / sim["honest"]["profit_gnk"] - 1) < 0.15


def test_cheapest_safe_picks_the_lowest_cost_point():
    rows = []
    idx = 0
    for rate in (0.1, 1.0, 3.0):
        for slash in (0.0, 0.2):
            for tq, thr in (("q0.9", 0.1), ("q1", 0.5)):
                pays = rate < 1.0  # cheats pay below rate 1
                risk = 0.05 if tq == "q0.9" else 0.0
                rows.append(dict(index=idx, rate_multiplier=rate, slash_fraction=slash, threshold_label=tq,
                                 threshold=thr, conservative_pays=pays, sim_pays=False,
                                 honest_conservative_p_invalid=risk, honest_sim_p_invalid=risk))
                idx += 1
    tab = pd.DataFrame(rows)
    best = cheapest_safe(tab, 0.01)
    assert (best["rate_multiplier"], best["slash_fraction"], best["threshold_label"]) == (1.0, 0.0, "q1")
    assert best["safe_points"] == 4
    # a looser false-slash target admits the 90% threshold, but the larger threshold still wins the tie
    assert cheapest_safe(tab, 0.1)["threshold_label"] == "q1"
    assert cheapest_safe(tab.assign(sim_pays=True), 0.1) is None
    assert cheapest_safe(tab.iloc[0:0], 0.1) is None


def test_rates_backend_draws_the_given_rates_once_per_inference():
    b = RatesBackend({"x": 0.3}, 0.02, {"x": 0.5})
    rng = np.random.default_rng(0)
    ids = [f"e0-{i}" for i in range(20_000)]
    s1, ok1 = b.validate(ids, ["x"] * len(ids), ["v1"] * len(ids), rng)
    s2, ok2 = b.validate(ids, ["x"] * len(ids), ["v2"] * len(ids), rng)
    assert (ok1 == ok2).all()  # every validator of an inference sees the same outcome
    assert abs((~ok1).mean() - 0.3) < 0.02
    _, okh = b.validate(ids, [None] * len(ids), ["v1"] * len(ids), rng)
    assert abs((~okh).mean() - 0.02) < 0.005
    with pytest.raises(StudyError, match="deviation"):
        b.check_deviation("y")


def _deployable(run_dir, tmp_path):
    import shutil

    d = tmp_path / "dep"
    shutil.copytree(run_dir, d)
    (d / "validator.json").write_text(json.dumps({
        "config": {"metric": "rel_l2", "challenged": 1, "segments": 4, "frr_target": 0.01},
        "table": {"frr": {"k": 1, "n": 100, "rate": 0.01}, "validator_share": 0.3},
        "per_deviation": [
            {"deviation": "steps:2", "class": "malign", "rejected": 95, "n": 100, "reject_rate": 0.95,
             "executor_share": 0.5},
            {"deviation": "fp8", "class": "malign", "rejected": 20, "n": 100, "reject_rate": 0.2, "executor_share": 0.6},
            {"deviation": "batch:2", "class": "benign", "rejected": 1, "n": 100, "reject_rate": 0.01}]}))
    return d


def test_deployable_evidence_feeds_the_study(run_dir, tmp_path):
    d = _deployable(run_dir, tmp_path)
    p = _small(d, source="deployable", rate_multipliers=(3.0,), slash_fractions=(0.2,))
    ev = evidence(p)
    assert ev.cheats == ["fp8", "steps:2"] and list(ev.thresholds) == ["deployed"]
    assert ev.fail["deployed"]["steps:2"].k == 95 and ev.frr["deployed"].k == 1
    assert ev.compute_share == {"fp8": 0.6, "steps:2": 0.5}
    ev, pts, todo = prepare(p, tmp_path / "s")
    assert len(pts) == 1
    rec = run_point(p, ev, pts[0], tmp_path / "s")
    sim = rec["simulated"]
    # the simulated validations fail at the given rates
    assert sim["steps:2"]["invalidated"] > 0.8 * sim["steps:2"]["checked"]
    assert sim["honest"]["invalidated"] < 0.05 * sim["honest"]["checked"]
    (d / "validator.json").write_text("{}")
    with pytest.raises(StudyError, match="validator"):
        evidence(p)


def test_report_map_and_summary(run_dir, tmp_path):
    p = _small(run_dir)
    out = tmp_path / "s"
    with pytest.raises(StudyError, match="study"):
        write_report(out)
    ev, pts, todo = prepare(p, out)
    with pytest.raises(StudyError, match="no finished point"):
        write_report(out)
    run_points(p.model_dump_json(), ev.model_dump_json(), todo, str(out))
    summary = write_report(out, dict(executor="inline"))
    html = (out / "report.html").read_text()
    for c in ev.cheats:
        assert f"where {c} pays" in html
    assert html.count("data:image/png;base64,") == len(ev.cheats) + 2
    assert "FAR upper bound" in html
    tab = pd.read_parquet(out / "points.parquet")
    assert len(tab) == len(pts) * len(ev.cheats)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["points"] == len(pts) == summary["points"]
    for c in saved["cheats"]:
        g = tab[tab["cheat"] == c["cheat"]]
        assert c["sim_pays"] == int(g["sim_pays"].sum())
        assert c["agree"] == pytest.approx((g["closed_pays"] == g["sim_pays"]).mean())
    assert [category(*x) for x in ((False, False, False), (False, True, False), (True, True, False),
                                   (False, False, True), (True, True, True))] == list(range(len(CATEGORIES)))


def test_study_cli_bad_inputs_are_one_line(run_dir, tmp_path):
    from flows.cli import app

    r = CliRunner().invoke(app, ["study", "run", "--run-dir", str(run_dir), "--out", str(tmp_path / "o"),
                                 "--rates", "0.3,x"])
    assert r.exit_code == 1 and "rates" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["study", "run", "--run-dir", str(run_dir), "--out", str(tmp_path / "o"),
                                 "--slashes", "2"])
    assert r.exit_code == 1 and "slash_fractions" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["study", "run", "--run-dir", str(AT_SCALE), "--source", "at_scale", "--rule", "x",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "at_scale_rule" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(app, ["study", "run", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "run_dir" in r.output
    r = CliRunner().invoke(app, ["study", "report", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "study.json" in r.output


def test_study_flow_runs_and_resumes(run_dir, tmp_path, prefect_harness):
    from flows.study import study_flow

    p = _small(run_dir, threshold_quantiles=(1.0,), slash_fractions=(0.2,))
    out = tmp_path / "s"
    s1 = study_flow(p.model_dump(mode="json"), str(out), workers=2, executor="processes")
    assert s1["run"]["ran"] == 2 and s1["run"]["skipped"] == 0 and (out / "report.html").is_file()
    s2 = study_flow(p.model_dump(mode="json"), str(out), workers=2, executor="processes")
    assert s2["run"]["ran"] == 0 and s2["run"]["skipped"] == 2 and s2["cheats"] == s1["cheats"]


AT_SCALE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "at_scale"


def test_at_scale_evidence_follows_the_gpu_rules(tmp_path):
    """The H200 measurements as evidence: unpinned, fp8-scaled is never rejected and (saving 40%)
    pays; pinned, every cheat is rejected and none pays in either view."""
    from sim.network.study import _replay_share

    base = dict(run_dir=str(AT_SCALE), source="at_scale", rate_multipliers=(1.0,), slash_fractions=(0.2,),
                requests_per_epoch=2000, blocks_per_epoch=20, honest_hosts=6, hosts_per_cheat=2, trials=300,
                cheats=("fp8-scaled", "int8-wo"))
    res = {}
    for rule in ("full-final", "full-final-pinned"):
        p = StudyParams(**base, at_scale_rule=rule)
        ev = evidence(p)
        _, pts, _ = prepare(p, tmp_path / rule)
        res[rule] = (ev, table([run_point(p, ev, pt, tmp_path / rule) for pt in pts], ev.cheats).set_index("cheat"))
    ev, tab = res["full-final"]
    assert ev.fail["deployed"]["fp8-scaled"].k == 0 and ev.compute_share["fp8-scaled"] < 1
    assert tab.loc["fp8-scaled", "closed_pays"] and tab.loc["fp8-scaled", "sim_pays"]
    ev, tab = res["full-final-pinned"]
    assert all(r.k == r.n > 0 for r in ev.fail["deployed"].values()) and ev.validator_share == 1.0
    assert not tab["closed_pays"].any() and not tab["sim_pays"].any()
    assert _replay_share("|K|/N", 2, 40) == 0.05 and _replay_share("2|K|/N", 2, 40) == 0.1
    with pytest.raises(StudyError, match="at_scale_rule.*allowed"):
        evidence(StudyParams(**base, at_scale_rule="no-such-rule"))
    with pytest.raises(StudyError, match="at_scale.json"):
        evidence(StudyParams(**{**base, "run_dir": str(tmp_path)}))


def test_at_scale_evidence_studies_cheats_that_know_the_rule_by_their_own_config(tmp_path):
    """Adapted cheats (plan key `adapted`) enter a study under their own config, with their own
    compute share; the family they belong to keeps the share of the cheat the rule was built on."""
    run = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "at_scale_cpu"
    p = StudyParams(run_dir=str(run), source="at_scale", at_scale_rule="guarded-profile-pinned-compile-ok",
                    at_scale_preset="shapes", at_scale_size="32x32x9", rate_multipliers=(1.0,), slash_fractions=(0.2,))
    ev = evidence(p)
    assert {"fp8-scaled", "fp8-scaled:low", "attention:_native_math+int8-wo:low"} <= set(ev.cheats)
    assert ev.compute_share["fp8-scaled"] == pytest.approx(0.6)  # not averaged with the one-expert runs
    assert 0.6 < ev.compute_share["fp8-scaled:low"] < 1.0
    rules = json.loads((run / "at_scale.json").read_text())["rules"]
    guarded = next(r for r in rules if r["rule"] == p.at_scale_rule and r["preset"] == "shapes")
    k, n = guarded["far_adapted_per_config"]["int8-wo:low"]
    assert (ev.fail["deployed"]["int8-wo:low"].k, ev.fail["deployed"]["int8-wo:low"].n) == (n - k, n)
