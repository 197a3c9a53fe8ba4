"""Deviations: named changes an executor may make, benign (honest work on other hardware or
software) or malign (cutting corners). Each is a registered class; the experiment and the CLI take
them by spec string, `name` or `name:arg` (e.g. `steps:20`, `lowres:416x240`), or by import path
`package.module:ClassName[:arg]` for deviations defined outside t2vsim.

A deviation may change the request (`apply_request`), the runtime (`apply_runtime`), the preset
(`preset`), the loaded pipeline for the duration of one generation (`patch`, always undone), and the
output (`postprocess`). `speed_factor` scales the measured transformer work for changes whose saving
is not in the number or size of passes (FP8 kernels).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal

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
    start = seed % len(OTHER_PROMPTS)
    return [OTHER_PROMPTS[(start + i) % len(OTHER_PROMPTS)] for i in range(n)]


class DeviationError(ValueError):
    pass


class Deviation:
    """Base class: the honest interface with every hook a no-op."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    description: ClassVar[str]
    arg_help: ClassVar[str | None] = None  # None: takes no argument
    speed_factor: float = 1.0

    def __init__(self, arg: str | None = None):
        if self.arg_help is None and arg not in (None, ""):
            raise DeviationError(f"deviation {self.name!r} takes no argument, got {arg!r}")
        if self.arg_help is not None and arg in (None, ""):
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

    def apply_runtime(self, runtime: Runtime) -> Runtime:
        return runtime

    def preset(self, preset: str) -> str:
        return preset

    @contextlib.contextmanager
    def patch(self, pipe, ctx: dict[str, Any]) -> Iterator[None]:
        yield

    def postprocess(self, frames: "np.ndarray | None", checkpoints: dict, request: GenerationRequest):
        return frames, checkpoints


DEVIATIONS: dict[str, type[Deviation]] = {}


def register_deviation(cls: type[Deviation]) -> type[Deviation]:
    for attr in ("name", "kind", "description"):
        if not hasattr(cls, attr):
            raise TypeError(f"deviation class {cls.__name__} must define {attr}")
    if cls.kind not in ("benign", "malign"):
        raise TypeError(f"deviation {cls.name}: kind must be benign or malign, got {cls.kind!r}")
    DEVIATIONS[cls.name] = cls
    return cls


def parse_deviation(spec: "str | Deviation") -> Deviation:
    """A deviation from `name[:arg]` or `package.module:ClassName[:arg]`."""
    if isinstance(spec, Deviation):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise DeviationError(f"deviation must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    head, _, rest = spec.partition(":")
    if "." in head:  # an import path
        cls_name, _, arg = rest.partition(":")
        try:
            module = importlib.import_module(head)
        except ImportError as err:
            raise DeviationError(f"deviation {spec!r}: cannot import module {head!r} ({err})") from None
        cls = getattr(module, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Deviation)):
            raise DeviationError(f"deviation {spec!r}: {head}.{cls_name} is not a Deviation subclass")
        dev = cls(arg or None)
        dev.import_path = f"{head}:{cls_name}"  # type: ignore[attr-defined]
        return dev
    cls = DEVIATIONS.get(head)
    if cls is None:
        raise DeviationError(
            f"unknown deviation {head!r}; allowed: {', '.join(sorted(DEVIATIONS))} "
            "or an import path package.module:ClassName[:arg]"
        )
    return cls(rest or None)


def _int_arg(name: str, arg: str, lo: int, hi: int) -> int:
    try:
        v = int(arg)
    except ValueError:
        raise DeviationError(f"deviation {name}: argument must be an integer, got {arg!r}") from None
    if not lo <= v <= hi:
        raise DeviationError(f"deviation {name}: argument must be in {lo}..{hi}, got {v}")
    return v


def _float_arg(name: str, arg: str, lo: float, hi: float) -> float:
    try:
        v = float(arg)
    except ValueError:
        raise DeviationError(f"deviation {name}: argument must be a number, got {arg!r}") from None
    if not lo <= v <= hi:
        raise DeviationError(f"deviation {name}: argument must be in {lo}..{hi}, got {v}")
    return v


def _experts(pipe) -> list:
    return list({id(m): m for m in (pipe.transformer, pipe.transformer_2) if m is not None}.values())


# ---------------------------------------------------------------------------------------------
# Benign


@register_deviation
class Batch(Deviation):
    name, kind, arg_help = "batch", "benign", "N"
    description = "generated inside a batch of N different prompts"

    def parse(self, arg):
        self.n = _int_arg(self.name, arg, 2, 64)

    def apply_runtime(self, runtime):
        return runtime.model_copy(update={"batch_size": self.n})


@register_deviation
class Threads(Deviation):
    name, kind, arg_help = "threads", "benign", "N"
    description = "another number of CPU intra-op threads"

    def parse(self, arg):
        self.n = _int_arg(self.name, arg, 1, 1024)

    def apply_runtime(self, runtime):
        return runtime.model_copy(update={"threads": self.n})


@register_deviation
class Attention(Deviation):
    name, kind, arg_help = "attention", "benign", "BACKEND"
    description = "another diffusers attention backend (kernel)"

    def parse(self, arg):
        Runtime(attention_backend=arg)  # validates the name, listing the allowed ones
        self.backend = arg

    def apply_runtime(self, runtime):
        return runtime.model_copy(update={"attention_backend": self.backend})


@register_deviation
class TF32(Deviation):
    name, kind = "tf32", "benign"
    description = "TF32 matrix products on the GPU (no effect on a CPU)"

    def apply_runtime(self, runtime):
        return runtime.model_copy(update={"tf32": True})


@register_deviation
class Device(Deviation):
    name, kind, arg_help = "device", "benign", "cpu|cuda"
    description = "another device class (a CPU validator for a GPU executor)"

    def parse(self, arg):
        Runtime(device=arg)
        self.device = arg

    def apply_runtime(self, runtime):
        return runtime.model_copy(update={"device": self.device})


@register_deviation
class Engine(Deviation):
    name, kind, arg_help = "engine", "benign", "diffusers|vllm-omni"
    description = "another inference engine (vLLM-Omni, as Gonka's ML nodes run it: models/engines/)"

    def parse(self, arg):
        Runtime(engine=arg)
        self.engine = arg

    def apply_runtime(self, runtime):
        return runtime.model_copy(update={"engine": self.engine})


@register_deviation
class Compile(Deviation):
    name, kind = "compile", "benign"
    description = "torch.compile'd transformers (other fused kernels)"

    def apply_runtime(self, runtime):
        return runtime.model_copy(update={"compile": True})


@register_deviation
class SplitK(Deviation):
    name, kind, arg_help = "splitk", "benign", "N"
    description = (
        "linear layers accumulate in N chunks of the reduction dimension, each partial product "
        "rounded to the model dtype and summed in it, as split-K GPU matrix kernels do"
    )

    def parse(self, arg):
        self.n = _int_arg(self.name, arg, 2, 64)

    @contextlib.contextmanager
    def patch(self, pipe, ctx):
        import torch
        import torch.nn.functional as F

        n = self.n

        def split_forward(mod):
            def forward(x):
                k = x.shape[-1]
                bounds = [k * i // n for i in range(n + 1)]
                out = None
                for a, b in zip(bounds[:-1], bounds[1:]):
                    part = F.linear(x[..., a:b], mod.weight[:, a:b])
                    out = part if out is None else out + part
                return out + mod.bias if mod.bias is not None else out
            return forward

        patched = []
        for m in _experts(pipe):
            for mod in m.modules():
                if isinstance(mod, torch.nn.Linear) and "forward" not in mod.__dict__ and mod.in_features >= 2 * n:
                    mod.forward = split_forward(mod)
                    patched.append(mod)
        try:
            yield
        finally:
            for mod in patched:
                mod.__dict__.pop("forward", None)


@register_deviation
class HardwareNoise(Deviation):
    name, kind, arg_help = "hwnoise", "benign", "EPS"
    description = (
        "EMULATION of another GPU's rounding: every transformer block's output perturbed by Gaussian "
        "noise of relative size EPS, seeded by the run (the executor's hardware), not the request"
    )

    def parse(self, arg):
        self.eps = _float_arg(self.name, arg, 0.0, 1.0)

    @contextlib.contextmanager
    def patch(self, pipe, ctx):
        import torch

        seed = int.from_bytes(hashlib.sha256(f"hwnoise/{ctx.get('run_seed', 0)}".encode()).digest()[:8], "little")
        device = torch.device(ctx["runtime"].device)
        gen = torch.Generator(device=device).manual_seed(seed & (2**63 - 1))
        eps = self.eps

        def hook(module, args, output):
            out = output.float()
            noise = torch.randn(out.shape, generator=gen, device=out.device, dtype=torch.float32)
            rms = out.pow(2).mean().sqrt()
            return (out + eps * rms * noise).to(output.dtype)

        handles = [b.register_forward_hook(hook) for m in _experts(pipe) for b in m.blocks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


# ---------------------------------------------------------------------------------------------
# Malign


@register_deviation
class Steps(Deviation):
    name, kind, arg_help = "steps", "malign", "N"
    description = "fewer denoising steps than claimed"

    def parse(self, arg):
        self.n = _int_arg(self.name, arg, 1, 1000)

    def apply_request(self, request):
        return request.model_copy(update={"steps": self.n})


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

        from models.engine import Checkpoint

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


@register_deviation
class FP8(Deviation):
    name, kind = "fp8", "malign"
    description = "transformer linear weights rounded through float8_e4m3fn with a per-tensor scale"
    # Nominal: FP8 matrix products run about twice as fast on an H100 and attention stays in bf16;
    # an assumption, not a measurement.
    speed_factor = 0.6

    @contextlib.contextmanager
    def patch(self, pipe, ctx):
        import torch

        saved = []
        with torch.no_grad():
            for m in _experts(pipe):
                for mod in m.modules():
                    if isinstance(mod, torch.nn.Linear):
                        w = mod.weight
                        saved.append((w, w.detach().to("cpu", copy=True)))
                        w.copy_(fp8_round(w))
        try:
            yield
        finally:
            with torch.no_grad():
                for w, orig in saved:
                    w.copy_(orig.to(w.device))


def fp8_round(w):
    """Round a weight through float8_e4m3fn with a per-tensor scale (amax / 448)."""
    import torch

    wf = w.detach().float()
    scale = wf.abs().max().clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
    return ((wf / scale).to(torch.float8_e4m3fn).float() * scale).to(w.dtype)


@register_deviation
class Seed(Deviation):
    name, kind, arg_help = "seed", "malign", "+K"
    description = "another seed for the initial noise"

    def parse(self, arg):
        self.k = _int_arg(self.name, arg.lstrip("+"), 1, 2**31)

    def apply_request(self, request):
        return request.model_copy(update={"seed": (request.seed + self.k) % 2**63})


@register_deviation
class OneExpert(Deviation):
    name, kind, arg_help = "one-expert", "malign", "high|low"
    description = "only one expert loaded, used for every step"

    def parse(self, arg):
        if arg not in ("high", "low"):
            raise DeviationError(f"deviation one-expert: argument must be high or low, got {arg!r}")
        self.which = arg

    @contextlib.contextmanager
    def patch(self, pipe, ctx):
        high, low = pipe.transformer, pipe.transformer_2
        keep = high if self.which == "high" else low
        pipe.transformer, pipe.transformer_2 = keep, keep
        try:
            yield
        finally:
            pipe.transformer, pipe.transformer_2 = high, low


@register_deviation
class NoCFG(Deviation):
    name, kind = "no-cfg", "malign"
    description = "classifier-free guidance skipped (no unconditional pass: half the transformer compute)"

    def apply_request(self, request):
        return request.model_copy(update={"guidance_high": 1.0, "guidance_low": 1.0})


@register_deviation
class Guidance(Deviation):
    name, kind, arg_help = "guidance", "malign", "G"
    description = "another guidance scale G for both experts"

    def parse(self, arg):
        self.g = _float_arg(self.name, arg, 0.0, 50.0)

    def apply_request(self, request):
        return request.model_copy(update={"guidance_high": self.g, "guidance_low": self.g})


@register_deviation
class Cache(Deviation):
    name, kind, arg_help = "cache", "malign", "THRESHOLD"
    description = "diffusers' first-block cache: reuse the rest of the network when the first block barely changes"

    def parse(self, arg):
        self.threshold = _float_arg(self.name, arg, 0.0, 10.0)

    @contextlib.contextmanager
    def patch(self, pipe, ctx):
        from diffusers import FirstBlockCacheConfig

        experts = _experts(pipe)
        for m in experts:
            m.enable_cache(FirstBlockCacheConfig(threshold=self.threshold))
        try:
            yield
        finally:
            for m in experts:
                m.disable_cache()


@register_deviation
class PromptSwap(Deviation):
    name, kind = "prompt-swap", "malign"
    description = "another prompt than the claimed one"

    def apply_request(self, request):
        i = int(hashlib.sha256(request.prompt.encode()).hexdigest(), 16) % len(OTHER_PROMPTS)
        other = OTHER_PROMPTS[i] if OTHER_PROMPTS[i] != request.prompt else OTHER_PROMPTS[(i + 1) % len(OTHER_PROMPTS)]
        return request.model_copy(update={"prompt": other})


@register_deviation
class Model(Deviation):
    name, kind, arg_help = "model", "malign", "PRESET"
    description = "another (smaller) model than the claimed one"

    def parse(self, arg):
        from models.presets import preset_spec

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
