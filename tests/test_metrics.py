"""Frame and latent metrics: distances (0 for identical, growing with the difference), clear errors,
and LPIPS/DISTS loaded from locally made weight files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import metrics
from sim.metrics import MetricError, MissingWeights, score_frames, score_latents

WEIGHTLESS = ("ssim", "psnr", "gmsd", "haarpsi")


def _video(seed=0, f=5, h=64, w=64):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 5 + t) * 60 + 120 + rng.normal(0, 15, (h, w)) for t in range(f)])
    rgb = np.stack([base, np.roll(base, 3, axis=1), 255 - base], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _noisy(v, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(v.astype(float) + rng.normal(0, sigma, v.shape), 0, 255).astype(np.uint8)


def test_identical_frames_score_minimum():
    v = _video()
    s = score_frames(v, v, WEIGHTLESS)
    for m in ("ssim", "gmsd", "haarpsi"):
        for a in ("mean", "worst", "p90"):
            assert s[f"{m}.{a}"] == 0.0
    assert s["psnr.mean"] == pytest.approx(-80.0)  # piq's 1e-8 epsilon caps PSNR at 80 dB


def test_distances_grow_with_noise():
    v = _video()
    ladder = [score_frames(v, _noisy(v, sigma), WEIGHTLESS, ("mean",)) for sigma in (1, 4, 16, 48)]
    for m in WEIGHTLESS:
        vals = [s[f"{m}.mean"] for s in ladder]
        assert all(a < b for a, b in zip(vals, vals[1:])), (m, vals)


def test_aggregations_follow_per_frame_values():
    v = _video(f=6)
    t = v.copy()
    for i in range(6):  # frame i gets noise sigma 4*i: per-frame distances increase
        t[i] = _noisy(v[i:i + 1], 4 * i + 0.5, seed=i)[0]
    per = metrics.per_frame_distances(v, t, ("gmsd",))["gmsd"]
    s = score_frames(v, t, ("gmsd",), ("mean", "worst", "p90", "p50"))
    assert s["gmsd.mean"] == pytest.approx(per.mean())
    assert s["gmsd.worst"] == pytest.approx(per.max()) and per.argmax() == 5
    assert s["gmsd.p50"] == pytest.approx(np.median(per))
    assert s["gmsd.mean"] < s["gmsd.p90"] < s["gmsd.worst"]


def test_shape_mismatch_scores_inf():
    v = _video()
    for other in (v[:4], _video(h=32, w=64)):
        s = score_frames(v, other, ("ssim", "psnr"), ("mean", "worst"))
        assert set(s) == {"ssim.mean", "ssim.worst", "psnr.mean", "psnr.worst"}
        assert all(math.isinf(x) and x > 0 for x in s.values())


def test_ms_ssim_size_rule():
    small = _video(f=2)
    with pytest.raises(MetricError, match="161"):
        score_frames(small, small, ("ms_ssim",))
    big = _video(f=2, h=176, w=176)
    s = score_frames(big, _noisy(big, 8), ("ms_ssim",), ("mean",))
    assert 0.0 < s["ms_ssim.mean"] < 0.5
    assert score_frames(big, big, ("ms_ssim",), ("mean",))["ms_ssim.mean"] == 0.0


def test_unknown_names_and_bad_inputs():
    v = _video(f=2)
    with pytest.raises(ValueError, match="allowed: ssim, ms_ssim, psnr, gmsd, haarpsi, lpips, dists"):
        score_frames(v, v, ("ssim", "vmaf"))
    with pytest.raises(ValueError, match="aggregation 'median'"):
        score_frames(v, v, ("ssim",), ("median",))
    with pytest.raises(ValueError, match="uint8"):
        score_frames(v.astype(np.float32), v)
    with pytest.raises(ValueError, match="allowed: rel_l2, cosine"):
        score_latents(np.ones(3), np.ones(3), ("l1",))


def test_scoring_restores_thread_count():
    before = torch.get_num_threads()
    v = _video(f=2)
    score_frames(v, _noisy(v, 4), ("ssim",), threads=1)
    assert torch.get_num_threads() == before


def test_thread_count_does_not_change_distances():
    # the experiment scores with the thread count in force (or one per worker thread): same bits
    v = _video(f=6)
    t = _noisy(v, 6)
    one = metrics.per_frame_distances(v, t, WEIGHTLESS, threads=1)
    two = metrics.per_frame_distances(v, t, WEIGHTLESS, threads=2)
    for m in WEIGHTLESS:
        assert np.array_equal(one[m], two[m]), m


def test_partly_identical_videos_get_identity_frames_only():
    v = _video(f=4)
    t = v.copy()
    t[2] = _noisy(v[2:3], 8)[0]
    per = metrics.per_frame_distances(v, t, WEIGHTLESS)
    for m in WEIGHTLESS:
        assert per[m][2] > metrics.IDENTITY.get(m, 0.0)
        assert np.all(per[m][[0, 1, 3]] == metrics.IDENTITY.get(m, 0.0))
    same = metrics.per_frame_distances(v, v, WEIGHTLESS)  # no frame differs: nothing is computed
    assert all(np.array_equal(same[m], np.full(4, metrics.IDENTITY.get(m, 0.0))) for m in WEIGHTLESS)


# ---------------------------------------------------------------------------------------------
# Latents


def test_latent_metrics_values():
    a = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    s = score_latents(a, a)
    assert s == {"rel_l2": 0.0, "cosine": 0.0}
    s = score_latents(a, a * 1.1)
    assert s["rel_l2"] == pytest.approx(0.1, rel=1e-6)
    assert s["cosine"] == pytest.approx(0.0, abs=1e-12)
    s = score_latents(a, -a)
    assert s["rel_l2"] == pytest.approx(2.0) and s["cosine"] == pytest.approx(2.0)
    s = score_latents(a, a[:, :, :2])
    assert math.isinf(s["rel_l2"]) and math.isinf(s["cosine"])


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-6, 1.0), st.integers(0, 2**31 - 1))
def test_rel_l2_is_perturbation_size(eps, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=200)
    d = rng.normal(size=200)
    b = a + eps * np.linalg.norm(a) * d / np.linalg.norm(d)
    assert metrics.rel_l2(a, b) == pytest.approx(eps, rel=1e-6)
    assert 0.0 <= metrics.cosine_distance(a, b) <= eps**2  # 1 - cos <= ||d||^2 / 2 for unit-norm scale


# ---------------------------------------------------------------------------------------------
# LPIPS / DISTS from local weight files


def test_missing_perceptual_weights_name_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(metrics.WEIGHTS_DIR_ENV, raising=False)
    v = _video(f=2)
    with pytest.raises(MissingWeights) as err:
        score_frames(v, v, ("lpips",), weights_dir=tmp_path / "w")
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and "lpips_weights.pt" in msg
    assert str(tmp_path / "w") in msg and str(tmp_path / "hub" / "checkpoints") in msg
    with pytest.raises(MissingWeights, match="dists_weights.pt"):
        score_frames(v, v, ("dists",), weights_dir=tmp_path / "w")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Weight files of the right names and shapes, made locally (random VGG16 features)."""
    from torchvision.models import vgg16

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    feats = vgg16(weights=None).features.state_dict()
    torch.save({f"features.{k}": v.half() for k, v in feats.items()}, d / metrics.VGG16_FILE)
    g = torch.Generator().manual_seed(1)
    torch.save([torch.rand(1, c, 1, 1, generator=g) for c in (64, 128, 256, 512, 512)], d / "lpips_weights.pt")
    w = torch.rand(2 * 1475, generator=g)
    w = w / w.sum()  # DISTS's alpha and beta together sum to 1, so identical images score 0
    torch.save({"alpha": w[:1475].reshape(1, 1475, 1, 1), "beta": w[1475:].reshape(1, 1475, 1, 1)}, d / "dists_weights.pt")
    return d


@pytest.mark.slow
def test_perceptual_metrics_from_local_files(weights_dir):
    metrics._PERCEPTUAL_CACHE.clear()
    v = _video(f=3)
    same = score_frames(v, v, ("lpips", "dists"), ("mean",), weights_dir=weights_dir)
    assert same == {"lpips.mean": 0.0, "dists.mean": 0.0}
    one_off = v.copy()
    one_off[0, 0, 0, 0] ^= 1  # one pixel differs by one level: not identical, still ~0
    tiny = metrics.per_frame_distances(v, one_off, ("lpips", "dists"), weights_dir=weights_dir)
    assert tiny["lpips"][0] < 1e-4 and abs(tiny["dists"][0]) < 1e-3
    near = score_frames(v, _noisy(v, 4), ("lpips", "dists"), ("mean",), weights_dir=weights_dir)
    far = score_frames(v, _noisy(v, 40), ("lpips", "dists"), ("mean",), weights_dir=weights_dir)
    assert 0 < near["lpips.mean"] < far["lpips.mean"]
    assert near["dists.mean"] < far["dists.mean"]
    assert len(metrics._PERCEPTUAL_CACHE) == 2  # built once per metric and reused


def test_wrongly_shaped_weight_file_is_named(weights_dir, tmp_path):
    import shutil

    shutil.copy(weights_dir / metrics.VGG16_FILE, tmp_path / metrics.VGG16_FILE)
    torch.save([torch.rand(1, 64, 1, 1)] * 4, tmp_path / "lpips_weights.pt")
    metrics._PERCEPTUAL_CACHE.clear()
    v = _video(f=2)
    with pytest.raises(MissingWeights, match="lpips_weights.pt.*5 tensors"):
        score_frames(v, v, ("lpips",), weights_dir=tmp_path)
