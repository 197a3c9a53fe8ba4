"""JL fingerprints: deterministic, chunking-independent, N(0,1)/sqrt(k) entries, and a distance
that tracks the latents' relative L2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import fingerprint as fpmod
from sim.fingerprint import BLOCK, Fingerprinter, FingerprintError


def _latent(seed=0, shape=(1, 16, 3, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_shape_dtype_and_bytes():
    fp = Fingerprinter(k=64, seed=0)
    v = fp.project(_latent())
    assert v.shape == (64,) and v.dtype == np.float16
    assert fp.bytes_per_vector == 128 == v.nbytes


def test_deterministic_and_seeded():
    x = _latent()
    a = Fingerprinter(32, seed=7).project(x)
    fpmod._MATRICES.clear()
    b = Fingerprinter(32, seed=7).project(x)
    c = Fingerprinter(32, seed=8).project(x)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_golden_matrix_slice():
    """Deliberate golden values: the projection is a public definition every party must share
    (PyTorch CPU generator, float32 draw, seed from SeedSequence([seed, block])). A change here
    changes every stored fingerprint."""
    assert fpmod._block_seed(0, 0) == 6569863346532939966
    blk = Fingerprinter(k=8, seed=0).block(0)
    got = (blk[0, :4] * math.sqrt(8)).float().numpy()
    want = np.array([0.44452762603759766, -1.1141915321350098, -0.1954551637172699, -0.48782646656036377], np.float32)
    assert np.array_equal(got, want)
    assert fpmod._block_seed(0, 1) != fpmod._block_seed(0, 0) != fpmod._block_seed(1, 0)


def test_streamed_equals_cached_and_never_materialises(monkeypatch):
    n = 3 * BLOCK + 17
    x = torch.randn(n, generator=torch.Generator().manual_seed(3))
    cached = Fingerprinter(16, 0).project_exact(x)
    streaming = Fingerprinter(16, 0, max_cached_bytes=0)
    monkeypatch.setattr(Fingerprinter, "matrix", lambda self, n: pytest.fail("materialised the full matrix"))
    assert np.array_equal(streaming.project_exact(x), cached)


def test_entries_are_standard_normal_over_sqrt_k():
    k = 64
    blk = Fingerprinter(k, 0).block(0).numpy() * math.sqrt(k)
    assert abs(blk.mean()) < 0.01
    assert blk.std() == pytest.approx(1.0, abs=0.01)
    # columns are not copies of each other
    assert abs(np.corrcoef(blk[:, 0], blk[:, 1])[0, 1]) < 0.05


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-3, 3))
def test_projection_is_linear(seed, c):
    fp = Fingerprinter(16, 0)
    x, y = _latent(seed), _latent(seed + 1)
    lhs = fp.project_exact(x + c * y)
    rhs = fp.project_exact(x) + c * fp.project_exact(y)
    assert np.allclose(lhs, rhs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("eps", [1e-2, 1e-1, 1.0])
def test_distance_tracks_relative_l2(eps):
    fp = Fingerprinter(128, 0)
    ratios = []
    for s in range(10):
        x = _latent(s)
        d = _latent(100 + s)
        y = x + eps * x.norm() * d / d.norm()
        ratios.append(fp.distance(fp.project(x), fp.project(y)) / eps)
    # JL: ratio ~ 1 with spread ~ 1/sqrt(2k) = 0.06
    assert np.median(ratios) == pytest.approx(1.0, abs=0.1)
    assert min(ratios) > 0.7 and max(ratios) < 1.3


def test_distance_edge_cases():
    fp = Fingerprinter(8, 0)
    a = fp.project(_latent())
    assert fp.distance(a, a) == 0.0
    assert math.isinf(fp.distance(a, a[:4]))
    assert math.isinf(fp.distance(np.zeros(8), a))


def test_bad_inputs():
    with pytest.raises(FingerprintError, match="k must be"):
        Fingerprinter(0)
    with pytest.raises(FingerprintError, match="seed must be"):
        Fingerprinter(8, seed=-1)
    fp = Fingerprinter(8, 0)
    with pytest.raises(FingerprintError, match="empty"):
        fp.project(torch.empty(0))
    with pytest.raises(FingerprintError, match="NaN"):
        fp.project(torch.tensor([1.0, float("nan")]))
    with pytest.raises(FingerprintError, match="overflows float16"):
        fp.project(torch.full((4096,), 1e6))
