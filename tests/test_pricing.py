"""DiT pricing: forward passes per expert, units, Gonka's price rule, calibration on the tiny
preset (CPU), fairness against naive prices."""

from __future__ import annotations

import numpy as np
import pytest

from sim.pricing import (Calibration, FairnessGrid, PriceRule, PricingError, PricingParams, calibrate, cost_ngonka,
                         fairness_summary, fairness_table, fit_pass_seconds, forward_passes_for, latent_patches,
                         next_unit_price, scheduler_timesteps)


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (2, 12.0), (4, 5.0), (10, 12.0), (40, 12.0), (50, 3.0)])
def test_timesteps_match_the_pipeline_scheduler(steps, shift):
    from models.engine import schedule
    from models.presets import SCHEDULER_CONFIG
    from models.request import GenerationRequest

    ref = schedule(GenerationRequest(prompt="x", steps=steps, shift=shift), SCHEDULER_CONFIG)
    assert np.allclose(scheduler_timesteps(steps, shift), ref)


@pytest.mark.parametrize("gh,gl", [(4.0, 3.0), (4.0, 1.0), (1.0, 3.0), (1.0, 1.0)])
def test_forward_passes_count_cfg_per_expert(gh, gl):
    from models.engine import forward_passes
    from models.request import GenerationRequest

    r = GenerationRequest(model="a14b-random", prompt="x", guidance_high=gh, guidance_low=gl)
    assert forward_passes_for(r.steps, r.shift, gh > 1, gl > 1) == forward_passes(r)
    if gh > 1 and gl > 1:
        assert forward_passes(r) == 80  # docs/facts.md: 80 passes per 40-step video


def test_latent_patches_match_request():
    from models.request import GenerationRequest

    r = GenerationRequest(model="a14b-random", prompt="x")
    assert latent_patches(r.width, r.height, r.frames) == r.latent_tokens() == 32_760  # docs/facts.md 480p


def test_units_defaults_and_scaling():
    p = PricingParams()
    base = dict(width=832, height=480, frames=81, steps=40, guidance_high=4.0, guidance_low=3.0, shift=12.0)
    u = p.units(**base)
    # 80 passes of (a N^2 + b N) at N=32,760 over one pass at the smallest setting
    n0 = p.unit_patches
    expect = 80 * (1.454e-9 * 32760**2 + 5.557e-5 * 32760) / (1.454e-9 * n0**2 + 5.557e-5 * n0)
    assert u == pytest.approx(expect)
    assert p.units(**{**base, "steps": 20}) == pytest.approx(u / 2)
    assert p.units(**{**base, "guidance_low": 1.0, "guidance_high": 1.0}) == pytest.approx(u / 2)
    assert p.units(width=p.min_width, height=p.min_height, frames=p.min_frames, steps=1, guidance_high=1.0,
                   guidance_low=1.0, shift=12.0) == pytest.approx(1.0)  # the unit
    bigger = p.units(**{**base, "width": 1280, "height": 720})
    assert bigger / u > 75_600 / 32_760  # superlinear: attention is quadratic
    with pytest.raises(PricingError, match="steps"):
        p.units(**{**base, "steps": 0})


def test_price_rule_is_gonkas():
    r = PriceRule()
    # an integer price, truncated at every update (Gonka IntPart)
    assert next_unit_price(100, 0.5, r) == 100
    assert next_unit_price(100, 0.3, r) == 99  # 100 x 0.995 = 99.5
    assert next_unit_price(1000, 0.3, r) == 995
    assert next_unit_price(100, 0.0, r) == 98  # largest step down 1 - 0.4 x 0.05
    assert next_unit_price(1000, 0.7, r) == 1005
    assert next_unit_price(100, 5.0, r) == 102  # largest step up 1 + (1 - 0.6) x 0.05
    assert next_unit_price(1, 0.0, r) == 1  # floor
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(PricingError, match="utilisation"):
            next_unit_price(100, bad, r)
    with pytest.raises(ValueError, match="target_low"):
        PriceRule(target_low=0.7, target_high=0.6)
    with pytest.raises(ValueError, match="sensitivity"):
        PriceRule(sensitivity=-1)
    assert cost_ngonka(2.5, 100) == 250 and cost_ngonka(2.501, 100) == 251 and cost_ngonka(0.1, 10) == 1


def test_fit_recovers_known_coefficients():
    n = np.array([1950, 3510, 5070, 8190, 18480, 32760, 75600], float)
    y = 1.454e-9 * n**2 + 5.557e-5 * n + 0.020
    a, b, c, r2 = fit_pass_seconds(n, y)
    assert a == pytest.approx(1.454e-9, rel=1e-6) and b == pytest.approx(5.557e-5, rel=1e-6)
    assert c == pytest.approx(0.020, rel=1e-4) and r2 == pytest.approx(1.0)
    # the docs/facts.md H100 measurements themselves give the docs/facts.md fit
    secs = [0.125, 0.227, 0.341, 0.577, 1.573, 3.379, 12.53]
    a, b, c, r2 = fit_pass_seconds(n, secs)
    assert a == pytest.approx(1.454e-9, rel=0.02) and r2 > 0.9999
    with pytest.raises(PricingError, match="3 distinct"):
        fit_pass_seconds([1, 1, 2], [1, 1, 2])


def test_calibrate_tiny_preset_on_cpu(tmp_path):
    from models.request import Runtime

    cal = calibrate("tiny", Runtime(dtype="float32", threads=1), repeats=2)
    assert len(cal.points) >= 6 and cal.alpha_seconds >= 0 and cal.beta_seconds >= 0
    assert cal.r2 > 0.8  # timing noise on a shared CPU; the fit still explains most variance
    path = cal.save(tmp_path / "cal.json")
    again = Calibration.load(path)
    assert again == cal
    p = PricingParams.from_calibration(path)
    assert p.alpha_seconds == cal.alpha_seconds and "tiny" in p.source
    with pytest.raises(PricingError, match="does not exist"):
        Calibration.load(tmp_path / "missing.json")


def test_fairness_dit_is_flat_and_naive_prices_are_not():
    table = fairness_table()
    s = fairness_summary(table).set_index("scheme")
    assert s.loc["dit", "max_over_min"] < 1.1  # only the per-pass constant bends it
    assert s.loc["per_frame", "max_over_min"] > 10 and s.loc["per_pixel", "max_over_min"] > 5
    assert s.loc["dit", "cv"] < s.loc["per_token_step", "cv"] < s.loc["per_pixel", "cv"]
    # charging the constant too makes it exactly flat
    exact = fairness_summary(fairness_table(PricingParams(charge_constant=True))).set_index("scheme")
    assert exact.loc["dit", "max_over_min"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="4k\\+1"):
        FairnessGrid(frames=(16,))


# ---------------------------------------------------------------------------------------------
# Stage-complete pricing (off by default)

A14B = dict(width=832, height=480, frames=81, steps=40, guidance_high=4.0, guidance_low=3.0, shift=12.0)


def _proposal_units(w, h, f, steps, gh, gl, shift, a=1.454e-9, b=5.557e-5, g=0.020):
    """The proposal's formula written out here: passes x (a P^2 + b P) / (a P0^2 + b P0), and the true
    seconds with the constant."""
    p = ((f - 1) // 4 + 1) * (h // 16) * (w // 16)
    p0 = ((5 - 1) // 4 + 1) * (480 // 16) * (480 // 16)
    passes = forward_passes_for(steps, shift, gh > 1, gl > 1)
    return passes * (a * p * p + b * p) / (a * p0 * p0 + b * p0), passes * (a * p * p + b * p + g)


@pytest.mark.parametrize("w,h", [(832, 480), (1280, 720), (480, 832)])
@pytest.mark.parametrize("f,steps,gh,gl", [(81, 40, 4.0, 3.0), (17, 10, 1.0, 1.0), (49, 25, 4.0, 1.0)])
def test_the_default_is_the_proposals_formula(w, h, f, steps, gh, gl):
    from sim.chain.params import ChainParams

    units, seconds = _proposal_units(w, h, f, steps, gh, gl, 12.0)
    for p in (PricingParams(), ChainParams().pricing):
        kw = dict(width=w, height=h, frames=f, steps=steps, guidance_high=gh, guidance_low=gl, shift=12.0)
        assert p.units(**kw) == pytest.approx(units, rel=1e-12)
        assert p.gpu_seconds(**kw) == pytest.approx(seconds, rel=1e-12)
        assert p.charge_stages == () and p.stage_seconds(w, h, f) == 0.0


def test_a_priced_vae_follows_pixels_not_steps():
    k = 3e-7
    base, vae = PricingParams(), PricingParams(vae_seconds_per_pixel=k, charge_stages=("vae",))
    held = PricingParams(vae_seconds_per_pixel=k)  # held (true time), not charged

    def extra(**kw):
        return vae.units(**{**A14B, **kw}) - base.units(**{**A14B, **kw})

    assert held.units(**A14B) == base.units(**A14B)
    assert held.gpu_seconds(**A14B) == pytest.approx(base.gpu_seconds(**A14B) + k * 832 * 480 * 81)
    assert extra() == pytest.approx(k * 832 * 480 * 81 / base.unit_seconds)
    assert extra(steps=10) == pytest.approx(extra()) and extra(steps=50) == pytest.approx(extra())
    assert extra(guidance_high=1.0, guidance_low=1.0) == pytest.approx(extra())
    assert extra(width=1280, height=720) == pytest.approx(extra() * (1280 * 720) / (832 * 480))
    assert extra(frames=17) == pytest.approx(extra() * 17 / 81)
    assert vae.unit_seconds == base.unit_seconds  # the unit is still one pass at the smallest setting


@pytest.mark.parametrize("field,value", [("vae_seconds_per_pixel", -1e-9), ("text_encoder_seconds", float("nan")),
                                         ("overhead_seconds", float("inf")), ("overhead_seconds_per_pixel", -1.0),
                                         ("overhead_points", -1), ("charge_stages", ("gpu",))])
def test_bad_stage_values_are_refused_naming_the_field(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        PricingParams(**{field: value})


def test_a_charged_stage_must_hold_seconds():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="vae_seconds_per_pixel"):
        PricingParams(charge_stages=("vae",))
    with pytest.raises(ValidationError, match="overhead_seconds and overhead_seconds_per_pixel"):
        PricingParams(charge_stages=("overhead",))
    with pytest.raises(ValidationError, match="twice"):
        PricingParams(vae_seconds_per_pixel=1e-7, charge_stages=("vae", "vae"))
    assert PricingParams(overhead_seconds_per_pixel=1e-7, charge_stages=("overhead",)).charge_stages == ("overhead",)
