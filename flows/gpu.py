"""The GPU concurrency limit around model sections: a Prefect global concurrency limit (name from
`T2VSIM_GPU_LIMIT`, default `gpu`) that every flow section running the model holds while it runs,
so that flow runs sharing a machine never put more work on its GPUs than the limit allows.

`prefect gcl create gpu --limit 1` on a one-GPU box; with no such limit nothing waits (Prefect's
non-strict mode). Ray fan-outs hold one slot per worker for their whole run."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

DEFAULT_LIMIT = "gpu"


def limit_name() -> str:
    return os.environ.get("T2VSIM_GPU_LIMIT", DEFAULT_LIMIT)


@contextlib.contextmanager
def gpu_slots(occupy: int = 1) -> Iterator[None]:
    """Hold `occupy` slots of the limit for the block (waiting at most `T2VSIM_GPU_TIMEOUT` seconds
    if that is set, else as long as it takes)."""
    from prefect.concurrency.sync import concurrency

    timeout = os.environ.get("T2VSIM_GPU_TIMEOUT")
    with concurrency(limit_name(), occupy=max(1, int(occupy)), timeout_seconds=float(timeout) if timeout else None,
                     strict=False):
        yield
