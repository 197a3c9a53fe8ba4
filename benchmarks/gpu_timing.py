"""Timing helpers the GPU benchmark scripts share: synchronise the device, its peak memory, the
median of timed calls. `use(device)` sets the device they act on ('cuda' until then; on a CPU
they do no synchronising and peak memory is NaN)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

_DEVICE = ["cuda"]


def use(device: str) -> None:
    _DEVICE[0] = device


def _cuda() -> bool:
    return _DEVICE[0].startswith("cuda")


def sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if _cuda() else float("nan")


def reset_peak() -> None:
    if _cuda():
        torch.cuda.reset_peak_memory_stats()


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, Any]:
    """`warmup` untimed calls, then the median wall seconds of `repeats` synchronised calls, and the
    last call's result."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
