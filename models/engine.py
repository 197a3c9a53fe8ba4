"""Generation: the stock diffusers `WanPipeline`, driven through its hooks.

`generate()` runs a request on a preset under a runtime, optionally with a deviation, and returns a
`Generation`: uint8 frames, the MP4 and its SHA-256, latents captured at chosen steps (with the
solver state needed to resume from them), and the cost actually spent. Nothing here forks the
pipeline: capture, resume and latent substitution go through `callback_on_step_end`, cost through
forward hooks, and skipped steps (when resuming at step k) through a temporary forward override
that returns zeros without computing.

Step numbering: checkpoint `s` is the latent after denoising step `s` (0-based), i.e. the input of
step `s+1`; `-1` is the initial noise. Named captures: `init` (-1), `switch` (after the last
high-noise-expert step), `final` (after the last step, before decoding), or `step:K`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from models import seeds
from models.patching import attention_backend, pipeline_attention_backend, sync
from models.presets import build_pipeline, preset_spec
from models.request import GenerationRequest, Runtime
from models.video import CODEC_SETTINGS, decode_mp4, encode_mp4, frames_to_uint8

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from models.deviations import Deviation

DEFAULT_CAPTURE: tuple[str, ...] = ("init", "switch", "final")
# What `Generation.save` writes into a generation directory; record.json holds the SHA-256 of the others.
GENERATION_FILES = ("video.mp4", "latents.safetensors", "record.json")
HASHED_FILES = ("video.mp4", "latents.safetensors")
RECORD_KEYS = ("request", "effective_request", "runtime", "deviation", "sha256", "cost")
# Captured latents are stored, committed and compared in float32, the dtype the pipeline keeps them
# in between steps (the transformer's input is cast to the model dtype); bytes are counted in it too
# (`Checkpoint.nbytes`): resuming from a bf16-rounded latent would not reproduce the run.
LATENT_DTYPE_NAME = "float32"
SOLVER_KEYS = ("model_outputs", "timestep_list", "lower_order_nums", "last_sample", "this_order", "_step_index")


def _latent_dtype():
    import torch

    return getattr(torch, LATENT_DTYPE_NAME)


class PromptTooLong(ValueError):
    pass


class ArtifactError(ValueError):
    """A stored generation is missing, truncated or inconsistent."""


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class Cost:
    """What a generation actually spent."""

    forward_passes: dict[str, int] = field(default_factory=lambda: {"high": 0, "low": 0})
    latent_tokens: int = 0  # tokens per forward pass (per sample)
    batch_size: int = 1
    block_calls: int = 0  # transformer block forwards (cached blocks are not called)
    seconds: dict[str, float] = field(default_factory=lambda: {"text_encoder": 0.0, "high": 0.0, "low": 0.0, "vae": 0.0})
    compute_share: float = 1.0  # transformer work relative to the honest run of the claimed request

    @property
    def total_passes(self) -> int:
        return sum(self.forward_passes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "forward_passes": dict(self.forward_passes), "latent_tokens": self.latent_tokens,
            "batch_size": self.batch_size, "block_calls": self.block_calls,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()}, "compute_share": self.compute_share,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cost":
        return cls(**d)


@dataclass
class Checkpoint:
    """The latent after step `step` and the solver's multistep state at that point."""

    step: int
    latents: "torch.Tensor"  # float32, CPU, (1, 16, T, h, w)
    solver: dict[str, Any] | None = None

    def nbytes(self, with_solver: bool = True) -> int:
        n = self.latents.numel() * self.latents.element_size()
        if with_solver and self.solver:
            for v in _solver_tensors(self.solver).values():
                n += v.numel() * v.element_size()
        return n


@dataclass
class Generation:
    request: GenerationRequest  # what the executor claims
    effective_request: GenerationRequest  # what it ran
    runtime: Runtime
    deviation: str | None
    frames: np.ndarray
    mp4: bytes
    sha256: str
    checkpoints: dict[str, Checkpoint]
    cost: Cost
    prompt_truncated: bool = False
    run_seed: int = 0

    @property
    def latents(self) -> dict[str, "torch.Tensor"]:
        return {k: c.latents for k, c in self.checkpoints.items()}

    @property
    def capture_steps(self) -> dict[str, int]:
        return {k: c.step for k, c in self.checkpoints.items()}

    def record(self) -> dict[str, Any]:
        return {
            "request": self.request.model_dump(),
            "effective_request": self.effective_request.model_dump(),
            "runtime": self.runtime.model_dump(),
            "deviation": self.deviation,
            "sha256": self.sha256,
            "codec": CODEC_SETTINGS,
            "frames_shape": list(self.frames.shape),
            "captures": self.capture_steps,
            "cost": self.cost.to_dict(),
            "prompt_truncated": self.prompt_truncated,
            "run_seed": self.run_seed,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write video.mp4, latents.safetensors and record.json (with every artifact's SHA-256) into a
        fresh directory beside `directory`, then rename it into place (`models.io` policy: a
        directory holding anything but these files is refused, never emptied)."""
        from safetensors.torch import save_file

        from models.io import staged_dir

        with staged_dir(directory, GENERATION_FILES) as tmp:
            (tmp / "video.mp4").write_bytes(self.mp4)
            tensors, meta = {}, {}
            for name, ck in self.checkpoints.items():
                tensors[name] = ck.latents.contiguous()
                if ck.solver is not None:
                    for key, t in _solver_tensors(ck.solver).items():
                        tensors[f"solver/{name}/{key}"] = t.contiguous()
                    meta[name] = json.dumps(_solver_scalars(ck.solver))
            meta["steps"] = json.dumps(self.capture_steps)
            save_file(tensors, str(tmp / "latents.safetensors"), metadata=meta)
            record = self.record()
            record["files"] = {n: _file_sha256(tmp / n) for n in HASHED_FILES}
            (tmp / "record.json").write_text(json.dumps(record, indent=1, allow_nan=False))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, verify: bool = True) -> "Generation":
        """Read a saved generation; refuses a missing file, a truncated file, a record that is not
        one, or a file whose SHA-256 differs from the record's (every artifact is hashed)."""
        directory = Path(directory)
        try:
            rec = json.loads((directory / "record.json").read_text())
            mp4 = (directory / "video.mp4").read_bytes()
        except FileNotFoundError as err:
            raise ArtifactError(f"{directory}: missing {Path(err.filename).name}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtifactError(f"{directory}/record.json is not valid JSON: {err}") from None
        missing = [k for k in RECORD_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ArtifactError(f"{directory}/record.json is not a generation record (missing {', '.join(missing)})")
        sha = hashlib.sha256(mp4).hexdigest()
        if verify:
            files = rec.get("files")
            if not isinstance(files, dict) or set(files) != set(HASHED_FILES):
                raise ArtifactError(f"{directory}/record.json does not hash every artifact ({', '.join(HASHED_FILES)}); "
                                    "it was written by an older t2vsim: regenerate it")
            if sha != rec["sha256"] or sha != files["video.mp4"]:
                raise ArtifactError(f"{directory}/video.mp4: SHA-256 {sha} does not match the record's {rec['sha256']}")
            for name in HASHED_FILES[1:]:
                got = _file_sha256(directory / name)
                if got != files[name]:
                    raise ArtifactError(f"{directory}/{name}: SHA-256 {got} does not match the record's {files[name]}")
        checkpoints = load_checkpoints(directory / "latents.safetensors")
        try:
            return cls(
                request=GenerationRequest(**rec["request"]),
                effective_request=GenerationRequest(**rec["effective_request"]),
                runtime=Runtime(**rec["runtime"]),
                deviation=rec["deviation"],
                frames=decode_mp4(mp4) if mp4 else np.zeros((0, 0, 0, 3), np.uint8),
                mp4=mp4,
                sha256=sha,
                checkpoints=checkpoints,
                cost=Cost.from_dict(rec["cost"]),
                prompt_truncated=rec.get("prompt_truncated", False),
                run_seed=rec.get("run_seed", 0),
            )
        except (TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
            raise ArtifactError(f"{directory}/record.json holds invalid fields: {err}") from None


def _file_sha256(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise ArtifactError(f"{path.parent}: missing {path.name}") from None


def _solver_tensors(solver: dict[str, Any]) -> dict[str, "torch.Tensor"]:
    import torch

    out = {}
    for key, v in solver.items():
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, torch.Tensor):
                    out[f"{key}.{i}"] = item
    return out


def _solver_scalars(solver: dict[str, Any]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for key, v in solver.items():
        if isinstance(v, torch.Tensor):
            out[key] = "tensor"
        elif isinstance(v, list):
            out[key] = ["tensor" if isinstance(x, torch.Tensor) else x for x in v]
        else:
            out[key] = v
    return out


def load_checkpoints(path: str | os.PathLike) -> dict[str, Checkpoint]:
    """Read captured latents (and solver states) written by `Generation.save`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except FileNotFoundError:
        raise ArtifactError(f"missing latent file {path}") from None
    except Exception as err:  # safetensors raises its own error types for truncated headers/data
        raise ArtifactError(f"{path}: unreadable or truncated latent file ({err})") from None
    steps = json.loads(meta.get("steps", "{}"))
    out: dict[str, Checkpoint] = {}
    for name, step in steps.items():
        if name not in tensors:
            raise ArtifactError(f"{path}: latent {name!r} listed but not stored")
        solver = None
        if name in meta:
            scalars = json.loads(meta[name])
            solver = {}
            for key, v in scalars.items():
                if v == "tensor":
                    solver[key] = tensors[f"solver/{name}/{key}"]
                elif isinstance(v, list):
                    solver[key] = [tensors[f"solver/{name}/{key}.{i}"] if x == "tensor" else x for i, x in enumerate(v)]
                else:
                    solver[key] = v
        out[name] = Checkpoint(step=int(step), latents=tensors[name], solver=solver)
    return out


# ---------------------------------------------------------------------------------------------
# Helpers


def initial_noise(request: GenerationRequest, seed: int | None = None) -> "torch.Tensor":
    """The initial latent: float32, drawn with a CPU generator, identical on every machine."""
    import torch

    spec = preset_spec(request.model)
    shape = request.latent_shape(spec.vae_stride, spec.z_dim)
    g = torch.Generator(device="cpu").manual_seed(request.seed if seed is None else seed)
    return torch.randn(shape, generator=g, dtype=torch.float32)


def schedule(request: GenerationRequest, scheduler_config: dict[str, Any], kind: str = "engine") -> list[float]:
    """The timesteps the pipeline will step through for this request (`kind`: Runtime.schedule)."""
    from models.engines.schedules import make_scheduler

    sched = make_scheduler(scheduler_config, request.shift, kind)
    sched.set_timesteps(request.steps)
    return [float(t) for t in sched.timesteps]


def check_captures(names: Iterable[str], steps: int) -> tuple[str, ...]:
    """Capture names checked before any work: init, switch, final or step:K with 0 <= K < steps."""
    names = tuple(names)
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"capture: names must be text, got {name!r}")
        if name in ("init", "switch", "final"):
            continue
        k = name[5:] if name.startswith("step:") else None
        if k is None or not k.isdigit():
            raise ValueError(f"capture: unknown name {name!r}; allowed: init, switch, final, step:K")
        if not 0 <= int(k) < steps:
            raise ValueError(f"capture: step {int(k)} outside 0..{steps - 1}")
    if len(set(names)) != len(names):
        raise ValueError(f"capture: duplicated names in {list(names)}")
    return names


def resolve_captures(names: Iterable[str], timesteps: list[float], boundary_ratio: float) -> dict[str, int]:
    boundary = boundary_ratio * 1000
    high = [i for i, t in enumerate(timesteps) if t >= boundary]
    n = len(timesteps)
    out: dict[str, int] = {}
    for name in check_captures(names, n):
        if name == "init":
            out[name] = -1
        elif name == "final":
            out[name] = n - 1
        elif name == "switch":
            out[name] = high[-1] if high else -1
        elif name.startswith("step:"):
            k = int(name[5:])
            if not 0 <= k < n:
                raise ValueError(f"capture: step {k} outside 0..{n - 1}")
            out[name] = k
        else:
            raise ValueError(f"capture: unknown name {name!r}; allowed: init, switch, final, step:K")
    return out


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


def text_context_len(spec, runtime: Runtime) -> int:
    """Text-embedding rows the transformers attend to: the preset's limit, or the Wan reference's 512
    (what vLLM-Omni pads every prompt to) under `Runtime(schedule="wan")`."""
    from models.engines.schedules import WAN_TEXT_LEN

    return max(WAN_TEXT_LEN, spec.text_len) if runtime.schedule == "wan" else spec.text_len


def truncate_to_tokens(tokenizer, prompt: str, n: int) -> str:
    """The prompt cut to the text the pipeline would keep with `n` tokens (cleaned as the pipeline does)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    ids = tokenizer(prompt_clean(prompt), max_length=n, truncation=True, add_special_tokens=True)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


def count_tokens(pipe, prompt: str) -> int:
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return len(pipe.tokenizer(prompt_clean(prompt), add_special_tokens=True)["input_ids"])


class _Controller:
    """Forward hooks: counts and times passes per expert and stage, skips steps when resuming."""

    def __init__(self, pipe, device, high, low):
        self.pipe, self.device = pipe, device
        self.labels = {id(high): "high", id(low): "low"}
        self.cost = Cost()
        self.skipping = False
        self.block_tokens: list[int] = []
        self._handles: list = []
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
        if not self.skipping:
            hs = args[0] if args else kwargs["hidden_states"]
            self.cost.block_calls += 1
            self.block_tokens.append(int(hs.shape[1]) * int(hs.shape[0]))

    def __enter__(self):
        pipe = self.pipe
        experts = {id(m): m for m in (pipe.transformer, pipe.transformer_2) if m is not None}
        for m in experts.values():
            self._handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post(None), with_kwargs=True))
            for block in m.blocks:
                # Counted on the block's first sub-module: step caches (first-block cache) replace
                # a block's forward with a cached residual and never reach its sub-modules.
                self._handles.append(block.attn1.register_forward_hook(self._block, with_kwargs=True))
        te = pipe.text_encoder
        self._handles.append(te.register_forward_pre_hook(self._pre, with_kwargs=True))
        self._handles.append(te.register_forward_hook(self._post("text_encoder"), with_kwargs=True))
        vae_decode = pipe.vae.decode

        def timed_decode(*a, **k):
            sync(self.device)
            t0 = time.perf_counter()
            out = vae_decode(*a, **k)
            sync(self.device)
            self.cost.seconds["vae"] += time.perf_counter() - t0
            return out

        pipe.vae.decode = timed_decode
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.pipe.vae.__dict__.pop("decode", None)
        return False


@contextlib.contextmanager
def _skip_forward(modules, controller: _Controller) -> Iterator[callable]:
    """While `controller.skipping`, expert forwards return zeros (the step's output is replaced)."""
    import torch

    patched = []

    def zero_forward(hidden_states, *args, **kwargs):
        return (torch.zeros_like(hidden_states),)

    def start():
        controller.skipping = True
        for m in modules:
            if "forward" not in m.__dict__:
                m.forward = zero_forward
                patched.append(m)

    def stop():
        controller.skipping = False
        for m in patched:
            m.__dict__.pop("forward", None)
        patched.clear()

    try:
        yield start, stop
    finally:
        stop()


# The pipeline's attention backend for a block (kept under its old name for callers outside models/).
_attention_backend = pipeline_attention_backend


@contextlib.contextmanager
def _compiled(pipe, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    import torch

    saved = {}
    for attr in ("transformer", "transformer_2"):
        m = getattr(pipe, attr)
        if m is not None and "forward" not in m.__dict__:
            saved[attr] = m
            m.forward = torch.compile(m.forward, dynamic=False)
    try:
        yield
    finally:
        for m in saved.values():
            m.__dict__.pop("forward", None)


# ---------------------------------------------------------------------------------------------
# Generation


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
    """
    import torch

    from models.deviations import parse_deviation

    runtime = runtime or Runtime()
    if not isinstance(runtime, Runtime):
        raise TypeError(f"runtime must be a Runtime, got {type(runtime).__name__} (pass deviations as deviation=...)")
    dev = parse_deviation(deviation) if isinstance(deviation, str) else deviation
    eff_request = dev.apply_request(request) if dev else request
    eff_runtime = dev.apply_runtime(runtime) if dev else runtime
    preset = dev.preset(eff_request.model) if dev else eff_request.model
    if eff_runtime.engine != "diffusers":  # another engine (models/engines/): same request, same weights
        from models.engines import vllm_omni

        return vllm_omni.generate(request, eff_request, eff_runtime, dev, run_seed=run_seed, weights_seed=weights_seed,
                                  resume_from=resume_from, substitute=substitute, stop_after=stop_after,
                                  decode_off=not decode)
    spec = preset_spec(preset)
    pipe = build_pipeline(preset, eff_runtime, weights_seed)
    device = torch.device(eff_runtime.device)

    # Prompt length against the encoder's limit (the pipeline would silently truncate).
    n_tokens = count_tokens(pipe, eff_request.prompt)
    truncated = n_tokens > spec.text_len
    if truncated and not request.truncate_prompt:
        raise PromptTooLong(
            f"prompt: {n_tokens} tokens exceed the text encoder's limit of {spec.text_len} for preset "
            f"{preset!r}; shorten it or set truncate_prompt=true to truncate explicitly (recorded)"
        )

    if truncated and eff_runtime.schedule == "wan":  # the context is longer than the preset's limit
        eff_request = eff_request.model_copy(update={"prompt": truncate_to_tokens(pipe.tokenizer, eff_request.prompt,
                                                                                  spec.text_len)})
    timesteps = schedule(eff_request, pipe.scheduler.config, eff_runtime.schedule)
    steps_at = resolve_captures(capture, timesteps, spec.boundary_ratio)
    last = len(timesteps) - 1
    if stop_after is not None and not -1 <= stop_after <= last:
        raise ValueError(f"stop_after must be in -1..{last}, got {stop_after}")
    if resume_from is not None and not -1 <= resume_from.step < last:
        raise ValueError(f"resume_from.step must be in -1..{last - 1}, got {resume_from.step}")
    if resume_from is not None and resume_from.step >= 0 and resume_from.solver is None:
        raise ValueError("resume_from: a checkpoint after step 0 needs its solver state to resume exactly")
    substitute = dict(substitute or {})

    from models.engines.schedules import make_scheduler

    saved_scheduler = pipe.scheduler
    pipe.scheduler = make_scheduler(saved_scheduler.config, eff_request.shift, eff_runtime.schedule)

    # The request's noise, plus other requests' when it runs inside a batch.
    noise = resume_from.latents if (resume_from is not None and resume_from.step == -1) else initial_noise(eff_request)
    prompts, negatives = [eff_request.prompt], [eff_request.negative_prompt]
    latents = [noise]
    if eff_runtime.batch_size > 1:
        from models.deviations import filler_prompts

        for i, p in enumerate(filler_prompts(eff_runtime.batch_size - 1, run_seed)):
            prompts.append(p)
            negatives.append(eff_request.negative_prompt)
            latents.append(initial_noise(eff_request, seed=seeds.batch_filler_seed(run_seed, i)))
    latents_in = torch.cat(latents, 0)

    checkpoints: dict[str, Checkpoint] = {}
    if "init" in steps_at:
        checkpoints["init"] = Checkpoint(step=-1, latents=noise[:1].detach().to("cpu", _latent_dtype(), copy=True), solver=None)

    high, low = pipe.transformer, pipe.transformer_2
    ctx = {"run_seed": run_seed, "request": request, "runtime": eff_runtime, "spec": spec}
    out_frames = None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(eff_runtime.apply())
            stack.enter_context(pipeline_attention_backend(pipe, eff_runtime.attention_backend))
            controller = stack.enter_context(_Controller(pipe, device, high, low))
            if dev is not None:
                stack.enter_context(dev.patch(pipe, ctx))
            stack.enter_context(_compiled(pipe, eff_runtime.compile))
            start_skip, stop_skip = stack.enter_context(
                _skip_forward([m for m in (pipe.transformer, pipe.transformer_2) if m is not None], controller)
            )
            resume_step = resume_from.step if resume_from is not None else -1
            if resume_step >= 0:
                start_skip()

            def on_step_end(p, i, t, kw):
                lat = kw["latents"]
                if i == resume_step:
                    stop_skip()
                    lat = lat.clone()
                    lat[:1] = resume_from.latents.to(lat.device, lat.dtype)
                    restore_solver_state(p.scheduler, resume_from.solver, lat.device, step=i)
                for name, s in steps_at.items():  # captured as computed, before any substitution
                    if s == i and i >= resume_step:
                        checkpoints[name] = Checkpoint(
                            step=i, latents=lat[:1].detach().to("cpu", _latent_dtype(), copy=True),
                            solver=solver_state(p.scheduler)
                        )
                if i in substitute:
                    lat = lat.clone()
                    lat[:1] = substitute[i].to(lat.device, lat.dtype)
                if stop_after is not None and i == stop_after:
                    p._interrupt = True
                return {"latents": lat}

            result = pipe(
                prompt=prompts if len(prompts) > 1 else prompts[0],
                negative_prompt=negatives if len(negatives) > 1 else negatives[0],
                height=eff_request.height,
                width=eff_request.width,
                num_frames=eff_request.frames,
                num_inference_steps=eff_request.steps,
                guidance_scale=eff_request.guidance_high,
                guidance_scale_2=eff_request.guidance_low,
                latents=latents_in.to(device),
                output_type="np" if (decode and stop_after is None) else "latent",
                max_sequence_length=text_context_len(spec, eff_runtime),
                callback_on_step_end=on_step_end,
            )
            if decode and stop_after is None:
                out_frames = frames_to_uint8(result.frames[0])
            cost = controller.cost
            block_tokens = controller.block_tokens
    finally:
        pipe.scheduler = saved_scheduler
        pipe._interrupt = False

    cost.latent_tokens = eff_request.latent_tokens(spec.vae_stride, spec.patch_size)
    cost.batch_size = eff_runtime.batch_size
    cost.compute_share = _compute_share(request, block_tokens, eff_runtime.batch_size, dev, spec)

    frames, checkpoints = (dev.postprocess(out_frames, checkpoints, request) if dev else (out_frames, checkpoints))
    if frames is None:
        frames = np.zeros((0, request.height, request.width, 3), np.uint8)
        mp4 = b""
    else:
        mp4 = encode_mp4(frames, request.fps)
    return Generation(
        request=request, effective_request=eff_request, runtime=eff_runtime,
        deviation=dev.spec if dev else None, frames=frames, mp4=mp4,
        sha256=hashlib.sha256(mp4).hexdigest(), checkpoints=checkpoints, cost=cost,
        prompt_truncated=truncated, run_seed=run_seed,
    )


def block_flops(tokens: float, spec) -> float:
    """Multiply-add FLOPs of one transformer block on `tokens` latent tokens (batch 1).

    Self-attention projections 8Nd^2 and scores/values 4N^2d; cross-attention projections
    4Nd^2 + 4Ld^2 and scores 4NLd (L = text tokens); feed-forward 4Nd*ffn.
    """
    cfg = spec.transformer_config
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f, n, length = cfg["ffn_dim"], float(tokens), float(spec.text_len)
    return 8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * length * d * d + 4 * n * length * d + 4 * n * d * f


def honest_work(request: GenerationRequest) -> float:
    """Transformer FLOPs of the honest run of a request."""
    spec = preset_spec(request.model)
    n = request.latent_tokens(spec.vae_stride, spec.patch_size)
    return forward_passes(request) * spec.num_layers * block_flops(n, spec)


def forward_passes(request: GenerationRequest) -> int:
    """Transformer passes of the honest run: per step 2 with CFG, 1 without, per expert."""
    boundary = preset_spec(request.model).boundary_ratio * 1000
    passes = 0
    for t in schedule(request, _scheduler_config()):
        passes += 2 if (request.uses_cfg_high if t >= boundary else request.uses_cfg_low) else 1
    return passes


def _scheduler_config() -> dict[str, Any]:
    from models.presets import SCHEDULER_CONFIG

    return SCHEDULER_CONFIG


def _compute_share(request, block_tokens: list[int], batch_size: int, dev, spec) -> float:
    """Measured transformer FLOPs per sample (blocks actually called) over the honest run's."""
    work = sum(block_flops(n / batch_size, spec) for n in block_tokens)  # each call: batch x per-sample
    base = honest_work(request)
    share = work / base if base > 0 else 1.0
    if dev is not None:
        share *= dev.speed_factor
    return float(share)
