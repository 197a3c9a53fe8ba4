"""CPU-side work of the experiment run beside the device's: a bounded background queue.

While the device generates the next video, the finished one is encoded, saved and scored on a
background thread (`Background`). The work handed over releases the GIL where it is heavy (x264 in
PyAV's encoder, PyAV's H.264 decoder, NumPy's and PyTorch's distances and frame metrics), so one
thread keeps up with the device without a second process. The queue is bounded (`depth` jobs
queued or running: `submit` waits when it is full), so memory stays bounded however fast the
device is. Jobs run one at a time, in the order submitted (a job may rely on an earlier one's
result).

Errors: a job's exception is raised, as the job raised it (same type, same message), on the
calling thread at the next `submit`, `result` or `close`; the jobs queued after it never run, and
the running one is waited for, so nothing keeps working after the error surfaced.

Files: jobs compute and return values, and the caller writes the files, atomically, with one
exception: the experiment's `save_generation` job writes a generation directory, and only through
`Generation.save`, which writes a fresh hidden directory beside the target and renames it into
place once every file is in it. When that job fails (the encode, a write, a full disk) the hidden
directory is removed and the target is left as it was (absent for a new generation), and the error
surfaces as above; a save queued behind a failed job never starts, so its generation is absent too.
A kill meanwhile leaves at most the hidden directory, which `sim.experiment.open_run` removes. So a
generation directory is complete or absent, and an error never leaves a half-written file.

`Background(enabled=False)` runs each job at once on the calling thread: the serial path, with the
same jobs in the same order.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

DEFAULT_DEPTH = 4


class Dropped(RuntimeError):
    """A queued job that did not run because an earlier one failed (never raised to the caller:
    the earlier job's error is)."""


class Background:
    """One worker thread behind a queue of at most `depth` jobs; `seconds` is the time the jobs
    ran, `waited` the time the caller spent waiting for them (queue full, or a result not ready)."""

    def __init__(self, enabled: bool = True, depth: int = DEFAULT_DEPTH, name: str = "t2vsim-background"):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.enabled = enabled
        self.seconds = 0.0
        self.waited = 0.0
        self._pending: list[Future] = []
        self._slots = threading.BoundedSemaphore(depth)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name) if enabled else None
        self._lock = threading.Lock()
        self._failed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue `fn(*args)` (run it now when disabled); raises an earlier job's error first."""
        self.check()
        if self._pool is None:
            fut: Future = Future()
            fut.set_result(self._timed(fn, *args))
            return fut
        t0 = time.perf_counter()
        self._slots.acquire()
        self.waited += time.perf_counter() - t0
        try:
            fut = self._pool.submit(self._timed, fn, *args)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _: self._slots.release())
        self._pending.append(fut)
        return fut

    def result(self, fut: Future) -> Any:
        """The job's value, waiting for it (its error, or an earlier job's, is raised)."""
        self.check()
        t0 = time.perf_counter()
        try:
            value = fut.result()
        except BaseException:
            self.check()  # the first failed job's error (this one may have been dropped after it)
            self._drop()
            raise
        finally:
            if self._pool is not None:  # disabled: the job ran in `submit`, nothing was waited for
                self.waited += time.perf_counter() - t0
        if fut in self._pending:
            self._pending.remove(fut)
        return value

    def check(self) -> None:
        """Raise the error of the first finished job that failed (and drop the rest)."""
        for fut in [f for f in self._pending if f.done()]:
            self._pending.remove(fut)
            if fut.exception() is not None:
                self._drop()
                raise fut.exception()

    def close(self) -> None:
        """Wait for every queued job; raises the first error."""
        try:
            while self._pending:
                self.result(self._pending[0])
        finally:
            self._drop()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _drop(self) -> None:
        """Cancel the queued jobs and wait for the running one."""
        for fut in self._pending:
            fut.cancel()
        for fut in self._pending:
            if not fut.cancelled():
                try:
                    fut.exception()
                except BaseException:  # pragma: no cover - cancelled meanwhile
                    pass
        self._pending = []

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._failed:  # a job before this one failed: this one is dropped
            raise Dropped("dropped: an earlier background job failed")
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except BaseException:
            self._failed = self._pool is not None
            raise
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - t0

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # an error already surfaces: stop the rest quietly
            self._drop()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
