"""Measure PoC vector distances under benign and malign conditions, and load such measurements.

A measurement runs the real PoC forward (models/poc.py) for the same nonces under a reference
runtime (the validator's) and under each condition, and stores every per-nonce L2 distance. The
surrogate fidelity of `run_poc_stage` resamples these distances; mismatch rates at any threshold
and detection power at any sample size are recomputed from them without a model.

Conditions (joined with `+`): benign `batch:N`, `threads:N`, `attention:NAME`, `dtype:NAME`,
`tf32`, `rerun`; malign `fp8`, `int4`, `wrong-expert` (the other expert than the seeded one),
`fabricated` (random unit vectors), `copied` (another public key's vectors for the same nonces).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "t2vsim.poc.measurement/1"
DEFAULT_MEASUREMENT = Path(__file__).with_name("data") / "measured_distances.json"
DEFAULT_THRESHOLDS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.4)
CPU_BENIGN = ("rerun", "batch:4", "batch:16", "threads:1", "attention:_native_math",
              "dtype:bfloat16", "dtype:bfloat16+batch:4")
GPU_BENIGN = ("rerun", "batch:4", "attention:_native_flash", "attention:_native_efficient",
              "attention:_native_math", "tf32", "dtype:float32")
MALIGN = ("fp8", "int4", "wrong-expert", "fabricated", "copied")
MALIGN_KINDS = set(MALIGN)


class MeasurementError(ValueError):
    """A bad condition spec or a measurement file that cannot be used."""


def parse_condition(spec: str, reference) -> tuple[Any, str | None]:
    """(runtime, malign kind or None) of a condition spec relative to the reference runtime."""
    updates: dict[str, Any] = {}
    malign = None
    for token in spec.split("+"):
        key, _, val = token.partition(":")
        if key == "rerun" and not val:
            continue
        if key in MALIGN_KINDS and not val:
            malign = key
        elif key == "batch":
            updates["batch_size"] = _int(key, val)
        elif key == "threads":
            updates["threads"] = _int(key, val)
        elif key == "attention" and val:
            updates["attention_backend"] = val
        elif key == "dtype" and val in ("float32", "bfloat16", "float16"):
            updates["dtype"] = val
        elif key == "tf32" and not val:
            updates["tf32"] = True
        elif key == "device" and val:
            updates["device"] = val
        else:
            raise MeasurementError(
                f"condition {spec!r}: unknown part {token!r}; allowed: rerun, batch:N, threads:N, "
                f"attention:NAME, dtype:float32|bfloat16|float16, tf32, device:NAME, {', '.join(MALIGN)}")
    try:
        return (type(reference)(**{**reference.model_dump(), **updates}) if updates else reference), malign
    except Exception as err:  # pydantic refuses the value: name the condition
        raise MeasurementError(f"condition {spec!r}: {err}") from None


def _int(key: str, val: str) -> int:
    try:
        return int(val)
    except ValueError:
        raise MeasurementError(f"condition {key}:{val!r}: {key} must be an integer") from None


def measure(preset: str = "tiny", *, nonces: int = 256, conditions: tuple[str, ...] | None = None,
            reference=None, block_hash: str = "measure-block", public_key: str = "measure-key",
            thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS, width: int | None = None,
            height: int | None = None, frames: int | None = None, dim: int = 12,
            weights_seed: int = 0, progress=None) -> dict[str, Any]:
    """Distances of every condition against the reference, for `nonces` nonces (0..n-1)."""
    import torch

    from models.poc import PocVariant, poc_shape, poc_vectors
    from models.presets import build_pipeline
    from models.request import Runtime

    if nonces < 1:
        raise MeasurementError(f"nonces must be >= 1, got {nonces}")
    reference = reference or Runtime(dtype="float32", batch_size=1)
    if conditions is None:
        benign = GPU_BENIGN if reference.device.startswith("cuda") else CPU_BENIGN
        conditions = (*benign, *MALIGN)
    parsed = {c: parse_condition(c, reference) for c in conditions}  # fail before any work
    shape = poc_shape(preset, width=width, height=height, frames=frames)
    ids = list(range(nonces))

    def run(runtime, variant=PocVariant(), key=public_key):
        pipe = build_pipeline(preset, runtime, weights_seed)
        t0 = time.perf_counter()
        v = poc_vectors(pipe, block_hash, key, ids, shape=shape, runtime=runtime, variant=variant, dim=dim)
        return v, time.perf_counter() - t0

    ref, ref_seconds = run(reference)
    result: dict[str, Any] = {}
    for cond, (runtime, malign) in parsed.items():
        if progress:
            progress(cond)
        t0 = time.perf_counter()
        try:
            vec = _condition_vectors(run, runtime, malign, block_hash, public_key, ids, dim)
        except (RuntimeError, ValueError) as err:  # a backend this machine lacks
            if malign in _MALIGN_VARIANTS:
                raise
            result[cond] = {"kind": "benign", "error": f"{type(err).__name__}: {err}"[:300]}
            continue
        d = np.linalg.norm(vec.astype(np.float32) - ref.astype(np.float32), axis=1)
        result[cond] = {"kind": "malign" if malign else "benign", "runtime": runtime.model_dump(),
                        "distances": [float(f"{x:.6g}") for x in d], "seconds": time.perf_counter() - t0}
    data = {
        "schema": SCHEMA, "preset": preset, "nonces": nonces, "dim": dim, "block_hash": block_hash,
        "shape": {"latent": list(shape.latent), "text": [shape.text_len, shape.text_dim]},
        "reference": reference.model_dump(), "reference_seconds": ref_seconds,
        "machine": machine_description(reference.device), "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "thresholds": list(thresholds), "conditions": result,
    }
    data["rates"] = mismatch_rates(data, thresholds)
    data["recommended_threshold"] = recommend_threshold(data, thresholds)
    return data


_MALIGN_VARIANTS = ("fp8", "int4", "wrong-expert", "fabricated", "copied")


def _condition_vectors(run, runtime, malign: str | None, block_hash: str, public_key: str, ids: list[int],
                       dim: int) -> np.ndarray:
    """The PoC vectors of one condition: `run(runtime, variant, key)` with the malign change, or the
    benign runtime as it is."""
    from models.poc import PocVariant, nonce_expert

    if malign in ("fp8", "int4"):
        return run(runtime, PocVariant(weights=malign))[0]
    if malign == "wrong-expert":
        high, _ = run(runtime, PocVariant(held_expert="high"))
        low, _ = run(runtime, PocVariant(held_expert="low"))
        seeded = np.array([nonce_expert(block_hash, public_key, n) for n in ids])
        return np.where((seeded == "high")[:, None], low, high)
    if malign == "fabricated":
        g = np.random.default_rng(np.random.SeedSequence(12345))
        z = g.standard_normal((len(ids), dim))
        return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float16)
    if malign == "copied":
        return run(runtime, key=public_key + "-other")[0]
    return run(runtime)[0]


def machine_description(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}"


def distances_of(data: dict[str, Any], condition: str) -> np.ndarray:
    cond = data.get("conditions", {}).get(condition)
    if not cond or "distances" not in cond:
        have = sorted(k for k, v in data.get("conditions", {}).items() if "distances" in v)
        raise MeasurementError(f"measurement has no distances for condition {condition!r}; it has: {', '.join(have)}")
    return np.asarray(cond["distances"], dtype=np.float64)


def mismatch_rates(data: dict[str, Any], thresholds) -> dict[str, dict[str, float]]:
    """{condition: {threshold: share of distances above it}}."""
    out = {}
    for name, cond in data["conditions"].items():
        if "distances" in cond:
            d = np.asarray(cond["distances"])
            out[name] = {f"{t:g}": float(np.mean(d > t)) for t in thresholds}
    return out


def recommend_threshold(data: dict[str, Any], thresholds, honest_ceiling: float = 0.02) -> float | None:
    """The smallest threshold at which every benign condition mismatches at most `honest_ceiling`."""
    benign = [np.asarray(c["distances"]) for c in data["conditions"].values()
              if c.get("kind") == "benign" and "distances" in c]
    for t in sorted(thresholds):
        if benign and all(np.mean(d > t) <= honest_ceiling for d in benign):
            return float(t)
    return None


def write_measurement(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    from models.io import write_json_atomic

    return write_json_atomic(path, data, indent=1, allow_nan=True)
    return path


@dataclass(frozen=True)
class Measurement:
    """A loaded measurement: resample distances per condition."""

    data: dict[str, Any]
    path: str

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Measurement":
        p = Path(path) if path else DEFAULT_MEASUREMENT
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise MeasurementError(f"measurement: no file at {p} (write one with `t2vsim poc measure`)") from None
        except json.JSONDecodeError as err:
            raise MeasurementError(f"measurement: {p} is not JSON ({err})") from None
        if data.get("schema") != SCHEMA:
            raise MeasurementError(f"measurement: {p} has schema {data.get('schema')!r}, expected {SCHEMA!r}")
        return cls(data, str(p))

    def distances(self, condition: str) -> np.ndarray:
        return distances_of(self.data, condition)

    def draw(self, condition: str, n: int, rng: np.random.Generator) -> np.ndarray:
        d = self.distances(condition)
        return rng.choice(d, size=n, replace=True) if n else np.zeros(0)

    def rate(self, condition: str, threshold: float) -> float:
        return float(np.mean(self.distances(condition) > threshold))
