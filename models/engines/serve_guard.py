"""Run a server command and end its whole process group when the process that started it goes away.

    python serve_guard.py FD -- COMMAND [ARGS...]

Started by `models.engines.vllm_omni` in a new session (its own process group), with FD the read
end of a pipe whose write end only the starting process holds. The guard runs COMMAND in the same
group and ends the group (SIGTERM, then SIGKILL after a grace period) when:
- the pipe reaches end-of-file: the starting process exited or was killed, even by SIGKILL;
- the guard receives SIGTERM or SIGINT (a clean stop);
- COMMAND exits (its own worker processes must not outlive it).
Standard library only: it runs in the engine's environment, which does not have this project.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

GRACE_S = float(os.environ.get("T2VSIM_GUARD_GRACE_S", "10"))


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: serve_guard.py FD -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    fd = int(argv[1])
    child = subprocess.Popen(argv[3:])
    stop_at: list[float] = []  # when a stop was asked for

    def request_stop(*_):
        if not stop_at:
            stop_at.append(time.monotonic())
            try:
                child.terminate()
            except ProcessLookupError:
                pass

    def watch_parent() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        request_stop()  # end of file: the starting process is gone

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    threading.Thread(target=watch_parent, daemon=True).start()
    while child.poll() is None and not (stop_at and time.monotonic() - stop_at[0] > GRACE_S):
        time.sleep(0.1)
    rc = child.poll()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"serve_guard: server exited with code {rc}", file=sys.stderr, flush=True)
    try:
        os.killpg(0, signal.SIGTERM)  # workers the server left behind
        time.sleep(0.5)
    except ProcessLookupError:
        pass
    os.killpg(0, signal.SIGKILL)  # the guard goes with the group
    return 0 if rc is None else rc  # pragma: no cover - not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
