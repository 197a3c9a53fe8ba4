"""Deviations: named changes an executor may make, benign (honest work on other hardware or
software) or malign (cutting corners). Each is a registered class; the experiment and the CLI take
them by spec string, `name` or `name:arg` (e.g. `steps:20`, `lowres:416x240`), or by import path
`package.module:ClassName[:arg]` for deviations defined outside t2vsim.

A deviation may change the request (`apply_request`), the runtime (`apply_runtime`), the preset
(`preset`), the loaded pipeline for the duration of one generation (`patch_session`, every change
registered on the engine's pipeline session and undone with it), the output (`postprocess`), and
the run whose video is delivered (`video_from`). `speed_factor` scales the measured transformer work for changes whose saving
is not in the number or size of passes (FP8 kernels).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import re
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Literal

from models import seeds
from models.patching import experts, forward_hook, keep_instance_attributes, patch_forward, set_attr
from models.quant import fp8_round, int_round, linear_layers, rounded_weights, rowwise_fp8
from models.request import GenerationRequest, Runtime

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

Kind = Literal["benign", "malign"]

# Prompts other requests in a batch (and the prompt-swap cheat) use; fixed so runs repeat.
OTHER_PROMPTS = (
    "a red bicycle leaning on a brick wall",
    "waves breaking on a rocky shore at sunset",
    "a cat sleeping on a windowsill",
    "a busy city street at night, neon lights",
    "a snowy mountain with a lone pine tree",
    "a chef chopping vegetables in a kitchen",
    "a hot air balloon drifting over fields",
    "a dog running on a beach",
    "a spaceship flying over a desert planet",
    "rain falling on a quiet pond",
    "a child flying a kite in a park",
    "an old library with tall bookshelves",
)


def filler_prompts(n: int, seed: int) -> list[str]:
    """`n` other prompts for the rest of a batch, chosen by `seed`."""
    start = seeds.filler_prompt_start(seed, len(OTHER_PROMPTS))
    return [OTHER_PROMPTS[(start + i) % len(OTHER_PROMPTS)] for i in range(n)]


class DeviationError(ValueError):
    pass


class Deviation:
    """Base class: the honest interface with every hook a no-op."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    description: ClassVar[str]
    arg_help: ClassVar[str | None] = None  # None: takes no argument
    arg_optional: ClassVar[bool] = False  # True: the argument may be left out
    speed_factor: float = 1.0

    def __init__(self, arg: str | None = None):
        if self.arg_help is None and arg not in (None, ""):
            raise DeviationError(f"deviation {self.name!r} takes no argument, got {arg!r}")
        if self.arg_help is not None and arg in (None, "") and not self.arg_optional:
            raise DeviationError(f"deviation {self.name!r} needs an argument: {self.name}:{self.arg_help}")
        self.arg = arg or None
        self.parse(self.arg)

    def parse(self, arg: str | None) -> None:
        """Validate and store the argument (subclasses)."""

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg is not None else self.name

    def __repr__(self) -> str:
        return f"<{self.kind} deviation {self.spec}>"

    def apply_request(self, request: GenerationRequest) -> GenerationRequest:
        return request

    def speed_factor_for(self, request: GenerationRequest) -> float:
        """The factor on the measured transformer work of `request` (`speed_factor` by default)."""
        return self.speed_factor

    def apply_runtime(self, runtime: Runtime) -> Runtime:
        return runtime

    def preset(self, preset: str) -> str:
        return preset

    @contextlib.contextmanager
    def patch(self, pipe, ctx: dict[str, Any]) -> Iterator[None]:
        """The pipeline changed for one generation and restored after: what `patch_session` registers."""
        with contextlib.ExitStack() as stack:
            self.patch_session(stack, pipe, ctx)
            yield

    def patch_session(self, stack: contextlib.ExitStack, pipe, ctx: dict[str, Any]) -> None:
        """Change `pipe` for one generation, every change registered on `stack` to be undone
        (`models.patching`: set_attr, patch_forward, forward_hook, or a context entered on it)."""

    def postprocess(self, frames: "np.ndarray | None", checkpoints: dict, request: GenerationRequest):
        return frames, checkpoints

    # Another deviation whose run of the claimed request delivers the video (the latents stay this
    # run's); None: this run's own video.
    video_from: "Deviation | None" = None


DEVIATIONS: dict[str, type[Deviation]] = {}


def register_deviation(cls: type[Deviation]) -> type[Deviation]:
    for attr in ("name", "kind", "description"):
        if not hasattr(cls, attr):
            raise TypeError(f"deviation class {cls.__name__} must define {attr}")
    if cls.kind not in ("benign", "malign"):
        raise TypeError(f"deviation {cls.name}: kind must be benign or malign, got {cls.kind!r}")
    DEVIATIONS[cls.name] = cls
    return cls


# An import-path spec runs its module's top-level code, so only modules on this allow-list are
# imported: t2vsim's own packages, the ones passed to `allow_plugins` (the CLI's --allow-plugin), and
# those named, comma-separated, in the T2VSIM_ALLOW_PLUGINS environment variable (for deployments).
PLUGIN_ENV = "T2VSIM_ALLOW_PLUGINS"
TRUSTED_PACKAGES = ("models", "sim")
_ALLOWED_PLUGINS: set[str] = set()


def allowed_plugins() -> set[str]:
    env = {m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()}
    return set(TRUSTED_PACKAGES) | _ALLOWED_PLUGINS | env


def _plugin_allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed_plugins())


@contextlib.contextmanager
def allow_plugins(modules: "Iterable[str]") -> Iterator[None]:
    """Allow importing deviations from `modules` (or packages) for the duration of the block."""
    added = set()
    for m in modules:
        m = m.strip()
        if not m or not all(part.isidentifier() for part in m.split(".")):
            raise DeviationError(f"allow_plugin: {m!r} is not a module name (package.module)")
        if m not in _ALLOWED_PLUGINS:
            added.add(m)
    _ALLOWED_PLUGINS.update(added)
    try:
        yield
    finally:
        _ALLOWED_PLUGINS.difference_update(added)


def parse_deviation(spec: "str | Deviation") -> Deviation:
    """A deviation from `name[:arg]` or `package.module:ClassName[:arg]` (module on the allow-list),
    or several at once joined by `+` (`attention:_native_math+int8-wo:low`: `Combined`)."""
    if isinstance(spec, Deviation):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise DeviationError(f"deviation must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    parts = COMBINE.split(spec)
    if len(parts) > 1:
        return Combined([_parse_one(p) for p in parts])
    return _parse_one(spec)


# `+` joins deviations where a name follows it (`seed:+1` keeps its sign: a digit follows)
COMBINE = re.compile(r"\+(?=[A-Za-z_])")


def _parse_one(spec: str) -> Deviation:
    if not spec:
        raise DeviationError("deviation: an empty part between '+' signs")
    head, _, rest = spec.partition(":")
    if "." in head:  # an import path
        cls_name, _, arg = rest.partition(":")
        if not _plugin_allowed(head):
            raise DeviationError(
                f"deviation {spec!r}: module {head!r} is not an allowed plugin (importing it runs its code); "
                f"pass --allow-plugin {head} or set {PLUGIN_ENV}={head}")
        try:
            module = importlib.import_module(head)
        except ImportError as err:
            raise DeviationError(f"deviation {spec!r}: cannot import module {head!r} ({err})") from None
        cls = getattr(module, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Deviation)):
            raise DeviationError(f"deviation {spec!r}: {head}.{cls_name} is not a Deviation subclass")
        if any(not isinstance(getattr(cls, a, None), str) for a in ("name", "kind", "description")) \
                or cls.kind not in ("benign", "malign"):
            raise DeviationError(f"deviation {spec!r}: {head}.{cls_name} is not a usable deviation (it must set "
                                 "name, kind = 'benign' or 'malign', and description)")
        dev = cls(arg or None)
        dev.import_path = f"{head}:{cls_name}"  # type: ignore[attr-defined]
        return dev
    cls = DEVIATIONS.get(head)
    if cls is None:
        raise DeviationError(
            f"unknown deviation {head!r}; allowed: {', '.join(sorted(DEVIATIONS))} "
            "or an import path package.module:ClassName[:arg] (several joined by '+')"
        )
    return cls(rest or None)


class Combined(Deviation):
    """Several deviations at once, applied in order: requests, runtimes and presets pass through each,
    every part patches the pipeline session, outputs pass through each postprocess; malign when any
    part is. The cheat that hides behind an honest difference (`attention:_native_math+int8-wo:low`:
    another kernel from the first step, int8 weights on the low-noise expert)."""

    name, kind, description = "combined", "benign", "several deviations at once (SPEC+SPEC...)"

    def __init__(self, parts: list[Deviation]):
        if any(isinstance(p, Combined) for p in parts) or len(parts) < 2:
            raise DeviationError("deviation: combine two or more plain deviations with '+'")
        self.parts, self.arg = parts, None
        self.kind = "malign" if any(p.kind == "malign" for p in parts) else "benign"  # type: ignore[misc]
        self.description = " + ".join(p.description for p in parts)  # type: ignore[misc]
        self.video_from = next((p.video_from for p in reversed(parts) if p.video_from is not None), None)

    @property
    def spec(self) -> str:
        return "+".join(p.spec for p in self.parts)

    def apply_request(self, request):
        return functools.reduce(lambda r, p: p.apply_request(r), self.parts, request)

    def apply_runtime(self, runtime):
        return functools.reduce(lambda r, p: p.apply_runtime(r), self.parts, runtime)

    def preset(self, preset):
        return functools.reduce(lambda r, p: p.preset(r), self.parts, preset)

    def speed_factor_for(self, request):
        return math.prod(p.speed_factor_for(request) for p in self.parts)

    def patch_session(self, stack, pipe, ctx):
        for p in self.parts:
            p.patch_session(stack, pipe, ctx)

    def postprocess(self, frames, checkpoints, request):
        for p in self.parts:
            frames, checkpoints = p.postprocess(frames, checkpoints, request)
        return frames, checkpoints


def _number_arg(name: str, arg: str, lo: float, hi: float) -> float:
    """`arg` as a number within lo..hi: an integer when the bounds are integers."""
    as_int = isinstance(lo, int)
    try:
        v = int(arg) if as_int else float(arg)
    except ValueError:
        what = "an integer" if as_int else "a number"
        raise DeviationError(f"deviation {name}: argument must be {what}, got {arg!r}") from None
    if not lo <= v <= hi:
        raise DeviationError(f"deviation {name}: argument must be in {lo}..{hi}, got {v}")
    return v


# ---------------------------------------------------------------------------------------------
# Benign


class _Number(Deviation):
    """A deviation whose argument is one number within `bounds` (an integer when the bounds are
    integers), kept as `value`."""

    bounds: ClassVar[tuple[float, float]]

    def parse(self, arg):
        lo, hi = self.bounds
        self.value = _number_arg(self.name, arg, lo, hi)


class _RuntimeField(Deviation):
    """A deviation that sets one `Runtime` field (`field`): to its argument, validated by `Runtime`
    itself (its message lists the allowed values), or, without an argument, to `value`."""

    field: ClassVar[str]
    value: Any = None

    def parse(self, arg):
        if arg is not None:
            Runtime(**{self.field: arg})
            self.value = arg

    def apply_runtime(self, runtime):
        return runtime.model_copy(update={self.field: self.value})


def _runtime_deviation(cls_name: str, name: str, field: str, description: str, *, arg_help: str | None = None,
                       value: Any = None, bounds: tuple[int, int] | None = None) -> type[Deviation]:
    """A registered benign deviation that sets the Runtime field `field` (to `value` when it takes no
    argument; to a number within `bounds`, or to any value Runtime accepts, when it does)."""
    attrs: dict[str, Any] = dict(name=name, kind="benign", arg_help=arg_help, field=field, value=value,
                                 description=description, __module__=__name__, __qualname__=cls_name)
    if bounds is not None:
        attrs["bounds"] = bounds
    bases = (_Number, _RuntimeField) if bounds is not None else (_RuntimeField,)
    return register_deviation(type(cls_name, bases, attrs))


Batch = _runtime_deviation("Batch", "batch", "batch_size", "generated inside a batch of N different prompts",
                           arg_help="N", bounds=(2, 64))
Threads = _runtime_deviation("Threads", "threads", "threads", "another number of CPU intra-op threads",
                             arg_help="N", bounds=(1, 1024))
Attention = _runtime_deviation("Attention", "attention", "attention_backend",
                               "another diffusers attention backend (kernel)", arg_help="BACKEND")
TF32 = _runtime_deviation("TF32", "tf32", "tf32", "TF32 matrix products on the GPU (no effect on a CPU)", value=True)


@register_deviation
class Device(_RuntimeField):
    name, kind, arg_help, field = "device", "benign", "cpu|cuda", "device"
    description = "another device class (a CPU validator for a GPU executor)"

    # attention kernels that exist only on a GPU; on the CPU the executor runs torch's own SDPA
    GPU_ONLY_ATTENTION = ("_native_cudnn", "_native_flash", "_native_efficient", "flash", "flash_hub",
                          "_flash_3", "_flash_3_hub", "sage", "xformers")

    def apply_runtime(self, runtime):
        runtime = super().apply_runtime(runtime)
        if self.value == "cpu" and runtime.attention_backend in self.GPU_ONLY_ATTENTION:
            runtime = runtime.model_copy(update={"attention_backend": "native"})
        return runtime


Engine = _runtime_deviation("Engine", "engine", "engine", "another inference engine (vLLM-Omni, as Gonka's ML nodes "
                            "run it: models/engines/)", arg_help="diffusers|vllm-omni")
Compile = _runtime_deviation("Compile", "compile", "compile", "torch.compile'd transformers (other fused kernels)",
                             value=True)
RegionalCompile = _runtime_deviation("RegionalCompile", "regional-compile", "compile",
                                     "torch.compile'd transformer blocks (regional compile: other fused kernels)",
                                     value="regional")
VaeDtype = _runtime_deviation("VaeDtype", "vae-dtype", "vae_dtype", "the VAE decodes in another dtype (bfloat16: "
                              "faster, a close but different video)", arg_help="float32|bfloat16")


@register_deviation
class SplitK(_Number):
    name, kind, arg_help = "splitk", "benign", "N"
    description = ("linear layers accumulate in N chunks of the reduction dimension, each partial product "
                   "rounded to the model dtype and summed in it, as split-K GPU matrix kernels do")
    bounds = (2, 64)

    def patch_session(self, stack, pipe, ctx):
        for mod in linear_layers(experts(pipe)):
            if mod.in_features >= 2 * self.value:
                patch_forward(stack, mod, _split_linear(mod, self.value))


def _split_linear(mod, n: int):
    """A linear layer's forward that sums `n` chunks of the reduction dimension in the model dtype."""
    import torch.nn.functional as F

    def forward(x):
        k = x.shape[-1]
        bounds = [k * i // n for i in range(n + 1)]
        out = None
        for a, b in zip(bounds[:-1], bounds[1:]):
            part = F.linear(x[..., a:b], mod.weight[:, a:b])
            out = part if out is None else out + part
        return out + mod.bias if mod.bias is not None else out
    return forward


@register_deviation
class HardwareNoise(_Number):
    name, kind, arg_help = "hwnoise", "benign", "EPS"
    description = (
        "EMULATION of another GPU's rounding: every transformer block's output perturbed by Gaussian "
        "noise of relative size EPS, seeded by the run (the executor's hardware), not the request"
    )
    bounds = (0.0, 1.0)

    def patch_session(self, stack, pipe, ctx):
        import torch

        device = torch.device(ctx["runtime"].device)
        gen = torch.Generator(device=device).manual_seed(seeds.hwnoise_seed(ctx.get("run_seed", 0)))
        hook = _block_noise(gen, self.value)
        for m in experts(pipe):
            for b in m.blocks:
                forward_hook(stack, b, hook)


def _block_noise(gen, eps: float):
    """A forward hook adding Gaussian noise of relative size `eps` (of the output's RMS) from `gen`."""
    import torch

    def hook(module, args, output):
        out = output.float()
        noise = torch.randn(out.shape, generator=gen, device=out.device, dtype=torch.float32)
        rms = out.pow(2).mean().sqrt()
        return (out + eps * rms * noise).to(output.dtype)
    return hook


# ---------------------------------------------------------------------------------------------
# Malign


class _RequestChange(Deviation):
    """A deviation that changes request fields: `changes(self, request)` gives {field: value}."""

    changes: ClassVar[Any]

    def apply_request(self, request):
        return request.model_copy(update=type(self).changes(self, request))


def _request_deviation(cls_name: str, name: str, description: str, changes, *, arg_help: str | None = None,
                       bounds: tuple[float, float] | None = None) -> type[Deviation]:
    """A registered malign deviation that changes the request (`changes(deviation, request)`: the
    fields changed), its argument, if any, a number within `bounds`."""
    attrs: dict[str, Any] = dict(name=name, kind="malign", arg_help=arg_help, description=description,
                                 changes=changes, __module__=__name__, __qualname__=cls_name)
    if bounds is not None:
        attrs["bounds"] = bounds
    bases = (_Number, _RequestChange) if bounds is not None else (_RequestChange,)
    return register_deviation(type(cls_name, bases, attrs))


def _both_guidances(g_high: float, g_low: float) -> dict[str, float]:
    return {"guidance_high": g_high, "guidance_low": g_low}


Steps = _request_deviation("Steps", "steps", "fewer denoising steps than claimed",
                           lambda dev, req: {"steps": dev.value}, arg_help="N", bounds=(1, 1000))


@register_deviation
class LowRes(Deviation):
    name, kind, arg_help = "lowres", "malign", "WxH"
    description = "generated at a smaller size, frames and latents upscaled to the claimed size"

    def parse(self, arg):
        try:
            w, h = (int(x) for x in arg.lower().split("x"))
        except ValueError:
            raise DeviationError(f"deviation lowres: argument must be WxH (e.g. 416x240), got {arg!r}") from None
        if w < 16 or h < 16 or w % 16 or h % 16:
            raise DeviationError(f"deviation lowres: width and height must be positive multiples of 16, got {arg!r}")
        self.width, self.height = w, h

    def apply_request(self, request):
        return request.model_copy(update={"width": self.width, "height": self.height})

    def postprocess(self, frames, checkpoints, request):
        import numpy as np
        import torch
        import torch.nn.functional as F

        from models.artifacts import Checkpoint

        if frames is not None and frames.size:
            x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(request.height, request.width), mode="bilinear", align_corners=False)
            frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        size = request.latent_shape()[2:]

        def up(t):
            return F.interpolate(t, size=size, mode="trilinear", align_corners=False) if t.dim() == 5 else t

        out = {}
        for name, ck in checkpoints.items():
            solver = None
            if ck.solver is not None:  # the cheater upsamples its solver history too
                solver = {k: ([up(x) if isinstance(x, torch.Tensor) else x for x in v] if isinstance(v, list)
                              else up(v) if isinstance(v, torch.Tensor) else v) for k, v in ck.solver.items()}
            out[name] = Checkpoint(step=ck.step, latents=up(ck.latents), solver=solver)
        return frames, out


class WeightCheat(Deviation):
    """A weight cheat on both experts, or with `:high` / `:low` on that expert alone: the other
    expert's steps stay honest, so the error starts only at (or stops at) the expert switch. That
    is the cheat that knows a validator reading the trajectory's shape (`sim/at_scale.py`'s profile
    rule); it saves the quantised expert's share of the saving (compute, or that expert's memory)."""

    arg_help = "[high|low]"
    arg_optional = True

    def parse(self, arg):
        if arg not in (None, "high", "low"):
            raise DeviationError(f"deviation {self.name}: argument must be high or low (or left out: both "
                                 f"experts), got {arg!r}")
        self.which = arg

    def targets(self, pipe) -> list:
        """The experts this cheat changes."""
        if self.which is None:
            return experts(pipe)
        if pipe.transformer_2 is None or pipe.transformer_2 is pipe.transformer:
            raise DeviationError(f"deviation {self.spec}: this preset has one expert")
        return [pipe.transformer if self.which == "high" else pipe.transformer_2]

    def speed_factor_for(self, request):
        if self.which is None:
            return self.speed_factor
        from models.plan import expert_passes

        passes = expert_passes(request)
        return 1 - (1 - self.speed_factor) * passes[self.which] / max(1, sum(passes.values()))


@register_deviation
class FP8(WeightCheat):
    name, kind = "fp8", "malign"
    description = ("EMULATION of FP8 weights: transformer linear weights rounded through float8_e4m3fn with a "
                   "per-tensor scale, products still in the model dtype (see fp8-scaled for FP8 as deployed)")
    # Nominal: FP8 matrix products run about twice as fast on an H100 and attention stays in bf16;
    # an assumption, not a measurement.
    speed_factor = 0.6

    def patch_session(self, stack, pipe, ctx):
        stack.enter_context(rounded_weights(self.targets(pipe), fp8_round))


@register_deviation
class FP8Scaled(WeightCheat):
    name, kind = "fp8-scaled", "malign"
    description = (
        "FP8 as deployed: transformer linear weights (a scale per output channel) and activations (a scale "
        "per token, computed at run time) in float8_e4m3fn, multiplied by torch._scaled_mm with bf16 output"
    )
    speed_factor = 0.6  # nominal, as fp8

    def patch_session(self, stack, pipe, ctx):
        import torch

        with torch.no_grad():
            for mod in linear_layers(self.targets(pipe)):
                if "forward" not in mod.__dict__:
                    wq, ws = rowwise_fp8(mod.weight)
                    patch_forward(stack, mod, _fp8_linear(mod, wq, ws.t().contiguous()))


def _fp8_linear(mod, wq, ws):
    """A linear layer's forward on FP8 weights `wq` (scales `ws`) and per-token FP8 activations."""
    import torch

    fused = mod.in_features % 16 == 0 and mod.out_features % 16 == 0

    def forward(x):
        shape = x.shape
        xq, xs = rowwise_fp8(x.reshape(-1, shape[-1]))
        if fused:
            y = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)
        else:  # sizes _scaled_mm cannot take (tiny presets): the same quantities, a float32 product
            y = ((xq.float() * xs) @ (wq.float() * ws.t()).t()).to(torch.bfloat16)
        if mod.bias is not None:
            y = y + mod.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*shape[:-1], y.shape[-1])
    return forward


@register_deviation
class Int8WeightOnly(WeightCheat):
    name, kind = "int8-wo", "malign"
    description = (
        "int8 weight-only quantisation: transformer linear weights stored as int8 with a scale per output "
        "channel and dequantised for each product (the numerics of weight-only int8 kernels; speed not modelled)"
    )

    def patch_session(self, stack, pipe, ctx):
        stack.enter_context(rounded_weights(self.targets(pipe), int_round))


@register_deviation
class Seed(_Number):
    name, kind, arg_help = "seed", "malign", "+K"
    description = "another seed for the initial noise"

    bounds = (1, 2**31)

    def parse(self, arg):
        super().parse(arg.lstrip("+"))

    def apply_request(self, request):
        return request.model_copy(update={"seed": (request.seed + self.value) % 2**63})


@register_deviation
class OneExpert(Deviation):
    name, kind, arg_help = "one-expert", "malign", "high|low"
    description = "only one expert loaded, used for every step"

    def parse(self, arg):
        if arg not in ("high", "low"):
            raise DeviationError(f"deviation one-expert: argument must be high or low, got {arg!r}")
        self.which = arg

    def patch_session(self, stack, pipe, ctx):
        keep = pipe.transformer if self.which == "high" else pipe.transformer_2
        set_attr(stack, pipe, "transformer", keep)
        set_attr(stack, pipe, "transformer_2", keep)


NoCFG = _request_deviation("NoCFG", "no-cfg", "classifier-free guidance skipped (no unconditional pass: half the "
                           "transformer compute)", lambda dev, req: _both_guidances(1.0, 1.0))
Guidance = _request_deviation("Guidance", "guidance", "another guidance scale G for both experts",
                              lambda dev, req: _both_guidances(dev.value, dev.value), arg_help="G", bounds=(0.0, 50.0))


@register_deviation
class Cache(_Number):
    name, kind, arg_help = "cache", "malign", "THRESHOLD"
    description = "diffusers' first-block cache: reuse the rest of the network when the first block barely changes"
    bounds = (0.0, 10.0)

    def patch_session(self, stack, pipe, ctx):
        from diffusers import FirstBlockCacheConfig

        for m in experts(pipe):
            # diffusers' hooks leave instance attributes behind when removed (a block's bound
            # `forward`, the hook registry, the cache config): dropped again after disable_cache
            keep_instance_attributes(stack, m.modules())
            m.enable_cache(FirstBlockCacheConfig(threshold=self.value))
            stack.callback(m.disable_cache)


@register_deviation
class PromptSwap(Deviation):
    name, kind = "prompt-swap", "malign"
    description = "another prompt than the claimed one"

    def apply_request(self, request):
        i = seeds.prompt_swap_index(request.prompt, len(OTHER_PROMPTS))
        other = OTHER_PROMPTS[i] if OTHER_PROMPTS[i] != request.prompt else OTHER_PROMPTS[(i + 1) % len(OTHER_PROMPTS)]
        return request.model_copy(update={"prompt": other})


@register_deviation
class Model(Deviation):
    name, kind, arg_help = "model", "malign", "PRESET"
    description = "another (smaller) model than the claimed one"

    def parse(self, arg):
        from models.spec import preset_spec

        preset_spec(arg)
        self.other = arg

    def preset(self, preset):
        return self.other


BENIGN_DEFAULT = ("batch:2", "threads:1", "attention:_native_math", "splitk:2")
MALIGN_DEFAULT = (
    "steps:6", "lowres:32x32", "fp8", "seed:+1", "one-expert:high", "no-cfg", "guidance:3.5",
    "cache:0.5", "prompt-swap", "model:tiny-lite",
)


def deviation_table() -> list[dict[str, str]]:
    """One row per registered deviation (for `t2vsim deviations` and the docs)."""
    return [
        {"name": c.name, "kind": c.kind, "arg": c.arg_help or "", "description": c.description}
        for c in DEVIATIONS.values()
    ]


# ---------------------------------------------------------------------------------------------
# Severity families and cheats that know the validator (commit-then-challenge, sim/commitment.py)


@register_deviation
class Quantise(_Number):
    name, kind, arg_help = "quant", "malign", "BITS"
    description = ("transformer linear weights rounded to BITS-bit integers (symmetric, one scale per output "
                   "channel, round to nearest): weight-only quantisation at 8, 6 or 4 bits; quant:8 has the numerics of int8-wo")
    bounds = (2, 8)

    def parse(self, arg):
        super().parse(arg)
        # Nominal (an assumption, not a measurement): weight-only kernels save memory traffic; taken as
        # FP8's 0.6 at 8 bits and 0.5 below.
        self.speed_factor = 0.6 if self.value == 8 else 0.5

    def patch_session(self, stack, pipe, ctx):
        stack.enter_context(rounded_weights(experts(pipe), lambda w: int_round(w, self.value)))


@register_deviation
class OneExpertLast(_Number):
    name, kind, arg_help = "one-expert-last", "malign", "K"
    description = ("the last K steps run the high-noise expert instead of the low-noise one (K covering every "
                   "low-noise step is one-expert:high: only one expert loaded)")
    bounds = (1, 1000)

    def patch_session(self, stack, pipe, ctx):
        high, low = pipe.transformer, pipe.transformer_2
        if low is None:
            return
        index = _step_index_of(pipe)

        def forward(*args, **kwargs):
            if index(kwargs.get("timestep")) >= len(pipe.scheduler.timesteps) - self.value:
                return high(*args, **kwargs)
            return type(low).forward(low, *args, **kwargs)

        patch_forward(stack, low, forward)


def _step_index_of(pipe):
    """A function from a transformer call's `timestep` argument to the step index in the pipeline's
    current schedule (the scheduler's timesteps are set when the pipeline starts)."""
    def index(timestep) -> int:
        ts = getattr(pipe.scheduler, "timesteps", None)
        if timestep is None or ts is None or len(ts) == 0:
            return -1
        t = float(timestep.flatten()[0])
        return int((ts.float().cpu() - t).abs().argmin())
    return index


GuidanceScale = _request_deviation(
    "GuidanceScale", "guidance-scale",
    "both experts' guidance scales multiplied by F (F = 0.98 is a 2% lower guidance; same compute)",
    lambda dev, req: _both_guidances(req.guidance_high * dev.value, req.guidance_low * dev.value),
    arg_help="F", bounds=(0.0, 10.0))


@register_deviation
class Reuse(Deviation):
    name, kind, arg_help = "reuse", "malign", "STEPS"
    description = ("on the listed steps (comma-separated, 0-based) no transformer runs: the previous step's "
                   "predictions are reused. Cheating on the steps of one committed segment only is the cheat "
                   "that hopes its segment is not challenged")

    def parse(self, arg):
        try:
            steps = sorted({int(x) for x in arg.split(",") if x.strip()})
        except ValueError:
            raise DeviationError(f"deviation reuse: argument must be comma-separated step numbers, got {arg!r}") from None
        if not steps or steps[0] < 1:
            raise DeviationError(f"deviation reuse: steps must be >= 1 (step 0 has nothing to reuse), got {arg!r}")
        self.steps = frozenset(steps)

    def patch_session(self, stack, pipe, ctx):
        index = _step_index_of(pipe)
        state: dict[str, Any] = {"step": None, "calls": 0, "out": {}}

        def wrap(m):
            orig = m.forward

            def forward(*args, **kwargs):
                step = index(kwargs.get("timestep"))
                if step != state["step"]:
                    state["step"], state["calls"] = step, 0
                branch = state["calls"]  # 0: conditional, 1: unconditional pass of this step
                state["calls"] += 1
                if step in self.steps and branch in state["out"]:
                    return (state["out"][branch].clone(),)
                out = orig(*args, **kwargs)
                state["out"][branch] = out[0].detach()
                return out
            return forward

        for m in experts(pipe):
            if "forward" not in m.__dict__:
                patch_forward(stack, m, wrap(m))


@register_deviation
class Mp4From(Deviation):
    name, kind, arg_help = "mp4-from", "malign", "SPEC"
    description = ("an honest trajectory (latents) delivered with the video of another run of the request under "
                   "the deviation SPEC (e.g. mp4-from:steps:4): a video not bound to the committed trajectory")

    def parse(self, arg):
        self.other = parse_deviation(arg)
        if isinstance(self.other, Mp4From):
            raise DeviationError("deviation mp4-from: SPEC must not be another mp4-from")

    @property
    def video_from(self) -> Deviation:
        return self.other


SEVERITY_SWEEP = (
    "steps:7", "steps:5", "steps:4",                                # steps N-1 .. N/2 (steps:6 is in the default set)
    "guidance-scale:0.98", "guidance-scale:0.95", "guidance-scale:0.9", "guidance-scale:0.8",
    "quant:8", "quant:6", "quant:4",
    "cache:0.1", "cache:0.2", "cache:0.3",                        # cache:0.5 is in the default set (0.05: no effect)
    "lowres:48x64", "lowres:48x48",                               # 0.75-1.0 of the side (tiny: multiples of 16)
    "one-expert-last:1",                                          # one-expert-last:2 = one-expert:high on 8 steps
    "reuse:7", "reuse:3,5,7",
)
ADAPTIVE_DEFAULT = ("reuse:5", "mp4-from:steps:4")
