"""Distances between a reference video (the validator's regeneration) and a test video (the executor's).

Every metric here is a *distance*: 0 for identical inputs, larger = more different, so every ROC in
the project reads the same way (reject when the score is large).

Frame metrics (piq 0.8.0 on the CPU, frames as float in [0, 1]):

| name      | distance                     | identical frames | notes |
|-----------|------------------------------|------------------|-------|
| `ssim`    | 1 - SSIM (11x11 Gaussian)    | 0                | any size >= 11 px |
| `ms_ssim` | 1 - MS-SSIM (5 scales)       | 0                | needs min(H, W) > 160 (`(11-1) * 2**4`) |
| `psnr`    | -PSNR in dB                  | -80              | piq adds 1e-8 to the MSE, so PSNR tops out at 80 dB |
| `gmsd`    | GMSD (already a distance)    | 0                | |
| `haarpsi` | 1 - HaarPSI                  | 0                | needs min(H, W) >= 16 |
| `lpips`   | LPIPS (VGG16)                | 0                | needs local weight files, see `perceptual_weight_files` |
| `dists`   | 1 - DISTS (VGG16)            | ~0               | needs local weight files |

`1 - similarity` distances are clamped at 0 (float32 rounding gives similarities a hair above 1),
and a bit-identical frame pair gets exactly the identity value (0; -80 for `psnr`). Per-frame distances are aggregated over frames: `mean`, `worst` (the largest distance), and `pNN`
(the NN-th percentile, e.g. `p90`). `score_frames` returns keys `"<metric>.<aggregation>"`.
Videos of different shape (frame count or size) cannot be compared frame by frame: every score is
`inf` (a clear reject), which is what a validator must conclude from a wrong-sized commitment.

Latent metrics (`score_latents`): `rel_l2` = ||test - ref|| / ||ref||, `cosine` = 1 - cos(ref, test);
both `inf` on a shape mismatch.

Speed: piq's filters on a few 64x64 frames take milliseconds on one thread, but on a loaded 2-core
machine PyTorch's intra-op thread pool made them 10-40x slower, so scoring runs with
`torch.set_num_threads(threads)` (default 1) for its duration and restores the previous value. The
distances do not depend on the thread count (tested); the experiment scores a prompt's claims side
by side, one thread each (`sim.policies.FullReplay.score_many`), and skips piq for videos whose
frames are all bit-identical (their distances are the identity values anyway).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

FRAME_METRICS: tuple[str, ...] = ("ssim", "ms_ssim", "psnr", "gmsd", "haarpsi", "lpips", "dists")
WEIGHTED_METRICS: tuple[str, ...] = ("lpips", "dists")
LATENT_METRICS: tuple[str, ...] = ("rel_l2", "cosine")
DEFAULT_AGGREGATIONS: tuple[str, ...] = ("mean", "worst", "p90")
IDENTITY: dict[str, float] = {"psnr": -80.0}  # distance of bit-identical frames (0 for the others)

# piq's MS-SSIM: 5 scales, 11x11 kernel -> every side must exceed (11 - 1) * 2 ** (5 - 1).
MS_SSIM_MIN_SIDE = (11 - 1) * 2 ** (5 - 1) + 1
HAARPSI_MIN_SIDE = 2 ** (3 + 1)  # piq's HaarPSI with 3 scales

# Weight files piq 0.8.0 would download for LPIPS and DISTS (same file names as its release URLs
# and torchvision's VGG16 checkpoint), looked for in a configured directory or the torch hub cache.
VGG16_FILE = "vgg16-397923af.pth"
PERCEPTUAL_WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "lpips": (VGG16_FILE, "lpips_weights.pt"),
    "dists": (VGG16_FILE, "dists_weights.pt"),
}
WEIGHTS_DIR_ENV = "T2VSIM_WEIGHTS_DIR"
_VGG_CHANNELS = (64, 128, 256, 512, 512)  # relu1_2 .. relu5_3
_DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)  # the image itself, then relu1_2 .. relu5_3
_PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


class MetricError(ValueError):
    """A metric name, aggregation or input that cannot be scored."""


class MissingWeights(MetricError):
    """LPIPS/DISTS weight files are not present locally (nothing is downloaded)."""


# ---------------------------------------------------------------------------------------------
# Names


_PCT = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")


def check_metrics(metrics: Iterable[str], allowed: Sequence[str] = FRAME_METRICS, field: str = "metrics") -> tuple[str, ...]:
    metrics = tuple(metrics)
    if not metrics:
        raise MetricError(f"{field}: at least one metric is needed; allowed: {', '.join(allowed)}")
    unknown = [m for m in metrics if m not in allowed]
    if unknown:
        raise MetricError(f"{field}: unknown metric(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    if len(set(metrics)) != len(metrics):
        raise MetricError(f"{field}: duplicate metric names in {metrics}")
    return metrics


def check_aggregations(aggregations: Iterable[str]) -> tuple[str, ...]:
    aggregations = tuple(aggregations)
    if not aggregations:
        raise MetricError("aggregations: at least one is needed; allowed: mean, worst, pNN (0 < NN < 100)")
    for a in aggregations:
        m = _PCT.match(a)
        if a in ("mean", "worst") or (m and 0 < float(m.group(1)) < 100):
            continue
        raise MetricError(f"aggregations: unknown aggregation {a!r}; allowed: mean, worst, pNN with 0 < NN < 100 (e.g. p90)")
    return aggregations


def aggregate(per_frame: np.ndarray, aggregation: str) -> float:
    per_frame = np.asarray(per_frame, dtype=np.float64)
    if aggregation == "mean":
        return float(per_frame.mean())
    if aggregation == "worst":
        return float(per_frame.max())
    return float(np.percentile(per_frame, float(aggregation[1:])))


# ---------------------------------------------------------------------------------------------
# Perceptual weights (LPIPS, DISTS)


def weight_search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """Where LPIPS/DISTS weight files are looked for, in order: `weights_dir`, $T2VSIM_WEIGHTS_DIR,
    the torch hub cache's `checkpoints/` (where piq and torchvision would have downloaded them)."""
    import torch

    dirs = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir))
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def perceptual_weight_files(metric: str, weights_dir: str | Path | None = None) -> dict[str, Path]:
    """Paths of the weight files `metric` ("lpips" or "dists") needs; `MissingWeights` if any is absent."""
    if metric not in PERCEPTUAL_WEIGHT_FILES:
        raise MetricError(f"metric {metric!r} needs no weight files; weighted metrics: {', '.join(WEIGHTED_METRICS)}")
    dirs = weight_search_dirs(weights_dir)
    found: dict[str, Path] = {}
    for name in PERCEPTUAL_WEIGHT_FILES[metric]:
        for d in dirs:
            if (d / name).is_file():
                found[name] = d / name
                break
    missing = [n for n in PERCEPTUAL_WEIGHT_FILES[metric] if n not in found]
    if missing:
        raise MissingWeights(
            f"metric {metric!r} needs the weight files {', '.join(PERCEPTUAL_WEIGHT_FILES[metric])}; "
            f"missing: {', '.join(missing)}. Nothing is downloaded at run time: put them in one of "
            f"{', '.join(str(d) for d in dirs)} (a directory passed as weights_dir, ${WEIGHTS_DIR_ENV}, "
            f"or the torch hub cache). Sources: {VGG16_FILE} is torchvision's VGG16 ImageNet checkpoint; "
            f"lpips_weights.pt and dists_weights.pt are piq 0.8.0's release files."
        )
    return found


def _load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated/corrupt file: name it
        raise MissingWeights(f"weight file {path} cannot be read ({type(err).__name__}: {err})") from err


def _vgg16_features(path: Path):
    """torchvision's VGG16 `.features` with weights from `path` (a full VGG16 state dict, or its
    `features.*` part alone)."""
    import torch
    from torchvision.models import vgg16

    state = _load(path)
    if not isinstance(state, dict):
        raise MissingWeights(f"weight file {path}: expected a VGG16 state dict, got {type(state).__name__}")
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    model = vgg16(weights=None).features
    expected = model.state_dict()
    bad = [k for k in expected if k not in feats or tuple(feats[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise MissingWeights(f"weight file {path}: not a VGG16 checkpoint (missing or wrongly shaped: {', '.join(bad[:4])})")
    model.load_state_dict({k: feats[k].to(torch.float32) for k in expected})
    return model.eval()


def _layer_weights(path: Path, tensors: Sequence, channels: Sequence[int], what: str) -> list:
    """Per-layer weights as (1, C, 1, 1) float32 tensors; any shape holding exactly C values is accepted."""
    import torch

    sizes = [int(t.numel()) if isinstance(t, torch.Tensor) else -1 for t in tensors]
    if sizes != list(channels):
        raise MissingWeights(f"weight file {path}: {what} must be {len(channels)} tensors of {list(channels)} values "
                             f"(shape (1, C, 1, 1)), got sizes {sizes}")
    return [t.detach().float().reshape(1, c, 1, 1) for t, c in zip(tensors, channels)]


def build_perceptual(metric: str, weights_dir: str | Path | None = None):
    """piq's LPIPS or DISTS module, built from local files (piq's own constructors would download)."""
    import piq
    import torch
    from piq.perceptual import VGG16_LAYERS, ContentLoss

    files = perceptual_weight_files(metric, weights_dir)
    features = _vgg16_features(files[VGG16_FILE])
    layers = [VGG16_LAYERS[name] for name in _PERCEPTUAL_LAYERS]
    if metric == "lpips":
        path = files["lpips_weights.pt"]
        weights = _load(path)
        if not isinstance(weights, (list, tuple)):
            raise MissingWeights(f"weight file {path}: expected a list of 5 tensors, got {type(weights).__name__}")
        layer_weights = _layer_weights(path, weights, _VGG_CHANNELS, "LPIPS layer weights")
        module = piq.LPIPS.__new__(piq.LPIPS)
        ContentLoss.__init__(module, features, layers=layers, weights=layer_weights,
                             replace_pooling=False, distance="mse", reduction="none", normalize_features=True)
    else:
        path = files["dists_weights.pt"]
        weights = _load(path)
        if not (isinstance(weights, dict) and {"alpha", "beta"} <= set(weights)):
            raise MissingWeights(f"weight file {path}: expected a dict with 'alpha' and 'beta'")
        total = sum(_DISTS_CHANNELS)
        for key in ("alpha", "beta"):
            if tuple(weights[key].shape) != (1, total, 1, 1):
                raise MissingWeights(f"weight file {path}: {key!r} must have shape (1, {total}, 1, 1), got {tuple(weights[key].shape)}")
        dists_weights = list(torch.split(weights["alpha"].float(), list(_DISTS_CHANNELS), dim=1))
        dists_weights += list(torch.split(weights["beta"].float(), list(_DISTS_CHANNELS), dim=1))
        module = piq.DISTS.__new__(piq.DISTS)
        ContentLoss.__init__(module, features, layers=layers, weights=dists_weights, replace_pooling=True,
                             reduction="none", normalize_features=False, allow_layers_weights_mismatch=True)
    return module.eval()


_PERCEPTUAL_CACHE: dict[tuple[str, str], object] = {}
_PERCEPTUAL_LOCK = threading.Lock()  # claims may be scored from several threads: build each module once


def _perceptual(metric: str, weights_dir: str | Path | None):
    files = perceptual_weight_files(metric, weights_dir)
    key = (metric, "|".join(f"{p.resolve()}:{p.stat().st_mtime_ns}" for p in files.values()))
    with _PERCEPTUAL_LOCK:
        if key not in _PERCEPTUAL_CACHE:
            _PERCEPTUAL_CACHE[key] = build_perceptual(metric, weights_dir)
        return _PERCEPTUAL_CACHE[key]


# ---------------------------------------------------------------------------------------------
# Frame metrics


@dataclass(frozen=True)
class FrameMetric:
    name: str
    description: str
    per_frame: Callable  # (x, y, weights_dir) -> torch (F,) distances, x/y float (F,3,H,W) in [0,1]
    min_side: int = 1
    size_rule: str = ""


def _ssim(x, y, _):
    import piq

    return (1.0 - piq.ssim(x, y, data_range=1.0, reduction="none")).clamp_min(0.0)


def _ms_ssim(x, y, _):
    import piq

    return (1.0 - piq.multi_scale_ssim(x, y, data_range=1.0, reduction="none")).clamp_min(0.0)


def _psnr(x, y, _):
    import piq

    return -piq.psnr(x, y, data_range=1.0, reduction="none")


def _gmsd(x, y, _):
    import piq

    return piq.gmsd(x, y, data_range=1.0, reduction="none")


def _haarpsi(x, y, _):
    import piq

    return (1.0 - piq.haarpsi(x, y, data_range=1.0, reduction="none")).clamp_min(0.0)


def _lpips(x, y, weights_dir):
    return _perceptual("lpips", weights_dir)(x, y)


def _dists(x, y, weights_dir):
    return _perceptual("dists", weights_dir)(x, y).clamp_min(0.0)


REGISTRY: dict[str, FrameMetric] = {
    m.name: m
    for m in (
        FrameMetric("ssim", "1 - SSIM", _ssim, 11, "frames need H, W >= 11 (the 11x11 SSIM window)"),
        FrameMetric("ms_ssim", "1 - MS-SSIM (5 scales)", _ms_ssim, MS_SSIM_MIN_SIDE,
                    f"MS-SSIM with 5 scales and an 11x11 window needs H, W >= {MS_SSIM_MIN_SIDE} ((11-1)*2**4 + 1)"),
        FrameMetric("psnr", "-PSNR in dB (capped at 80 dB by piq's epsilon)", _psnr),
        FrameMetric("gmsd", "GMSD", _gmsd, 2, "GMSD needs H, W >= 2"),
        FrameMetric("haarpsi", "1 - HaarPSI", _haarpsi, HAARPSI_MIN_SIDE,
                    f"HaarPSI with 3 scales needs H, W >= {HAARPSI_MIN_SIDE}"),
        FrameMetric("lpips", "LPIPS (VGG16)", _lpips, 16, "LPIPS needs H, W >= 16"),
        FrameMetric("dists", "1 - DISTS (VGG16)", _dists, 16, "DISTS needs H, W >= 16"),
    )
}
assert tuple(REGISTRY) == FRAME_METRICS


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` intra-op threads, restoring the previous count (None: leave as is)."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_frames(name: str, frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise MetricError(f"{name}: frames must be uint8 of shape (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    return frames


def check_size(metrics: Iterable[str], height: int, width: int) -> None:
    """Raise `MetricError` naming the size rule of the first metric the frame size does not allow."""
    for m in metrics:
        spec = REGISTRY[m]
        if min(height, width) < spec.min_side:
            raise MetricError(f"metric {m!r} cannot score {width}x{height} frames: {spec.size_rule}")


def per_frame_distances(ref: np.ndarray, test: np.ndarray, metrics: Sequence[str] = ("ssim", "psnr", "gmsd", "haarpsi"),
                        *, weights_dir: str | Path | None = None, threads: int | None = 1,
                        batch_frames: int = 32) -> dict[str, np.ndarray]:
    """Per-frame distances (F,) for each metric; frames must have equal shapes."""
    import torch

    metrics = check_metrics(metrics)
    ref, test = _check_frames("ref", ref), _check_frames("test", test)
    if ref.shape != test.shape:
        raise MetricError(f"ref and test shapes differ: {ref.shape} vs {test.shape}")
    check_size(metrics, ref.shape[1], ref.shape[2])
    out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    # Bit-identical frames get the metric's exact identity value, not float32 rounding around it.
    identical = np.all(ref.reshape(ref.shape[0], -1) == test.reshape(test.shape[0], -1), axis=1)
    if identical.all():  # every value would be replaced by the identity below: nothing to compute
        for m in metrics:
            if m in WEIGHTED_METRICS:
                _perceptual(m, weights_dir)  # but a broken weight file is reported whatever the frames
        return {m: np.full(ref.shape[0], IDENTITY.get(m, 0.0)) for m in metrics}
    with torch_threads(threads), torch.inference_mode():
        for start in range(0, ref.shape[0], batch_frames):
            x = torch.from_numpy(np.ascontiguousarray(ref[start:start + batch_frames])).permute(0, 3, 1, 2).float().div_(255.0)
            y = torch.from_numpy(np.ascontiguousarray(test[start:start + batch_frames])).permute(0, 3, 1, 2).float().div_(255.0)
            for m in metrics:
                d = REGISTRY[m].per_frame(y, x, weights_dir)
                out[m].append(d.reshape(-1).double().cpu().numpy())
    result = {}
    for m, v in out.items():
        d = np.concatenate(v)
        d[identical] = IDENTITY.get(m, 0.0)
        result[m] = d
    return result


def score_frames(ref, test, metrics: Sequence[str] = ("ssim", "psnr", "gmsd", "haarpsi"),
                 aggregations: Sequence[str] = DEFAULT_AGGREGATIONS, weights_dir: str | Path | None = None,
                 *, threads: int | None = 1) -> dict[str, float]:
    """Scores `{"<metric>.<aggregation>": distance}` of `test` against `ref` (uint8 (F, H, W, 3)).

    Videos of different shapes (frame count, height or width) score `inf` on every key; names,
    aggregations and the frame size are checked first either way.
    """
    metrics = check_metrics(metrics)
    aggregations = check_aggregations(aggregations)
    ref, test = _check_frames("ref", ref), _check_frames("test", test)
    check_size(metrics, ref.shape[1], ref.shape[2])
    for m in metrics:
        if m in WEIGHTED_METRICS:
            perceptual_weight_files(m, weights_dir)
    if ref.shape != test.shape:
        return {f"{m}.{a}": math.inf for m in metrics for a in aggregations}
    per_frame = per_frame_distances(ref, test, metrics, weights_dir=weights_dir, threads=threads)
    return {f"{m}.{a}": aggregate(per_frame[m], a) for m in metrics for a in aggregations}


# ---------------------------------------------------------------------------------------------
# Latent metrics


def _as_float64(name: str, x) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        raise MetricError(f"{name}: empty latent")
    if not np.all(np.isfinite(arr)):
        raise MetricError(f"{name}: latent holds NaN or inf values")
    return arr


def rel_l2(ref, test) -> float:
    """||test - ref|| / ||ref||: 0 when equal, inf on a shape mismatch or a zero reference with a nonzero test."""
    a, b = _as_float64("ref", ref), _as_float64("test", test)
    if a.shape != b.shape:
        return math.inf
    diff = float(np.linalg.norm((b - a).ravel()))
    norm = float(np.linalg.norm(a.ravel()))
    if diff == 0.0:
        return 0.0
    return diff / norm if norm > 0 else math.inf


def cosine_distance(ref, test) -> float:
    """1 - cos(ref, test) in [0, 2]; inf on a shape mismatch; 0 for two zero vectors, 1 for one."""
    a, b = _as_float64("ref", ref), _as_float64("test", test)
    if a.shape != b.shape:
        return math.inf
    a, b = a.ravel(), b.ravel()
    if np.array_equal(a, b):
        return 0.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    cos = float(np.dot(a, b) / (na * nb))
    return float(min(2.0, max(0.0, 1.0 - cos)))


LATENT_REGISTRY: dict[str, Callable[[object, object], float]] = {"rel_l2": rel_l2, "cosine": cosine_distance}


def score_latents(ref, test, metrics: Sequence[str] = LATENT_METRICS) -> dict[str, float]:
    """`{metric: distance}` between two latents (torch tensors or arrays); inf on a shape mismatch."""
    metrics = check_metrics(metrics, LATENT_METRICS)
    return {m: LATENT_REGISTRY[m](ref, test) for m in metrics}
