"""The temporary Prefect server a command starts when no PREFECT_API_URL is set.

Prefect starts one itself (`SubprocessASGIServer`) on the first API call and stops it at normal
interpreter exit, so `kill -9` or SIGTERM of the command left it running. Here it is started from
the command's main thread before any flow runs, in its own process group, with the Linux
parent-death signal set to SIGKILL: it dies with the command however the command ends. Prefect's
clients then find that same instance (one per port, a singleton) and use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from typing import Iterator

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int):
    def preexec() -> None:  # runs in the child between fork and exec
        os.setpgid(0, 0)
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the command ended before the signal was armed
            os._exit(1)

    return preexec


@contextlib.contextmanager
def _popen_dies_with_parent() -> Iterator[None]:
    real = subprocess.Popen
    parent = os.getpid()

    class Popen(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("preexec_fn", _die_with(parent))
            super().__init__(*args, **kwargs)

    subprocess.Popen = Popen  # type: ignore[misc]
    try:
        yield
    finally:
        subprocess.Popen = real  # type: ignore[misc]


def _server():
    """The server the flows would start (None when a server is configured: nothing to start)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer()


@contextlib.contextmanager
def temporary_server() -> Iterator[None]:
    """Run the block with Prefect's temporary server started so that it dies with this process.

    It is not stopped when the block ends: Prefect stops it at interpreter exit, after its log
    worker has sent the last run logs; a kill ends it through the parent-death signal."""
    server = _server()
    if server is not None and not server.running:
        with _popen_dies_with_parent():
            server.start()
    yield
