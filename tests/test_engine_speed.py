"""The speed settings of a runtime on the tiny preset: a bfloat16 VAE and regional torch.compile of
the transformer blocks (real inductor on the CPU), what they change in the output and the cost, and
how they are validated, recorded and taken as deviations."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.deviations import DeviationError, parse_deviation
from models.engine import generate
from models.request import GenerationRequest, Runtime

REQ = GenerationRequest(prompt="a paper boat on a puddle", seed=3)


def frame_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def base():
    return generate(REQ)


def test_bfloat16_vae_gives_a_close_but_different_video(base):
    gen = generate(REQ, Runtime(vae_dtype="bfloat16"))
    assert torch.equal(gen.latents["final"], base.latents["final"])  # the VAE decodes, nothing else changes
    assert gen.sha256 != base.sha256
    assert 20.0 < frame_psnr(gen.frames, base.frames) < 50.0
    assert gen.runtime.vae_dtype == "bfloat16" and gen.cost.seconds["vae"] > 0
    assert generate(REQ).sha256 == base.sha256  # the cached float32 VAE is back


def test_the_validators_decode_follows_the_vae_dtype(base):
    from sim.commitment import decode_final

    rt = Runtime(vae_dtype="bfloat16")
    gen = generate(REQ, rt)
    assert np.array_equal(decode_final(REQ, rt, base.latents["final"]), gen.frames)
    assert np.array_equal(decode_final(REQ, Runtime(), base.latents["final"]), base.frames)


def test_regional_compile_runs_compiled_blocks_and_counts_them(base):
    first = generate(REQ, Runtime(compile="regional"))
    again = generate(REQ, Runtime(compile="regional"))
    assert 1e-5 < rel(first.latents["final"], base.latents["final"]) < 5e-2  # other fused kernels, same model
    assert again.sha256 == first.sha256
    assert first.cost.block_calls == base.cost.block_calls
    assert first.cost.forward_passes == base.cost.forward_passes
    assert first.cost.compute_share == pytest.approx(1.0)
    assert generate(REQ).sha256 == base.sha256  # the blocks run eager again


def test_a_compiled_whole_forward_counts_every_block(base, monkeypatch):
    # the session's patch and block count without compiling (inductor takes seconds to minutes here)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (lambda *a, **k: fn(*a, **k)))
    gen = generate(REQ, Runtime(compile=True))
    assert gen.sha256 == base.sha256
    assert gen.cost.block_calls == base.cost.block_calls
    assert gen.cost.compute_share == pytest.approx(1.0)


@pytest.mark.parametrize("value,expected", [(False, False), (True, True), ("regional", "regional"),
                                            ("true", True), ("false", False)])
def test_compile_values(value, expected):
    assert Runtime(compile=value).compile == expected


@pytest.mark.parametrize("field,value", [("compile", "yes"), ("compile", 1), ("compile", "whole"),
                                         ("vae_dtype", "float16"), ("vae_dtype", "fp8")])
def test_bad_speed_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        Runtime(**{field: value})


def test_defaults_are_unchanged_and_records_round_trip():
    assert Runtime().compile is False and Runtime().vae_dtype == "float32"
    rt = Runtime(compile="regional", vae_dtype="bfloat16")
    assert Runtime(**rt.model_dump()) == rt
    assert Runtime.model_validate_json(rt.model_dump_json()) == rt


def test_speed_deviations():
    assert parse_deviation("regional-compile").apply_runtime(Runtime()).compile == "regional"
    assert parse_deviation("vae-dtype:bfloat16").apply_runtime(Runtime()).vae_dtype == "bfloat16"
    assert parse_deviation("vae-dtype:bfloat16").kind == "benign"
    with pytest.raises(ValueError, match="vae_dtype"):
        parse_deviation("vae-dtype:float16")
    with pytest.raises(DeviationError, match="takes no argument"):
        parse_deviation("regional-compile:1")


def test_the_vllm_omni_engine_refuses_what_it_does_not_run():
    from models.engines.vllm_omni import unsupported

    assert "vae_dtype" in unsupported(None, Runtime(vae_dtype="bfloat16"))
    assert "compile" in unsupported(None, Runtime(compile="regional"))


def test_poc_vectors_under_regional_compile_and_the_blocks_restored_after():
    from models.poc import poc_shape, poc_vectors
    from models.presets import build_pipeline

    pipe = build_pipeline("tiny", Runtime())
    shape = poc_shape("tiny")
    eager = poc_vectors(pipe, "block-1", "key", range(4), shape=shape, runtime=Runtime())
    compiled = poc_vectors(pipe, "block-1", "key", range(4), shape=shape, runtime=Runtime(compile="regional"))
    assert eager.shape == compiled.shape == (4, 12)
    assert np.abs(eager.astype(np.float32) - compiled.astype(np.float32)).max() < 0.05
    assert all("_compiled_call_impl" not in b.__dict__ for m in (pipe.transformer, pipe.transformer_2) for b in m.blocks)
    assert np.array_equal(poc_vectors(pipe, "block-1", "key", range(4), shape=shape, runtime=Runtime()), eager)
