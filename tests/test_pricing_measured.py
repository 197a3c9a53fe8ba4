"""Fairness against measured seconds: the stage fit recovers what it was fed, and the VAE (unpriced
by the DiT units) is what makes revenue per GPU-second uneven."""

from __future__ import annotations

import pytest

from sim.pricing import FairnessGrid, PricingError, fit_stages, latent_patches, measured_fairness

A, B, G, K, TE = 1.5e-9, 5e-5, 0.02, 3e-7, 0.2


def fake_measurements(vae_per_pixel=K):
    passes, vae = [], []
    for w, h in ((832, 480), (1280, 720)):
        for f in (17, 33, 49, 65, 81):
            n = latent_patches(w, h, f)
            passes.append({"width": w, "height": h, "frames": f, "tokens": n, "seconds": A * n * n + B * n + G})
            vae.append({"width": w, "height": h, "frames": f, "seconds": vae_per_pixel * w * h * f})
    gen = {"width": 832, "height": 480, "frames": 17, "steps": 20, "wall_seconds": 30.0,
           "stages": {"text_encoder": TE, "high": 1.0, "low": 1.0, "vae": 1.0}, "forward_passes": {"high": 26, "low": 14}}
    return {"device": "test", "passes": passes, "vae": vae, "generate": [gen]}


def test_stage_fit_recovers_the_inputs():
    fit = fit_stages(fake_measurements())
    assert fit.alpha_seconds == pytest.approx(A, rel=1e-3)
    assert fit.beta_seconds == pytest.approx(B, rel=1e-3)
    assert fit.vae_seconds_per_pixel == pytest.approx(K, rel=1e-9)
    assert fit.text_encoder_seconds == TE


def test_the_vae_makes_pricing_uneven():
    grid = FairnessGrid(sizes=((832, 480),), frames=(17, 81), steps=(10, 40))
    flat = measured_fairness(fake_measurements(vae_per_pixel=0.0), grid)
    uneven = measured_fairness(fake_measurements(), grid)
    # passes only: the units track the seconds up to the text encoder's constant
    assert flat["revenue_per_gpu_second"]["max_over_min"] < uneven["revenue_per_gpu_second"]["max_over_min"]
    assert uneven["unit_model_max_error"] < 0  # the units leave the decode out: they undercount
    assert uneven["unit_model_worst_request"]["steps"] == 10


def test_missing_measurements_are_named():
    with pytest.raises(PricingError, match="passes"):
        fit_stages({"passes": [], "vae": []})
