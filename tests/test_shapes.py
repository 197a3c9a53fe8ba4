"""The procedural shapes data set, the frame read-off of prompt following, training with resume and
export, and the shipped `shapes` preset."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from models import shapes_data
from sim import shapes_quality


def test_scenes_are_seeded_and_prompts_parse_back():
    a, b = shapes_data.batch([3, 4, 5]), shapes_data.batch([3, 4, 5])
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0][0], a[0][1])
    assert a[0].shape == (3, 3, 9, 32, 32) and a[0].min() >= -1 and a[0].max() <= 1
    for attrs in shapes_data.all_attributes():
        parsed = shapes_data.parse_prompt(shapes_data.prompt_of(*attrs))
        assert parsed == dict(zip(("colour", "shape", "motion", "background"), attrs))
    assert shapes_data.parse_prompt("a fox in the snow") is None
    ps = shapes_data.templated_prompts(20, seed=1)
    assert len(set(ps)) == 20 and ps == shapes_data.templated_prompts(20, seed=1)
    with pytest.raises(ValueError, match="at most"):
        shapes_data.templated_prompts(10_000)


def test_read_off_recovers_rendered_attributes_and_rejects_wrong_prompts():
    rows, wrong = [], []
    for s in range(30):
        scene = shapes_data.scene_for(7_000 + s)
        frames = (shapes_data.render(scene) * 255).round().astype(np.uint8)
        rows.append(shapes_quality.score_video(scene.prompt, frames))
        other = [c for c in shapes_data.COLOURS if c != scene.colour][s % 3]
        wrong.append(shapes_quality.score_video(
            shapes_data.prompt_of(other, scene.shape, scene.motion, scene.background), frames))
    acc = shapes_quality.accuracy(rows)
    assert acc["all"]["accuracy"] >= 0.95, [r for r in rows if not r["all_ok"]]
    assert not any(r["colour_ok"] for r in wrong)
    assert acc["colour"]["chance_uniform"] == 0.25 and 0.1 < acc["colour"]["chance_shuffled"] < 0.45
    # A blank video reads as nothing, and so follows no prompt.
    blank = shapes_quality.score_video(rows[0]["prompt"], np.full((9, 32, 32, 3), 40, np.uint8))
    assert blank["got_colour"] is None and not blank["all_ok"]
    lo, hi = shapes_quality.clopper_pearson(0, 10)
    assert lo == 0.0 and 0.30 < hi < 0.31


def _tiny_cfg(**kw):
    from models.shapes_train import SHAPES_TEXT, SHAPES_TRANSFORMER, SHAPES_VAE, TrainConfig

    return TrainConfig(
        side=16, frames=5, vae_steps=4, expert_steps=3, vae_batch=1, expert_batch=2, checkpoint_every=2,
        latent_stat_clips=8, latent_pool=4, vae=dict(SHAPES_VAE, base_dim=4, dim_mult=[1, 1, 1, 1]),
        transformer=dict(SHAPES_TRANSFORMER, num_attention_heads=1, attention_head_dim=8, ffn_dim=16, num_layers=1,
                         text_dim=16),
        text=dict(SHAPES_TEXT, d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2), **kw)


def test_training_resumes_to_the_same_weights_and_exports_a_loadable_directory(tmp_path):
    import torch

    from models import shapes_train as st
    from models.engine import generate
    from models.presets import build_pipeline
    from models.request import GenerationRequest

    cfg = _tiny_cfg()
    for stage in st.STAGES:
        st.train_stage(stage, cfg, tmp_path / "whole", log=lambda m: None)
    # The same run interrupted after every checkpoint (a zero time limit stops at the next step).
    for stage in st.STAGES:
        for _ in range(4):
            if st.train_stage(stage, cfg, tmp_path / "parts", max_seconds=0.0, log=lambda m: None)["step"] >= (
                    cfg.vae_steps if stage == "vae" else cfg.expert_steps):
                break
        st.train_stage(stage, cfg, tmp_path / "parts", log=lambda m: None)
    for stage in st.STAGES:
        a, b = st.load_state(tmp_path / "whole", stage), st.load_state(tmp_path / "parts", stage)
        assert a["step"] == b["step"] and a["losses"] == b["losses"], stage
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (stage, k)
    assert st.load_state(tmp_path / "whole", "vae")["latents_std"] is not None
    with pytest.raises(st.TrainError, match="other settings"):
        st.check_config(_tiny_cfg(seed=1), tmp_path / "whole")
    with pytest.raises(st.TrainError, match="vae first"):
        st.train_stage("high", cfg, tmp_path / "fresh", log=lambda m: None)

    out = st.export(cfg, tmp_path / "whole", tmp_path / "model", hardware="test CPU")
    card = (out / "CARD.md").read_text()
    assert "frozen seeded random weights" in card and "test CPU" in card
    pipe = build_pipeline(f"path:{out}")
    trained = st.load_state(tmp_path / "whole", "low")["model"]["proj_out.weight"]
    assert torch.equal(pipe.transformer_2.proj_out.weight.float(), trained.to(torch.bfloat16).float())
    gen = generate(GenerationRequest(model=f"path:{out}", prompt="a red circle moving left on a black background",
                                     width=16, height=16, frames=5, steps=2), capture=("final",))
    assert gen.frames.shape == (5, 16, 16, 3)
    # an earlier export is replaced; a directory with anything else in it is refused, untouched
    assert st.export(cfg, tmp_path / "whole", out, hardware="again") == out
    assert "again" in (out / "CARD.md").read_text() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="export_to: .* is not empty"):
        st.export(cfg, tmp_path / "whole", out)
    assert (out / "notes.txt").read_text() == "mine" and "again" in (out / "CARD.md").read_text()


def test_shipped_shapes_preset_loads_offline_and_follows_prompts():
    from models.engine import generate
    from models.presets import SHAPES_DIR, preset_names, preset_spec
    from models.request import GenerationRequest

    assert "shapes" in preset_names() and (SHAPES_DIR / "CARD.md").is_file()
    spec = preset_spec("shapes")
    assert spec.path and spec.request_defaults["width"] == 32 and spec.boundary_ratio == 0.875
    rows = []
    for i, p in enumerate(shapes_data.templated_prompts(6, seed=3)):
        gen = generate(GenerationRequest(model="shapes", prompt=p, seed=i), capture=())
        assert gen.frames.shape == (9, 32, 32, 3)
        rows.append(shapes_quality.score_video(p, gen.frames))
    # Colour is the easiest attribute: a trained model names it far above the 25% of chance.
    assert shapes_quality.accuracy(rows)["colour"]["accuracy"] >= 4 / 6, rows


def test_cli_shapes_prompts_and_errors(tmp_path):
    from flows.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["shapes", "prompts", "3", "--out", str(tmp_path / "p.txt")])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "p.txt").read_text().splitlines()
    assert len(lines) == 3 and all(shapes_data.parse_prompt(x) for x in lines)
    # domain errors: one line, status 1 (flows/cli_common.py)
    res = runner.invoke(app, ["shapes", "train", "--stage", "decoder", "--work", str(tmp_path / "w")])
    assert res.exit_code == 1 and "stage" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["shapes", "quality", "--preset", "tiny", "--deviation", "warp:9"])
    assert res.exit_code == 1 and "warp" in res.output and "Traceback" not in res.output
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["shapes", "quality", "--prompts", "1", "--out", str(tmp_path / "q")])
    assert res.exit_code == 1 and "not empty" in res.output and (tmp_path / "q" / "notes.txt").read_text() == "mine"
    res = runner.invoke(app, ["shapes", "train", "--work", str(tmp_path / "w2"), "--export-to", str(tmp_path / "q")])
    assert res.exit_code == 1 and "export_to" in res.output and not (tmp_path / "w2").exists()
    assert not (tmp_path / "w").exists()
