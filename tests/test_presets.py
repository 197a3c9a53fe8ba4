"""Presets: portable seeded weights, float32 islands, the exact A14B shapes."""

import json
from pathlib import Path

import pytest
import torch

from models.presets import (
    PRESETS,
    parameters_on_meta,
    build_pipeline,
    materialize,
    preset_spec,
    seeded_tensor,
    weights_digest,
)
from models.request import Runtime

GOLDEN = json.loads((Path(__file__).parent / "golden" / "tiny.json").read_text())


def test_tiny_weights_match_golden_digests():
    # The digests were computed once; equal digests on any machine = bit-identical weights.
    pipe = build_pipeline("tiny")
    for name, digest in GOLDEN["digests"].items():
        assert weights_digest(getattr(pipe, name)) == digest, name


def test_seeded_tensor_depends_only_on_seed_and_name():
    a = seeded_tensor(0, "blocks.0.attn1.to_q.weight", (8, 8))
    b = seeded_tensor(0, "blocks.0.attn1.to_q.weight", (8, 8))
    c = seeded_tensor(1, "blocks.0.attn1.to_q.weight", (8, 8))
    d = seeded_tensor(0, "blocks.0.attn1.to_k.weight", (8, 8))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert torch.all(seeded_tensor(0, "x.bias", (4,)) == 0) and torch.all(seeded_tensor(0, "n.weight", (4,)) == 1)


def test_experts_differ_and_lite_shares_weights_by_name():
    tiny, lite = build_pipeline("tiny"), build_pipeline("tiny-lite")
    assert weights_digest(tiny.transformer) != weights_digest(tiny.transformer_2)
    assert len(lite.transformer.blocks) == 1
    assert torch.equal(lite.transformer.blocks[0].attn1.to_q.weight, tiny.transformer.blocks[0].attn1.to_q.weight)


def test_bf16_keeps_diffusers_float32_islands():
    pipe = build_pipeline("tiny", Runtime(dtype="bfloat16"))
    dtypes = {n: p.dtype for n, p in pipe.transformer.named_parameters()}
    assert dtypes["scale_shift_table"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert next(pipe.vae.parameters()).dtype == torch.float32
    f32 = build_pipeline("tiny", Runtime(dtype="float32"))
    assert all(p.dtype == torch.float32 for p in f32.transformer.parameters())
    # the same draws: bf16 weights are the float32 ones rounded
    assert torch.equal(f32.transformer.blocks[0].attn1.to_q.weight.bfloat16(), pipe.transformer.blocks[0].attn1.to_q.weight)


def test_a14b_configuration_has_the_published_size():
    # Built with parameters on the meta device: no memory, exact shapes.
    from diffusers import WanTransformer3DModel

    with parameters_on_meta():
        expert = WanTransformer3DModel(**preset_spec("a14b-random").transformer_config)
    n = sum(p.numel() for p in expert.parameters())
    assert abs(n - 14.29e9) < 0.01e9  # docs/facts.md: 14.29 B parameters per expert
    assert all(p.device.type == "meta" for p in expert.parameters())


def test_materialize_replaces_meta_parameters_in_place():
    from diffusers import WanTransformer3DModel

    with parameters_on_meta():
        m = WanTransformer3DModel(**PRESETS["tiny"].transformer_config)
    materialize(m, 0, torch.bfloat16, torch.device("cpu"), prefix="transformer.")
    assert weights_digest(m) == GOLDEN["digests"]["transformer"]


def test_unknown_preset_and_bad_seed():
    with pytest.raises(ValueError, match="unknown preset"):
        build_pipeline("huge")
    with pytest.raises(ValueError, match="weights_seed"):
        build_pipeline("tiny", weights_seed=-1)


def test_path_preset_loads_a_local_diffusers_directory(tmp_path):
    # A diffusers directory written by save_pretrained loads offline through `path:DIR`, with the
    # same weights (float32 islands included) as the preset it was saved from.
    from models.engine import generate
    from models.request import GenerationRequest

    tiny = build_pipeline("tiny")
    tiny.save_pretrained(tmp_path / "wan")
    spec = preset_spec(f"path:{tmp_path / 'wan'}")
    assert spec.transformer_config["num_layers"] == 2 and spec.boundary_ratio == 0.875
    loaded = build_pipeline(f"path:{tmp_path / 'wan'}")
    for name in ("transformer", "transformer_2", "vae"):
        assert weights_digest(getattr(loaded, name)) == GOLDEN["digests"][name], name
    assert dict(loaded.transformer.named_parameters())["scale_shift_table"].dtype == torch.float32
    gen = generate(GenerationRequest(model=f"path:{tmp_path / 'wan'}", prompt="a boat", width=64, height=64,
                                     frames=9, steps=2), capture=("final",))
    assert gen.frames.shape == (9, 64, 64, 3) and gen.cost.total_passes == 4
