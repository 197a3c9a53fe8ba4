"""Model presets: named Wan2.2 pipelines, built in code with seeded random weights or loaded offline.

- `tiny`: diffusers' own Wan2.2 test sizes (tests/pipelines/wan/test_wan_22.py); a CPU runs it in
  well under a second.
- `tiny-lite`: `tiny` with one transformer layer instead of two (the `model:` cheat's smaller model;
  the weights it shares by name with `tiny` are identical).
- `small`: the same architecture with ~30 M parameters per expert, for GPU experiments where
  compute is not negligible; `small-lite` has half its layers.
- `a14b-random`: the exact Wan2.2-T2V-A14B configuration (both experts, the Wan2.1 VAE, a
  UMT5-XXL-shaped text encoder) with random weights, for timing and numerics at real scale on a GPU.
- `path:DIR`: a local diffusers directory (e.g. Wan2.2-T2V-A14B-Diffusers), loaded offline.

Random weights are drawn on the CPU, one tensor at a time, from a seed derived from
`(weights_seed, parameter name)` with a float32 `torch.Generator`, so they are bit-identical on
every machine; a model is first built with its parameters on the `meta` device and each tensor is
materialised in its final dtype on its final device, so building never needs 2x the weights in
memory. In bfloat16 the modules diffusers keeps in float32 when it loads a checkpoint
(`_keep_in_fp32_modules`) stay in float32, as the released model runs.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import threading
from typing import TYPE_CHECKING, Any

from models.seeds import tensor_seed
from models.spec import (  # noqa: F401  (the specs, re-exported for the callers of this module)
    BOUNDARY_RATIO, PRESETS, SCHEDULER_CONFIG, SHAPES_DIR, PresetSpec, preset_names, preset_spec,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import WanPipeline

    from models.request import Runtime

# ---------------------------------------------------------------------------------------------
# Deterministic weights


def init_std(name: str, shape: tuple[int, ...]) -> float | None:
    """The scale of a parameter's random draw; None means a constant (1 for gains, 0 for biases)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return None
    if leaf in ("gamma",) or len(shape) == 1:
        return None
    if leaf == "scale_shift_table":
        return shape[-1] ** -0.5
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return fan_in**-0.5


def seeded_tensor(weights_seed: int, name: str, shape: tuple[int, ...]) -> "torch.Tensor":
    """One parameter's float32 CPU values, identical on every machine."""
    import torch

    std = init_std(name, shape)
    if std is None:
        fill = 0.0 if name.endswith("bias") else 1.0
        return torch.full(shape, fill, dtype=torch.float32)
    g = torch.Generator(device="cpu").manual_seed(tensor_seed(weights_seed, name))
    return torch.randn(shape, generator=g, dtype=torch.float32).mul_(std)


@contextlib.contextmanager
def parameters_on_meta():
    """Create parameters on the meta device (buffers stay real), as accelerate's init_empty_weights."""
    import torch
    from torch import nn

    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None:
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = nn.Parameter(module._parameters[name].to("meta"), **kwargs)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original
    del torch


def keeps_fp32(name: str, keep: list[str] | None) -> bool:
    return bool(keep) and any(part in keep for part in name.split("."))


def materialize(module, weights_seed: int, dtype, device, prefix: str = "", threads: int | None = None) -> None:
    """Replace every meta parameter by its seeded values in `dtype` on `device`, one at a time."""
    import concurrent.futures as cf

    import torch
    from torch import nn

    import os

    threads = threads or min(16, os.cpu_count() or 1)
    keep = list(getattr(type(module), "_keep_in_fp32_modules", None) or [])
    named = [(n, p) for n, p in module.named_parameters(remove_duplicate=False)]
    # Tied parameters (one tensor under two names) are drawn once, under their first name.
    first_name: dict[int, str] = {}
    for n, p in named:
        first_name.setdefault(id(p), n)

    def draw(item):
        n, p = item
        return n, seeded_tensor(weights_seed, prefix + first_name[id(p)], tuple(p.shape))

    done: dict[int, nn.Parameter] = {}
    owners = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for pname, p in list(mod._parameters.items()):
            if p is not None:
                owners.setdefault(id(p), []).append((mod, pname))
    todo = [(n, p) for n, p in named if first_name[id(p)] == n]
    by_name = dict(todo)
    def drawn():
        # A bounded window of draws in flight, so host memory holds a few tensors, never the model.
        window = max(1, threads) * 2
        with cf.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for start in range(0, len(todo), window):
                yield from pool.map(draw, todo[start:start + window])

    for n, values in drawn():
        p = by_name[n]
        target = torch.float32 if (dtype == torch.float32 or keeps_fp32(n, keep)) else dtype
        new = nn.Parameter(values.to(device=device, dtype=target), requires_grad=False)
        del values
        done[id(p)] = new
        for mod, pname in owners[id(p)]:
            mod._parameters[pname] = new


def byte_tokenizer(text_len: int):
    """A byte-level tokenizer built offline with `tokenizers` (ids 0-2 special, 3-258 bytes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=text_len,
    )


def build_random(spec: PresetSpec, runtime: "Runtime", weights_seed: int) -> "WanPipeline":
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    dtype = runtime.torch_dtype
    host = torch.device("cpu")
    expert_device = host if runtime.offload == "all" else torch.device(runtime.device)
    text_device = host if runtime.offload != "none" else torch.device(runtime.device)
    with parameters_on_meta():
        experts = [WanTransformer3DModel(**spec.transformer_config) for _ in range(2)]
        vae = AutoencoderKLWan(**spec.vae_config)
        text_encoder = UMT5EncoderModel(UMT5Config(**spec.text_config))
    for prefix, expert in zip(("transformer.", "transformer_2."), experts):
        materialize(expert, weights_seed, dtype, expert_device, prefix=prefix)
    materialize(vae, weights_seed, torch.float32, torch.device(runtime.device), prefix="vae.")  # float32
    materialize(text_encoder, weights_seed, dtype, text_device, prefix="text_encoder.")
    for m, dev in ((experts[0], expert_device), (experts[1], expert_device), (text_encoder, text_device)):
        m.to(dev)  # buffers (rope tables, relative-position constants)
        m.eval().requires_grad_(False)
    vae.to(runtime.device).eval().requires_grad_(False)
    pipe_cls = OffloadedWanPipeline if runtime.offload != "none" else _wan_pipeline_class()
    pipe = pipe_cls(
        tokenizer=byte_tokenizer(spec.text_len),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG),
        transformer=experts[0],
        transformer_2=experts[1],
        boundary_ratio=spec.boundary_ratio,
    )
    if runtime.offload != "none":
        pipe.enable_offload(runtime.device, runtime.offload)
    return pipe


def _wan_pipeline_class():
    from diffusers import WanPipeline

    return WanPipeline


def _make_offloaded_class():
    import torch
    from diffusers import WanPipeline

    class _Offloaded(WanPipeline):
        """WanPipeline whose big components live in host memory and visit the device one at a time.

        Mode 'all': a forward pre-hook moves the called component (text encoder or one expert) to the
        device, after moving the others back to the host, and moves its tensor inputs along; the VAE
        stays on the device. Peak device memory: one expert plus activations, instead of all weights.
        Mode 'text-encoder': both experts and the VAE stay on the device; the text encoder visits it
        for its forward and goes back to the host after (A14B: 57 GB resident instead of 73 GB).
        """

        _offload_device = None

        @property
        def _execution_device(self):
            return torch.device(self._offload_device) if self._offload_device else super()._execution_device

        def enable_offload(self, device: str, mode: str = "all") -> None:
            self._offload_device = device
            parts = (self.text_encoder,) if mode == "text-encoder" else (
                self.text_encoder, self.transformer, self.transformer_2)
            movable = [m for m in parts if m is not None]
            dev = torch.device(device)

            def to_dev(x):
                return x.to(dev) if isinstance(x, torch.Tensor) else x

            def make_hook(module):
                def hook(mod, args, kwargs):
                    if next(mod.parameters()).device != dev:
                        for other in movable:
                            if other is not mod and next(other.parameters()).device.type != "cpu":
                                other.to("cpu")
                        mod.to(dev)
                    return tuple(to_dev(a) for a in args), {k: to_dev(v) for k, v in kwargs.items()}
                return hook

            def back_to_host(mod, args, output):
                mod.to("cpu")
                return output

            for m in movable:
                m.register_forward_pre_hook(make_hook(m), with_kwargs=True)
                if mode == "text-encoder":
                    m.register_forward_hook(back_to_host)

    return _Offloaded


class _LazyOffloaded:
    cls = None

    def __call__(self, *a, **k):
        if _LazyOffloaded.cls is None:
            _LazyOffloaded.cls = _make_offloaded_class()
        return _LazyOffloaded.cls(*a, **k)


OffloadedWanPipeline = _LazyOffloaded()


def _load_path(spec: PresetSpec, runtime: "Runtime") -> "WanPipeline":
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline

    vae = AutoencoderKLWan.from_pretrained(spec.path, subfolder="vae", dtype=torch.float32,
                                           local_files_only=True)
    pipe = WanPipeline.from_pretrained(spec.path, vae=vae, dtype=runtime.torch_dtype, local_files_only=True)
    if runtime.offload != "none":
        OffloadedWanPipeline(**pipe.components)  # make sure the class exists
        pipe.__class__ = _LazyOffloaded.cls
        pipe.vae.to(runtime.device)
        if runtime.offload == "text-encoder":
            for m in (pipe.transformer, pipe.transformer_2):
                if m is not None:
                    m.to(runtime.device)
        pipe.enable_offload(runtime.device, runtime.offload)
    else:
        pipe.to(runtime.device)
    for m in (pipe.transformer, pipe.transformer_2, pipe.text_encoder, pipe.vae):
        if m is not None:
            m.eval().requires_grad_(False)
    return pipe


def load_pipeline(preset: str, runtime: "Runtime", weights_seed: int = 0) -> "WanPipeline":
    """A new pipeline of a preset on the runtime's device, dtype and offload mode (not cached)."""
    spec = preset_spec(preset)
    pipe = build_random(spec, runtime, weights_seed) if spec.is_random else _load_path(spec, runtime)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PipelineCache:
    """Loaded pipelines by (preset, device, dtype, weights seed, offload mode), the `size` most
    recently used kept. Whoever generates owns one (`generate(..., pipelines=)`); `PIPELINES` is the
    process's default. A generation changes a cached pipeline only inside its pipeline session
    (models/engine.py), which restores it."""

    def __init__(self, size: int = 3):
        if size < 1:
            raise ValueError(f"PipelineCache size must be >= 1, got {size}")
        self.size = size
        self._pipes: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, preset: str, runtime: "Runtime | None" = None, weights_seed: int = 0) -> "WanPipeline":
        from models.request import Runtime

        runtime = runtime or Runtime()
        preset_spec(preset)  # a clear error for unknown names before any work
        if weights_seed < 0:
            raise ValueError(f"weights_seed must be >= 0, got {weights_seed}")
        key = (preset, runtime.device, runtime.dtype, weights_seed, runtime.offload)
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            pipe = load_pipeline(preset, Runtime(device=runtime.device, dtype=runtime.dtype,
                                                 offload=runtime.offload), weights_seed)
            self._pipes[key] = pipe
            while len(self._pipes) > self.size:
                self._pipes.popitem(last=False)
            return pipe

    def clear(self) -> None:
        with self._lock:
            self._pipes.clear()

    def items(self) -> list[tuple[tuple, Any]]:
        """(key, pipeline) of every cached pipeline, least recently used first."""
        with self._lock:
            return list(self._pipes.items())

    def __len__(self) -> int:
        return len(self._pipes)


PIPELINES = PipelineCache()


def build_pipeline(preset: str, runtime: "Runtime | None" = None, weights_seed: int = 0, *,
                   cache: PipelineCache | None = None) -> "WanPipeline":
    """The pipeline of a preset on the runtime's device and dtype, from `cache` (default `PIPELINES`;
    do not mutate it for good)."""
    return (PIPELINES if cache is None else cache).get(preset, runtime, weights_seed)


def weights_digest(module) -> str:
    """SHA-256 over a module's parameters (names, dtypes, bytes): equal digests = equal weights."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        t = p.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()
