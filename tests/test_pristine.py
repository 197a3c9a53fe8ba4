"""Every deviation leaves the cached pipeline as it found it: a generation changes the pipeline only
inside its pipeline session (models/engine.py), and closing the session restores the weights (bytes),
every module's instance attributes (an instance `forward` left behind makes later runs skip their
own patches), hooks, attention processors and backends, the scheduler and the experts."""

import pytest
import torch

from models.deviations import DEVIATIONS, Deviation, parse_deviation
from models.engine import generate
from models.presets import PipelineCache, weights_digest
from models.patching import forward_hook
from models.request import GenerationRequest, Runtime

REQ = GenerationRequest(prompt="a lantern floating on a river", seed=11, steps=4, width=32, height=32, frames=5)

# One spec for every registered deviation (and a second where the argument picks another code path).
EXAMPLES = (
    "batch:2", "threads:1", "attention:_native_math", "tf32", "device:cpu", "engine:diffusers", "compile",
    "splitk:2", "hwnoise:0.01", "steps:3", "lowres:16x16", "fp8", "fp8-scaled", "int8-wo", "int8-wo:low", "fp8-scaled:high", "seed:+1",
    "one-expert:high", "one-expert:low", "no-cfg", "guidance:3.5", "cache:0.5", "prompt-swap",
    "model:tiny-lite", "quant:4", "one-expert-last:1", "guidance-scale:0.9", "reuse:2", "mp4-from:steps:2",
    "regional-compile", "vae-dtype:bfloat16", "vae-dtype:float32",
)


def module_state(name, module):
    rows = []
    for mname, m in module.named_modules():
        proc = getattr(m, "processor", None)
        rows.append((f"{name}.{mname}", tuple(sorted(m.__dict__)), len(m._forward_hooks), len(m._forward_pre_hooks),
                     type(proc).__name__ if proc is not None else None, getattr(proc, "_attention_backend", None)))
    return rows


def pipeline_state(pipe):
    """What a generation must not change for good (values the pipeline's own call sets each time, its
    guidance scale or step count, are left out; their names are kept)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    modules = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    return {
        "pipe_attributes": tuple(sorted(pipe.__dict__)),
        "components": {k: id(v) for k, v in pipe.components.items()},
        "weights": {k: weights_digest(m) for k, m in modules.items()},
        "modules": [row for k, m in modules.items() for row in module_state(k, m)],
        "scheduler": (type(pipe.scheduler).__name__, dict(pipe.scheduler.config), tuple(sorted(pipe.scheduler.__dict__))),
        "attention_backend": str(_AttentionBackendRegistry._active_backend),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


@pytest.fixture(scope="module")
def cache():
    """A pipeline cache owned by this test, its pipelines warmed by one honest run each."""
    pipelines = PipelineCache()
    honest = generate(REQ, pipelines=pipelines)
    generate(REQ.model_copy(update={"model": "tiny-lite"}), pipelines=pipelines)
    return pipelines, honest


def states(pipelines):
    return {key: pipeline_state(pipe) for key, pipe in pipelines.items()}


def test_the_examples_cover_every_registered_deviation():
    assert {parse_deviation(s).name for s in EXAMPLES} == set(DEVIATIONS)


@pytest.mark.parametrize("spec", EXAMPLES)
def test_every_deviation_leaves_the_cached_pipeline_pristine(cache, spec, monkeypatch):
    pipelines, honest = cache
    if spec == "compile":  # the patch and its undo without compiling (inductor takes minutes on a CPU)
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: (lambda *a, **k: fn(*a, **k)))
    before = states(pipelines)
    generate(REQ, deviation=spec, pipelines=pipelines, run_seed=3)
    assert len(pipelines) == 2
    assert states(pipelines) == before


def test_resumed_and_stopped_runs_leave_it_pristine_and_the_honest_run_unchanged(cache):
    pipelines, honest = cache
    before = states(pipelines)
    ck = generate(REQ, capture=["step:1"], pipelines=pipelines, stop_after=1).checkpoints["step:1"]
    generate(REQ, resume_from=ck, pipelines=pipelines)
    assert states(pipelines) == before
    assert generate(REQ, pipelines=pipelines).sha256 == honest.sha256


class Boom(Deviation):
    """Patches the pipeline, then fails in the middle of the run."""

    name, kind = "boom", "malign"
    description = "a transformer forward that raises"

    def patch_session(self, stack, pipe, ctx):
        def hook(module, args):
            raise RuntimeError("boom")

        split = parse_deviation("splitk:2")
        split.patch_session(stack, pipe, ctx)
        forward_hook(stack, pipe.transformer, hook, pre=True)


def test_an_error_inside_the_session_restores_the_pipeline(cache):
    pipelines, honest = cache
    before = states(pipelines)
    with pytest.raises(RuntimeError, match="boom"):
        generate(REQ, deviation=Boom(), runtime=Runtime(attention_backend="_native_math"), pipelines=pipelines)
    assert states(pipelines) == before
    assert generate(REQ, pipelines=pipelines).sha256 == honest.sha256
