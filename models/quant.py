"""Weight and activation quantisation: the rounding functions of the quantisation cheats
(models/deviations.py) and of the PoC cheats (models/poc.py), defined once, and the context that
rounds a model's linear weights for one block and restores them bit for bit.

Torch is imported inside the functions (this module imports without it).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Room kept free on an accelerator beside a backup of the weights (see `backup_device`).
BACKUP_MARGIN_BYTES = 8 << 30


def fp8_round(w: "torch.Tensor") -> "torch.Tensor":
    """Round a weight through float8_e4m3fn with a per-tensor scale (amax / 448)."""
    import torch

    wf = w.detach().float()
    scale = wf.abs().max().clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
    return ((wf / scale).to(torch.float8_e4m3fn).float() * scale).to(w.dtype)


def rowwise_fp8(x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(float8_e4m3fn values, float32 scales of shape (rows, 1)) of a 2-D tensor, one scale a row."""
    import torch

    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
    return (xf / scale).to(torch.float8_e4m3fn), scale


def int_round(w: "torch.Tensor", bits: int = 8) -> "torch.Tensor":
    """Symmetric weight quantisation with a scale per output channel: round(w / s) * s, |q| <= 2^(bits-1) - 1."""
    wf = w.detach().float()
    qmax = 2 ** (bits - 1) - 1
    scale = wf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
    return ((wf / scale).round().clamp(-qmax, qmax) * scale).to(w.dtype)


def int4_round(w: "torch.Tensor", group: int = 32) -> "torch.Tensor":
    """Symmetric 4-bit rounding (levels -8..7) with one scale per group of `group` input columns."""
    import torch

    wf = w.detach().float()
    rows, cols = wf.shape
    g = group if cols % group == 0 else cols
    blocks = wf.reshape(rows, cols // g, g)
    scale = blocks.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 7.0
    q = torch.clamp(torch.round(blocks / scale), -8, 7)
    return (q * scale).reshape(rows, cols).to(w.dtype)


def linear_layers(modules: Iterable) -> list:
    """Every `torch.nn.Linear` inside `modules` (each module once; None entries skipped)."""
    import torch

    unique = {id(m): m for m in modules if m is not None}.values()
    return [mod for m in unique for mod in m.modules() if isinstance(mod, torch.nn.Linear)]


def backup_device(weights: list) -> str | None:
    """Where to keep the originals of weights about to be overwritten: on their own accelerator when
    it has room for them plus an 8 GiB margin (a copy there is fast; a round trip of the A14B
    experts' 28 GB through host memory is not), else host memory ("cpu"). None: their own device."""
    import torch

    dev = weights[0].device if weights else None
    if dev is None or dev.type != "cuda":
        return "cpu"
    need = sum(w.numel() * w.element_size() for w in weights)
    free, _total = torch.cuda.mem_get_info(dev)
    free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)  # the allocator's cache is free too
    return None if free > need + BACKUP_MARGIN_BYTES else "cpu"


@contextlib.contextmanager
def rounded_weights(modules: Iterable, round_fn: Callable[["torch.Tensor"], "torch.Tensor"]) -> Iterator[None]:
    """Replace every linear weight inside `modules` by `round_fn(weight)` for the block; the originals
    are kept (see `backup_device`) and copied back bit for bit, also after an error."""
    import torch

    weights = [mod.weight for mod in linear_layers(modules)]
    keep = backup_device(weights)
    saved = []
    try:
        with torch.no_grad():
            for w in weights:
                saved.append((w, w.detach().to(keep or w.device, copy=True)))
                w.copy_(round_fn(w))
        yield
    finally:
        with torch.no_grad():
            for w, orig in saved:
                w.copy_(orig.to(w.device))
