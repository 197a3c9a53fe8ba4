"""Where a batched chain's flushes are written: in the caller (`InlineWriter`) or in a writer
process (`ProcessWriter`) that overlaps the database work with the next blocks' rules.

A flush is a list of operations `(sql, rows)` (rows: a list of parameter tuples, run with the
driver's executemany) built by sim/chain/batched.py from the working set at the moment of the
flush (plain values: later blocks cannot change what it writes); `write_ops` runs them in one
transaction. The writer process is still the chain's only writer: it applies the flushes one after
the other, in the order they were made, each in its own transaction, and answers each with "ok" or
the error; the next flush (and every explicit `flush()`) first waits for that answer, so at most
one flush is in flight and an error stops the chain at the next flush, with nothing of the failed
flush written (its blocks were never acknowledged).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from sqlalchemy.engine import Engine

Ops = Sequence[tuple[str, list]]


class WriterError(RuntimeError):
    """A flush could not be written (the database's error, as text)."""


def write_ops(conn, ops: Ops) -> None:
    """Run a flush's operations on a SQLAlchemy connection inside its transaction."""
    cur = conn.connection.cursor()
    try:
        if conn.dialect.name == "sqlite":  # a page cache that holds the indices being appended to (256 MiB)
            cur.execute("PRAGMA cache_size = -262144")
        for sql, rows in ops:
            if len(rows) == 1:
                cur.execute(sql, rows[0])
            elif rows:
                cur.executemany(sql, rows)
    finally:
        cur.close()


class InlineWriter:
    """Writes each flush at once, in the calling thread."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def submit(self, ops: Ops) -> None:
        try:
            with self.engine.begin() as conn:
                write_ops(conn, ops)
        except Exception as err:
            raise WriterError(f"{type(err).__name__}: {err}") from err

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


def _dumps(ops: Ops) -> bytes:
    """Pickle without the memo (flat tuples of plain values: about 3x faster to write)."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    p.fast = True
    p.dump(list(ops))
    return buf.getvalue()


def _send(stream, obj) -> None:
    data = obj if isinstance(obj, bytes) else pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _recv(stream):
    """The next frame's bytes, or None at the end of the stream."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    data = stream.read(n)
    if len(data) < n:
        return None
    return data


def _serve(url: str, inp, out) -> None:  # pragma: no cover - runs in the writer process (tests see its answers)
    """The writer process: flushes from `inp`, one answer each on `out`; stops at an empty frame,
    the end of the input or the first error."""
    from sim.chain.db import make_engine

    engine = make_engine(url)
    try:
        while (data := _recv(inp)) is not None and data:
            try:
                with engine.begin() as c:
                    write_ops(c, pickle.loads(data))
                _send(out, ("ok", ""))
            except Exception as err:
                _send(out, ("error", f"{type(err).__name__}: {err}"))
                return
    finally:
        engine.dispose()


class ProcessWriter:
    """Writes flushes in a separate process (`python -m sim.chain.writer`, its own connection to the
    same URL, flushes over a pipe)."""

    def __init__(self, engine: Engine):
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError("a writer process needs a database it can open too (a SQLite file or PostgreSQL), "
                             "not an in-memory SQLite database")
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        self.proc = subprocess.Popen([sys.executable, "-m", "sim.chain.writer"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=root)
        _send(self.proc.stdin, url.render_as_string(hide_password=False).encode())
        self.in_flight = False
        self.error: str | None = None

    def submit(self, ops: Ops) -> None:
        self.wait()
        try:
            _send(self.proc.stdin, _dumps(ops))
        except OSError as err:
            self.error = f"the writer process is gone ({type(err).__name__}: {err}, exit code {self.proc.poll()})"
            raise WriterError(self.error) from None
        self.in_flight = True

    def wait(self) -> None:
        """Until the flush in flight is written; WriterError if it failed (or an earlier one did)."""
        if self.error:
            raise WriterError(self.error)
        if not self.in_flight:
            return
        self.in_flight = False
        data = _recv(self.proc.stdout)
        status, message = pickle.loads(data) if data else (
            "error", f"the writer process died (exit code {self.proc.wait()})")
        if status != "ok":
            self.error = message
            raise WriterError(message)

    def close(self) -> None:
        """Wait for the flush in flight, then stop the process."""
        try:
            if not self.error:
                self.wait()
        finally:
            try:
                _send(self.proc.stdin, b"")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover - a writer stuck in the database
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()


def _main() -> None:  # pragma: no cover - the writer process
    out = os.fdopen(os.dup(1), "wb")  # answers; anything printed goes to stderr
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    url = _recv(inp)
    if url:
        _serve(url.decode(), inp, out)


if __name__ == "__main__":
    _main()
