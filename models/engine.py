"""Generation: the stock diffusers `WanPipeline`, driven through its hooks.

`generate()` runs a request on a preset under a runtime, optionally with a deviation, and returns a
`Generation`: uint8 frames, the MP4 and its SHA-256, latents captured at chosen steps (with the
solver state needed to resume from them), and the cost actually spent. Nothing here forks the
pipeline: capture, resume and latent substitution go through `callback_on_step_end`, cost through
forward hooks, and skipped steps (when resuming at step k) through a temporary forward override
that returns zeros without computing.

It runs in five stages: the plan (`plan_generation`: every check, before anything changes), the
initial latents (`initial_latents`), the step controller (`StepController`: resume, capture,
substitute, stop), the pipeline session (`pipeline_session`: one `ExitStack` holding everything
that changes the cached pipeline, so closing it restores the pipeline however the run ends), and
the finish (`finish`: cost, the deviation's output, the encoded video, unless the caller
encodes it later: `encode=False`, `Generation.encoded()`).

Step numbering: checkpoint `s` is the latent after denoising step `s` (0-based), i.e. the input of
step `s+1`; `-1` is the initial noise. Named captures: `init` (-1), `switch` (after the last
high-noise-expert step), `final` (after the last step, before decoding), or `step:K`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from models import seeds
from models.artifacts import (  # noqa: F401  (the records, re-exported for the callers of this module)
    GENERATION_FILES, HASHED_FILES, LATENT_DTYPE_NAME, RECORD_KEYS, SOLVER_KEYS, ArtifactError, Checkpoint, Cost,
    Generation, latent_dtype, load_checkpoints, solver_scalars, solver_tensors,
)
from models.deviations import filler_prompts, parse_deviation
from models.patching import (  # noqa: F401  (attention_backend re-exported)
    attention_backend, compile_session, experts, forward_hook, patch_forward, pipeline_attention_backend, set_attr,
    sync,
)
from models.plan import (  # noqa: F401  (re-exported for the callers of this module)
    PromptTooLong, block_flops, check_captures, compute_share, count_tokens, forward_passes, honest_work,
    resolve_captures, schedule, text_context_len, truncate_to_tokens,
)
from models.presets import PipelineCache, build_pipeline, preset_spec
from models.request import GenerationRequest, Runtime
from models.video import frames_to_uint8

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from models.deviations import Deviation

DEFAULT_CAPTURE: tuple[str, ...] = ("init", "switch", "final")

# The pipeline's attention backend for a block (kept under its old name for callers outside models/).
_attention_backend = pipeline_attention_backend


# ---------------------------------------------------------------------------------------------
# Helpers


def initial_noise(request: GenerationRequest, seed: int | None = None) -> "torch.Tensor":
    """The initial latent: float32, drawn with a CPU generator, identical on every machine."""
    import torch

    spec = preset_spec(request.model)
    shape = request.latent_shape(spec.vae_stride, spec.z_dim)
    g = torch.Generator(device="cpu").manual_seed(request.seed if seed is None else seed)
    return torch.randn(shape, generator=g, dtype=torch.float32)


def solver_state(scheduler) -> dict[str, Any]:
    """The multistep state of the request in row 0 of the batch: latent-shaped tensors (5-D) are
    sliced to that row, so a batched executor's checkpoint holds neither its neighbours' prompts'
    trajectories nor their bytes; it resumes alone or as row 0 of a batch. Tensors are kept in
    the dtype the scheduler holds (float32: `LATENT_DTYPE_NAME`)."""
    import torch

    def own(x):
        x = x.detach()
        return (x[:1] if x.dim() == 5 else x).to("cpu", copy=True)

    state = {}
    for key in SOLVER_KEYS:
        if hasattr(scheduler, key):
            v = getattr(scheduler, key)
            if isinstance(v, torch.Tensor):
                v = own(v)
            elif isinstance(v, list):
                v = [own(x) if isinstance(x, torch.Tensor) else x for x in v]
            state[key] = v
    return state


def restore_solver_state(scheduler, state: dict[str, Any], device, step: int) -> None:
    """Put a saved multistep state back; the position comes from the step being resumed, never
    from the state (a checkpoint from another schedule must not move the validator's clock)."""
    import torch

    def put(saved, current):
        saved = saved.to(device)
        if (isinstance(current, torch.Tensor) and current.dim() == saved.dim() >= 1 and current.shape[0] > saved.shape[0]
                and current.shape[1:] == saved.shape[1:]):  # resumed inside a batch: the request is row 0
            current = current.clone()
            current[:saved.shape[0]] = saved.to(current.dtype)
            return current
        return saved

    for key, v in state.items():
        if key == "_step_index":
            continue
        cur = getattr(scheduler, key, None)
        if isinstance(v, torch.Tensor):
            v = put(v, cur)
        elif isinstance(v, list):
            cur = cur if isinstance(cur, list) and len(cur) == len(v) else [None] * len(v)
            v = [put(x, c) if isinstance(x, torch.Tensor) else x for x, c in zip(v, cur)]
        setattr(scheduler, key, copy.copy(v))
    scheduler._step_index = step + 1


class CostMeter:
    """Forward hooks that count and time passes per expert and stage (the text encoder, the VAE)."""

    def __init__(self, device, high, low):
        self.device = device
        self.labels = {id(high): "high", id(low): "low"}
        self.cost = Cost()
        self.skipping = False  # steps before a resumed checkpoint: neither counted nor timed
        self.block_tokens: list[int] = []
        self._t0: dict[int, float] = {}

    def _pre(self, module, args, kwargs):
        if self.skipping:
            return
        sync(self.device)
        self._t0[id(module)] = time.perf_counter()

    def _post(self, label):
        def hook(module, args, kwargs, output):
            if self.skipping:
                return
            sync(self.device)
            dt = time.perf_counter() - self._t0.pop(id(module), time.perf_counter())
            lab = label or self.labels.get(id(module), "high")
            self.cost.seconds[lab] = self.cost.seconds.get(lab, 0.0) + dt
            if lab in ("high", "low"):
                self.cost.forward_passes[lab] += 1
        return hook

    def _block(self, module, args, kwargs, output):
        self.count_blocks(args[0] if args else kwargs["hidden_states"])

    def count_blocks(self, hidden_states, n: int = 1) -> None:
        """`n` block calls on `hidden_states` (batch, tokens, dim)."""
        if not self.skipping:
            self.cost.block_calls += n
            self.block_tokens.extend([int(hidden_states.shape[1]) * int(hidden_states.shape[0])] * n)

    def _expert_blocks(self, module, args, kwargs, output):
        """A compiled expert's block calls, counted from its input latent (the blocks run inside
        compiled code, where a counting hook would be traced and recompiled on every call)."""
        if self.skipping:
            return
        x = kwargs.get("hidden_states", args[0] if args else None)
        b, _, t, h, w = x.shape
        p = module.config.patch_size
        tokens = (t // p[0]) * (h // p[1]) * (w // p[2])
        self.cost.block_calls += len(module.blocks)
        self.block_tokens.extend([int(b) * int(tokens)] * len(module.blocks))

    def _timed(self, decode):
        def timed_decode(*a, **k):
            sync(self.device)
            t0 = time.perf_counter()
            out = decode(*a, **k)
            sync(self.device)
            self.cost.seconds["vae"] += time.perf_counter() - t0
            return out
        return timed_decode

    def attach(self, stack: contextlib.ExitStack, pipe, compiled: bool | str = False) -> "CostMeter":
        """The hooks for the session. Blocks are counted on each block's first sub-module (step caches
        replace a block's forward with a cached residual and never reach its sub-modules), but outside
        compiled code: from the expert's input when the whole forward is compiled (`compiled` True),
        by `_compile_blocks`' wrapper of each block when the blocks are ('regional')."""
        for m in experts(pipe):
            forward_hook(stack, m, self._pre, pre=True, with_kwargs=True)
            forward_hook(stack, m, self._post(None), with_kwargs=True)
            if compiled is True:
                forward_hook(stack, m, self._expert_blocks, with_kwargs=True)
            for block in m.blocks if not compiled else ():
                forward_hook(stack, block.attn1, self._block, with_kwargs=True)
        forward_hook(stack, pipe.text_encoder, self._pre, pre=True, with_kwargs=True)
        forward_hook(stack, pipe.text_encoder, self._post("text_encoder"), with_kwargs=True)
        set_attr(stack, pipe.vae, "decode", self._timed(pipe.vae.decode))
        return self


def _compile_experts(stack: contextlib.ExitStack, pipe) -> None:
    """torch.compile'd expert forwards for the session."""
    compile_session(stack, experts(pipe), True)


def _compile_blocks(stack: contextlib.ExitStack, pipe, meter: "CostMeter | None" = None) -> None:
    """Regional compile of the experts' blocks for the session, each call counted by `meter`
    outside the compiled code (`models.patching.compile_session`)."""
    compile_session(stack, experts(pipe), "regional", on_block=meter.count_blocks if meter is not None else None)


def session_vae(stack: contextlib.ExitStack, pipe, vae_dtype: str) -> None:
    """The runtime's VAE for the session: a copy in `vae_dtype` replaces the pipeline's float32 VAE
    (a cast in place and back would round the cached weights)."""
    import torch

    from diffusers.utils import logging as dlogging

    dtype = getattr(torch, vae_dtype)
    if pipe.vae.dtype != dtype:
        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()  # "modules that should be kept in float32: []" (the Wan VAE has none)
        try:
            set_attr(stack, pipe, "vae", copy.deepcopy(pipe.vae).to(dtype))
        finally:
            dlogging.set_verbosity(level)


# ---------------------------------------------------------------------------------------------
# Generation: plan -> initial latents -> step controller -> pipeline session -> finish


@dataclass
class Plan:
    """Everything a generation will do, settled before the pipeline runs."""

    request: GenerationRequest  # what the executor claims
    eff_request: GenerationRequest  # what it runs
    runtime: Runtime  # the effective runtime
    dev: "Deviation | None"
    spec: Any  # the PresetSpec of the preset that runs
    truncated: bool
    timesteps: list[float]
    steps_at: dict[str, int]  # capture name -> step
    run_seed: int = 0
    resume_from: Checkpoint | None = None
    substitute: dict[int, "torch.Tensor"] = field(default_factory=dict)
    stop_after: int | None = None
    decode: bool = True

    @property
    def resume_step(self) -> int:
        return self.resume_from.step if self.resume_from is not None else -1

    @property
    def decodes(self) -> bool:
        return self.decode and self.stop_after is None


def _effective(request: GenerationRequest, runtime: Runtime | None, deviation):
    """(deviation, request run, runtime run, preset run) of a claimed request under a deviation."""
    runtime = runtime or Runtime()
    if not isinstance(runtime, Runtime):
        raise TypeError(f"runtime must be a Runtime, got {type(runtime).__name__} (pass deviations as deviation=...)")
    dev = parse_deviation(deviation) if isinstance(deviation, str) else deviation
    eff_request = dev.apply_request(request) if dev else request
    eff_runtime = dev.apply_runtime(runtime) if dev else runtime
    preset = dev.preset(eff_request.model) if dev else eff_request.model
    return dev, eff_request, eff_runtime, preset


def _fit_prompt(pipe, spec, preset: str, request: GenerationRequest, eff_request: GenerationRequest,
                runtime: Runtime) -> tuple[GenerationRequest, bool]:
    """The prompt against the encoder's limit (the pipeline would silently truncate): refused unless
    the request allows truncation; cut to the limit when the context is longer (schedule "wan")."""
    n_tokens = count_tokens(pipe, eff_request.prompt)
    truncated = n_tokens > spec.text_len
    if truncated and not request.truncate_prompt:
        raise PromptTooLong(
            f"prompt: {n_tokens} tokens exceed the text encoder's limit of {spec.text_len} for preset "
            f"{preset!r}; shorten it or set truncate_prompt=true to truncate explicitly (recorded)"
        )
    if truncated and runtime.schedule == "wan":
        eff_request = eff_request.model_copy(update={"prompt": truncate_to_tokens(pipe.tokenizer, eff_request.prompt,
                                                                                  spec.text_len)})
    return eff_request, truncated


def _check_steps(n_steps: int, stop_after: int | None, resume_from: Checkpoint | None) -> None:
    last = n_steps - 1
    if stop_after is not None and not -1 <= stop_after <= last:
        raise ValueError(f"stop_after must be in -1..{last}, got {stop_after}")
    if resume_from is not None and not -1 <= resume_from.step < last:
        raise ValueError(f"resume_from.step must be in -1..{last - 1}, got {resume_from.step}")
    if resume_from is not None and resume_from.step >= 0 and resume_from.solver is None:
        raise ValueError("resume_from: a checkpoint after step 0 needs its solver state to resume exactly")


def plan_generation(pipe, preset: str, request: GenerationRequest, eff_request: GenerationRequest, runtime: Runtime,
                    dev, capture: Iterable[str], **options: Any) -> Plan:
    """The plan of one generation on `pipe` (options: run_seed, resume_from, substitute, stop_after,
    decode); every check that can fail runs here, before anything changes the pipeline."""
    spec = preset_spec(preset)
    eff_request, truncated = _fit_prompt(pipe, spec, preset, request, eff_request, runtime)
    timesteps = schedule(eff_request, pipe.scheduler.config, runtime.schedule)
    steps_at = resolve_captures(capture, timesteps, spec.boundary_ratio)
    _check_steps(len(timesteps), options.get("stop_after"), options.get("resume_from"))
    options["substitute"] = dict(options.get("substitute") or {})
    return Plan(request=request, eff_request=eff_request, runtime=runtime, dev=dev, spec=spec, truncated=truncated,
                timesteps=timesteps, steps_at=steps_at, **options)


@dataclass
class Batch:
    """The pipeline's inputs: the request's noise, plus other requests' when it runs inside a batch."""

    noise: "torch.Tensor"
    prompts: list[str]
    negatives: list[str]
    latents: "torch.Tensor"


def initial_latents(plan: Plan) -> Batch:
    import torch

    req, resume = plan.eff_request, plan.resume_from
    noise = resume.latents if (resume is not None and resume.step == -1) else initial_noise(req)
    prompts, negatives, latents = [req.prompt], [req.negative_prompt], [noise]
    for i, p in enumerate(filler_prompts(plan.runtime.batch_size - 1, plan.run_seed)):
        prompts.append(p)
        negatives.append(req.negative_prompt)
        latents.append(initial_noise(req, seed=seeds.batch_filler_seed(plan.run_seed, i)))
    return Batch(noise, prompts, negatives, torch.cat(latents, 0))


def _own(lat: "torch.Tensor") -> "torch.Tensor":
    """Row 0 of a batch of latents, as a float32 CPU copy."""
    return lat[:1].detach().to("cpu", latent_dtype(), copy=True)


def _zero_forward(hidden_states, *args, **kwargs):
    import torch

    return (torch.zeros_like(hidden_states),)


class StepController:
    """What happens after each denoising step (`callback_on_step_end`): at the resumed checkpoint
    the skipped steps end and its latent and solver state are put in; captures are taken as
    computed, before any substitution; a substituted latent replaces the computed one; the run
    stops after `stop_after`. Before the resumed step, expert forwards return zeros, uncounted."""

    def __init__(self, plan: Plan, noise: "torch.Tensor", meter: CostMeter):
        self.plan, self.meter = plan, meter
        self.checkpoints: dict[str, Checkpoint] = {}
        if "init" in plan.steps_at:
            self.checkpoints["init"] = Checkpoint(step=-1, latents=_own(noise), solver=None)
        self._skipped: list = []

    def attach(self, stack: contextlib.ExitStack, pipe) -> "StepController":
        modules = [m for m in (pipe.transformer, pipe.transformer_2) if m is not None]
        stack.callback(self.stop_skipping)
        if self.plan.resume_step >= 0:
            self.meter.skipping = True
            for m in modules:
                if "forward" not in m.__dict__:
                    m.forward = _zero_forward
                    self._skipped.append(m)
        return self

    def stop_skipping(self) -> None:
        self.meter.skipping = False
        for m in self._skipped:
            m.__dict__.pop("forward", None)
        self._skipped.clear()

    def on_step_end(self, p, i, t, kw):
        plan, lat = self.plan, kw["latents"]
        if i == plan.resume_step:
            self.stop_skipping()
            lat = lat.clone()
            lat[:1] = plan.resume_from.latents.to(lat.device, lat.dtype)
            restore_solver_state(p.scheduler, plan.resume_from.solver, lat.device, step=i)
        for name, s in plan.steps_at.items():
            if s == i and i >= plan.resume_step:
                self.checkpoints[name] = Checkpoint(step=i, latents=_own(lat), solver=solver_state(p.scheduler))
        if i in plan.substitute:
            lat = lat.clone()
            lat[:1] = plan.substitute[i].to(lat.device, lat.dtype)
        if plan.stop_after is not None and i == plan.stop_after:
            p._interrupt = True
        return {"latents": lat}


def pipeline_session(stack: contextlib.ExitStack, pipe, plan: Plan, noise: "torch.Tensor") -> StepController:
    """Everything that changes the cached pipeline for one generation, on one stack: the request's
    scheduler, the runtime's settings, attention backend and VAE dtype, the cost hooks, the
    deviation's patches, compiled forwards or blocks and the skipped steps of a resume. Closing the stack restores it all."""
    import torch

    from models.schedules import make_scheduler

    runtime = plan.runtime
    stack.callback(setattr, pipe, "_interrupt", False)
    set_attr(stack, pipe, "scheduler", make_scheduler(pipe.scheduler.config, plan.eff_request.shift, runtime.schedule))
    stack.enter_context(runtime.apply())
    stack.enter_context(pipeline_attention_backend(pipe, runtime.attention_backend))
    session_vae(stack, pipe, runtime.vae_dtype)
    meter = CostMeter(torch.device(runtime.device), pipe.transformer, pipe.transformer_2).attach(
        stack, pipe, compiled=runtime.compile)
    if plan.dev is not None:
        ctx = {"run_seed": plan.run_seed, "request": plan.request, "runtime": runtime, "spec": plan.spec}
        stack.enter_context(plan.dev.patch(pipe, ctx))
    if runtime.compile == "regional":
        _compile_blocks(stack, pipe, meter)
    elif runtime.compile:
        _compile_experts(stack, pipe)
    return StepController(plan, noise, meter).attach(stack, pipe)


def _run_pipeline(pipe, plan: Plan, batch: Batch, steps: StepController):
    req = plan.eff_request
    return pipe(
        prompt=batch.prompts if len(batch.prompts) > 1 else batch.prompts[0],
        negative_prompt=batch.negatives if len(batch.negatives) > 1 else batch.negatives[0],
        height=req.height,
        width=req.width,
        num_frames=req.frames,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance_high,
        guidance_scale_2=req.guidance_low,
        latents=batch.latents.to(plan.runtime.device),
        output_type="np" if plan.decodes else "latent",
        max_sequence_length=text_context_len(plan.spec, plan.runtime),
        callback_on_step_end=steps.on_step_end,
    )


def finish(plan: Plan, frames, steps: StepController, pipelines: PipelineCache | None = None,
           encode: bool = True) -> Generation:
    """The generation's record: its cost, the deviation's output, the video encoded and hashed
    (with `encode` False, left for `Generation.encoded()`: the frames, no MP4 yet)."""
    request, dev, meter = plan.request, plan.dev, steps.meter
    cost = meter.cost
    cost.latent_tokens = plan.eff_request.latent_tokens(plan.spec.vae_stride, plan.spec.patch_size)
    cost.batch_size = plan.runtime.batch_size
    cost.compute_share = compute_share(request, meter.block_tokens, plan.runtime.batch_size, dev, plan.spec)
    checkpoints = steps.checkpoints
    if dev is not None:
        frames, checkpoints = dev.postprocess(frames, checkpoints, request)
        if dev.video_from is not None and frames is not None:
            frames = generate(request, deviation=dev.video_from, capture=(), pipelines=pipelines, encode=False).frames
    mp4 = None
    if frames is None:
        frames, mp4 = np.zeros((0, request.height, request.width, 3), np.uint8), b""
    gen = Generation(
        request=request, effective_request=plan.eff_request, runtime=plan.runtime,
        deviation=dev.spec if dev else None, frames=frames, mp4=mp4,
        sha256=hashlib.sha256(mp4).hexdigest() if mp4 is not None else "", checkpoints=checkpoints, cost=cost,
        prompt_truncated=plan.truncated, run_seed=plan.run_seed,
    )
    return gen.encoded() if encode else gen


def generate(
    request: GenerationRequest,
    runtime: Runtime | None = None,
    deviation: "str | Deviation | None" = None,
    *,
    capture: Iterable[str] = DEFAULT_CAPTURE,
    run_seed: int = 0,
    resume_from: Checkpoint | None = None,
    substitute: dict[int, "torch.Tensor"] | None = None,
    stop_after: int | None = None,
    weights_seed: int = 0,
    decode: bool = True,
    pipelines: PipelineCache | None = None,
    encode: bool = True,
) -> Generation:
    """Run `request` as an executor would (optionally cheating with `deviation`).

    - `resume_from`: start from a checkpoint (its latent and solver state) and run only the steps
      after it; resuming from step k of a run reproduces that run bit for bit on the same machine.
    - `substitute`: {step: latent}: after step `step`, continue from the given latent instead of
      the computed one (checkpointed validation continues from the executor's latents).
    - `stop_after`: stop after this step (the remaining steps are not computed); with `decode`
      False or a stop, no video is decoded.
    - `run_seed`: seeds whatever the executor's hardware chooses (emulated hardware noise, filler
      prompts of a batch); never the request's noise.
    - `pipelines`: the cache of loaded pipelines to run on (default: the process's `PIPELINES`).
    - `encode`: False returns the frames without the MP4 (`mp4` None, `sha256` ""): the caller
      encodes them with `Generation.encoded()`, e.g. beside the next generation (another engine
      returns its server's MP4 either way).
    """
    dev, eff_request, eff_runtime, preset = _effective(request, runtime, deviation)
    if eff_runtime.engine != "diffusers":  # another engine (models/engines/): same request, same weights
        from models.engines import vllm_omni

        return vllm_omni.generate(request, eff_request, eff_runtime, dev, run_seed=run_seed, weights_seed=weights_seed,
                                  resume_from=resume_from, substitute=substitute, stop_after=stop_after,
                                  decode_off=not decode)
    pipe = build_pipeline(preset, eff_runtime, weights_seed, cache=pipelines)
    plan = plan_generation(pipe, preset, request, eff_request, eff_runtime, dev, capture, run_seed=run_seed,
                           resume_from=resume_from, substitute=substitute, stop_after=stop_after, decode=decode)
    batch = initial_latents(plan)
    with contextlib.ExitStack() as stack:
        steps = pipeline_session(stack, pipe, plan, batch.noise)
        result = _run_pipeline(pipe, plan, batch, steps)
        frames = frames_to_uint8(result.frames[0]) if plan.decodes else None
    return finish(plan, frames, steps, pipelines, encode=encode)
