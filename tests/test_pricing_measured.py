"""Fairness against measured seconds: the stage fit recovers what it was fed, and the VAE (unpriced
by the DiT units) is what makes revenue per GPU-second uneven."""

from __future__ import annotations

import pytest

from sim.pricing import (FairnessGrid, PricingError, PricingParams, fit_stages, latent_patches,
                         measured_fairness, stage_calibration)

A, B, G, K, TE, O = 1.5e-9, 5e-5, 0.02, 3e-7, 0.2, 4e-7


def _generation(w, h, f, steps, high, low, vae_per_pixel, overhead_per_pixel):
    """A generation whose stage seconds follow the known coefficients exactly (wall = stages + O x pixels)."""
    n = latent_patches(w, h, f)
    per_pass = A * n * n + B * n + G
    stages = {"text_encoder": TE, "high": high * per_pass, "low": low * per_pass, "vae": vae_per_pixel * w * h * f}
    return {"width": w, "height": h, "frames": f, "steps": steps, "stages": stages,
            "wall_seconds": sum(stages.values()) + overhead_per_pixel * w * h * f,
            "forward_passes": {"high": high, "low": low}}


def fake_measurements(vae_per_pixel=K, overhead_per_pixel=O):
    passes, vae = [], []
    for w, h in ((832, 480), (1280, 720)):
        for f in (17, 33, 49, 65, 81):
            n = latent_patches(w, h, f)
            passes.append({"width": w, "height": h, "frames": f, "latent": [(f - 1) // 4 + 1, h // 8, w // 8],
                           "tokens": n, "seconds": A * n * n + B * n + G})
            vae.append({"width": w, "height": h, "frames": f, "seconds": vae_per_pixel * w * h * f})
    gens = [_generation(832, 480, 17, 20, 26, 14, vae_per_pixel, overhead_per_pixel),
            _generation(1280, 720, 17, 10, 14, 6, vae_per_pixel, overhead_per_pixel)]
    return {"device": "test", "preset": "test", "passes": passes, "vae": vae, "generate": gens}


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


def test_the_stage_complete_model_recovers_the_coefficients_and_is_flat():
    m = fake_measurements()
    fit = fit_stages(m)
    assert fit.vae_seconds_per_pixel == pytest.approx(K, rel=1e-9) and fit.text_encoder_seconds == pytest.approx(TE)
    assert fit.overhead_seconds_per_pixel == pytest.approx(O, rel=1e-9) and fit.overhead_points == 2
    p = fit.pricing()  # every stage the fit holds, and the constant
    assert p.charge_stages == ("text_encoder", "vae", "overhead") and p.charge_constant
    assert (p.alpha_seconds, p.vae_seconds_per_pixel, p.overhead_seconds_per_pixel) == pytest.approx((A, K, O), rel=1e-3)
    assert p.vae_r2 == pytest.approx(1.0) and p.overhead_points == 2 and p.fit_r2 == pytest.approx(1.0)
    grid = FairnessGrid(sizes=((832, 480), (1280, 720)), frames=(17, 81), steps=(10, 40))
    r = measured_fairness(m, grid)
    v = r["variants"]
    assert v["d"]["wall"]["max_over_min"] == pytest.approx(1.0, abs=1e-6)
    assert v["c"]["stages"]["max_over_min"] == pytest.approx(1.0, abs=1e-6)
    assert v["a"]["wall"]["max_over_min"] > 1.3 and v["a"]["stages"]["max_over_min"] > 1.2
    assert v["a"]["stages"]["max_over_min"] == r["revenue_per_gpu_second"]["max_over_min"]  # (a) is today's
    assert v["b"]["stages"]["max_over_min"] < v["a"]["stages"]["max_over_min"]
    # held out: each generation predicted by a fit that did not see it, priced within rounding by (d)
    for g in r["held_out"]["generations"]:
        assert g["wall_error"] == pytest.approx(0.0, abs=1e-6) and g["overhead_points"] == 1
        assert g["priced"]["d"]["wall_error"] == pytest.approx(0.0, abs=1e-6)
        assert g["priced"]["a"]["wall_error"] < -0.1  # today's formula undercharges a real generation
    assert r["held_out"]["vae_loo"]["max_abs_error"] < 1e-9 and r["held_out"]["passes_loo"]["max_abs_error"] < 1e-3


def test_a_noisy_vae_point_shows_in_the_leave_one_out():
    m = fake_measurements()
    m["vae"][3]["seconds"] *= 1.2
    loo = measured_fairness(m, FairnessGrid(sizes=((832, 480),), frames=(17,), steps=(10,)))["held_out"]["vae_loo"]
    worst = max(loo["points"], key=lambda p: abs(p["error"]))
    assert worst["frames"] == m["vae"][3]["frames"] and worst["error"] < -0.1


def test_the_calibration_json_round_trips_the_stage_terms(tmp_path):
    from sim.pricing import Calibration

    m = fake_measurements()
    cal = stage_calibration(m)
    path = cal.save(tmp_path / "stage.json")
    assert Calibration.load(path) == cal
    fit = fit_stages(m)
    held = PricingParams.from_calibration(path)  # carried, not charged: the proposal's formula
    assert held.charge_stages == () and held.vae_seconds_per_pixel == fit.vae_seconds_per_pixel
    assert held.overhead_r2 == fit.overhead_r2 and held.overhead_points == 2
    charged = PricingParams.from_calibration(path, charge_stages=("text_encoder", "vae", "overhead"),
                                             charge_constant=True)
    assert charged.model_dump(exclude={"source"}) == fit.pricing().model_dump(exclude={"source"})
    # a passes-only calibration (written before the stage terms existed) still loads, with none
    old = cal.model_dump(mode="json")
    for k in ("text_encoder_seconds", "text_encoder_points", "vae_seconds_per_pixel", "vae_r2", "overhead_seconds",
              "overhead_seconds_per_pixel", "overhead_r2", "overhead_points"):
        old.pop(k)
    (tmp_path / "old.json").write_text(__import__("json").dumps(old))
    assert PricingParams.from_calibration(tmp_path / "old.json").stage_seconds(832, 480, 81) == 0.0


def test_the_report_script_writes_its_files(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "measured.json"
    src.write_text(json.dumps({**fake_measurements(), "runtime": "test", "measured": "now"}))
    out = tmp_path / "report"
    subprocess.run([sys.executable, str(root / "benchmarks" / "pricing_measured.py"), str(src), "--out", str(out),
                    "--calibration", str(tmp_path / "cal.json")], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(root)})
    md = (tmp_path / "report.md").read_text()
    assert "almost by construction" in md and "(d) + non-model overhead" in md and "Held-out" in md
    assert PricingParams.from_calibration(tmp_path / "cal.json").overhead_points == 2


def test_the_cli_fairness_charges_a_stage_calibration(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from sim.pricing import fairness_summary, fairness_table

    path = stage_calibration(fake_measurements()).save(tmp_path / "stage.json")
    args = ["pricing", "fairness", "--calibration", str(path)]
    res = CliRunner().invoke(app, args + ["--charge-stages", "text_encoder, vae,overhead", "--charge-constant"])
    assert res.exit_code == 0, res.output
    full = PricingParams.from_calibration(path, charge_stages=("text_encoder", "vae", "overhead"), charge_constant=True)
    spread = fairness_summary(fairness_table(full)).set_index("scheme").loc["dit", "max_over_min"]
    today = fairness_summary(fairness_table(PricingParams.from_calibration(path))).set_index("scheme")
    assert spread == pytest.approx(1.0) and today.loc["dit", "max_over_min"] > 1.2
