"""The GPU concurrency limit around model sections: a Prefect global concurrency limit (name from
`T2VSIM_GPU_LIMIT`, default `gpu`) that every flow section running the model holds while it runs,
so that flow runs sharing a machine never put more work on its GPUs than the limit allows.

`prefect gcl create gpu --limit 1` on a one-GPU box; with no such limit nothing waits (Prefect's
non-strict mode). Ray fan-outs hold one slot per worker for their whole run; a fan-out asking for
more workers than the limit has slots runs with as many workers as it has (`workers_within_limit`),
since Prefect refuses at once, rather than waits for, more slots than a limit holds."""

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


def limit_slots() -> int | None:
    """Slots of the GPU limit on the Prefect server in use; None when no such limit exists (or it is
    inactive), so nothing waits."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            gcl = client.read_global_concurrency_limit_by_name(limit_name())
        except ObjectNotFound:
            return None
    return int(gcl.limit) if gcl.active else None


def workers_within_limit(workers: int) -> tuple[int, int | None]:
    """(workers to start, the limit's slots): `workers`, or the limit's slots when it has fewer."""
    slots = limit_slots()
    if slots is None or workers <= slots:
        return workers, slots
    return max(1, slots), slots
