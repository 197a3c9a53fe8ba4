"""The Proof-of-Compute forward pass of a Wan2.2 DiT (both experts).

After Gonka's PoC v2 (facts.md section 2), adapted to a diffusion transformer as the proposal asks:

- per nonce, a digest `SHA-256("{block_hash}_{public_key}_nonce{n}")` seeds everything the nonce
  needs: a noise latent at the PoC setting (by default the preset's smallest request size), a text
  embedding of the encoder's output shape, a timestep and the expert;
- the **expert** is a seeded coin, not the pipeline's router. WanPipeline routes inline
  (`t >= boundary_ratio * 1000` -> `transformer`, else `transformer_2`), so the first forward of
  every real generation uses the high-noise expert; the PoC forward replaces that router by
  `SeededRouter`, which picks either expert with probability 1/2 and then draws the timestep inside
  that expert's own range. A node that loaded one expert answers only about half the nonces
  correctly (`HeldExpertRouter` is what such a node runs);
- every transformer block's input is scrambled by a Householder reflection `x - 2 (x.v) v`, with
  `v` a unit vector seeded by `"{block_hash}_layer_{i}_householder"`. A Wan block is residual
  inside, so the reflected input is both the attention input and the residual stream, as Gonka
  reflects both. The reflection is applied by forward pre-hooks that exist only inside
  `scrambled(...)` and are removed on exit, even on error: normal inference is untouched;
- the output (the flow prediction, all of it) is normalised, projected by a seeded Gaussian matrix
  (seed `"{block_hash}_projection"`, Johnson-Lindenstrauss as in DiFR) to 12 dimensions,
  normalised again and stored as float16 (Gonka: 12 coordinates, fp16);
- nonces run in batches (per expert), each sample with its own timestep.

Every seeded tensor is drawn with a CPU `torch.Generator` in float32, so all machines see the same
inputs; only the forward pass itself runs on the runtime's device and dtype.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from models import patching, quant, seeds
from models.patching import attention_backend

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from models.request import Runtime

VECTOR_DIM = 12  # Gonka PoC v2: 12 coordinates per nonce
Expert = Literal["high", "low"]
WeightRounding = Literal["fp8", "int4"]


class PocInputError(ValueError):
    """A bad argument to the PoC forward (names the field and what is allowed)."""


# ---------------------------------------------------------------------------------------------
# Seeds


nonce_digest = seeds.poc_nonce_digest


def nonce_expert(block_hash: str, public_key: str, nonce: int) -> Expert:
    """The nonce's seeded expert (a fair coin from its digest), without drawing any tensor."""
    return "high" if nonce_digest(block_hash, public_key, nonce)[8] >> 7 else "low"


@dataclass(frozen=True)
class PocShape:
    """The latent the PoC forward runs on (one nonce), and the text embedding's shape."""

    channels: int
    frames: int  # latent frames
    height: int  # latent rows
    width: int  # latent columns
    text_len: int
    text_dim: int

    @property
    def latent(self) -> tuple[int, int, int, int]:
        return (self.channels, self.frames, self.height, self.width)

    @property
    def output_values(self) -> int:
        return self.channels * self.frames * self.height * self.width


def poc_shape(preset: str, *, width: int | None = None, height: int | None = None,
              frames: int | None = None, text_len: int | None = None) -> PocShape:
    """The PoC latent of a preset: its smallest request size unless given (pixels, frames 4k+1)."""
    from models.presets import preset_spec

    spec = preset_spec(preset)
    d = spec.request_defaults
    width, height, frames = width or d["width"], height or d["height"], frames or d["frames"]
    st, sh, sw = spec.vae_stride
    pt, ph, pw = spec.patch_size
    if width % (sw * pw) or height % (sh * ph) or width <= 0 or height <= 0:
        raise PocInputError(f"width/height must be positive multiples of {sw * pw}, got {width}x{height}")
    if frames < 1 or (frames - 1) % st:
        raise PocInputError(f"frames must be of the form {st}k+1, got {frames}")
    tl = text_len or spec.text_len
    if tl < 1:
        raise PocInputError(f"text_len must be >= 1, got {tl}")
    return PocShape(channels=int(spec.transformer_config.get("in_channels", spec.z_dim)),
                    frames=(frames - 1) // st + 1, height=height // sh, width=width // sw,
                    text_len=tl, text_dim=int(spec.transformer_config["text_dim"]))


@dataclass(frozen=True)
class NonceInputs:
    nonce: int
    expert: Expert
    timestep: float
    latent: "torch.Tensor"  # float32 CPU, PocShape.latent
    text: "torch.Tensor"  # float32 CPU, (text_len, text_dim)


def nonce_inputs(block_hash: str, public_key: str, nonce: int, shape: PocShape,
                 boundary_ratio: float = 0.875) -> NonceInputs:
    """Everything one nonce needs, from its digest alone (bit-identical on every machine)."""
    import torch

    digest = nonce_digest(block_hash, public_key, nonce)
    frac = int.from_bytes(digest[16:24], "big") / 2.0**64
    expert: Expert = nonce_expert(block_hash, public_key, nonce)
    # Each expert's own timestep range (WanPipeline: high while t >= boundary_ratio * 1000).
    lo = boundary_ratio * 1000.0 if expert == "high" else 0.0
    hi = 1000.0 if expert == "high" else boundary_ratio * 1000.0
    timestep = float(np.float32(lo + (hi - lo) * frac))
    g = torch.Generator(device="cpu").manual_seed(seeds.poc_nonce_seed(digest))
    latent = torch.randn(shape.latent, generator=g, dtype=torch.float32)
    text = torch.randn((shape.text_len, shape.text_dim), generator=g, dtype=torch.float32)
    return NonceInputs(int(nonce), expert, timestep, latent, text)


@functools.lru_cache(maxsize=8)
def householder_vectors(block_hash: str, num_layers: int, dim: int) -> tuple["torch.Tensor", ...]:
    """Unit vectors v_i (float32 CPU), seeded by `"{block_hash}_layer_{i}_householder"`."""
    import torch

    out = []
    for i in range(num_layers):
        g = torch.Generator(device="cpu").manual_seed(seeds.poc_householder_seed(block_hash, i))
        v = torch.randn(dim, generator=g, dtype=torch.float32)
        out.append(v / v.norm())
    return tuple(out)


@functools.lru_cache(maxsize=2)
def projection_matrix(block_hash: str, in_dim: int, out_dim: int = VECTOR_DIM) -> "torch.Tensor":
    """Seeded Gaussian projection (float32 CPU, in_dim x out_dim), seed `"{block_hash}_projection"`."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seeds.poc_projection_seed(block_hash))
    return torch.randn((in_dim, out_dim), generator=g, dtype=torch.float32) / out_dim**0.5


# ---------------------------------------------------------------------------------------------
# Hooks: scrambling, router, weights


def reflect(x: "torch.Tensor", v: "torch.Tensor") -> "torch.Tensor":
    """Householder reflection of the last dimension, `x - 2 (x.v) v`, computed in float32."""
    import torch

    xf = x.float()
    vf = v.to(device=x.device, dtype=torch.float32)
    return (xf - 2.0 * (xf @ vf).unsqueeze(-1) * vf).to(x.dtype)


@contextlib.contextmanager
def scrambled(transformer, block_hash: str) -> Iterator[None]:
    """Reflect each block's input (seeded per layer) for the duration of the block; hooks removed after."""
    blocks = list(transformer.blocks)
    if not blocks:
        raise PocInputError("transformer has no blocks to scramble")
    dim = int(transformer.config.num_attention_heads * transformer.config.attention_head_dim)
    vectors = householder_vectors(block_hash, len(blocks), dim)
    handles = []

    def make(v):
        def hook(module, args, kwargs):
            if "hidden_states" in kwargs:
                kwargs = dict(kwargs, hidden_states=reflect(kwargs["hidden_states"], v))
            else:
                args = (reflect(args[0], v), *args[1:])
            return args, kwargs

        return hook

    try:
        for block, v in zip(blocks, vectors):
            handles.append(block.register_forward_pre_hook(make(v), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


class SeededRouter:
    """The PoC router: the nonce's seeded expert (`high` -> `pipe.transformer`, `low` -> `transformer_2`)."""

    name = "seeded"

    def select(self, pipe, expert: Expert):
        module = pipe.transformer if expert == "high" else pipe.transformer_2
        if module is None:
            raise PocInputError(f"the pipeline has no {expert}-noise expert loaded")
        return module


class HeldExpertRouter(SeededRouter):
    """What a node holding one expert runs: every nonce on the expert it has (a cheat)."""

    def __init__(self, held: Expert):
        if held not in ("high", "low"):
            raise PocInputError(f"held expert must be 'high' or 'low', got {held!r}")
        self.held = held
        self.name = f"held:{held}"

    def select(self, pipe, expert: Expert):
        return super().select(pipe, self.held)


@contextlib.contextmanager
def rounded_weights(modules: Sequence, mode: WeightRounding | None) -> Iterator[None]:
    """Round every Linear weight of `modules` through FP8 or int4 for the block; restore after
    (models/quant.py), so a cached (shared) pipeline is never left changed."""
    if mode is None:
        yield
        return
    if mode not in ("fp8", "int4"):
        raise PocInputError(f"weight rounding must be 'fp8' or 'int4', got {mode!r}")
    with quant.rounded_weights(modules, quant.fp8_round if mode == "fp8" else quant.int4_round):
        yield


# ---------------------------------------------------------------------------------------------
# The PoC forward


@dataclass(frozen=True)
class PocVariant:
    """How a node runs the PoC forward: honestly (defaults) or with a cheat's model."""

    held_expert: Expert | None = None  # None: both experts (honest)
    weights: WeightRounding | None = None  # None: the real weights (honest)

    @property
    def honest(self) -> bool:
        return self.held_expert is None and self.weights is None

    def router(self) -> SeededRouter:
        return SeededRouter() if self.held_expert is None else HeldExpertRouter(self.held_expert)


def poc_vectors(pipe, block_hash: str, public_key: str, nonces: Sequence[int], *, shape: PocShape,
                runtime: "Runtime | None" = None, variant: PocVariant = PocVariant(),
                boundary_ratio: float | None = None, dim: int = VECTOR_DIM) -> np.ndarray:
    """The PoC vectors of `nonces` (float16, (len(nonces), dim)), in the order given.

    Nonces are grouped by their seeded expert and run in batches of `runtime.batch_size`, compiled
    as `runtime.compile` asks (the compiled code is undone on return).
    """
    import torch

    from models.request import Runtime

    runtime = runtime or Runtime()
    if not isinstance(block_hash, str) or not block_hash:
        raise PocInputError("block_hash must be a non-empty string")
    if not isinstance(public_key, str) or not public_key:
        raise PocInputError("public_key must be a non-empty string")
    nonces = [int(n) for n in nonces]
    if any(n < 0 or n >= 2**63 for n in nonces):
        raise PocInputError("nonces must be integers in 0..2**63-1")
    if dim < 1:
        raise PocInputError(f"dim must be >= 1, got {dim}")
    out = np.zeros((len(nonces), dim), dtype=np.float16)
    if not nonces:
        return out
    ratio = boundary_ratio if boundary_ratio is not None else float(getattr(pipe.config, "boundary_ratio", None) or 0.875)
    router = variant.router()
    experts = patching.experts(pipe)
    device = torch.device(runtime.device)
    proj = projection_matrix(block_hash, shape.output_values, dim).to(device)
    inputs = [nonce_inputs(block_hash, public_key, n, shape, ratio) for n in nonces]
    groups: dict[str, list[int]] = {"high": [], "low": []}
    for i, x in enumerate(inputs):
        groups[x.expert].append(i)
    bs = runtime.batch_size
    with contextlib.ExitStack() as stack:
        stack.enter_context(runtime.apply())
        stack.enter_context(torch.no_grad())
        stack.enter_context(rounded_weights(experts, variant.weights))
        stack.enter_context(attention_backend(experts, runtime.attention_backend))
        if runtime.compile:
            patching.compile_session(stack, experts, runtime.compile)
        for expert_name, idx in groups.items():
            if not idx:
                continue
            model = router.select(pipe, expert_name)
            dtype = model.patch_embedding.weight.dtype  # the dtype WanPipeline feeds it
            with scrambled(model, block_hash):
                for s in range(0, len(idx), bs):
                    chunk = idx[s:s + bs]
                    x = torch.stack([inputs[i].latent for i in chunk]).to(device=device, dtype=dtype)
                    e = torch.stack([inputs[i].text for i in chunk]).to(device=device, dtype=dtype)
                    t = torch.tensor([inputs[i].timestep for i in chunk], dtype=torch.float32, device=device)
                    y = model(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0]
                    out[chunk] = _project(y, proj)
    return out


def _project(y: "torch.Tensor", proj: "torch.Tensor") -> np.ndarray:
    yf = y.float().flatten(1)
    yf = yf / yf.norm(dim=1, keepdim=True).clamp(min=1e-30)
    z = yf @ proj
    z = z / z.norm(dim=1, keepdim=True).clamp(min=1e-30)
    return z.cpu().numpy().astype(np.float16)


def plain_forward(transformer, x, t, emb):
    """A normal (unscrambled) forward, as the pipeline calls it; for tests and comparisons."""
    import torch

    with torch.no_grad():
        return transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]
