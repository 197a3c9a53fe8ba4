"""The PoC forward on the tiny preset (CPU, float32): seeded, scrambled, routed, and leaving no trace."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from models.poc import (
    HeldExpertRouter, PocInputError, PocVariant, householder_vectors, nonce_expert, nonce_inputs,
    plain_forward, poc_shape, poc_vectors, reflect, rounded_weights, scrambled,
)
from models.presets import build_pipeline, weights_digest
from models.request import Runtime

RT = Runtime(dtype="float32", batch_size=4)
BH, PK = "block-abc", "pk-1"


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("tiny", RT)


@pytest.fixture(scope="module")
def shape():
    return poc_shape("tiny")


def sample_input(shape, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape.latent), generator=g)
    e = torch.randn((batch, shape.text_len, shape.text_dim), generator=g)
    return x, torch.tensor([900.0, 300.0][:batch]), e


def hooks_on(transformer):
    return sum(len(b._forward_pre_hooks) for b in transformer.blocks) + len(transformer._forward_pre_hooks)


def test_normal_forward_bit_identical_before_and_after_poc(pipe, shape):
    x, t, e = sample_input(shape)
    before = [plain_forward(m, x, t, e) for m in (pipe.transformer, pipe.transformer_2)]
    digests = [weights_digest(m) for m in (pipe.transformer, pipe.transformer_2)]
    poc_vectors(pipe, BH, PK, range(8), shape=shape, runtime=RT)
    poc_vectors(pipe, BH, PK, range(8), shape=shape, runtime=RT, variant=PocVariant(weights="int4"))
    after = [plain_forward(m, x, t, e) for m in (pipe.transformer, pipe.transformer_2)]
    for b, a in zip(before, after):
        assert torch.equal(b, a)
    assert [weights_digest(m) for m in (pipe.transformer, pipe.transformer_2)] == digests
    assert hooks_on(pipe.transformer) == 0 and hooks_on(pipe.transformer_2) == 0


def test_scrambling_changes_the_forward_and_is_removed_even_on_error(pipe, shape):
    x, t, e = sample_input(shape)
    plain = plain_forward(pipe.transformer, x, t, e)
    with scrambled(pipe.transformer, BH):
        assert hooks_on(pipe.transformer) == len(pipe.transformer.blocks)
        scr = plain_forward(pipe.transformer, x, t, e)
    assert not torch.allclose(plain, scr, atol=1e-3)
    with pytest.raises(RuntimeError, match="boom"):
        with scrambled(pipe.transformer, BH):
            raise RuntimeError("boom")
    assert hooks_on(pipe.transformer) == 0
    assert torch.equal(plain_forward(pipe.transformer, x, t, e), plain)


def test_rounded_weights_restored_even_on_error(pipe):
    digest = weights_digest(pipe.transformer)
    with pytest.raises(RuntimeError, match="boom"):
        with rounded_weights([pipe.transformer], "fp8"):
            assert weights_digest(pipe.transformer) != digest
            raise RuntimeError("boom")
    assert weights_digest(pipe.transformer) == digest
    with pytest.raises(PocInputError, match="fp8"):
        with rounded_weights([pipe.transformer], "int3"):
            pass


def test_householder_is_an_orthogonal_involution():
    (v,) = householder_vectors("b", 1, 24)
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-6)
    x = torch.randn(3, 5, 24)
    y = reflect(x, v)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(reflect(y, v), x, atol=1e-5)
    assert not torch.allclose(y, x)
    # seeded by "{block_hash}_layer_{i}_householder": another block hash, another layer, another vector
    assert not torch.equal(householder_vectors("b", 2, 24)[1], v)
    assert not torch.equal(householder_vectors("c", 1, 24)[0], v)


def test_vectors_are_seeded_unit_float16_and_order_independent(pipe, shape):
    v = poc_vectors(pipe, BH, PK, range(10), shape=shape, runtime=RT)
    assert v.shape == (10, 12) and v.dtype == np.float16
    assert np.allclose(np.linalg.norm(v.astype(np.float32), axis=1), 1.0, atol=2e-3)
    again = poc_vectors(pipe, BH, PK, list(range(10))[::-1], shape=shape, runtime=RT)
    assert np.array_equal(again[::-1], v)
    other_key = poc_vectors(pipe, BH, "pk-2", range(10), shape=shape, runtime=RT)
    other_block = poc_vectors(pipe, "block-xyz", PK, range(10), shape=shape, runtime=RT)
    for w in (other_key, other_block):
        assert np.all(np.linalg.norm(w.astype(np.float32) - v.astype(np.float32), axis=1) > 0.2)


def test_batch_size_is_benign_in_float32(pipe, shape):
    a = poc_vectors(pipe, BH, PK, range(12), shape=shape, runtime=RT.model_copy(update={"batch_size": 1}))
    b = poc_vectors(pipe, BH, PK, range(12), shape=shape, runtime=RT.model_copy(update={"batch_size": 12}))
    assert np.max(np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=1)) < 1e-3


def test_nonce_inputs_are_deterministic_and_in_the_expert_range(shape):
    a = nonce_inputs(BH, PK, 7, shape)
    b = nonce_inputs(BH, PK, 7, shape)
    assert torch.equal(a.latent, b.latent) and torch.equal(a.text, b.text) and a.timestep == b.timestep
    assert a.latent.shape == shape.latent and a.text.shape == (shape.text_len, shape.text_dim)
    for n in range(50):
        x = nonce_inputs(BH, PK, n, shape)
        assert (875.0 <= x.timestep < 1000.0) if x.expert == "high" else (0.0 <= x.timestep < 875.0)


def test_expert_coin_is_fair():
    highs = sum(nonce_expert(BH, PK, n) == "high" for n in range(2000))
    assert binomtest(highs, 2000, 0.5).pvalue > 0.001


def test_one_expert_node_answers_only_its_experts_nonces(pipe, shape):
    nonces = list(range(16))
    honest = poc_vectors(pipe, BH, PK, nonces, shape=shape, runtime=RT)
    held = poc_vectors(pipe, BH, PK, nonces, shape=shape, runtime=RT, variant=PocVariant(held_expert="high"))
    d = np.linalg.norm(honest.astype(np.float32) - held.astype(np.float32), axis=1)
    is_high = np.array([nonce_expert(BH, PK, n) == "high" for n in nonces])
    assert 0 < is_high.sum() < len(nonces)
    assert np.all(d[is_high] == 0) and np.all(d[~is_high] > 0.2)


def test_a_pipeline_missing_an_expert_cannot_answer(pipe, shape):
    only_high = types.SimpleNamespace(transformer=pipe.transformer, transformer_2=None, config=pipe.config)
    with pytest.raises(PocInputError, match="low-noise expert"):
        poc_vectors(only_high, BH, PK, range(16), shape=shape, runtime=RT)
    with pytest.raises(PocInputError, match="held expert"):
        HeldExpertRouter("middle")


def test_weight_rounding_moves_vectors_more_than_dtype(pipe, shape):
    ref = poc_vectors(pipe, BH, PK, range(12), shape=shape, runtime=RT).astype(np.float32)
    int4 = poc_vectors(pipe, BH, PK, range(12), shape=shape, runtime=RT, variant=PocVariant(weights="int4"))
    fp8 = poc_vectors(pipe, BH, PK, range(12), shape=shape, runtime=RT, variant=PocVariant(weights="fp8"))
    d_int4 = np.median(np.linalg.norm(int4.astype(np.float32) - ref, axis=1))
    d_fp8 = np.median(np.linalg.norm(fp8.astype(np.float32) - ref, axis=1))
    assert d_int4 > d_fp8 > 0.01


@pytest.mark.parametrize("kwargs,needle", [
    (dict(block_hash=""), "block_hash"), (dict(public_key=""), "public_key"),
    (dict(nonces=[-1]), "nonces"), (dict(dim=0), "dim"),
])
def test_bad_arguments_name_the_field(pipe, shape, kwargs, needle):
    args = dict(block_hash=BH, public_key=PK, nonces=[0])
    args.update(kwargs)
    with pytest.raises(PocInputError, match=needle):
        poc_vectors(pipe, args.pop("block_hash"), args.pop("public_key"), args.pop("nonces"), shape=shape,
                    runtime=RT, **args)


def test_poc_shape_checks_sizes():
    s = poc_shape("tiny")
    assert s.latent == (16, 3, 8, 8) and s.text_dim == 32
    assert poc_shape("a14b-random").latent == (16, 21, 60, 104)
    with pytest.raises(PocInputError, match="width/height"):
        poc_shape("tiny", width=40)
    with pytest.raises(PocInputError, match="frames"):
        poc_shape("tiny", frames=6)
    with pytest.raises(ValueError, match="unknown preset"):
        poc_shape("huge")


def test_poc_attention_backend_restores_the_process_wide_backend():
    # diffusers' set_attention_backend also sets a global that reset_attention_backend leaves; a
    # later CPU run then found no viable kernel (seen on an H100 after a GPU-only backend).
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from models.poc import attention_backend
    from models.presets import build_pipeline

    pipe = build_pipeline("tiny")
    before = _AttentionBackendRegistry._active_backend
    with attention_backend([pipe.transformer, pipe.transformer_2], "_native_math"):
        assert _AttentionBackendRegistry._active_backend != before
    assert _AttentionBackendRegistry._active_backend == before
