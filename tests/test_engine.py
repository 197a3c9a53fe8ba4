"""Generation on the tiny preset: determinism, resume, capture, cost, artifacts, golden output."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine import ArtifactError, Generation, PromptTooLong, forward_passes, generate, load_checkpoints
from models.request import GenerationRequest

GOLDEN = json.loads((Path(__file__).parent / "golden" / "tiny.json").read_text())
REQ = GenerationRequest(prompt="a paper boat on a puddle", seed=3)


@pytest.fixture(scope="module")
def base():
    return generate(REQ, capture=("init", "step:0", "switch", "step:2", "final"))


def test_same_request_twice_gives_the_same_mp4_bytes(base):
    again = generate(REQ, capture=("init", "step:0", "switch", "step:2", "final"))
    assert again.mp4 == base.mp4 and again.sha256 == base.sha256
    assert np.array_equal(again.frames, base.frames)


def test_an_encode_left_to_the_caller_gives_the_same_bytes(base, tmp_path):
    """`generate(..., encode=False)` returns the frames without the MP4; `encoded()` makes the bytes
    `generate` makes by default; an unencoded generation is not saved."""
    raw = generate(REQ, capture=("init", "step:0", "switch", "step:2", "final"), encode=False)
    assert raw.mp4 is None and raw.sha256 == "" and not raw.is_encoded and np.array_equal(raw.frames, base.frames)
    with pytest.raises(ValueError, match="not encoded"):
        raw.save(tmp_path / "gen")
    assert not (tmp_path / "gen").exists() and list(tmp_path.iterdir()) == []
    done = raw.encoded()
    assert done.mp4 == base.mp4 and done.sha256 == base.sha256 and done.record() == base.record() | {
        "cost": done.record()["cost"]}
    assert done.encoded() is done and raw.mp4 is None  # the raw one is left as it was
    latent_only = generate(REQ, capture=("final",), decode=False, encode=False)
    assert latent_only.mp4 == b"" and latent_only.encoded() is latent_only


def test_golden_slice_of_the_tiny_preset():
    gen = generate(GenerationRequest(**GOLDEN["request"]))
    got = gen.latents["final"].flatten()[:16].numpy()
    np.testing.assert_allclose(got, GOLDEN["final_latent_slice"], atol=2e-2, rtol=0)
    assert abs(float(gen.latents["final"].norm()) - GOLDEN["final_latent_norm"]) < 0.01 * GOLDEN["final_latent_norm"]


def test_initial_noise_is_the_cpu_generator_draw(base):
    expected = torch.randn(REQ.latent_shape(), generator=torch.Generator().manual_seed(REQ.seed))
    assert torch.equal(base.latents["init"], expected)


@pytest.mark.parametrize("name", ["init", "step:0", "switch", "step:2"])
def test_resume_from_any_checkpoint_is_bit_identical(base, name):
    resumed = generate(REQ, resume_from=base.checkpoints[name])
    assert torch.equal(resumed.latents["final"], base.latents["final"])
    assert resumed.sha256 == base.sha256
    # only the remaining steps were computed
    step = base.checkpoints[name].step
    assert resumed.cost.total_passes < base.cost.total_passes or step == -1


def test_capture_steps_and_switch(base):
    # tiny: 4 steps, shift 12: timesteps >= 875 for steps 0..2 (high expert), step 3 low
    assert base.capture_steps == {"init": -1, "step:0": 0, "switch": 2, "step:2": 2, "final": 3}
    assert torch.equal(base.latents["switch"], base.latents["step:2"])


def test_cost_accounting(base):
    c = base.cost
    assert c.forward_passes == {"high": 6, "low": 2}  # 3 + 1 steps, two passes each with CFG
    assert c.total_passes == forward_passes(REQ)
    assert c.latent_tokens == REQ.latent_tokens() == 3 * 4 * 4
    assert c.block_calls == 8 * 2  # passes x layers
    assert c.compute_share == pytest.approx(1.0)
    assert all(v > 0 for v in c.seconds.values())


def test_stop_after_and_substitute(base):
    partial = generate(REQ, stop_after=2)
    assert partial.mp4 == b"" and torch.equal(partial.latents["switch"], base.latents["switch"])
    assert "final" not in partial.latents
    # continuing from a substituted latent changes the end; substituting the same latent does not
    same = generate(REQ, substitute={2: base.latents["switch"]})
    assert torch.equal(same.latents["final"], base.latents["final"])
    other = generate(REQ, substitute={2: base.latents["switch"] * 1.01})
    assert not torch.equal(other.latents["final"], base.latents["final"])


def test_save_load_roundtrip_and_corruption(base, tmp_path):
    d = base.save(tmp_path / "gen")
    loaded = Generation.load(d)
    assert loaded.sha256 == base.sha256 and loaded.request == REQ
    assert torch.equal(loaded.latents["switch"], base.latents["switch"])
    resumed = generate(REQ, resume_from=loaded.checkpoints["switch"])  # solver state survives the file
    assert torch.equal(resumed.latents["final"], base.latents["final"])
    # a truncated latent file and a tampered video are refused
    lat = d / "latents.safetensors"
    lat.write_bytes(lat.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated|unreadable"):
        load_checkpoints(lat)
    (d / "video.mp4").write_bytes(base.mp4[:-10])
    with pytest.raises(ArtifactError, match="does not match"):
        Generation.load(d)


def test_save_is_atomic_and_replaces(base, tmp_path):
    d = tmp_path / "gen"
    base.save(d)
    base.save(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_prompt_longer_than_the_encoder_limit():
    long = "word " * 40  # tiny's text limit is 64 byte tokens
    with pytest.raises(PromptTooLong, match="prompt: .* exceed the text encoder's limit of 64"):
        generate(GenerationRequest(prompt=long))
    gen = generate(GenerationRequest(prompt=long, truncate_prompt=True), capture=("final",))
    assert gen.prompt_truncated and gen.record()["prompt_truncated"]


def test_bad_resume_and_capture_arguments(base):
    with pytest.raises(ValueError, match="capture: unknown name"):
        generate(REQ, capture=("middle",))
    with pytest.raises(ValueError, match="stop_after"):
        generate(REQ, stop_after=9)
    from models.engine import Checkpoint

    with pytest.raises(ValueError, match="solver state"):
        generate(REQ, resume_from=Checkpoint(step=1, latents=base.latents["step:0"], solver=None))


@pytest.mark.parametrize("mode", [True, "all", "text-encoder"])
def test_offloaded_pipeline_gives_the_same_result(base, mode):
    from models.presets import build_pipeline
    from models.request import Runtime

    rt = Runtime(offload=mode)
    off = generate(REQ, rt, capture=("init", "step:0", "switch", "step:2", "final"))
    assert off.sha256 == base.sha256
    pipe = build_pipeline(REQ.model, rt)
    hooked = [name for name in ("text_encoder", "transformer", "transformer_2")
              if getattr(pipe, name)._forward_pre_hooks]
    # 'text-encoder' keeps the experts resident: only the text encoder moves
    assert hooked == (["text_encoder"] if rt.offload == "text-encoder" else ["text_encoder", "transformer", "transformer_2"])


def test_offload_modes_are_validated():
    from models.request import Runtime

    assert Runtime(offload=True).offload == "all" and Runtime(offload=False).offload == "none"
    with pytest.raises(ValueError, match="offload must be one of"):
        Runtime(offload="experts")


def test_batch_checkpoint_holds_only_the_request_and_resumes_to_the_batch1_result(base):
    """A batched executor keeps only its request's row of the solver state (not the filler prompt's),
    and a checkpoint of a batch of 2 resumes, alone, to the batch-1 result (batch 2 is bit-identical to
    batch 1 on this CPU in bf16)."""
    from models.request import Runtime

    batched = generate(REQ, Runtime(batch_size=2), capture=("init", "step:2", "final"), run_seed=5)
    ck = batched.checkpoints["step:2"]
    from models.artifacts import solver_tensors

    tensors = solver_tensors(ck.solver)
    assert tensors and all(t.shape[0] == 1 for t in tensors.values() if t.dim() >= 1)
    assert all(t.dtype == torch.float32 for t in tensors.values() if t.is_floating_point())
    assert ck.latents.dtype == torch.float32  # stored, committed and counted in float32
    assert ck.nbytes() == sum(t.numel() * t.element_size() for t in [ck.latents, *tensors.values()])
    resumed = generate(REQ, resume_from=ck)
    assert torch.equal(resumed.latents["final"], base.latents["final"])
    assert resumed.sha256 == base.sha256
    # and inside a batch of 2 again (the request is row 0 of the solver state)
    again = generate(REQ, Runtime(batch_size=2), resume_from=ck, run_seed=5)
    assert torch.equal(again.latents["final"], base.latents["final"])
