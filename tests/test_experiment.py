"""The validation experiment on the tiny preset: parameters, policies, the run directory, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from sim import experiment as ex
from sim.policies import Claim, ValidationContext, get_policy
from tests.experiment_helpers import experiment_params, run_all

DEVS = ("threads:1", "splitk:2", "fp8", "steps:6", "seed:+1")


def small_params(out, **kw):
    return experiment_params(out, kw.pop("deviations", DEVS), prompts=kw.pop("prompts", 3),
                             bootstrap=kw.pop("bootstrap", 50), **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    params = small_params(tmp_path_factory.mktemp("exp") / "run")
    summary = run_all(params)
    return params, summary, pd.read_parquet(Path(params.out) / "scores.parquet")


def test_table_has_every_prompt_deviation_policy(finished):
    params, summary, df = finished
    assert set(df.prompt_id) == {0, 1, 2}
    assert set(df.deviation) == set(params.all_deviations())
    assert set(df.policy) == set(params.policies)
    assert set(df.split) == {"calib", "test"}
    assert {"benign", "malign"} == set(df.kind)
    assert (df.groupby(["prompt_id", "deviation", "policy"]).size() > 0).all()
    run = Path(params.out)
    for name in ("params.json", "thresholds.json", "summary.json", "report.html", "report.md"):
        assert (run / name).stat().st_size > 0
    html = (run / "report.html").read_text()
    assert "emulation" in html.lower()


def test_scores_order_benign_below_plain_cheats(finished):
    _, _, df = finished
    ck = df[(df.policy == "checkpoint") & (df.metric == "rel_l2.max")]
    benign_max = ck[ck.kind == "benign"].score.max()
    for cheat in ("steps:6", "seed:+1"):
        assert ck[ck.deviation == cheat].score.min() > benign_max
    # threads change nothing in bf16 on a CPU: bit-identical latents
    assert (ck[ck.deviation == "threads:1"].score == 0).all()
    # fingerprints cost bytes, not megabytes; segments cost a fraction of the compute
    fp = df[df.policy == "fingerprint"].bytes_kept.max()
    assert fp == 3 * 2 * 32  # three checkpoints x float16 x k
    # commit-then-challenge: every committed segment (4 of 2 steps) replayed, honest work replays exactly
    seg = df[df.policy == "segment"]
    assert {f"cosine.seg{i}" for i in range(4)} | {"decode.mad", "rel_l2.start"} <= set(seg.metric)
    honest = seg[seg.deviation == "threads:1"]
    assert (honest[honest.metric.str.contains("seg|start")].score == 0).all()
    # the VAE decode is not bit-identical across thread counts (latents are): a small pixel difference
    assert (honest[honest.metric == "decode.mad"].score < 1.0).all()
    assert (seg[(seg.deviation == "seed:+1") & (seg.metric == "rel_l2.start")].score > 0).all()


def test_verdicts_and_thresholds(finished):
    params, summary, _ = finished
    devs = {r["deviation"] for r in summary["verdicts"]}
    assert devs == {d for d in params.all_deviations() if ex.kind_of(d) == "malign"}
    th = json.loads((Path(params.out) / "thresholds.json").read_text())
    assert "checkpoint/rel_l2.max" in th and th["checkpoint/rel_l2.max"]["split"] == "calib"


def test_rerun_reuses_everything(finished):
    params, _, df = finished
    t0 = time.perf_counter()
    again = run_all(params)
    assert time.perf_counter() - t0 < 60
    df2 = pd.read_parquet(Path(params.out) / "scores.parquet")
    pd.testing.assert_frame_equal(df, df2)
    assert again["verdicts"]


def test_resume_after_kill_gives_the_same_table(finished, tmp_path):
    params, _, df = finished
    out = tmp_path / "killed"
    args = [sys.executable, "benchmarks/run_experiment.py", "--prompts", "3", "--out", str(out), "--bootstrap", "50"]
    code = (
        "import sys; sys.argv=['x']\n"
        "from sim import experiment as ex\n"
        f"p = ex.ExperimentParams(prompts=3, out={str(out)!r}, deviations={DEVS!r}, hwnoise_eps=(3e-3,), bootstrap=50, strips=1)\n"
        "ex.open_run(p); ps = ex.load_prompts(p)\n"
        "[ex.run_prompt(p, i, q, len(ps)) for i, q in enumerate(ps)]\n"
    )
    del args
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "gens" / "p0001").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "scores" / "p0002.parquet").exists(), "the run finished before it was killed"
    resumed = small_params(out)
    run_all(resumed)
    df2 = pd.read_parquet(out / "scores.parquet")
    cols = [c for c in df.columns if c != "run_id"]
    pd.testing.assert_frame_equal(df[cols].reset_index(drop=True), df2[cols].reset_index(drop=True))


def test_a_run_directory_refuses_other_parameters(finished):
    params, _, _ = finished
    other = small_params(params.out, fingerprint_k=8, seed=3)
    with pytest.raises(ex.ExperimentError, match="different parameter set.*fingerprint_k.*seed"):
        ex.open_run(other)
    # parameters that change no result may differ
    ex.open_run(small_params(params.out, bootstrap=10))
    ex.open_run(params)


def test_a_run_made_before_a_runtime_field_existed_still_resumes(finished):
    """A params.json whose nested runtime lacks a field added since (here `vae_dtype`) takes its
    default, so an upgrade does not refuse the run; a stored non-default value still differs."""
    params, _, _ = finished
    pfile = Path(params.out) / ex.RUN_MARKER
    saved = pfile.read_text()
    try:
        old = json.loads(saved)
        assert old["validator_runtime"].pop("vae_dtype") == "float32"
        pfile.write_text(json.dumps(old))
        ex.open_run(params)
        old["validator_runtime"]["vae_dtype"] = "bfloat16"
        pfile.write_text(json.dumps(old))
        with pytest.raises(ex.ExperimentError, match="validator_runtime"):
            ex.open_run(params)
    finally:
        pfile.write_text(saved)


def test_tampered_artifacts_fail_validation_with_a_reason(finished, tmp_path):
    import shutil

    params, _, _ = finished
    request = params.base_request(ex.load_prompts(params)[0], 0)
    src = Path(params.out) / "gens" / "p0000" / "splitk_2"
    claim_dir = tmp_path / "claim"
    shutil.copytree(src, claim_dir)
    rec = json.loads((claim_dir / "record.json").read_text())
    ctx = ValidationContext()
    ok = get_policy("full").score(Claim(request, rec["sha256"], claim_dir), ctx)
    assert ok.reason == "" and all(v < float("inf") for v in ok.scores.values())
    video = claim_dir / "video.mp4"
    video.write_bytes(video.read_bytes()[:-7] + b"tamper!")
    bad = get_policy("full").score(Claim(request, rec["sha256"], claim_dir), ctx)
    assert "SHA-256" in bad.reason or "sha256" in bad.reason.lower()
    assert all(v == float("inf") for v in bad.scores.values())
    lat = claim_dir / "latents.safetensors"
    lat.write_bytes(lat.read_bytes()[:50])
    for name in ("checkpoint", "fingerprint", "segment"):
        res = get_policy(name).score(Claim(request, rec["sha256"], claim_dir), ctx)
        assert res.reason and max(res.scores.values()) == float("inf")


def _claims_of_prompt0(params):
    request = params.base_request(ex.load_prompts(params)[0], 0)
    gens = Path(params.out) / "gens" / "p0000"
    claims = [Claim(request, json.loads((d / "record.json").read_text())["sha256"], d)
              for d in sorted(gens.iterdir()) if d.name != "canonical" and not d.name.startswith(".")]
    return request, gens, claims


def test_full_policy_scores_claims_side_by_side_as_one_by_one(finished, tmp_path):
    import shutil

    from models.engine import Generation

    params, _, _ = finished
    request, gens, claims = _claims_of_prompt0(params)
    tampered = tmp_path / "tampered"
    shutil.copytree(claims[0].directory, tampered)
    (tampered / "video.mp4").write_bytes((tampered / "video.mp4").read_bytes()[:-7] + b"tamper!")
    claims.insert(2, Claim(request, claims[0].sha256, tampered))
    canonical = Generation.load(gens / "canonical")
    one, many = ValidationContext(scoring_threads=1), ValidationContext(scoring_workers=2)
    one.replays[request.key()] = many.replays[request.key()] = canonical
    policy = get_policy("full")
    expected = [policy.score(c, one) for c in claims]
    got = policy.score_many(claims, many)
    assert [r.scores for r in got] == [r.scores for r in expected]  # same bits, same order
    assert [(r.reason, r.validator_compute_share, r.bytes_kept) for r in got] == \
        [(r.reason, r.validator_compute_share, r.bytes_kept) for r in expected]
    assert "SHA-256" in got[2].reason and all(v == float("inf") for v in got[2].scores.values())
    assert many.replay_seconds == 0.0  # the validator's own video came from its stored generation


def test_a_claims_latents_are_read_once_and_handed_out_as_copies(finished, tmp_path, monkeypatch):
    import shutil

    import torch

    from models import engine

    params, _, _ = finished
    request, _, claims = _claims_of_prompt0(params)
    claim_dir = tmp_path / "claim"
    shutil.copytree(claims[0].directory, claim_dir)
    claim = Claim(request, claims[0].sha256, claim_dir)
    reads = []
    real = engine.load_checkpoints
    monkeypatch.setattr(engine, "load_checkpoints", lambda path: reads.append(path) or real(path))
    ctx = ValidationContext()
    a, err = ctx.checkpoints(claim)
    b, _ = ctx.checkpoints(claim)
    assert err == "" and len(reads) == 1 and set(a) == set(b)
    name = next(iter(a))
    a[name].latents.add_(1.0)  # a policy changing its copy changes no other policy's
    c, _ = ctx.checkpoints(claim)
    assert torch.equal(b[name].latents, c[name].latents) and not torch.equal(a[name].latents, c[name].latents)
    assert len(reads) == 1
    lat = claim_dir / "latents.safetensors"  # a changed file is read again
    lat.write_bytes(lat.read_bytes()[:50])
    d, err = ctx.checkpoints(claim)
    assert d is None and "truncated" in err and len(reads) == 2


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("deviations", ("warp",), "unknown deviation 'warp'"),
        ("metrics", ("vmaf",), "vmaf"),
        ("policies", ("oracle",), "unknown policy 'oracle'"),
        ("prompts", 1, "prompts: a count must be >= 2"),
        ("hwnoise_eps", (0.0,), "hwnoise_eps"),
        ("request", {"width": 50}, "request:.*width must be a positive multiple of 16"),
    ],
)
def test_bad_parameters_name_the_field(tmp_path, field, value, needle):
    with pytest.raises(ValidationError, match=needle):
        small_params(tmp_path / "r", **{field: value})


def test_bad_prompt_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ex.ExperimentError, match="holds 0 prompt"):
        ex.load_prompts(small_params(tmp_path / "r", prompts=str(empty)))
    with pytest.raises(ex.ExperimentError, match="cannot read prompt file"):
        ex.load_prompts(small_params(tmp_path / "r", prompts=str(tmp_path / "missing.txt")))


def test_bundled_prompt_set_and_split():
    p = ex.ExperimentParams(prompts="vbench")
    prompts = ex.load_prompts(p)
    assert len(prompts) == 946
    splits = [ex.split_of(i, 20, p) for i in range(20)]
    assert splits.count("calib") == 10 and splits.count("test") == 10


def test_a_run_made_under_other_numerics_is_refused(tmp_path):
    params = small_params(tmp_path / "run")
    ex.open_run(params)
    (Path(params.out) / "scores").mkdir()
    (Path(params.out) / "scores" / "p0000.parquet").write_bytes(b"")  # finished work to protect
    pfile = Path(params.out) / "params.json"
    data = json.loads(pfile.read_text())
    data["numerics"] = "0" * 16  # as if made by another torch/diffusers/codec/preset configuration
    pfile.write_text(json.dumps(data))
    with pytest.raises(ex.ExperimentError, match="numerics"):
        ex.open_run(params)


def test_every_committed_experiment_config_validates():
    """The configs under benchmarks/configs are what the README and docs tell users to run."""
    from pathlib import Path

    from models.deviations import parse_deviation
    from sim.experiment import ExperimentParams

    configs = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "configs").glob("*.json"))
    assert configs
    for path in configs:
        params = ExperimentParams.model_validate_json(path.read_text())
        for spec in params.all_deviations():
            parse_deviation(spec)
