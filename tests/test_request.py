"""GenerationRequest / Runtime: defaults per preset and every refusal names its field."""

import pytest
from pydantic import ValidationError

from models.request import A14B_DEFAULTS, GenerationRequest, Runtime


def test_defaults_follow_preset():
    tiny = GenerationRequest(prompt="p")
    assert (tiny.width, tiny.height, tiny.frames, tiny.steps) == (64, 64, 9, 4)
    big = GenerationRequest(model="a14b-random", prompt="p")
    for k, v in A14B_DEFAULTS.items():
        assert getattr(big, k) == v
    assert big.latent_shape() == (1, 16, 21, 60, 104)
    assert big.latent_tokens() == 32760


def test_explicit_values_override_defaults():
    r = GenerationRequest(prompt="p", width=32, steps=7, guidance_high=5.5)
    assert (r.width, r.steps, r.guidance_high, r.height) == (32, 7, 5.5, 64)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("width", 50, "width must be a positive multiple of 16"),
        ("height", 0, "height must be a positive multiple of 16"),
        ("frames", 10, "frames must be of the form 4k+1"),
        ("steps", 0, "steps must be in 1..1000"),
        ("steps", 100000, "steps must be in 1..1000, got 100000"),
        ("width", 4096, "width must be a positive multiple of 16 up to 1920"),
        ("frames", 1001, "frames must be of the form 4k+1 (1, 5, 9, ..., 81) up to 241"),
        ("frames", True, "frames must be a number, got the boolean True"),
        ("shift", float("nan"), "shift\n  Input should be a finite number"),
        ("shift", float("inf"), "shift\n  Input should be a finite number"),
        ("shift", 1000.0, "shift must be in (0, 100]"),
        ("prompt", "   ", "prompt must contain text"),
        ("seed", -1, "seed must be in 0..2**63-1"),
        ("fps", 0, "fps must be in 1..120"),
        ("guidance_high", -1.0, "guidance_high must be in 0..50"),
        ("shift", 0.0, "shift must be in (0, 100]"),
        ("model", "nope", "unknown preset 'nope'"),
    ],
)
def test_refusals_name_the_field(field, value, needle):
    with pytest.raises(ValidationError) as err:
        GenerationRequest(**{"prompt": "p", field: value})
    text = str(err.value)
    assert needle in text
    if field != "model":
        assert field in text


def test_unknown_field_and_empty_prompt_refused():
    with pytest.raises(ValidationError, match="extra"):
        GenerationRequest(prompt="p", colour="red")
    with pytest.raises(ValidationError, match="prompt"):
        GenerationRequest(prompt="")


def test_path_preset_needs_a_diffusers_directory(tmp_path):
    with pytest.raises(ValidationError, match="not a diffusers directory"):
        GenerationRequest(model=f"path:{tmp_path}", prompt="p")


def test_key_is_stable_and_content_addressed():
    a, b = GenerationRequest(prompt="p"), GenerationRequest(prompt="p")
    assert a.key() == b.key() and a.key() != GenerationRequest(prompt="q").key()


def test_runtime_refusals():
    with pytest.raises(ValidationError, match="device must be cpu, cuda or cuda:N"):
        Runtime(device="tpu")
    with pytest.raises(ValidationError, match="attention_backend must be one of"):
        Runtime(attention_backend="warp-speed")
    with pytest.raises(ValidationError, match="batch_size"):
        Runtime(batch_size=0)
    with pytest.raises(ValidationError, match="dtype"):
        Runtime(dtype="int8")


def test_runtime_apply_pins_and_restores():
    import torch

    before = torch.get_num_threads()
    with Runtime(threads=1).apply():
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == before
