"""Latent fingerprints: a seeded Johnson-Lindenstrauss projection to k numbers stored as float16.

The analogue of DiFR's Activation-DiFR for video: instead of keeping three bf16 latents (~12.6 MB
at 480p), an executor keeps `k` float16 numbers per captured latent (128 bytes at k = 64), and a
validator compares them with the projection of its own latent. For a random Gaussian matrix R with
entries N(0, 1)/sqrt(k), ||R x|| ~ ||x||, so the relative L2 of two fingerprints tracks the relative
L2 of the latents with a spread of about 1/sqrt(2k) (`benchmarks/bench_scoring.py` measures it).

The matrix is defined block by block: rows [b*BLOCK, (b+1)*BLOCK) of the (n, k) matrix R^T (one row
per latent value) are `torch.randn((BLOCK, k))` from a CPU `torch.Generator`
seeded with `SeedSequence([seed, b])`, drawn in float32 and widened to float64. So:
- the matrix is a pure function of (seed, k) on every machine with the same PyTorch CPU sampler
  (a CPU generator, as diffusers relies on for its initial noise). PyTorch uses a vectorised
  Box-Muller kernel on x86-64 CPUs with AVX2 and a scalar one elsewhere; the two can differ in the
  last bit of a float32 entry, which moves a float16 fingerprint by at most one unit in the last
  place, and only in rare rounding-boundary cases;
- a latent of 2M values is projected block by block, never materialising the full 2M x k matrix
  (matrices up to `max_cached_bytes` are kept, up to 8 of them, shared by every `Fingerprinter`
  of the same seed and k, since every video of one request shape uses the same one);
- a latent is flattened in C order; fingerprints of latents of different sizes cannot be compared.

float16 keeps ~3 significant digits (relative rounding <= 2**-11 ~ 4.9e-4): fingerprint distances
below ~1e-3 are dominated by that rounding, so they cannot resolve the 1e-7-level CPU rounding
differences, only differences of the size of GPU kernels (~5e-3) and above.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from models import seeds

if TYPE_CHECKING:  # pragma: no cover
    import torch

BLOCK = 4096  # latent values per generator block: part of the fingerprint's definition
FLOAT16_MAX = float(np.finfo(np.float16).max)


class FingerprintError(ValueError):
    pass


# Matrices shared by every Fingerprinter of the same (seed, k): a policy may build a new
# Fingerprinter per claim, and every video of one request shape uses the same matrix.
_MATRICES: "OrderedDict[tuple[int, int, int], torch.Tensor]" = OrderedDict()
_MATRICES_MAX = 8


def _block_seed(seed: int, block: int) -> int:
    return seeds.fingerprint_block_seed(seed, block)


class Fingerprinter:
    """Seeded JL projection of latents to `k` float16 values.

    k: output dimension (DiFR's Activation-DiFR uses 2..128, default 8; here 64 by default, see
       docs/metrics.md for the measured trade-off). seed: public seed of the projection (every
       party must use the same one). max_cached_bytes: largest float64 matrix kept in memory.
    """

    def __init__(self, k: int = 64, seed: int = 0, *, max_cached_bytes: int = 64 << 20):
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 4096:
            raise FingerprintError(f"k must be an integer in 1..4096, got {k!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise FingerprintError(f"seed must be a non-negative integer, got {seed!r}")
        self.k = k
        self.seed = seed
        self.max_cached_bytes = int(max_cached_bytes)

    def __repr__(self) -> str:
        return f"Fingerprinter(k={self.k}, seed={self.seed})"

    @property
    def bytes_per_vector(self) -> int:
        """Bytes of one fingerprint (k float16 values)."""
        return 2 * self.k

    def block(self, b: int) -> "torch.Tensor":
        """Rows [b*BLOCK, (b+1)*BLOCK) of R^T, shape (BLOCK, k), float64, entries N(0,1)/sqrt(k).

        Drawn in float32 (PyTorch's vectorised CPU normal sampler, 4x faster than float64 here),
        then widened; the float32 draw is what the seed defines."""
        import torch

        g = torch.Generator(device="cpu").manual_seed(_block_seed(self.seed, b))
        draw = torch.randn((BLOCK, self.k), generator=g, dtype=torch.float32, device="cpu")
        return draw.to(torch.float64) / math.sqrt(self.k)

    def matrix(self, n: int) -> "torch.Tensor":
        """R^T for a latent of n values, shape (n, k); materialises n*k float64 values (small n only)."""
        import torch

        key = (self.seed, self.k, n)
        if key in _MATRICES:
            _MATRICES.move_to_end(key)
            return _MATRICES[key]
        blocks = [self.block(b) for b in range(-(-n // BLOCK))]
        mat = torch.cat(blocks)[:n].contiguous()
        if mat.numel() * 8 <= self.max_cached_bytes:
            _MATRICES[key] = mat
            while len(_MATRICES) > _MATRICES_MAX:
                _MATRICES.popitem(last=False)
        return mat

    def project_exact(self, latent) -> np.ndarray:
        """The projection R x in float64, before rounding to float16."""
        import torch

        x = torch.as_tensor(latent).detach().to("cpu", torch.float64).reshape(-1)
        n = x.numel()
        if n == 0:
            raise FingerprintError("latent is empty")
        if not bool(torch.isfinite(x).all()):
            raise FingerprintError("latent holds NaN or inf values")
        cached = self.matrix(n) if n * self.k * 8 <= self.max_cached_bytes else None
        # Block by block in both paths, so a cached and a streamed projection are bit-identical.
        y = torch.zeros(self.k, dtype=torch.float64)
        for b in range(-(-n // BLOCK)):
            xs = x[b * BLOCK:(b + 1) * BLOCK]
            rows = cached[b * BLOCK:b * BLOCK + xs.numel()] if cached is not None else self.block(b)[: xs.numel()]
            y += xs @ rows
        return y.numpy()

    def project(self, latent) -> np.ndarray:
        """Fingerprint of `latent` (torch tensor or array of any shape, flattened in C order): (k,) float16."""
        y = self.project_exact(latent)
        peak = float(np.max(np.abs(y)))
        if peak > FLOAT16_MAX:
            raise FingerprintError(f"fingerprint value {peak:.3g} overflows float16 (max {FLOAT16_MAX:g}); "
                                   "the latent's norm is too large for a float16 fingerprint")
        return y.astype(np.float16)

    @staticmethod
    def distance(a, b) -> float:
        """Relative L2 ||b - a|| / ||a|| of two fingerprints (a = the reference); inf if lengths differ."""
        a = np.asarray(a, dtype=np.float64).ravel()
        b = np.asarray(b, dtype=np.float64).ravel()
        if a.shape != b.shape:
            return math.inf
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise FingerprintError("fingerprint holds NaN or inf values")
        diff = float(np.linalg.norm(b - a))
        if diff == 0.0:
            return 0.0
        norm = float(np.linalg.norm(a))
        return diff / norm if norm > 0 else math.inf
