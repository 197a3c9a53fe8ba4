"""Each deviation runs and changes what it claims (a ladder from identical to plainly cheating)."""

import pytest
import torch

from models.deviations import (
    DEVIATIONS,
    Deviation,
    DeviationError,
    allow_plugins,
    Steps,
    fp8_round,
    parse_deviation,
)
from models.engine import generate
from models.plan import expert_passes
from models.presets import build_pipeline, weights_digest
from models.request import GenerationRequest

REQ = GenerationRequest(prompt="a lantern floating on a river", seed=11, steps=8)


class DoubleSeed(Deviation):
    """A user-defined cheat, used by import path."""

    name, kind, arg_help = "double-seed", "malign", None
    description = "seed doubled"

    def apply_request(self, request):
        return request.model_copy(update={"seed": request.seed * 2 + 1})


@pytest.fixture(scope="module")
def honest():
    return generate(REQ)


def rel(a, b):
    return float((a - b).norm() / a.norm())


def test_no_cfg_halves_transformer_passes(honest):
    g = generate(REQ, deviation="no-cfg")
    assert g.cost.total_passes * 2 == honest.cost.total_passes
    assert g.cost.compute_share == pytest.approx(0.5)


def test_one_expert_high_never_calls_the_low_expert(honest):
    pipe = build_pipeline("tiny")
    calls = []
    h = pipe.transformer_2.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        g = generate(REQ, deviation="one-expert:high")
    finally:
        h.remove()
    assert calls == [] and g.cost.forward_passes["low"] == 0
    assert g.cost.forward_passes["high"] == honest.cost.total_passes
    assert pipe.transformer is not pipe.transformer_2  # restored


def test_fp8_changes_weights_not_shapes_and_is_undone(honest):
    pipe = build_pipeline("tiny")
    before = weights_digest(pipe.transformer)
    w = pipe.transformer.blocks[0].ffn.net[2].weight
    q = fp8_round(w)
    assert q.shape == w.shape and q.dtype == w.dtype and not torch.equal(q, w)
    assert rel(w.float(), q.float()) < 0.1
    g = generate(REQ, deviation="fp8")
    assert weights_digest(pipe.transformer) == before
    assert g.latents["final"].shape == honest.latents["final"].shape
    assert rel(honest.latents["final"], g.latents["final"]) > 0


@pytest.mark.parametrize("spec", ["int8-wo", "fp8-scaled"])
def test_weight_cheat_on_one_expert_leaves_the_other_experts_steps_honest(honest, spec):
    """`:low` keeps every high-noise step bit-identical (the error starts at the switch), `:high`
    changes them; both move the end less than or as much as the cheat on both experts, and the
    compute share counts the FP8 saving on the cheating expert's passes only."""
    both = generate(REQ, deviation=spec)
    low, high = generate(REQ, deviation=f"{spec}:low"), generate(REQ, deviation=f"{spec}:high")
    assert torch.equal(low.latents["switch"], honest.latents["switch"])
    assert rel(honest.latents["switch"], high.latents["switch"]) > 0
    assert torch.equal(high.latents["switch"], both.latents["switch"])
    for g in (low, high):
        assert 0 < rel(honest.latents["final"], g.latents["final"])
    passes = expert_passes(REQ)
    full = parse_deviation(spec).speed_factor
    for which, g in (("low", low), ("high", high)):
        saved = (1 - full) * passes[which] / sum(passes.values())
        assert g.cost.compute_share == pytest.approx(both.cost.compute_share / full * (1 - saved))


def test_combined_deviations_apply_every_part_and_undo_every_patch(honest):
    """`A+B` runs both: a kernel change from the first step with int8 weights on the low-noise expert
    matches the kernel change alone up to the switch and differs after; requests pass through each
    part; the pipeline is restored; any malign part makes it malign."""
    pipe = build_pipeline("tiny")
    before = weights_digest(pipe.transformer), weights_digest(pipe.transformer_2)
    kernel = generate(REQ, deviation="attention:_native_math")
    both = generate(REQ, deviation="attention:_native_math+int8-wo:low")
    assert torch.equal(both.latents["switch"], kernel.latents["switch"])
    assert not torch.equal(both.latents["final"], kernel.latents["final"])
    assert (weights_digest(pipe.transformer), weights_digest(pipe.transformer_2)) == before
    assert generate(REQ).sha256 == honest.sha256
    d = parse_deviation("steps:3+seed:+1")
    assert d.kind == "malign" and d.spec == "steps:3+seed:+1"
    assert (d.apply_request(REQ).steps, d.apply_request(REQ).seed) == (3, REQ.seed + 1)
    assert parse_deviation("attention:_native_math+splitk:2").kind == "benign"
    fp8 = parse_deviation("fp8-scaled:low+no-cfg")
    assert fp8.speed_factor_for(REQ) == pytest.approx(parse_deviation("fp8-scaled:low").speed_factor_for(REQ))


def test_steps_lowres_seed_prompt_model(honest):
    s = generate(REQ, deviation="steps:4")
    assert s.cost.total_passes == 8 and s.effective_request.steps == 4 and s.request.steps == 8
    lr = generate(REQ, deviation="lowres:32x32")
    assert lr.frames.shape == honest.frames.shape  # upscaled to the claimed size
    assert lr.latents["final"].shape == honest.latents["final"].shape
    assert lr.effective_request.width == 32 and lr.cost.compute_share < 0.5
    sd = generate(REQ, deviation="seed:+1")
    assert not torch.equal(sd.latents["init"], honest.latents["init"])
    ps = generate(REQ, deviation="prompt-swap")
    assert ps.effective_request.prompt != REQ.prompt and ps.request.prompt == REQ.prompt
    md = generate(REQ, deviation="model:tiny-lite")
    assert md.cost.block_calls * 2 == honest.cost.block_calls


def test_guidance_and_cache_change_the_output(honest):
    g = generate(REQ, deviation="guidance:1.5")
    assert g.effective_request.guidance_high == 1.5 and rel(honest.latents["final"], g.latents["final"]) > 0
    c = generate(REQ, deviation="cache:5.0")  # a loose threshold: most passes reuse the cached residual
    assert c.cost.block_calls < honest.cost.block_calls
    assert c.cost.compute_share < 1.0


def test_benign_ladder(honest):
    # identical: a rerun, other thread counts; small but nonzero: emulated hardware noise
    assert torch.equal(generate(REQ).latents["final"], honest.latents["final"])
    t = generate(REQ, deviation="threads:1")
    assert rel(honest.latents["final"], t.latents["final"]) < 1e-3
    b = generate(REQ, deviation="batch:2")
    assert b.cost.batch_size == 2 and b.frames.shape == honest.frames.shape
    n1 = generate(REQ, deviation="hwnoise:0.001", run_seed=1)
    n2 = generate(REQ, deviation="hwnoise:0.001", run_seed=2)
    d1 = rel(honest.latents["final"], n1.latents["final"])
    assert 0 < d1 < rel(honest.latents["final"], generate(REQ, deviation="seed:+1").latents["final"])
    assert not torch.equal(n1.latents["final"], n2.latents["final"])  # the hardware picks the noise


def test_attention_backend_is_restored_after_use(honest):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry._active_backend
    generate(REQ, deviation="attention:_native_math")
    assert _AttentionBackendRegistry._active_backend == before
    assert torch.equal(generate(REQ).latents["final"], honest.latents["final"])


def test_registry_and_kinds():
    assert {"batch", "threads", "attention", "tf32", "device", "hwnoise", "compile"} <= {
        n for n, c in DEVIATIONS.items() if c.kind == "benign"}
    assert {"steps", "lowres", "fp8", "seed", "one-expert", "no-cfg", "guidance", "cache", "prompt-swap",
            "model"} <= {n for n, c in DEVIATIONS.items() if c.kind == "malign"}
    assert parse_deviation("steps:3").spec == "steps:3" and isinstance(parse_deviation("steps:3"), Steps)


def test_import_path_deviation():
    with pytest.raises(DeviationError, match="not an allowed plugin"):
        parse_deviation("tests.test_deviations:DoubleSeed")  # importing would run the module's code
    with allow_plugins(["tests"]):
        dev = parse_deviation("tests.test_deviations:DoubleSeed")
    assert dev.kind == "malign"
    g = generate(REQ, deviation=dev, capture=("init",))
    assert g.effective_request.seed == REQ.seed * 2 + 1


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("warp", "unknown deviation 'warp'"),
        ("steps", "needs an argument"),
        ("steps:x", "must be an integer"),
        ("no-cfg:2", "takes no argument"),
        ("lowres:33x32", "multiples of 16"),
        ("one-expert:middle", "high or low"),
        ("int8-wo:middle", "high or low"),
        ("fp8-scaled:2", "high or low"),
        ("steps:3+warp", "unknown deviation 'warp'"),
        ("+steps:3", "empty part"),
        ("model:huge", "unknown preset"),
        ("attention:fast", "attention_backend must be one of"),
        ("nosuch.module:X", "'nosuch.module' is not an allowed plugin"),
        ("sim.nosuch:X", "cannot import module"),
        ("models.deviations:Deviation", "not a usable deviation"),
        ("models.deviations:REQ", "not a Deviation subclass"),
        ("", "non-empty"),
    ],
)
def test_bad_specs(spec, needle):
    with pytest.raises((DeviationError, ValueError), match=needle):
        parse_deviation(spec)


def test_severity_family_deviations(honest):
    """reuse skips the listed steps' transformer work (7/8 of the blocks for one step of 8) and changes the
    trajectory only from that step; one-expert-last covering every low-noise step is one-expert:high;
    quant changes weights more at fewer bits and restores them; mp4-from keeps the honest latents but
    delivers another run's video."""
    reuse = generate(REQ, deviation="reuse:5", capture=("step:4", "final"))
    assert reuse.cost.compute_share == pytest.approx(7 / 8)
    h4 = generate(REQ, capture=("step:4",))
    assert torch.equal(reuse.latents["step:4"], h4.latents["step:4"])
    assert rel(honest.latents["final"], reuse.latents["final"]) > 1e-3
    last2 = generate(REQ, deviation="one-expert-last:2")  # steps 6, 7 are the low-noise ones at 8 steps
    high = generate(REQ, deviation="one-expert:high")
    assert torch.equal(last2.latents["final"], high.latents["final"])
    digest = weights_digest(build_pipeline("tiny").transformer)
    q8, q4 = (generate(REQ, deviation=f"quant:{b}") for b in (8, 4))
    assert 0 < rel(honest.latents["final"], q8.latents["final"]) < rel(honest.latents["final"], q4.latents["final"])
    assert weights_digest(build_pipeline("tiny").transformer) == digest
    swap = generate(REQ, deviation="mp4-from:steps:4")
    assert torch.equal(swap.latents["final"], honest.latents["final"]) and swap.sha256 != honest.sha256
    assert swap.sha256 == generate(REQ, deviation="steps:4").sha256
    for bad in ("reuse:0", "reuse:a", "quant:9", "mp4-from:mp4-from:steps:4", "guidance-scale:-1"):
        with pytest.raises(DeviationError):
            parse_deviation(bad)
